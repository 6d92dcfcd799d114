"""PID/PD1 -> Patient, NK1 -> RelatedPerson, A40 MRG -> the retired Patient of a merge.

Patient.identifier: first the sender's own id (``<source>/patient``, the PID-3 repetition carebus keys on: the
first MR-typed one, else the first), then every PID-3 (and PID-2, PID-4, PID-19 SSN) CX with its type
(v2-0203), system (assigning authority OID/URI, else none) and assigner (display). Names PID-5 (XPN), birth
date PID-7, gender PID-8 (v2-0001 concept map), address PID-11, telecom PID-13 (home) / PID-14 (work),
language PID-15, marital status PID-16, death PID-29/30, multiple birth PID-24/25; PD1-3 managing
organisation and PD1-4 general practitioner as logical references.
"""

from __future__ import annotations

from typing import Any

from services.common.fhir.codesystems import SSN, V2_0203
from services.common.hl7v2.er7 import Segment, select_patient_id
from services.mapper.hl7v2.builder import Build, Json, ref
from services.mapper.hl7v2.datatypes import (
    address,
    codeable,
    contact_point,
    fhir_date,
    fhir_datetime,
    human_name,
    identifier_cx,
    language,
    organization_reference,
    person_reference,
)
from services.mapper.hl7v2.terminology import GENDER


def _identifiers(build: Build, pid: Segment, key_value: str) -> list[Json]:
    identifiers: list[Json] = [{"use": "usual", **build.source_identifier("patient", key_value)}]
    for n in (3, 2, 4):
        for rep in pid.reps(n):
            made = identifier_cx(rep, pid.loc(n), build.conv)
            if made is not None and made not in identifiers:
                identifiers.append(made)
    ssn = pid.get(19)
    if ssn:
        identifiers.append({
            "type": {"coding": [{"system": V2_0203, "code": "SS",
                                 "display": "Social Security number"}]},
            "system": SSN, "value": ssn,
        })
    return identifiers


def patient_resource_id(build: Build, key_value: str) -> str:
    return build.id("Patient", key_value)


def map_patient(build: Build, pid: Segment, pd1: Segment | None) -> Json:
    conv = build.conv
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "id": patient_resource_id(build, build.patient_key),
        "identifier": _identifiers(build, pid, build.patient_key),
        "active": True,
        "name": [human_name(rep, pid.loc(5), conv) for rep in pid.reps(5)],
        "telecom": [contact_point(rep, "home", pid.loc(13), conv) for rep in pid.reps(13)]
        + [contact_point(rep, "work", pid.loc(14), conv) for rep in pid.reps(14)],
        "gender": GENDER.get(pid.get(8).upper()) if pid.get(8) else None,
        "birthDate": fhir_date(pid.get(7), pid.loc(7), conv),
        "address": [address(rep, pid.loc(11), conv) for rep in pid.reps(11)],
        "maritalStatus": codeable(pid.rep(16), local=build.local(pid.loc(16))),
        "communication": [{"language": spoken}] if (spoken := language(pid.rep(15))) else None,
    }
    if pid.get(15) and not any("coding" in c["language"] for c in patient["communication"] or ()):
        build.issue("not-a-language-tag@PID-15")  # kept as text: the binding to BCP-47 is required
    if pid.get(8) and pid.get(8).upper() not in GENDER:
        build.issue("unknown-code@PID-8")
    death = fhir_datetime(pid.get(29), pid.loc(29), conv)
    if death:
        patient["deceasedDateTime"] = death
    elif pid.get(30).upper() in {"Y", "N"}:
        patient["deceasedBoolean"] = pid.get(30).upper() == "Y"
    birth_order = pid.get(25)
    if birth_order.isdigit() and 0 < int(birth_order) < 100:
        patient["multipleBirthInteger"] = int(birth_order)
    elif pid.get(24).upper() in {"Y", "N"}:
        patient["multipleBirthBoolean"] = pid.get(24).upper() == "Y"
    if pd1 is not None:
        build.use(pd1)
        patient["managingOrganization"] = organization_reference(pd1.rep(3))
        patient["generalPractitioner"] = [person_reference(rep) for rep in pd1.reps(4)]
    build.use(pid)
    made = build.add(patient, focus=True)
    build.patient_ref = ref(made)
    return made


def map_related_person(build: Build, nk1: Segment) -> Json | None:
    conv = build.conv
    names = [human_name(rep, nk1.loc(2), conv) for rep in nk1.reps(2)]
    organisation = nk1.get(13)
    if not any(names) and not organisation:
        return None
    relationship = [codeable(nk1.rep(3), local=build.local(nk1.loc(3))),
                    codeable(nk1.rep(7), local=build.local(nk1.loc(7)))]
    person = {
        "resourceType": "RelatedPerson",
        "id": build.id("RelatedPerson", "patient", build.patient_key, "nk1",
                       nk1.get(1) or str(nk1.occurrence)),
        "identifier": [identifier_cx(rep, nk1.loc(12), conv) for rep in nk1.reps(12)],
        "active": True,
        "patient": build.patient_ref,
        "relationship": relationship,
        "name": names,
        "telecom": [contact_point(rep, "home", nk1.loc(5), conv) for rep in nk1.reps(5)]
        + [contact_point(rep, "work", nk1.loc(6), conv) for rep in nk1.reps(6)],
        "address": [address(rep, nk1.loc(4), conv) for rep in nk1.reps(4)],
        "period": {"start": fhir_date(nk1.get(8), nk1.loc(8), conv),
                   "end": fhir_date(nk1.get(9), nk1.loc(9), conv)},
    }
    build.use(nk1)
    return build.add(person)


def map_merge(build: Build, pid: Segment, mrg: Segment, survivor: Json) -> Json | None:
    """ADT A40: the retired Patient (MRG-1) -> active false, link replaced-by; the survivor gets replaces."""
    rep = select_patient_id(mrg.reps(1))
    if rep is None:
        return None
    retired_key = rep.c(1)
    retired_id = patient_resource_id(build, retired_key)
    build.use(pid, mrg)
    if retired_id == survivor["id"]:
        build.issue("merge-into-itself@MRG-1")
        return None
    identifiers: list[Json] = [{"use": "old", **build.source_identifier("patient", retired_key)}]
    for merge_rep in mrg.reps(1):
        made = identifier_cx(merge_rep, mrg.loc(1), build.conv)
        if made is not None:
            identifiers.append(made)
    retired = {
        "resourceType": "Patient",
        "id": retired_id,
        "identifier": identifiers,
        "active": False,
        "name": [human_name(name, mrg.loc(7), build.conv) for name in mrg.reps(7)],
        "link": [{"other": ref(survivor), "type": "replaced-by"}],
    }
    survivor.setdefault("link", []).append(
        {"other": {"reference": f"Patient/{retired_id}"}, "type": "replaces"})
    return build.add(retired, focus=True)
