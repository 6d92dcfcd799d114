"""Which US Core 6.1.0 profile an HL7 v2-mapped resource meets, and its claim in ``meta.profile``. Pure.

A resource claims a profile only when it has what the profile requires (checked here, element by element; the
HL7 reference validator in tests/validation checks every claim against the profile itself):

  Patient             us-core-patient: an identifier, every one with system and value (a CX-4 assigning
                      authority that names no OID/URI gets a system only from CAREBUS_HL7_ASSIGNING_AUTHORITIES);
                      a name, each with a family or given name; gender; every telecom with system and value;
                      every address state a USPS code
  Encounter           us-core-encounter: a type (PV1-4), a subject, every identifier with system and value
  Condition           us-core-condition-encounter-diagnosis: category encounter-diagnosis, a code, a subject
  Observation         us-core-observation-lab: category laboratory (from a lab OBR-24), a code, a subject, a
                      value, a data-absent reason or members, an effective date(time) of a day, UCUM quantities;
                      us-core-observation-screening-assessment: category survey (scored instruments)
  DiagnosticReport    us-core-diagnosticreport-lab: category LAB, a subject, effective and issued once final
  Immunization        us-core-immunization: status, vaccine code, patient, occurrence
  AllergyIntolerance  us-core-allergyintolerance: a code, a patient
No claim for MessageHeader, RelatedPerson, Appointment, DocumentReference (TXA types are not US Core's note
types), MedicationRequest (RXE-2 is rarely RxNorm) and the instrument QuestionnaireResponse. Provenance
claims us-core-provenance where it is made (header.py).
"""

from __future__ import annotations

from typing import Any

from services.common.fhir.codesystems import CONDITION_CATEGORY, OBSERVATION_CATEGORY, UCUM, V2_0074

US_CORE = "http://hl7.org/fhir/us/core/StructureDefinition/"
# USPS state codes (US Core binds Address.state to them): a patient with another state (e.g. a Canadian
# province) does not claim us-core-patient
USPS_STATES = frozenset(
    "AL AK AZ AR CA CO CT DE DC FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ NM NY NC ND OH OK "
    "OR PA RI SC SD TN TX UT VT VA WA WV WI WY AS GU MP PR VI UM FM MH PW AA AE AP".split())
_REPORTED = {"partial", "preliminary", "final", "amended", "corrected", "appended"}

Json = dict[str, Any]


def _has_coding(concepts: Any, system: str, code: str) -> bool:
    if not isinstance(concepts, list):
        return False
    return any(c.get("system") == system and c.get("code") == code
               for concept in concepts for c in concept.get("coding", []))


def _identified(resource: Json, required: bool) -> bool:
    identifiers = resource.get("identifier", [])
    if required and not identifiers:
        return False
    return all(i.get("system") and i.get("value") for i in identifiers)


def _patient(patient: Json) -> bool:
    names = patient.get("name", [])
    return (_identified(patient, True) and bool(names) and all(n.get("family") or n.get("given") for n in names)
            and bool(patient.get("gender"))
            and all(t.get("system") and t.get("value") for t in patient.get("telecom", []))
            and all(a.get("state", "AL") in USPS_STATES for a in patient.get("address", [])))


def _observation_lab(obs: Json) -> bool:
    if not _has_coding(obs.get("category"), OBSERVATION_CATEGORY, "laboratory"):
        return False
    if "subject" not in obs or "code" not in obs:
        return False
    has_value = any(key.startswith("value") for key in obs) or "dataAbsentReason" in obs
    if not (has_value or obs.get("component") or obs.get("hasMember")):
        return False
    effective = obs.get("effectiveDateTime")
    if effective is not None and len(effective) < 10:
        return False
    quantity = obs.get("valueQuantity")
    return not (quantity is not None and quantity.get("system") not in (None, UCUM))


def _report_lab(report: Json) -> bool:
    if not _has_coding(report.get("category"), V2_0074, "LAB") or "subject" not in report:
        return False
    return report.get("status") not in _REPORTED or ("effectiveDateTime" in report and "issued" in report)


def profile_met(resource: Json) -> str | None:
    """The US Core profile (its id) that ``resource`` meets, or None."""
    kind = resource["resourceType"]
    if kind == "Patient":
        return "us-core-patient" if _patient(resource) else None
    if kind == "Encounter":
        met = bool(resource.get("type")) and "subject" in resource and _identified(resource, False)
        return "us-core-encounter" if met else None
    if kind == "Condition":
        met = (_has_coding(resource.get("category"), CONDITION_CATEGORY, "encounter-diagnosis")
               and "code" in resource and "subject" in resource)
        return "us-core-condition-encounter-diagnosis" if met else None
    if kind == "Observation":
        if _has_coding(resource.get("category"), OBSERVATION_CATEGORY, "survey"):
            return "us-core-observation-screening-assessment" if "subject" in resource else None
        return "us-core-observation-lab" if _observation_lab(resource) else None
    if kind == "DiagnosticReport":
        return "us-core-diagnosticreport-lab" if _report_lab(resource) else None
    if kind == "Immunization":
        met = all(key in resource for key in ("status", "vaccineCode", "patient")) and any(
            key.startswith("occurrence") for key in resource)
        return "us-core-immunization" if met else None
    if kind == "AllergyIntolerance":
        return "us-core-allergyintolerance" if "code" in resource and "patient" in resource else None
    return None


def claim_profile(resource: Json) -> None:
    """Add the US Core profile ``resource`` meets (if any) to its ``meta.profile``."""
    name = profile_met(resource)
    if name is None:
        return
    url = US_CORE + name
    meta: Json = resource.setdefault("meta", {})
    profiles: list[str] = meta.setdefault("profile", [])
    if url not in profiles:
        profiles.append(url)
