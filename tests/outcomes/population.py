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

Denominator exclusions (services/outcomes/exclusions.py), on five of them:

| patient | recorded | DRR-E | CMS159 |
|---|---|---|---|
| remit-early-00, -01 | Condition bipolar disorder (F31.81), onset day 10 | excluded | excluded |
| remit-early-02 | Condition F31.9, no date (a history of it) | excluded | excluded |
| remit-both-00 | Condition schizophrenia (F20.9), refuted | nothing | nothing |
| remit-late-00 | Patient.deceasedDateTime day 380 (after its last score) | not (window ended day 240) | excluded |

Hand count: initial population = denominator = 40 for both; DRR-E exclusions 3, numerator 22 - 3 = 19; CMS159
exclusions 4 (the 3 remit-early are excluded but were not in its numerator), numerator 11 - 1 = 10.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

PERIOD = (date(2025, 1, 1), date(2025, 6, 30))
AS_OF = date(2027, 1, 1)
EXPECTED = {"drr-e": {"initial-population": 40, "denominator": 40, "denominator-exclusion": 3, "numerator": 19},
            "cms159": {"initial-population": 40, "denominator": 40, "denominator-exclusion": 4, "numerator": 10}}
# (patient key, what is recorded, days after the index or None for no date)
EXCLUSIONS: list[tuple[str, str, int | None]] = [
    ("remit-early-00", "F31.81", 10),
    ("remit-early-01", "F31.81", 10),
    ("remit-early-02", "F31.9", None),
    ("remit-both-00", "F20.9 refuted", 5),
    ("remit-late-00", "died", 380),
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


def exclusion_resources(key: str, index: date, patient_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """What the record holds for ``key`` besides its scores: fields to add to its Patient, and Conditions."""
    patient: dict[str, Any] = {}
    conditions: list[dict[str, Any]] = []
    for n, (name, recorded, days) in enumerate(EXCLUSIONS):
        if not key.endswith(name):
            continue
        if recorded == "died":
            assert days is not None
            patient["deceasedDateTime"] = (index + timedelta(days=days)).isoformat()
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
            "subject": {"reference": f"Patient/{patient_id}"}}
        if days is not None:
            condition["onsetDateTime"] = (index + timedelta(days=days)).isoformat()
        conditions.append(condition)
    return patient, conditions
