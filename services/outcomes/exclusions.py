"""Denominator exclusions of the depression measures (pure): which recorded facts take a person out of a measure's
denominator, and from when.

Source: CMS159v14 (Depression Remission at Twelve Months) denominator exclusions, which the DRR-E-style measure
shares here. A person is excluded from an episode's report when, on or before the end of the measure's window
(``until``), the record holds any of:

| reason | recorded as | codes |
|---|---|---|
| ``bipolar-disorder`` | Condition | ICD-10-CM F30.*, F31.*; SNOMED CT 13746004 |
| ``personality-disorder-emotionally-labile`` | Condition | ICD-10-CM F60.3; SNOMED CT 20010003 (borderline) |
| ``schizophrenia-or-psychotic-disorder`` | Condition | ICD-10-CM F20.* - F29; SNOMED CT 58214004, 69322001 |
| ``pervasive-developmental-disorder`` | Condition | ICD-10-CM F84.*; SNOMED CT 35919005 |
| ``palliative-or-hospice-care`` | Condition | ICD-10-CM Z51.5 (encounter for palliative care) |
| ``death`` | Patient | ``deceasedBoolean`` true or ``deceasedDateTime`` |

A Condition counts from its onset (``onsetDateTime`` / ``onsetPeriod.start``, else ``recordedDate``); one with no
date counts whatever the window (a history of bipolar disorder is an exclusion however old). A Condition whose
``verificationStatus`` is ``refuted`` or ``entered-in-error`` counts for nothing. ICD-10 codes are matched without
their dot (``F31.9`` and ``F319`` alike). Not read (yet): hospice or palliative care recorded only as an
Encounter, Procedure or ServiceRequest, and the measures' age and diagnosis criteria for the denominator.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import Any, Final, Literal

from services.common.fhir.codesystems import ICD10, ICD10CM, SNOMED

ExclusionReason = Literal[
    "bipolar-disorder",
    "personality-disorder-emotionally-labile",
    "schizophrenia-or-psychotic-disorder",
    "pervasive-developmental-disorder",
    "palliative-or-hospice-care",
    "death",
]

ICD10_SYSTEMS: Final = frozenset({ICD10CM, ICD10})

# ICD-10 code prefixes (no dot) -> reason; the longest matching prefix decides
_ICD10_PREFIXES: Final[dict[str, ExclusionReason]] = {
    "F30": "bipolar-disorder",
    "F31": "bipolar-disorder",
    "F603": "personality-disorder-emotionally-labile",
    **{f"F2{n}": "schizophrenia-or-psychotic-disorder" for n in range(10)},
    "F84": "pervasive-developmental-disorder",
    "Z515": "palliative-or-hospice-care",
}
_SNOMED_CODES: Final[dict[str, ExclusionReason]] = {
    "13746004": "bipolar-disorder",
    "20010003": "personality-disorder-emotionally-labile",
    "58214004": "schizophrenia-or-psychotic-disorder",
    "69322001": "schizophrenia-or-psychotic-disorder",
    "35919005": "pervasive-developmental-disorder",
}
_NOT_COUNTED: Final = frozenset({"refuted", "entered-in-error"})


@dataclass(frozen=True, order=True)
class Exclusion:
    when: date | None  # from when it counts; None: undated, counts for every window
    reason: ExclusionReason
    reference: str  # "Condition/<id>" or "Patient/<id>"


def _date(value: Any) -> date | None:
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        return None


def reason_of_coding(system: str, code: str) -> ExclusionReason | None:
    if system in ICD10_SYSTEMS:
        plain = code.replace(".", "").upper()
        for length in range(len(plain), 2, -1):
            reason = _ICD10_PREFIXES.get(plain[:length])
            if reason is not None:
                return reason
        return None
    if system == SNOMED:
        return _SNOMED_CODES.get(code)
    return None


def exclusion_of(resource: dict[str, Any]) -> Exclusion | None:
    """The exclusion one stored Condition or Patient states, or None."""
    rtype = resource.get("resourceType")
    reference = f"{rtype}/{resource.get('id')}"
    if rtype == "Patient":
        if resource.get("deceasedBoolean") is True:
            return Exclusion(None, "death", reference)
        if "deceasedDateTime" in resource:
            return Exclusion(_date(resource.get("deceasedDateTime")), "death", reference)
        return None
    if rtype != "Condition":
        return None
    verification = {c.get("code") for c in (resource.get("verificationStatus") or {}).get("coding", ())}
    if verification & _NOT_COUNTED:
        return None
    reason = next((r for c in (resource.get("code") or {}).get("coding", ())
                   if (r := reason_of_coding(str(c.get("system", "")), str(c.get("code", "")))) is not None), None)
    if reason is None:
        return None
    when = (_date(resource.get("onsetDateTime")) or _date((resource.get("onsetPeriod") or {}).get("start"))
            or _date(resource.get("recordedDate")))
    return Exclusion(when, reason, reference)


def excluding(exclusions: Iterable[Exclusion], until: date) -> Exclusion | None:
    """The first exclusion in force on or before ``until`` (undated ones first), or None."""
    found = [e for e in exclusions if e.when is None or e.when <= until]
    return min(found, key=lambda e: (e.when is not None, e.when or until, e.reason, e.reference), default=None)
