"""PV1/PV2 -> Encounter, DG1 -> Condition (+ Encounter.diagnosis), AL1 -> AllergyIntolerance.

Encounter: id from PV1-19 (visit number), else the patient and PV1-44 (admit time), else MSH-10; class from
PV1-2 (v2-0004 concept map; unmatched codes keep their v2-0004 coding); period PV1-44/45; locations PV1-3
(assigned), PV1-6 (prior), PV1-11 (temporary), PV1-42 (pending); participants PV1-7/8/9/17; hospitalization
from PV1-5/13/14/36/37/38 (PV1-36 discharge disposition via v2-0112 / UB-04 codes, 65 -> ``psy``); status:
A03 or a discharge time (PV1-45) -> finished, other ADT events in-progress, SIU planned, otherwise unknown.
A02 (transfer): the new location is active from the event time, the prior one completed at it.
"""

from __future__ import annotations

from typing import Any

from services.common.fhir.codesystems import (
    ALLERGY_CLINICAL,
    CONDITION_CATEGORY,
    CONDITION_VERIFICATION,
    DIAGNOSIS_ROLE,
    DISCHARGE_DISPOSITION,
    V2_0004,
    V2_0203,
    V3_ACT_CODE,
    V3_NULL_FLAVOR,
    V3_PARTICIPATION_TYPE,
)
from services.common.fhir.labels import discharge_labels, hospital_service_labels
from services.common.hl7v2.er7 import Rep, Segment
from services.mapper.hl7v2 import sensitivity
from services.mapper.hl7v2.builder import Build, Json, Labels, ref
from services.mapper.hl7v2.datatypes import (
    aware_datetime,
    codeable,
    fhir_code,
    fhir_datetime,
    identifier_cx,
    identifier_ei,
    location_display,
    organization_reference,
    person_reference,
    table_code,
)
from services.mapper.hl7v2.terminology import (
    ALLERGY_CATEGORY,
    ALLERGY_CRITICALITY,
    DIAGNOSIS_TYPE,
    DISCHARGE,
    DISCHARGE_DISPLAY,
    ENCOUNTER_CLASS,
    ENCOUNTER_CLASS_V2_DISPLAY,
    V2_TABLE_CODES,
    local_system,
)

_PARTICIPANTS = ((7, "ATND", "attender"), (8, "REF", "referrer"), (9, "CON", "consultant"),
                 (17, "ADM", "admitter"))
_ADT_ACTIVE = {"A01", "A02", "A04", "A08"}


def _class(build: Build, pv1: Segment) -> Json:
    """PV1-2 -> Encounter.class: v3 ActCode where the IG maps it, else the v2-0004 code, else (a value that is
    not in table 0004, e.g. 'FF') the sender's local v2-0004 system; absent -> NullFlavor UNK."""
    code = fhir_code(pv1.get(2)).upper()
    if code in ENCOUNTER_CLASS:
        act, display = ENCOUNTER_CLASS[code]
        return {"system": V3_ACT_CODE, "code": act, "display": display}
    if code in V2_TABLE_CODES["0004"]:
        return {"system": V2_0004, "code": code, "display": ENCOUNTER_CLASS_V2_DISPLAY.get(code)}
    if code:
        build.issue("local-code@PV1-2")
        return {"system": local_system(build.source, "v2-0004"), "code": fhir_code(pv1.get(2))}
    return {"system": V3_NULL_FLAVOR, "code": "UNK", "display": "unknown"}


def _status(build: Build, pv1: Segment) -> str:
    header = build.header
    if header.message_type == "ADT" and header.trigger_event == "A03":
        return "finished"
    if pv1.get(45):
        return "finished"
    if header.message_type == "ADT" and header.trigger_event in _ADT_ACTIVE:
        return "in-progress"
    if header.message_type == "SIU":
        return "planned"
    return "unknown"


def _coded(build: Build, rep: Rep | None, table: str, loc: str) -> Json | None:
    """A table-coded field (IS, or CWE in v2.6+): CWE when it names a system or a text, else the code in the
    v2 table's system when HL7's table has it, in the sender's local system for the table when not."""
    if rep is None:
        return None
    if rep.c(3) or rep.c(2):
        return codeable(rep, local=build.local(loc))
    return table_code(rep.c(1), table, build.source)


def _discharge(build: Build, rep: Rep | None) -> tuple[Json | None, Labels]:
    if rep is None:
        return None, ()
    code = rep.c(1).upper()
    mapped = DISCHARGE.get(code)
    if mapped is None:
        concept = codeable(rep, local=build.local("PV1-36"))
        text = " ".join((rep.c(1), rep.c(2))).lower()
        return concept, discharge_labels(None, text)
    concept = {"coding": [{"system": DISCHARGE_DISPOSITION, "code": mapped,
                           "display": DISCHARGE_DISPLAY[mapped]}]}
    original = codeable(rep, local=build.local("PV1-36"))
    if original is not None and original.get("text"):
        concept["text"] = original["text"]
    return concept, discharge_labels(mapped)


def encounter_key(build: Build, pv1: Segment) -> str:
    visit = pv1.get(19)
    if visit:
        return visit
    admitted = pv1.get(44)
    if admitted:
        return f"patient|{build.patient_key}|admitted|{admitted}"
    return f"message|{build.message_key}"


def map_encounter(build: Build, pv1: Segment, pv2: Segment | None) -> Json:
    conv = build.conv
    key = encounter_key(build, pv1)
    status = _status(build, pv1)
    encounter: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": build.id("Encounter", key),
        "identifier": [build.source_identifier("encounter", key)] if pv1.get(19) else [],
        "status": status,
        "class": _class(build, pv1),
        "type": [_coded(build, pv1.rep(4), "0007", pv1.loc(4))],
        "serviceType": _coded(build, pv1.rep(10), "0069", pv1.loc(10)),
        "subject": build.patient_ref,
        "participant": [],
        "period": {"start": fhir_datetime(pv1.get(44), pv1.loc(44), conv)},
        "location": [],
        "serviceProvider": organization_reference(pv1.rep(39)),
    }
    if pv1.get(19):
        visit = identifier_cx(pv1.rep(19), pv1.loc(19), conv)
        if visit is not None:
            visit.setdefault("type", {"coding": [{"system": V2_0203,
                                                  "code": "VN", "display": "Visit number"}]})
            encounter["identifier"].append(visit)
    end = pv1.get(45)
    if end:
        start_at, end_at = aware_datetime(pv1.get(44), conv), aware_datetime(end, conv)
        if start_at is not None and end_at is not None and end_at < start_at:
            build.issue("period-end-before-start@PV1-45")
        else:
            encounter["period"]["end"] = fhir_datetime(end, pv1.loc(45), conv)
    for n, code, display in _PARTICIPANTS:
        for rep in pv1.reps(n):
            who = person_reference(rep)
            if who is not None:
                encounter["participant"].append({
                    "type": [{"coding": [{"system": V3_PARTICIPATION_TYPE, "code": code, "display": display}]}],
                    "individual": who,
                })
    _locations(build, pv1, encounter, status)
    disposition, disposition_labels = _discharge(build, pv1.rep(36))
    encounter["hospitalization"] = {
        "preAdmissionIdentifier": identifier_cx(pv1.rep(5), pv1.loc(5), conv),
        "admitSource": _coded(build, pv1.rep(14), "0023", pv1.loc(14)),
        "reAdmission": _coded(build, pv1.rep(13), "0092", pv1.loc(13)),
        "dischargeDisposition": disposition,
        "destination": {"display": pv1.get(37)} if pv1.get(37) else None,
        "dietPreference": [_coded(build, pv1.rep(38), "0114", pv1.loc(38))],
    }
    if pv2 is not None:
        build.use(pv2)
        encounter["reasonCode"] = [codeable(pv2.rep(3), local=build.local(pv2.loc(3)))]
    service_labels = hospital_service_labels(pv1.get(10), " ".join((pv1.get(10, 1), pv1.get(10, 2))))
    build.use(pv1)
    made = build.add(encounter, sensitivity.combine(disposition_labels, service_labels), focus=True)
    build.encounter_ref = ref(made)
    build.encounter_key = key
    return made


def _locations(build: Build, pv1: Segment, encounter: Json, status: str) -> None:
    conv = build.conv
    moved_at = ""
    if build.header.message_type == "ADT" and build.header.trigger_event == "A02":
        evn = build.message.first("EVN")
        if evn is not None:
            moved_at = evn.get(6) or evn.get(2)
    moved = fhir_datetime(moved_at, "EVN-6", conv) if moved_at else None
    current_status = "completed" if status == "finished" else "active"
    slots = ((3, current_status, {"start": moved}), (11, "active", None), (6, "completed", {"end": moved}),
             (43, "completed", None), (42, "planned", None))
    for n, location_status, period in slots:
        display = location_display(pv1.rep(n))
        if display:
            encounter["location"].append({"location": {"display": display}, "status": location_status,
                                          "period": period})


def map_condition(build: Build, dg1: Segment, encounter: Json | None) -> Json | None:
    conv = build.conv
    rep = dg1.rep(3)
    code = codeable(rep, local=build.local(dg1.loc(3)))
    if code is not None and rep is not None and not rep.c(3) and dg1.get(2):
        # v2.3: DG1-2 names the coding method when DG1-3 does not
        from services.mapper.hl7v2.datatypes import coding

        made = coding(rep.c(1), rep.c(2), dg1.get(2))
        if made is not None:
            code["coding"] = [made] + [c for c in code.get("coding", [])[1:]]
    description = dg1.get(4)
    if description:
        code = code or {}
        code.setdefault("text", description)
    if not code:
        build.issue("diagnosis-without-code@DG1-3")
        build.use(dg1)
        return None
    key = dg1.get(20) or "|".join(
        f"{c.get('system', '')}|{c.get('code', '')}" for c in code.get("coding", [])) or code.get("text", "")
    scope = f"encounter|{build.encounter_key}" if build.encounter_key else f"patient|{build.patient_key}"
    role, verification = DIAGNOSIS_TYPE.get(dg1.get(6).upper(), (None, None))
    condition: dict[str, Any] = {
        "resourceType": "Condition",
        "id": build.id("Condition", "diagnosis", key) if dg1.get(20) else build.id("Condition", scope, key),
        "identifier": [identifier_ei(dg1.rep(20))],
        "verificationStatus": {"coding": [{"system": CONDITION_VERIFICATION, "code": verification}]}
        if verification else None,
        "category": [{"coding": [{"system": CONDITION_CATEGORY, "code": "encounter-diagnosis",
                                  "display": "Encounter Diagnosis"}]}],
        "code": code,
        "onsetDateTime": fhir_datetime(dg1.get(5), dg1.loc(5), conv),
        "recordedDate": fhir_datetime(dg1.get(19), dg1.loc(19), conv),
        "asserter": person_reference(dg1.rep(16)),
    }
    build.subject(condition)
    labels = sensitivity.diagnosis(code)
    build.use(dg1)
    made = build.add(condition, labels)
    if encounter is not None:
        rank = dg1.get(15)
        encounter.setdefault("diagnosis", []).append({
            "condition": ref(made),
            "use": {"coding": [{"system": DIAGNOSIS_ROLE, "code": role}]} if role else None,
            "rank": int(rank) if rank.isdigit() and 0 < int(rank) < 1000 else None,
        })
        encounter["diagnosis"][-1] = {k: v for k, v in encounter["diagnosis"][-1].items() if v is not None}
        if labels:
            build.relabel(encounter["id"], labels)
    return made


def map_allergy(build: Build, al1: Segment) -> Json | None:
    code = codeable(al1.rep(3), local=build.local(al1.loc(3)))
    if code is None:
        build.issue("allergy-without-code@AL1-3")
        build.use(al1)
        return None
    category = ALLERGY_CATEGORY.get(al1.get(2).upper())
    key = "|".join(f"{c.get('system', '')}|{c.get('code', '')}" for c in code.get("coding", [])) \
        or code.get("text", "")
    # AL1-5 is ST up to v2.5 (free text), CWE from v2.6
    reactions = [(codeable(rep, local=build.local(al1.loc(5))) if rep.c(2) or rep.c(3) else None)
                 or {"text": rep.text()} for rep in al1.reps(5)]
    allergy = {
        "resourceType": "AllergyIntolerance",
        "id": build.id("AllergyIntolerance", "patient", build.patient_key, key),
        "clinicalStatus": {"coding": [{"system": ALLERGY_CLINICAL, "code": "active", "display": "Active"}]},
        "type": "allergy" if al1.get(2).upper().endswith("A") else None,
        "category": [category] if category else None,
        "criticality": ALLERGY_CRITICALITY.get(al1.get(4).upper()),
        "code": code,
        "patient": build.patient_ref,
        "onsetDateTime": fhir_datetime(al1.get(6), al1.loc(6), build.conv),
        "reaction": [{"manifestation": reactions}] if reactions else None,
    }
    build.use(al1)
    return build.add(allergy, sensitivity.medication(code))
