"""Denominator exclusions (services/outcomes/exclusions.py), table-driven on constructed resources."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from services.outcomes.exclusions import Exclusion, excluding, exclusion_of

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
