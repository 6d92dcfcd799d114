"""Denominator exclusions (services/outcomes/exclusions.py), table-driven on constructed resources."""

from __future__ import annotations

import re
from datetime import date
from typing import Any

import pytest
from pydantic import ValidationError

from services.common.settings import Settings
from services.outcomes.engine import OutcomesEngine
from services.outcomes.exclusions import Exclusion, HospiceCodes, excluding, exclusion_of, in_force
from tests.hl7v2 import helpers as hl7v2
from tests.hl7v2.test_adt import pv1
from tests.mapping import helpers as events

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
SCT = "http://snomed.info/sct"


def condition(system: str, code: str, **fields: Any) -> dict[str, Any]:
    return {"resourceType": "Condition", "id": "c", "code": {"coding": [{"system": system, "code": code}]}, **fields}


@pytest.mark.parametrize(("resource", "reason"), [
    (condition(ICD10CM, "F31.81"), "bipolar-disorder"),
    (condition(ICD10CM, "F319"), "bipolar-disorder"),  # without its dot
    (condition("http://hl7.org/fhir/sid/icd-10", "F30.1"), "bipolar-disorder"),
    (condition(ICD10CM, "F60.3"), "personality-disorder-emotionally-labile"),
    (condition(ICD10CM, "F60.2"), None),  # another personality disorder: not an exclusion
    (condition(ICD10CM, "F20.9"), "schizophrenia-or-psychotic-disorder"),
    (condition(ICD10CM, "F29"), "schizophrenia-or-psychotic-disorder"),
    (condition(ICD10CM, "F32.1"), None),  # depression itself
    (condition(ICD10CM, "F84.0"), "pervasive-developmental-disorder"),
    (condition(ICD10CM, "Z51.5"), "palliative-or-hospice-care"),
    (condition(SCT, "13746004"), "bipolar-disorder"),
    (condition(SCT, "58214004"), "schizophrenia-or-psychotic-disorder"),
    (condition(SCT, "35489007"), None),  # depressive disorder
    (condition("urn:other", "F31.9"), None),  # an ICD-looking code in another system
    (condition(ICD10CM, "F31.9", verificationStatus={"coding": [{"code": "refuted"}]}), None),
    (condition(ICD10CM, "F31.9", verificationStatus={"coding": [{"code": "entered-in-error"}]}), None),
    (condition(ICD10CM, "F31.9", verificationStatus={"coding": [{"code": "provisional"}]}), "bipolar-disorder"),
    ({"resourceType": "Patient", "id": "p", "deceasedBoolean": True}, "death"),
    ({"resourceType": "Patient", "id": "p", "deceasedBoolean": False}, None),
    ({"resourceType": "Patient", "id": "p", "deceasedDateTime": "2025-04-01T10:00:00Z"}, "death"),
    ({"resourceType": "Patient", "id": "p"}, None),
    ({"resourceType": "Observation", "id": "o", "code": {"coding": [{"system": ICD10CM, "code": "F31.9"}]}}, None),
])
def test_what_excludes(resource: dict[str, Any], reason: str | None) -> None:
    found = exclusion_of(resource)
    assert (found.reason if found else None) == reason


@pytest.mark.parametrize(("fields", "when"), [
    ({"onsetDateTime": "2025-03-04T08:00:00-05:00"}, date(2025, 3, 4)),
    ({"onsetPeriod": {"start": "2025-02-01"}}, date(2025, 2, 1)),
    ({"recordedDate": "2025-05-06"}, date(2025, 5, 6)),
    ({"onsetDateTime": "2025-03-04", "recordedDate": "2025-05-06"}, date(2025, 3, 4)),  # onset first
    ({}, None),  # undated: counts for every window
])
def test_from_when_a_condition_counts(fields: dict[str, Any], when: date | None) -> None:
    found = exclusion_of(condition(ICD10CM, "F31.9", **fields))
    assert found is not None and found.when == when


def test_only_exclusions_by_the_window_end_count() -> None:
    end = date(2025, 9, 1)
    on_the_day = Exclusion(end, "death", "Patient/p")
    after = Exclusion(date(2025, 9, 2), "bipolar-disorder", "Condition/a")
    undated = Exclusion(None, "bipolar-disorder", "Condition/b")
    assert excluding([after], end) is None
    assert excluding([after, on_the_day], end) == on_the_day
    assert excluding([on_the_day, undated], end) == undated  # undated first
    assert excluding([], end) is None


# --- hospice and palliative care beyond a diagnosis ------------------------------------------------------------

DISPOSITION = "http://terminology.hl7.org/CodeSystem/discharge-disposition"
NUBC = "https://www.nubc.org/CodeSystem/PatDischargeStatus"
HCPCS = "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"
LOINC = "http://loinc.org"
D = date.fromisoformat


def concept(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code}]}


def encounter(status: str = "finished", start: str | None = "2025-03-01T08:00:00Z",
              end: str | None = "2025-03-09T11:00:00Z", disposition: tuple[str, str] | None = None,
              type_: tuple[str, str] | None = None, service: tuple[str, str] | None = None) -> dict[str, Any]:
    period = {k: v for k, v in (("start", start), ("end", end)) if v}
    found: dict[str, Any] = {"resourceType": "Encounter", "id": "e", "status": status, "period": period}
    if disposition:
        found["hospitalization"] = {"dischargeDisposition": concept(*disposition)}
    if type_:
        found["type"] = [concept(*type_)]
    if service:
        found["serviceType"] = concept(*service)
    return found


def procedure(code: tuple[str, str], status: str = "completed", **fields: Any) -> dict[str, Any]:
    return {"resourceType": "Procedure", "id": "pr", "status": status, "code": concept(*code),
            "performedDateTime": "2025-04-02", **fields}


def order(code: tuple[str, str], status: str = "active", intent: str = "order", **fields: Any) -> dict[str, Any]:
    return {"resourceType": "ServiceRequest", "id": "sr", "status": status, "intent": intent, "code": concept(*code),
            "authoredOn": "2025-05-03T09:00:00Z", **fields}


def assessment(code: str, value: tuple[str, str] | None = None, status: str = "final") -> dict[str, Any]:
    found: dict[str, Any] = {"resourceType": "Observation", "id": "o", "status": status,
                             "code": concept(LOINC, code), "effectiveDateTime": "2025-06-04T10:00:00Z"}
    if value:
        found["valueCodeableConcept"] = concept(*value)
    return found


HOSPICE_CARE = (SCT, "385763009")  # Hospice care (regime/therapy)
PALLIATIVE_CARE = (SCT, "103735009")  # Palliative care (regime/therapy)
YES, NO = (SCT, "373066001"), (SCT, "373067005")


@pytest.mark.parametrize(("resource", "when", "ends"), [
    # discharged to hospice: dated at the discharge
    (encounter(disposition=(DISPOSITION, "hosp")), D("2025-03-09"), D("2025-03-09")),
    (encounter(disposition=(SCT, "428361000124107")), D("2025-03-09"), D("2025-03-09")),  # to home for hospice
    (encounter(disposition=(SCT, "428371000124100")), D("2025-03-09"), D("2025-03-09")),  # to a facility for it
    (encounter(disposition=(NUBC, "50")), D("2025-03-09"), D("2025-03-09")),
    (encounter(disposition=(NUBC, "51")), D("2025-03-09"), D("2025-03-09")),
    (encounter(status="in-progress", disposition=(DISPOSITION, "hosp"), end="2025-03-09"), D("2025-03-09"),
     D("2025-03-09")),  # a discharge time, whatever the status says
    (encounter(disposition=(DISPOSITION, "home")), None, None),
    (encounter(disposition=(DISPOSITION, "psy")), None, None),
    (encounter(disposition=(NUBC, "43")), None, None),  # a federal facility, not hospice
    (encounter(status="in-progress", end=None, disposition=(DISPOSITION, "hosp")), None, None),  # not discharged
    (encounter(status="entered-in-error", disposition=(DISPOSITION, "hosp")), None, None),
    (encounter(status="cancelled", disposition=(DISPOSITION, "hosp")), None, None),
    # an encounter for hospice or palliative care: its period
    (encounter(type_=(SCT, "305336008")), D("2025-03-01"), D("2025-03-09")),  # admission to hospice
    (encounter(type_=(HCPCS, "Q5006")), D("2025-03-01"), D("2025-03-09")),  # hospice in a hospice facility
    (encounter(type_=("http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets", "T2042")), D("2025-03-01"),
     D("2025-03-09")),  # the R4 spelling of HCPCS
    (encounter(service=(SCT, "713281006")), D("2025-03-01"), D("2025-03-09")),  # consultation for palliative care
    (encounter(status="in-progress", end=None, type_=(SCT, "305336008")), D("2025-03-01"), None),  # ongoing
    (encounter(status="finished", end=None, type_=(SCT, "305336008")), D("2025-03-01"), D("2025-03-01")),
    (encounter(status="planned", type_=(SCT, "305336008")), None, None),
    (encounter(type_=(SCT, "32485007")), None, None),  # a hospital admission
    (encounter(type_=("urn:local", "305336008")), None, None),  # the code in another system
    # procedures done, orders placed, assessments
    (procedure(HOSPICE_CARE), D("2025-04-02"), D("2025-04-02")),
    (procedure(("http://www.ama-assn.org/go/cpt", "99377")), D("2025-04-02"), D("2025-04-02")),
    (procedure(PALLIATIVE_CARE, performedDateTime=None,
               performedPeriod={"start": "2025-04-01", "end": "2025-04-20"}), D("2025-04-01"), D("2025-04-20")),
    (procedure(PALLIATIVE_CARE, status="in-progress", performedDateTime=None,
               performedPeriod={"start": "2025-04-01"}), D("2025-04-01"), None),
    (procedure(HOSPICE_CARE, status="not-done"), None, None),
    (procedure(HOSPICE_CARE, status="preparation"), None, None),
    (procedure((SCT, "228557008")), None, None),  # cognitive and behavioural therapy
    (order(HOSPICE_CARE), D("2025-05-03"), D("2025-05-03")),
    (order(PALLIATIVE_CARE, status="completed", intent="original-order"), D("2025-05-03"), D("2025-05-03")),
    (order(HOSPICE_CARE, intent="plan"), None, None),
    (order(HOSPICE_CARE, intent="proposal"), None, None),
    (order(HOSPICE_CARE, status="revoked"), None, None),
    (order(HOSPICE_CARE, status="draft"), None, None),
    (assessment("45755-6", YES), D("2025-06-04"), D("2025-06-04")),
    (assessment("45755-6", NO), None, None),
    (assessment("45755-6", YES, status="preliminary"), None, None),
    (assessment("71007-9"), D("2025-06-04"), D("2025-06-04")),  # FACIT-Pal taken
    (assessment("44261-6"), None, None),  # a PHQ-9 total
    # a palliative-care diagnosis lasts from its onset to its abatement
    (condition(ICD10CM, "Z51.5", onsetDateTime="2025-01-05", abatementDateTime="2025-02-01"), D("2025-01-05"),
     D("2025-02-01")),
    (condition(ICD10CM, "Z51.5", onsetDateTime="2025-01-05"), D("2025-01-05"), None),
])
def test_hospice_and_palliative_care(resource: dict[str, Any], when: date | None, ends: date | None) -> None:
    found = exclusion_of(resource)
    if when is None:
        assert found is None
        return
    assert found is not None and found.reason == "palliative-or-hospice-care"
    assert (found.when, found.ends) == (when, ends)
    assert found.reference == f"{resource['resourceType']}/{resource['id']}"


SINCE, UNTIL = D("2025-01-01"), D("2025-09-01")


@pytest.mark.parametrize(("exclusion", "counts"), [
    (Exclusion(D("2025-03-01"), "palliative-or-hospice-care", "Encounter/a", D("2025-03-09")), True),
    (Exclusion(D("2024-12-01"), "palliative-or-hospice-care", "Encounter/a", D("2025-01-01")), True),  # reaches in
    (Exclusion(D("2024-12-01"), "palliative-or-hospice-care", "Encounter/a", D("2024-12-31")), False),  # ended before
    (Exclusion(D("2020-06-01"), "palliative-or-hospice-care", "Encounter/a", None), True),  # ongoing
    (Exclusion(UNTIL, "palliative-or-hospice-care", "Procedure/a", UNTIL), True),
    (Exclusion(D("2025-09-02"), "palliative-or-hospice-care", "Procedure/a", D("2025-09-02")), False),  # after
    (Exclusion(None, "palliative-or-hospice-care", "Condition/a"), False),  # undated care: not placed in the period
    (Exclusion(None, "bipolar-disorder", "Condition/a"), True),  # an undated diagnosis: a history of it
    (Exclusion(D("2020-06-01"), "bipolar-disorder", "Condition/a", None), True),  # a diagnosis: however old
    (Exclusion(D("2020-06-01"), "death", "Patient/a"), True),
])
def test_care_counts_when_it_reaches_into_the_period(exclusion: Exclusion, counts: bool) -> None:
    assert in_force(exclusion, UNTIL, SINCE) is counts
    assert (excluding([exclusion], UNTIL, SINCE) == exclusion) is counts
    dated = exclusion.when is not None and exclusion.when <= UNTIL
    assert in_force(exclusion, UNTIL) is (dated or counts)  # no period given: what counts by the window's end


# --- the two input paths that record a discharge to hospice -----------------------------------------------------

@pytest.mark.parametrize(("pv1_36", "trigger", "discharged", "excluded"), [
    ("50", "A03", "20250309110000-0500", True),  # hospice - home
    ("51", "A03", "20250309110000-0500", True),  # hospice - medical facility
    ("HOSP", "A03", "20250309110000-0500", True),
    ("01", "A03", "20250309110000-0500", False),  # home
    ("43", "A03", "20250309110000-0500", False),  # a federal health care facility
    ("66", "A03", "20250309110000-0500", False),  # a critical access hospital
    ("65", "A03", "20250309110000-0500", False),  # a psychiatric hospital
    ("50", "A01", "", False),  # an admission that names a planned disposition: not discharged yet
])
def test_hl7v2_discharge_disposition(pv1_36: str, trigger: str, discharged: str, excluded: bool) -> None:
    text = hl7v2.er7(hl7v2.msh(f"ADT^{trigger}^ADT_A01"), f"EVN|{trigger}|20250309110000-0500", hl7v2.PID,
               pv1(admit="20250301080000-0500", discharge=discharged, disposition=pv1_36))
    found = exclusion_of(hl7v2.one(hl7v2.mapped(text), "Encounter"))
    assert (found is not None) is excluded
    if found is not None:
        assert found.reason == "palliative-or-hospice-care" and found.when == D("2025-03-09")


def test_admission_ended_event_to_hospice() -> None:
    ended = events.one(events.mapped(events.example("admission.ended", discharge_disposition="hosp")), "Encounter")
    found = exclusion_of(ended)
    assert found is not None and found.reason == "palliative-or-hospice-care"
    assert found.when == date.fromisoformat(ended["period"]["end"][:10])
    home = events.one(events.mapped(events.example("admission.ended", discharge_disposition="home")), "Encounter")
    assert exclusion_of(home) is None


def _change(resource_type: str, resource: dict[str, Any] | None) -> dict[str, Any]:
    return {"resourceType": resource_type, "id": "x", "resource": resource, "patient": "Patient/p",
            "members": ["Patient/p", "Patient/q"]}


@pytest.mark.parametrize(("change", "recomputed"), [
    (_change("Encounter", encounter(disposition=(DISPOSITION, "hosp"))), True),
    (_change("Encounter", encounter(status="entered-in-error", disposition=(DISPOSITION, "hosp"))), True),
    (_change("Encounter", encounter()), True),  # may have been a hospice stay before this version
    (_change("Procedure", procedure(HOSPICE_CARE)), True),
    (_change("ServiceRequest", order(HOSPICE_CARE, intent="plan")), True),
    (_change("Observation", assessment("45755-6", YES)), True),
    (_change("Observation", assessment("44261-6", status="entered-in-error")), True),  # a score withdrawn
    (_change("Observation", None), True),  # a deletion
    (_change("Observation", assessment("8867-4")), False),  # a heart rate
    (_change("MedicationRequest", {"resourceType": "MedicationRequest", "id": "m"}), False),
])
def test_which_record_changes_recompute_the_person(change: dict[str, Any], recomputed: bool) -> None:
    affected = OutcomesEngine.affected_by_change(change)
    assert affected == ({"Patient/p", "Patient/q"} if recomputed else set())


# --- the encounter class, and a site's local hospice codes ------------------------------------------------------

ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
SITE = "urn:carebus:hl7v2:RIVERSIDE/codes"  # an HL7 v2 sender's local code systems (services/mapper/hl7v2)
LOCAL_CODES = [f"{SITE}/v2-0069|HOS", f"{SITE}/v2-0004|H", f"{SITE}/PV1-36|HSP", "urn:riverside:procedures|HSPV",
               "urn:riverside:problems|HOSPICE-PT"]
SITE_CODES = HospiceCodes.with_local(Settings(outcomes_local_hospice_codes=LOCAL_CODES).outcomes_local_hospice_codings)


def classed(code: tuple[str, str], **fields: Any) -> dict[str, Any]:
    found = encounter(**fields)
    found["class"] = {"system": code[0], "code": code[1]}
    return found


@pytest.mark.parametrize(("resource", "when", "ends"), [
    # the encounter class says nothing by itself: home health is not hospice, nor is an inpatient stay
    (classed((ACT, "HH")), None, None),
    (classed((ACT, "IMP")), None, None),
    (classed((ACT, "HH"), disposition=(DISPOSITION, "home")), None, None),
    # ... evidence beside it does: a discharge to hospice (the eCQM's two SNOMED CT codes), a hospice encounter type
    (classed((ACT, "IMP"), disposition=(SCT, "428361000124107")), D("2025-03-09"), D("2025-03-09")),
    (classed((ACT, "IMP"), disposition=(SCT, "428371000124100")), D("2025-03-09"), D("2025-03-09")),
    (classed((ACT, "HH"), type_=(SCT, "183919006")), D("2025-03-01"), D("2025-03-09")),  # urgent hospice admission
    # a site's local codes, wherever a value set's code is read
    (encounter(service=(f"{SITE}/v2-0069", "HOS")), D("2025-03-01"), D("2025-03-09")),  # PV1-10 hospital service
    (encounter(type_=(f"{SITE}/v2-0069", "HOS")), D("2025-03-01"), D("2025-03-09")),
    (classed((f"{SITE}/v2-0004", "H")), D("2025-03-01"), D("2025-03-09")),  # a local patient class (PV1-2)
    (classed((f"{SITE}/v2-0004", "H"), status="in-progress", end=None), D("2025-03-01"), None),  # ongoing
    (encounter(disposition=(f"{SITE}/PV1-36", "HSP")), D("2025-03-09"), D("2025-03-09")),  # at discharge
    (encounter(status="in-progress", end=None, disposition=(f"{SITE}/PV1-36", "HSP")), None, None),  # not yet
    (encounter(status="cancelled", service=(f"{SITE}/v2-0069", "HOS")), None, None),
    (procedure(("urn:riverside:procedures", "HSPV")), D("2025-04-02"), D("2025-04-02")),
    (procedure(("urn:riverside:procedures", "HSPV"), status="not-done"), None, None),
    (order(("urn:riverside:procedures", "HSPV")), D("2025-05-03"), D("2025-05-03")),
    (order(("urn:riverside:procedures", "HSPV"), intent="proposal"), None, None),
    (condition("urn:riverside:problems", "HOSPICE-PT", onsetDateTime="2025-01-05", abatementDateTime="2025-02-01"),
     D("2025-01-05"), D("2025-02-01")),
    (condition("urn:riverside:problems", "HOSPICE-PT", verificationStatus={"coding": [{"code": "refuted"}]}),
     None, None),
    # the site's other codes, and its code in another system, are not hospice
    (encounter(service=(f"{SITE}/v2-0069", "PSY")), None, None),
    (classed((f"{SITE}/v2-0004", "HH")), None, None),
    (encounter(service=("urn:other-site/codes/v2-0069", "HOS")), None, None),
    (procedure(("urn:riverside:procedures", "CBT")), None, None),
    (assessment("44261-6"), None, None),
])
def test_encounter_class_and_local_codes(resource: dict[str, Any], when: date | None, ends: date | None) -> None:
    found = exclusion_of(resource, SITE_CODES)
    assert ((found.when, found.ends) if found else None) == ((when, ends) if when else None)
    if found is not None:
        assert found.reason == "palliative-or-hospice-care"
    local = any((c.get("system"), c.get("code")) in SITE_CODES.local for c in _all_codings(resource))
    # without the site's codes configured (the default), only the value sets' codes count
    assert exclusion_of(resource) == (None if local else found)


def _all_codings(resource: dict[str, Any]) -> list[dict[str, Any]]:
    concepts = [resource.get("code"), resource.get("serviceType"), *(resource.get("type") or ()),
                (resource.get("hospitalization") or {}).get("dischargeDisposition")]
    return [*(c for concept in concepts if concept for c in concept["coding"]), *filter(None, [resource.get("class")])]


@pytest.mark.parametrize("entry", ["HOS", "urn:x|", "|HOS", " | "])
def test_local_codes_are_system_code_pairs(entry: str) -> None:
    with pytest.raises(ValidationError, match=re.escape("not 'system|code' pairs")):
        Settings(outcomes_local_hospice_codes=[entry])
    assert Settings().outcomes_local_hospice_codes == []  # none by default


@pytest.mark.parametrize(("service", "excluded"), [("HOS", True), ("PSY", False), ("MED", False)])
def test_hl7v2_local_hospital_service(service: str, excluded: bool) -> None:
    """The README's example: a sender's PV1-10 hospital service "HOS" (a user-defined table: its local system),
    listed as the site's hospice code, excludes over the stay; its other services do not."""
    text = hl7v2.er7(hl7v2.msh("ADT^A03^ADT_A03", facility="RIVERSIDE"), "EVN|A03|20250309110000-0500", hl7v2.PID,
                     pv1(admit="20250301080000-0500", discharge="20250309110000-0500", service=service))
    stay = hl7v2.one(hl7v2.mapped(text), "Encounter")
    found = exclusion_of(stay, SITE_CODES)
    assert ((found.when, found.ends) if found else None) == ((D("2025-03-01"), D("2025-03-09")) if excluded else None)
    assert exclusion_of(stay) is None  # not without the site's codes
