"""50 constructed patients for the measure tests, in groups whose measure results are known by hand.

Measurement period 2025-01-01 .. 2025-06-30; evaluated on 2027-01-01 (every window closed).

| group | n | history (days after the index) | DRR-E style | CMS159 style |
|---|---|---|---|---|
| remit-early | 10 | index 18, day 180: 3 | num | - (no score at 12 months) |
| respond | 8 | index 20, day 200: 9 | num | - |
| remit-late | 7 | index 16, day 375: 2 | - | num |
| no-response | 6 | index 15, day 180: 15 | - | - |
| no-follow-up | 5 | index 22 | - | - |
| before-period | 5 | index 2024-11-01 (before the period), day 180: 2 | not counted | not counted |
| never-elevated | 5 | 8, then day 180: 3 | not counted | not counted |
| remit-both | 4 | index 12, day 150: 4, day 360: 1 | num | num |

Denominator exclusions (services/outcomes/exclusions.py), on some of them (days after the index):

| patient | recorded | DRR-E | CMS159 |
|---|---|---|---|
| remit-early-00, -01 | Condition bipolar disorder (F31.81), onset day 10 | excluded | excluded |
| remit-early-02 | Condition F31.9, no date (a history of it) | excluded | excluded |
| remit-both-00 | Condition schizophrenia (F20.9), refuted | nothing | nothing |
| remit-late-00 | Patient.deceasedDateTime day 380 (after its last score) | not (window ended day 240) | excluded |
| respond-00 | Encounter discharged to hospice (``hosp``) day 100 | excluded | excluded |
| remit-late-01 | Procedure hospice care (SNOMED 385763009) day 300 | not (after day 240) | excluded |
| remit-both-01 | ServiceRequest palliative care (103735009), an active order, day 30 | excluded | excluded |
| remit-both-02 | ServiceRequest hospice care with intent ``plan`` | nothing | nothing |
| remit-late-02 | Encounter admission to hospice (305336008) days -400 .. -392 (before the period) | nothing | nothing |
| remit-late-03 | Encounter consultation for palliative care (713281006) days 200 .. 201 | excluded | excluded |
| no-response-00 | Encounter discharged to hospice, entered-in-error | nothing | nothing |
| remit-early-04 | Observation hospice care [MDS] (45755-6) = Yes, day 50 | excluded | excluded |
| remit-early-05 | Observation hospice care [MDS] = No, day 50 | nothing | nothing |

Hand count: initial population = denominator = 40 for both. DRR-E numerator before exclusions 22; exclusions 7
(remit-early-00, -01, -02, -04, respond-00, remit-both-01 from it; remit-late-03 was not in it): numerator 16.
CMS159 numerator before exclusions 11; exclusions 9 (remit-early-00, -01, -02, -04, respond-00 were not in it;
remit-late-00, -01, -03 and remit-both-01 were): numerator 7.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

PERIOD = (date(2025, 1, 1), date(2025, 6, 30))
AS_OF = date(2027, 1, 1)
EXPECTED = {"drr-e": {"initial-population": 40, "denominator": 40, "denominator-exclusion": 7, "numerator": 16},
            "cms159": {"initial-population": 40, "denominator": 40, "denominator-exclusion": 9, "numerator": 7}}
# (patient key, what is recorded, days after the index or None for no date)
EXCLUSIONS: list[tuple[str, str, int | None]] = [
    ("remit-early-00", "F31.81", 10),
    ("remit-early-01", "F31.81", 10),
    ("remit-early-02", "F31.9", None),
    ("remit-both-00", "F20.9 refuted", 5),
    ("remit-late-00", "died", 380),
    ("respond-00", "discharged to hospice", 100),
    ("remit-late-01", "hospice procedure", 300),
    ("remit-both-01", "palliative order", 30),
    ("remit-both-02", "hospice plan", 30),
    ("remit-late-02", "hospice encounter", -400),
    ("remit-late-03", "palliative encounter", 200),
    ("no-response-00", "discharged to hospice in error", 100),
    ("remit-early-04", "hospice assessment yes", 50),
    ("remit-early-05", "hospice assessment no", 50),
]

GROUPS: list[tuple[str, int, list[tuple[int, int]], date | None]] = [
    ("remit-early", 10, [(0, 18), (180, 3)], None),
    ("respond", 8, [(0, 20), (200, 9)], None),
    ("remit-late", 7, [(0, 16), (375, 2)], None),
    ("no-response", 6, [(0, 15), (180, 15)], None),
    ("no-follow-up", 5, [(0, 22)], None),
    ("before-period", 5, [(0, 19), (180, 2)], date(2024, 11, 1)),
    ("never-elevated", 5, [(0, 8), (180, 3)], None),
    ("remit-both", 4, [(0, 12), (150, 4), (360, 1)], None),
]


def population() -> list[tuple[str, list[tuple[date, int]]]]:
    """(patient key, [(date, PHQ-9 total)]) for the 50 patients; index dates spread over the period."""
    patients: list[tuple[str, list[tuple[date, int]]]] = []
    n = 0
    for name, count, history, fixed_index in GROUPS:
        for i in range(count):
            index = fixed_index or PERIOD[0] + timedelta(days=(n * 3) % 180)
            patients.append((f"{name}-{i:02d}", [(index + timedelta(days=d), total) for d, total in history]))
            n += 1
    assert len(patients) == 50
    return patients


def measure_score(window: str) -> float:
    expected = EXPECTED[window]
    return round(expected["numerator"] / (expected["denominator"] - expected["denominator-exclusion"]), 4)


def _care(kind: str, rid: str, subject: dict[str, str], day: date) -> dict[str, Any]:
    """A hospice or palliative-care resource of ``kind`` (see EXCLUSIONS) dated ``day``."""
    sct = "http://snomed.info/sct"
    when = f"{day.isoformat()}T10:00:00Z"
    if "encounter" in kind or "discharged" in kind:
        found: dict[str, Any] = {
            "resourceType": "Encounter", "id": rid, "subject": subject,
            "status": "entered-in-error" if "in error" in kind else "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
            "period": {"start": when, "end": f"{(day + timedelta(days=1 if 'palliative' in kind else 8)).isoformat()}"
                                             "T10:00:00Z"}}
        if "discharged" in kind:
            found["period"] = {"start": f"{(day - timedelta(days=5)).isoformat()}T10:00:00Z", "end": when}
            found["hospitalization"] = {"dischargeDisposition": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/discharge-disposition", "code": "hosp"}]}}
        else:
            code = "713281006" if "palliative" in kind else "305336008"
            found["type"] = [{"coding": [{"system": sct, "code": code}]}]
        return found
    if "procedure" in kind:
        return {"resourceType": "Procedure", "id": rid, "status": "completed", "subject": subject,
                "code": {"coding": [{"system": sct, "code": "385763009"}]}, "performedDateTime": when}
    if "order" in kind or "plan" in kind:
        code = "103735009" if "palliative" in kind else "385763009"
        return {"resourceType": "ServiceRequest", "id": rid, "status": "active", "subject": subject,
                "intent": "plan" if "plan" in kind else "order", "authoredOn": when,
                "code": {"coding": [{"system": sct, "code": code}]}}
    assert "assessment" in kind, kind
    return {"resourceType": "Observation", "id": rid, "status": "final", "subject": subject,
            "code": {"coding": [{"system": "http://loinc.org", "code": "45755-6"}]}, "effectiveDateTime": when,
            "valueCodeableConcept": {"coding": [{"system": sct, "code": "373066001" if kind.endswith("yes")
                                                 else "373067005"}]}}


def exclusion_resources(key: str, index: date, patient_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """What the record holds for ``key`` besides its scores: fields to add to its Patient, and other resources
    (Conditions, Encounters, Procedures, ServiceRequests, Observations)."""
    patient: dict[str, Any] = {}
    resources: list[dict[str, Any]] = []
    subject = {"reference": f"Patient/{patient_id}"}
    for n, (name, recorded, days) in enumerate(EXCLUSIONS):
        if not key.endswith(name):
            continue
        if recorded == "died":
            assert days is not None
            patient["deceasedDateTime"] = (index + timedelta(days=days)).isoformat()
            continue
        if not recorded.startswith("F"):
            assert days is not None
            resources.append(_care(recorded, f"{patient_id}-x{n}", subject, index + timedelta(days=days)))
            continue
        code, _, refuted = recorded.partition(" ")
        condition: dict[str, Any] = {
            "resourceType": "Condition", "id": f"{patient_id}-x{n}",
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                           "code": "active"}]},
            "verificationStatus": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                "code": "refuted" if refuted else "confirmed"}]},
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category",
                                      "code": "problem-list-item"}]}],
            "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": code}]},
            "subject": subject}
        if days is not None:
            condition["onsetDateTime"] = (index + timedelta(days=days)).isoformat()
        resources.append(condition)
    return patient, resources
