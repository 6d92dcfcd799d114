"""What the record indexes about each resource version (pure): its patient, clinical time, search tokens,
search strings and the clearance its security labels need.

The search parameters served are declared here once (:data:`SEARCH_PARAMETERS`); the CapabilityStatement,
the query parser and the indexer all read this table, so what is advertised is what is indexed.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from services.common.fhir.codesystems import AUDIT_EVENT_OUTCOME, MEDICATION_REQUEST_STATUS, TASK_STATUS
from services.record.access import restriction_of
from services.record.fhirdates import date_range, period_range

ParamKind = Literal["token", "string", "date", "reference"]


@dataclass(frozen=True)
class SearchParam:
    name: str
    kind: ParamKind
    definition: str
    documentation: str


def _p(name: str, kind: ParamKind, definition: str, doc: str) -> SearchParam:
    return SearchParam(name, kind, f"http://hl7.org/fhir/SearchParameter/{definition}", doc)


_PATIENT_DOC = "The patient; follows identity links (every linked source record of the same person)."

# Per resource type: its search parameters. ``date`` kinds map onto the one indexed date range of the type.
SEARCH_PARAMETERS: dict[str, tuple[SearchParam, ...]] = {
    "Patient": (
        _p("identifier", "token", "Patient-identifier", "A patient identifier (system|value)."),
        _p("name", "string", "individual-name", "Any part of a name: starts-with, :exact, :contains."),
        _p("birthdate", "date", "individual-birthdate", "The patient's date of birth."),
    ),
    "Observation": (
        _p("patient", "reference", "clinical-patient", _PATIENT_DOC),
        _p("code", "token", "clinical-code", "The code of the observation (system|code)."),
        _p("date", "date", "clinical-date", "Obtained date/time (effective[x])."),
        _p("category", "token", "Observation-category", "The classification of the observation."),
    ),
    "Condition": (_p("patient", "reference", "clinical-patient", _PATIENT_DOC),),
    "MedicationRequest": (
        _p("patient", "reference", "clinical-patient", _PATIENT_DOC),
        _p("status", "token", "medications-status", "Status of the prescription."),
    ),
    "Encounter": (
        _p("patient", "reference", "clinical-patient", _PATIENT_DOC),
        _p("date", "date", "clinical-date", "A date within the period the Encounter lasted."),
    ),
    "DocumentReference": (_p("patient", "reference", "clinical-patient", _PATIENT_DOC),),
    "QuestionnaireResponse": (_p("patient", "reference", "QuestionnaireResponse-patient", _PATIENT_DOC),),
    "ServiceRequest": (_p("patient", "reference", "clinical-patient", _PATIENT_DOC),),
    "Appointment": (_p("patient", "reference", "Appointment-patient", _PATIENT_DOC),),
    "CarePlan": (_p("patient", "reference", "clinical-patient", _PATIENT_DOC),),
    "Flag": (_p("patient", "reference", "clinical-patient", _PATIENT_DOC),),
    "Consent": (_p("patient", "reference", "clinical-patient", _PATIENT_DOC),),
    "AuditEvent": (  # privacy officer only (an AuditEvent scope; "*" does not cover it)
        _p("patient", "reference", "AuditEvent-patient", _PATIENT_DOC),
        _p("date", "date", "AuditEvent-date", "When the event was recorded."),
        _p("outcome", "token", "AuditEvent-outcome", "0 success; 4 refused by the disclosure policy."),
        _p("type", "token", "AuditEvent-type", "rest (API access) or DICOM 110106 (a pushed disclosure)."),
    ),
    # outcomes and safety work (services/outcomes): derived resources the outcomes service publishes
    "Task": (
        _p("patient", "reference", "Task-patient", _PATIENT_DOC),
        _p("status", "token", "Task-status", "Status of the task (requested, accepted, completed, ...)."),
    ),
    "MeasureReport": (_p("patient", "reference", "MeasureReport-patient", _PATIENT_DOC),),
}

COMMON_PARAMETERS: tuple[SearchParam, ...] = (
    _p("_id", "token", "Resource-id", "Logical id of the resource."),
    _p("_lastUpdated", "date", "Resource-lastUpdated", "When the resource version changed in this server."),
)


# Where a resource names its patient (FHIR R4 patient compartment, the paths carebus resources use).
PATIENT_PATHS: dict[str, tuple[str, ...]] = {
    "Appointment": ("participant.actor",),
    "AllergyIntolerance": ("patient",),
    "Consent": ("patient",),
    "Coverage": ("beneficiary",),
    "EpisodeOfCare": ("patient",),
    "Immunization": ("patient",),
    "RelatedPerson": ("patient",),
    "Provenance": ("target",),
    "AuditEvent": ("entity.what",),
    "Task": ("for",),
}
_DEFAULT_PATIENT_PATHS = ("subject", "patient")
_SPLIT_PATHS = {rtype: tuple(tuple(p.split(".")) for p in paths) for rtype, paths in PATIENT_PATHS.items()}
_SPLIT_DEFAULT = tuple(tuple(p.split(".")) for p in _DEFAULT_PATIENT_PATHS)


@dataclass(frozen=True, slots=True)
class ResourceIndex:
    """Everything search needs about one version of one resource."""

    patient_ref: str | None  # "Patient/<id>"; a Patient is its own
    date_start: int | None  # the type's date search range (birthdate for Patient)
    date_end: int | None
    clinical_time: int | None  # ordering of $everything / _sort=date; None for Patient (listed first)
    tokens: tuple[tuple[str, str, str], ...]  # (param, system or "", code)
    strings: tuple[tuple[str, str], ...]  # (param, normalized value)
    security: tuple[str, ...]
    restriction: int


def items_of(value: Any) -> list[Any]:
    """A repeating element's items: a list as is, anything else (absent, or malformed) as none."""
    return value if isinstance(value, list) else []


def normalize_text(value: str) -> str:
    """Case- and accent-insensitive form used by string search."""
    decomposed = unicodedata.normalize("NFKD", value)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(stripped.casefold().split())


def patient_id_of(reference: object) -> str | None:
    """The Patient id a reference points at (``Patient/x``, ``.../Patient/x``, ``Patient/x/_history/2``)."""
    if not isinstance(reference, str) or not reference:
        return None
    parts = reference.split("/")
    for i in range(len(parts) - 1):
        if parts[i] == "Patient" and parts[i + 1]:
            return parts[i + 1]
    return None


def _walk(value: Any, path: list[str]) -> Iterator[Any]:
    if not path:
        yield value
        return
    if isinstance(value, list):
        for item in value:
            yield from _walk(item, path)
        return
    if isinstance(value, dict) and path[0] in value:
        yield from _walk(value[path[0]], path[1:])


def patient_reference(resource: dict[str, Any]) -> str | None:
    rtype = resource.get("resourceType")
    if rtype == "Patient":
        rid = resource.get("id")
        return f"Patient/{rid}" if isinstance(rid, str) else None
    for path in _SPLIT_PATHS.get(str(rtype), _SPLIT_DEFAULT):
        if len(path) == 1:  # the common case: subject / patient, no walking
            found = resource.get(path[0])
            candidates = found if isinstance(found, list) else [found]
        else:
            candidates = list(_walk(resource, list(path)))
        for ref in candidates:
            if isinstance(ref, dict):
                reference = ref.get("reference")
                pid = patient_id_of(reference) if isinstance(reference, str) else None
                if pid:
                    return f"Patient/{pid}"
    return None


def _codings(concept: Any) -> Iterator[tuple[str, str]]:
    concepts = concept if isinstance(concept, list) else [concept]
    for c in concepts:
        if isinstance(c, dict):
            for coding in items_of(c.get("coding")):
                if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                    system = coding.get("system")
                    yield (system if isinstance(system, str) else ""), coding["code"]


def _range_of_choice(resource: dict[str, Any], stem: str) -> tuple[int, int] | None:
    for suffix in ("DateTime", "Instant", "Date"):
        value = resource.get(stem + suffix)
        if isinstance(value, str):
            return date_range(value)
    period = resource.get(stem + "Period")
    if isinstance(period, dict):
        return period_range(period)
    return None


def _str_range(value: Any) -> tuple[int, int] | None:
    return date_range(value) if isinstance(value, str) else None


def _period(value: Any) -> tuple[int, int] | None:
    return period_range(value) if isinstance(value, dict) else None


def clinical_range(resource: dict[str, Any]) -> tuple[int, int] | None:
    """The clinically relevant time of a resource (what $everything orders by), per type."""
    rtype = resource.get("resourceType")
    r = resource
    match rtype:
        case "Observation" | "DiagnosticReport":
            return _range_of_choice(r, "effective") or _str_range(r.get("issued"))
        case "Encounter" | "EpisodeOfCare" | "CarePlan" | "Flag" | "CareTeam":
            return _period(r.get("period"))
        case "Condition":
            return _range_of_choice(r, "onset") or _str_range(r.get("recordedDate"))
        case "MedicationRequest":
            return _str_range(r.get("authoredOn"))
        case "QuestionnaireResponse":
            return _str_range(r.get("authored"))
        case "ServiceRequest":
            return _range_of_choice(r, "occurrence") or _str_range(r.get("authoredOn"))
        case "Procedure":
            return _range_of_choice(r, "performed")
        case "Immunization":
            return _range_of_choice(r, "occurrence")
        case "Appointment":
            start, end = r.get("start"), r.get("end")
            if isinstance(start, str):
                return date_range(start)[0], date_range(end)[1] if isinstance(end, str) else date_range(start)[1]
            return None
        case "DocumentReference":
            context = r.get("context")
            if isinstance(context, dict) and isinstance(context.get("period"), dict):
                found = period_range(context["period"])
                if found:
                    return found
            return _str_range(r.get("date"))
        case "AllergyIntolerance":
            return _str_range(r.get("recordedDate"))
        case "Consent":
            return _str_range(r.get("dateTime"))
        case "Provenance" | "AuditEvent":
            return _str_range(r.get("recorded"))
        case "Task":
            return _str_range(r.get("authoredOn"))
        case "MeasureReport":
            return _period(r.get("period"))
        case _:
            return None


def security_codes(resource: dict[str, Any]) -> tuple[str, ...]:
    meta = resource.get("meta")
    if not isinstance(meta, dict):
        return ()
    security = items_of(meta.get("security"))
    codes = [c["code"] for c in security if isinstance(c, dict) and isinstance(c.get("code"), str)]
    return tuple(codes)


def _name_strings(resource: dict[str, Any]) -> Iterator[tuple[str, str]]:
    seen: set[str] = set()
    for name in items_of(resource.get("name")):
        if not isinstance(name, dict):
            continue
        parts: list[str] = []
        for key in ("family", "text"):
            if isinstance(name.get(key), str):
                parts.append(name[key])
        for key in ("given", "prefix", "suffix"):
            parts.extend(p for p in items_of(name.get(key)) if isinstance(p, str))
        for part in parts:
            norm = normalize_text(part)
            if norm and norm not in seen:
                seen.add(norm)
                yield "name", norm
            exact = part.strip()
            if exact and "=" + exact not in seen:
                seen.add("=" + exact)
                yield "name:exact", exact


def _tokens(resource: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    rtype = resource.get("resourceType")
    if rtype == "Patient":
        for ident in items_of(resource.get("identifier")):
            if isinstance(ident, dict) and isinstance(ident.get("value"), str):
                system = ident.get("system")
                yield "identifier", system if isinstance(system, str) else "", ident["value"]
    elif rtype == "Observation":
        for system, code in _codings(resource.get("code")):
            yield "code", system, code
        for system, code in _codings(resource.get("category")):
            yield "category", system, code
    elif rtype == "AuditEvent":
        if isinstance(resource.get("outcome"), str):
            yield "outcome", AUDIT_EVENT_OUTCOME, resource["outcome"]
        kind = resource.get("type")
        if isinstance(kind, dict) and isinstance(kind.get("code"), str):
            yield "type", str(kind.get("system") or ""), kind["code"]
    elif rtype == "MedicationRequest" and isinstance(resource.get("status"), str):
        yield "status", MEDICATION_REQUEST_STATUS, resource["status"]
    elif rtype == "Task" and isinstance(resource.get("status"), str):
        yield "status", TASK_STATUS, resource["status"]


def index_resource(resource: dict[str, Any]) -> ResourceIndex:
    """Index one resource (raises ValueError on a malformed date, which makes the bundle a bad one)."""
    rtype = resource.get("resourceType")
    clinical = clinical_range(resource)
    if rtype == "Patient":
        birth = resource.get("birthDate")
        date = date_range(birth) if isinstance(birth, str) else None
        clinical_time = None
    else:
        date = clinical
        clinical_time = clinical[0] if clinical else None
        if clinical_time is not None and clinical_time <= -(2**61):
            clinical_time = clinical[1] if clinical else None
    codes = security_codes(resource)
    return ResourceIndex(
        patient_ref=patient_reference(resource),
        date_start=date[0] if date else None,
        date_end=date[1] if date else None,
        clinical_time=clinical_time,
        tokens=tuple(dict.fromkeys(_tokens(resource))),
        strings=tuple(_name_strings(resource)) if rtype == "Patient" else (),
        security=codes,
        restriction=restriction_of(codes),
    )
