"""Denominator exclusions of the depression measures (pure): which recorded facts take a person out of a measure's
denominator, and from when.

Source: CMS159v14 (Depression Remission at Twelve Months) denominator exclusions, which the DRR-E-style measure
shares here; the hospice and palliative-care criteria are those of the eCQM Hospice and PalliativeCare libraries
(value sets as of the eCQM update 2025-05-08, codes listed below). A person is excluded from a report when the
record holds any of:

| reason | recorded as | codes |
|---|---|---|
| ``bipolar-disorder`` | Condition | ICD-10-CM F30.*, F31.*; SNOMED CT 13746004 |
| ``personality-disorder-emotionally-labile`` | Condition | ICD-10-CM F60.3; SNOMED CT 20010003 (borderline) |
| ``schizophrenia-or-psychotic-disorder`` | Condition | ICD-10-CM F20.* - F29; SNOMED CT 58214004, 69322001 |
| ``pervasive-developmental-disorder`` | Condition | ICD-10-CM F84.*; SNOMED CT 35919005 |
| ``palliative-or-hospice-care`` | Condition | ICD-10-CM Z51.5 (encounter for palliative care) |
| | Encounter, discharged to hospice | ``hospitalization.dischargeDisposition`` in HOSPICE_DISCHARGE |
| | Encounter for hospice / palliative care | ``type`` or ``serviceType`` in HOSPICE_ENCOUNTER, PALLIATIVE_ENCOUNTER |
| | Procedure done, ServiceRequest ordered | ``code`` in HOSPICE_CARE_AMBULATORY, PALLIATIVE_INTERVENTION |
| | Observation | LOINC 45755-6 (Hospice care, MDS) answered 373066001 Yes; LOINC 71007-9 (FACIT-Pal) |
| | a site's local codes (``outcomes_local_hospice_codes``) | Encounter ``class``, ``type``, ``serviceType`` (over its |
| | | ``period``) or ``dischargeDisposition`` (at discharge); Procedure, ServiceRequest, Condition ``code`` |
| ``death`` | Patient | ``deceasedBoolean`` true or ``deceasedDateTime`` |

When each counts (:func:`excluding`, for a report whose period starts ``since`` and whose measure window ends
``until``):

* a diagnosis or a death counts from its date (Condition ``onsetDateTime`` / ``onsetPeriod.start``, else
  ``recordedDate``) when that is on or before ``until``: a history of bipolar disorder is an exclusion however
  old; one with no date counts whatever the window;
* hospice or palliative care is care received over a time: it counts when that time overlaps the report's period
  (``since`` .. ``until``), as the eCQM libraries ask for care "during the measurement period". An Encounter lasts
  its ``period`` (open: ongoing); a discharge to hospice is dated at the discharge (``period.end``); a Procedure
  its ``performed[x]``; a ServiceRequest is dated ``authoredOn``; an Observation its ``effective[x]``; a Z51.5
  Condition from its onset to its ``abatement[x]`` (none: ongoing). Undated, it cannot be placed in the period and
  does not count (as the eCQM logic has it: an unknown time is not "during").

What counts as having happened: a Condition unless ``verificationStatus`` is ``refuted`` / ``entered-in-error``;
an Encounter unless ``planned``, ``cancelled`` or ``entered-in-error`` (a discharge disposition only once
discharged: ``finished`` or a ``period.end``); a Procedure ``completed`` or ``in-progress``; a ServiceRequest
``active`` or ``completed`` with an order intent (not a plan or proposal); an Observation ``final``, ``amended``
or ``corrected``. ICD-10 codes are matched without their dot (``F31.9`` and ``F319`` alike).

An Encounter ``class`` states nothing by itself: neither v3 ActCode nor HL7 v2 PV1-2 has a hospice class (``HH``
is home health, which is not hospice care). A site whose own codes say hospice (a PV1-10 hospital service, a
local patient class or discharge disposition, a local procedure or problem code) lists them, ``system|code`` as
the record stores them, in ``outcomes_local_hospice_codes`` (:class:`HospiceCodes`); they are read by the same
rules as the value sets' codes, wherever one of those is read, except the assessments (an Observation is read by
its LOINC code only). Not read: the measures' age, diagnosis and nursing-home-residence criteria.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any, Final, Literal

from services.common.fhir.codesystems import (
    CPT,
    DISCHARGE_DISPOSITION,
    HCPCS,
    HCPCS_R4,
    ICD10,
    ICD10CM,
    LOINC,
    NUBC_DISCHARGE,
    SNOMED,
)

ExclusionReason = Literal[
    "bipolar-disorder",
    "personality-disorder-emotionally-labile",
    "schizophrenia-or-psychotic-disorder",
    "pervasive-developmental-disorder",
    "palliative-or-hospice-care",
    "death",
]
CARE_OVER_TIME: Final[frozenset[ExclusionReason]] = frozenset({"palliative-or-hospice-care"})

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

Coding = tuple[str, str]  # (system, code)


def _codes(system: str, *codes: str) -> frozenset[Coding]:
    return frozenset((system, c) for c in codes)


def _hcpcs(*codes: str) -> frozenset[Coding]:
    return _codes(HCPCS, *codes) | _codes(HCPCS_R4, *codes)


# eCQM value sets (expansion 2025-05-08). A discharge to hospice: FHIR discharge-disposition "hosp"; SNOMED CT
# "Discharge to home / to healthcare facility for hospice care" (the Hospice library's two codes); UB-04 patient
# status 50 (hospice - home), 51 (hospice - medical facility)
HOSPICE_DISCHARGE: Final = (_codes(DISCHARGE_DISPOSITION, "hosp") | _codes(SNOMED, "428361000124107", "428371000124100")
                            | _codes(NUBC_DISCHARGE, "50", "51"))
HOSPICE_ENCOUNTER: Final = (  # Hospice Encounter 2.16.840.1.113883.3.464.1003.1003
    _codes(SNOMED, "183919006", "183920000", "183921001", "305336008", "305911006", "385765002")
    | _hcpcs(*(f"G947{n}" for n in range(3, 10)), *(f"Q500{n}" for n in range(3, 9)), "Q5010", "S9126",
             *(f"T204{n}" for n in range(2, 7))))
PALLIATIVE_ENCOUNTER: Final = (  # Palliative Care Encounter 2.16.840.1.113883.3.464.1003.101.12.1090
    _codes(SNOMED, "305284002", "305381007", "305686008", "305824005", "441874000", "4901000124101", "713281006")
    | _hcpcs("G9054"))
HOSPICE_CARE_AMBULATORY: Final = (  # Hospice Care Ambulatory 2.16.840.1.113883.3.526.3.1584
    _codes(SNOMED, "170935008", "170936009", "385763009") | _codes(CPT, "99377", "99378") | _hcpcs("G0182"))
PALLIATIVE_INTERVENTION: Final = _codes(  # Palliative Care Intervention 2.16.840.1.113883.3.464.1003.198.12.1135
    SNOMED, "103735009", "105402000", "1841000124106", "395669003", "395670002", "395694002", "395695001",
    "433181000124107", "443761007")
HOSPICE_ASSESSMENT: Final = "45755-6"  # Hospice care [Minimum Data Set]
HOSPICE_ASSESSMENT_YES: Final = (SNOMED, "373066001")
PALLIATIVE_ASSESSMENT: Final = "71007-9"  # FACIT-Pal
EXCLUSION_OBSERVATION_CODES: Final = (HOSPICE_ASSESSMENT, PALLIATIVE_ASSESSMENT)  # LOINC, for a token search


@dataclass(frozen=True, slots=True)
class HospiceCodes:
    """The codings that state hospice or palliative care: the eCQM value sets above, with a site's local codes
    (``local``, from ``outcomes_local_hospice_codes``) added to each of them."""

    discharge: frozenset[Coding]  # Encounter.hospitalization.dischargeDisposition
    encounter: frozenset[Coding]  # Encounter.type / serviceType (and class: only local codes ever match there)
    intervention: frozenset[Coding]  # Procedure.code, ServiceRequest.code
    local: frozenset[Coding] = frozenset()  # also read in Condition.code

    @classmethod
    def with_local(cls, local: Iterable[Coding] = ()) -> HospiceCodes:
        extra = frozenset(local)
        return cls(HOSPICE_DISCHARGE | extra, HOSPICE_ENCOUNTER | PALLIATIVE_ENCOUNTER | extra,
                   HOSPICE_CARE_AMBULATORY | PALLIATIVE_INTERVENTION | extra, extra)


STANDARD_CODES: Final = HospiceCodes.with_local()

_ENCOUNTER_NOT_HAPPENED: Final = frozenset({"planned", "cancelled", "entered-in-error"})
_PROCEDURE_HAPPENED: Final = frozenset({"completed", "in-progress"})
_ORDER_STATUSES: Final = frozenset({"active", "completed"})
_ORDER_INTENTS: Final = frozenset({"order", "original-order", "reflex-order", "filler-order", "instance-order"})
_OBSERVATION_FINAL: Final = frozenset({"final", "amended", "corrected"})
# the resource types whose versions may state an exclusion (Observations only under EXCLUSION_OBSERVATION_CODES)
EXCLUSIONS_READ: Final = ("Condition", "Patient", "Encounter", "Procedure", "ServiceRequest", "Observation")


@dataclass(frozen=True, order=True, slots=True)
class Exclusion:
    when: date | None  # from when it counts; None: undated, counts for every window
    reason: ExclusionReason
    reference: str  # "Condition/<id>", "Encounter/<id>", ... or "Patient/<id>"
    ends: date | None = None  # care over a time (CARE_OVER_TIME): its last day; None: ongoing (or undated)


def _date(value: Any) -> date | None:
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        return None


def _codings(concept: Any) -> Iterator[Coding]:
    if isinstance(concept, dict):
        for c in concept.get("coding") or ():
            if isinstance(c, dict):
                yield str(c.get("system", "")), str(c.get("code", ""))


def _any_in(concepts: Iterable[Any], codes: frozenset[Coding]) -> bool:
    return any(c in codes for concept in concepts for c in _codings(concept))


def _period(value: Any) -> tuple[date | None, date | None]:
    period = value if isinstance(value, dict) else {}
    return _date(period.get("start")), _date(period.get("end"))


def _choice(resource: dict[str, Any], stem: str) -> tuple[date | None, date | None]:
    """(first, last day) of a ``<stem>DateTime`` (one day) or ``<stem>Period`` (open end: None)."""
    point = _date(resource.get(f"{stem}DateTime"))
    if point is not None:
        return point, point
    return _period(resource.get(f"{stem}Period"))


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


def _care(reference: str, when: date | None, ends: date | None) -> Exclusion:
    return Exclusion(when, "palliative-or-hospice-care", reference, ends)


def _condition(resource: dict[str, Any], reference: str, codes: HospiceCodes) -> Exclusion | None:
    if {code for _, code in _codings(resource.get("verificationStatus"))} & _NOT_COUNTED:
        return None
    reason = next((r for system, code in _codings(resource.get("code"))
                   if (r := reason_of_coding(system, code)) is not None), None)
    if reason is None and _any_in([resource.get("code")], codes.local):
        reason = "palliative-or-hospice-care"
    if reason is None:
        return None
    onset, _ = _choice(resource, "onset")
    when = onset or _date(resource.get("recordedDate"))
    if reason in CARE_OVER_TIME:
        abated = _choice(resource, "abatement")
        return Exclusion(when, reason, reference, abated[1] or abated[0])
    return Exclusion(when, reason, reference)


def _encounter(resource: dict[str, Any], reference: str, codes: HospiceCodes) -> Exclusion | None:
    status = resource.get("status")
    if status in _ENCOUNTER_NOT_HAPPENED:
        return None
    start, end = _period(resource.get("period"))
    finished = status == "finished"
    disposition = (resource.get("hospitalization") or {}).get("dischargeDisposition")
    if (finished or end is not None) and _any_in([disposition], codes.discharge):
        discharged = end or start
        return _care(reference, discharged, discharged)
    kind = resource.get("class")  # a Coding, not a CodeableConcept
    if _any_in([*(resource.get("type") or ()), resource.get("serviceType"),
                {"coding": [kind]} if isinstance(kind, dict) else None], codes.encounter):
        return _care(reference, start, end or (start if finished else None))
    return None


def _procedure(resource: dict[str, Any], reference: str, codes: HospiceCodes) -> Exclusion | None:
    if resource.get("status") not in _PROCEDURE_HAPPENED or not _any_in([resource.get("code")], codes.intervention):
        return None
    start, end = _choice(resource, "performed")
    return _care(reference, start, end or (start if resource.get("status") == "completed" else None))


def _service_request(resource: dict[str, Any], reference: str, codes: HospiceCodes) -> Exclusion | None:
    if (resource.get("status") not in _ORDER_STATUSES or resource.get("intent") not in _ORDER_INTENTS
            or not _any_in([resource.get("code")], codes.intervention)):
        return None
    ordered = _date(resource.get("authoredOn")) or _choice(resource, "occurrence")[0]
    return _care(reference, ordered, ordered)


def _observation(resource: dict[str, Any], reference: str) -> Exclusion | None:
    if resource.get("status") not in _OBSERVATION_FINAL:
        return None
    codes = {code for system, code in _codings(resource.get("code")) if system == LOINC}
    hospice = HOSPICE_ASSESSMENT in codes and HOSPICE_ASSESSMENT_YES in set(
        _codings(resource.get("valueCodeableConcept")))
    if not hospice and PALLIATIVE_ASSESSMENT not in codes:
        return None
    start, end = _choice(resource, "effective")
    return _care(reference, start, end or start)


def exclusion_of(resource: dict[str, Any], codes: HospiceCodes = STANDARD_CODES) -> Exclusion | None:
    """The exclusion one stored resource states (see the module doc), or None; ``codes``: the hospice and
    palliative-care codes read (the value sets' by default; :meth:`HospiceCodes.with_local` adds a site's)."""
    rtype = resource.get("resourceType")
    reference = f"{rtype}/{resource.get('id')}"
    match rtype:
        case "Patient":
            if resource.get("deceasedBoolean") is True:
                return Exclusion(None, "death", reference)
            if "deceasedDateTime" in resource:
                return Exclusion(_date(resource.get("deceasedDateTime")), "death", reference)
            return None
        case "Condition":
            return _condition(resource, reference, codes)
        case "Encounter":
            return _encounter(resource, reference, codes)
        case "Procedure":
            return _procedure(resource, reference, codes)
        case "ServiceRequest":
            return _service_request(resource, reference, codes)
        case "Observation":
            return _observation(resource, reference)
        case _:
            return None


def in_force(exclusion: Exclusion, until: date, since: date | None = None) -> bool:
    """Whether ``exclusion`` takes a person out of a report whose window ends ``until`` (and whose period starts
    ``since``: care over a time must reach into it)."""
    if exclusion.when is None:  # a diagnosis or a death of unknown date counts; care must be placed in the period
        return exclusion.reason not in CARE_OVER_TIME
    if exclusion.when > until:
        return False
    return not (exclusion.reason in CARE_OVER_TIME and since is not None and exclusion.ends is not None
                and exclusion.ends < since)


def excluding(exclusions: Iterable[Exclusion], until: date, since: date | None = None) -> Exclusion | None:
    """The first exclusion in force for a report of ``since`` .. ``until`` (undated ones first), or None."""
    found = [e for e in exclusions if in_force(e, until, since)]
    return min(found, key=lambda e: (e.when is not None, e.when or until, e.reason, e.reference), default=None)
