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
  Observation         (outside a lab section: ADT, SIU, VXU, RDE OBX) a US Core vital sign — heart rate,
                      respiratory rate, body temperature, height, weight, BMI, pulse oximetry — by its LOINC code:
                      category vital-signs (results.map_standalone), the value's unit given its UCUM code when it is
                      one the profile takes (VITAL_SIGNS), claimed when it has a subject, a day-precise effective
                      time and a UCUM valueQuantity (or a data-absent reason)
  MedicationRequest   us-core-medicationrequest: status, an order intent with a requester (us-core-21: ORC-12,
                      RXE-13 or RXO-14), a medication, a subject (the medication binding is extensible: an NDC
                      or local code is allowed)
  DocumentReference   us-core-documentreference: a LOINC document type or NullFlavor UNK (the required
                      binding: TXA-2 mapped to LOINC, a LOINC code sent, else UNK), category clinical-note,
                      a subject, every attachment with data or a URL (us-core-6) and a content type
  QuestionnaireResponse  us-core-questionnaireresponse (on SDC's): questionnaire, status, subject, authored,
                      every item with a linkId (the scored instruments' responses, as the JSON path's)
No claim for MessageHeader, RelatedPerson and Appointment (US Core has no profile of them). Provenance claims
us-core-provenance where it is made (header.py).
"""

from __future__ import annotations

from typing import Any

from services.common.fhir.codesystems import (
    CONDITION_CATEGORY,
    LOINC,
    OBSERVATION_CATEGORY,
    UCUM,
    US_CORE_DOCUMENTREFERENCE_CATEGORY,
    V2_0074,
    V3_NULL_FLAVOR,
)

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


# LOINC code -> (US Core profile, {unit as senders write it (upper case) -> UCUM code the profile takes})
_PER_MINUTE = {"/MIN": "/min", "BEATS/MIN": "/min", "BPM": "/min", "BREATHS/MIN": "/min", "{BEATS}/MIN": "/min",
               "{BREATHS}/MIN": "/min", "PER MIN": "/min"}
VITAL_SIGNS: dict[str, tuple[str, dict[str, str]]] = {
    "8867-4": ("us-core-heart-rate", _PER_MINUTE),
    "9279-1": ("us-core-respiratory-rate", _PER_MINUTE),
    "8310-5": ("us-core-body-temperature", {"CEL": "Cel", "DEGC": "Cel", "C": "Cel", "[DEGF]": "[degF]",
                                            "DEGF": "[degF]", "F": "[degF]"}),
    "8302-2": ("us-core-body-height", {"CM": "cm", "[IN_I]": "[in_i]", "IN": "[in_i]"}),
    "29463-7": ("us-core-body-weight", {"KG": "kg", "G": "g", "[LB_AV]": "[lb_av]", "LB": "[lb_av]",
                                        "LBS": "[lb_av]"}),
    "39156-5": ("us-core-bmi", {"KG/M2": "kg/m2", "KG/M^2": "kg/m2"}),
    "59408-5": ("us-core-pulse-oximetry", {"%": "%"}),
    "2708-6": ("us-core-pulse-oximetry", {"%": "%"}),
}


def vital_sign(obs: Json) -> str | None:
    """The LOINC code of a US Core vital sign this Observation is (by its code), or None."""
    return next((c["code"] for c in obs.get("code", {}).get("coding", [])
                 if c.get("system") == LOINC and c.get("code") in VITAL_SIGNS), None)


def vital_ucum(loinc: str, unit: str) -> str | None:
    """The UCUM code the vital sign's profile takes for a unit as the sender wrote it, or None."""
    return VITAL_SIGNS[loinc][1].get(unit.strip().upper())


def _vital_sign_profile(obs: Json) -> str | None:
    loinc = vital_sign(obs)
    if loinc is None or not _has_coding(obs.get("category"), OBSERVATION_CATEGORY, "vital-signs"):
        return None
    effective = obs.get("effectiveDateTime")
    if "subject" not in obs or effective is None or len(effective) < 10:
        return None
    quantity = obs.get("valueQuantity")
    allowed = set(VITAL_SIGNS[loinc][1].values())
    if quantity is not None:
        met = quantity.get("system") == UCUM and quantity.get("code") in allowed and "value" in quantity
        return VITAL_SIGNS[loinc][0] if met else None
    if "dataAbsentReason" in obs and not any(key.startswith("value") for key in obs) and not obs.get("component"):
        return VITAL_SIGNS[loinc][0]
    return None


_ORDER_INTENTS = {"order", "original-order", "reflex-order", "filler-order", "instance-order"}


def _medication_request(request: Json) -> bool:
    return (bool(request.get("status")) and request.get("intent") in _ORDER_INTENTS and "subject" in request
            and "requester" in request  # us-core-21: an order names who ordered it
            and ("medicationCodeableConcept" in request or "medicationReference" in request))


def _document(document: Json) -> bool:
    loinc_type = any((c.get("system"), c.get("code")) in {(LOINC, c.get("code")), (V3_NULL_FLAVOR, "UNK")}
                     and c.get("code") for c in document.get("type", {}).get("coding", []))
    attachments = [content.get("attachment", {}) for content in document.get("content", [])]
    return (loinc_type and _has_coding(document.get("category"), US_CORE_DOCUMENTREFERENCE_CATEGORY, "clinical-note")
            and "subject" in document and bool(attachments)
            and all((a.get("data") or a.get("url")) and a.get("contentType") for a in attachments))


def _questionnaire_response(response: Json) -> bool:
    return (all(response.get(key) for key in ("questionnaire", "status", "subject", "authored"))
            and all(item.get("linkId") for item in response.get("item", [])))


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
        if _has_coding(resource.get("category"), OBSERVATION_CATEGORY, "vital-signs"):
            return _vital_sign_profile(resource)
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
    if kind == "MedicationRequest":
        return "us-core-medicationrequest" if _medication_request(resource) else None
    if kind == "DocumentReference":
        return "us-core-documentreference" if _document(resource) else None
    if kind == "QuestionnaireResponse":
        return "us-core-questionnaireresponse" if _questionnaire_response(resource) else None
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
