"""The one builder of a scored instrument's resources, for every path: a JSON ``assessment.completed`` event
(mapping/assessment.py), an HL7 v2 ORU panel (hl7v2/results.py) and a FHIR QuestionnaireResponse (fhir_in.py,
which keeps the sender's response as sent and leaves this builder's out). Pure: the path passes what it knows
in FHIR form (references, the authored time as text), the score (services/common/fhir/instruments.py) and the key
of the response in its source; ids are ``resource_id(<type>, <source>, ...)`` of that key, as on every path.

What it builds, US Core 6.1 pattern:

* QuestionnaireResponse (us-core-questionnaireresponse): what was answered, as the sender reported it;
  questionnaire ``http://loinc.org/q/<panel>``; items with linkId ``/<LOINC item>`` and LOINC answer codings;
  the reported total (if any) as its own item ``/<total code>``, exactly as reported.
* Observations (us-core-observation-screening-assessment, category ``survey``; status final unless the path
  states one per code, e.g. OBX-11), each ``derivedFrom`` the QuestionnaireResponse:
  - one per answered item, valueCodeableConcept = the LOINC answer;
  - the total (e.g. 44261-6) as valueQuantity {value, unit "{score}"} COMPUTED from the items, interpretation =
    severity band; for C-SSRS the risk level (93374-7) as a CodeableConcept (urn:carebus:codesystem:cssrs-risk-level);
  - the panel (e.g. 44249-1) with ``hasMember`` -> the items and the total.
* A reported total that disagrees with the items is never silently overwritten: the total Observation carries a
  note naming both numbers and the QR keeps the reported value (the path records the data-quality codes).
  Incomplete answers: the total has dataAbsentReason ``error``.
* Safety: PHQ-9 item 9 > 0 and C-SSRS high risk add a safety Flag (SNOMED CT 225444004 "At risk for suicide")
  and a SafetyAlert; clinician-raised risk flags (mapping/risk.py) use the same Flag and alert.
Labels: labels.instrument_labels (AUDIT-C R + ETHUD, the others PSY); Flags labels.safety_flag_labels.
``profiles``: the JSON path claims the US Core profiles here; HL7 v2 claims its own after checking them
(hl7v2/us_core.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from services.common.fhir import labels
from services.common.fhir.codesystems import (
    CSSRS_RISK_LEVEL,
    DATA_ABSENT_REASON,
    FLAG_CATEGORY,
    LOINC,
    LOINC_QUESTIONNAIRE,
    OBSERVATION_CATEGORY,
    SNOMED,
    UCUM,
)
from services.common.fhir.instruments import InstrumentScore
from services.common.fhir_ids import resource_id
from services.common.topics import MapperAlertKind
from services.mapper.result import SafetyAlert

Json = dict[str, Any]
Labels = tuple[str, ...]

US_CORE: Final = "http://hl7.org/fhir/us/core/StructureDefinition/"
QR_PROFILE: Final = US_CORE + "us-core-questionnaireresponse"
SURVEY_PROFILE: Final = US_CORE + "us-core-observation-screening-assessment"
SURVEY: Final = [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "survey", "display": "Survey"}]}]
AT_RISK_FOR_SUICIDE: Final = ("225444004", "At risk for suicide (finding)")
ALERT_DETAILS: Final = {
    "phq9-item9": "PHQ-9 item 9 (thoughts of self-harm) answered above 'Not at all'",
    "cssrs-high-risk": "C-SSRS screener result: high suicide risk",
    "risk-flag": "Clinician flagged a safety risk",
}
RISK_TEXT: Final = {
    "suicide": "Suicide risk",
    "self-harm": "Self-harm risk",
    "violence": "Risk of violence",
    "overdose": "Overdose risk",
}


@dataclass  # made per response: not frozen (a frozen __init__ takes ~3x as long); never changed after
class Answered:
    """One answered instrument as the path that received it knows it, in FHIR form."""

    score: InstrumentScore
    source: str  # the event source: ids are resource_id(<type>, source, ...)
    key: str  # the response's id in its source (assessment_id, an HL7 order key, a FHIR response's id)
    event_id: str
    patient: Json | None  # {"reference": "Patient/<id>"}
    authored: str | None  # FHIR dateTime text
    encounter: Json | None = None
    performer: Json | None = None  # a Practitioner reference: QR.author, Observation.performer, Flag.author
    profiles: bool = True  # claim the US Core profiles (see the module docstring)
    statuses: dict[str, str] = field(default_factory=dict)  # LOINC code -> Observation.status; default final


@dataclass
class Built:
    """The resources with their labels, in Bundle order (QR, panel, items, total, Flags), the alerts and the
    score's data-quality codes."""

    resources: list[tuple[Json, Labels]]
    alerts: list[SafetyAlert]
    data_quality: tuple[str, ...]


def _reported_answer(reported: int | str) -> Json:
    return {"valueInteger": reported} if isinstance(reported, int) else {"valueString": reported}


def _questionnaire_response(answered: Answered, qr_id: str) -> Json:
    score = answered.score
    spec = score.instrument
    items: list[Json] = [
        {"linkId": f"/{item.loinc}", "text": item.display, "answer": [{"valueCoding": item.answer_coding()}]}
        for item in score.items
    ]
    if score.reported_total is not None:
        items.append({"linkId": f"/{spec.total_loinc}", "text": spec.total_display,
                      "answer": [_reported_answer(score.reported_total)]})
    response: Json = {"resourceType": "QuestionnaireResponse", "id": qr_id}
    if answered.profiles:
        response["meta"] = {"profile": [QR_PROFILE]}
    response["identifier"] = {"system": f"{answered.source}/assessment", "value": answered.key}
    response["questionnaire"] = LOINC_QUESTIONNAIRE + spec.panel_loinc
    response["status"] = "completed"
    if answered.patient is not None:
        response["subject"] = answered.patient
    if answered.authored is not None:
        response["authored"] = answered.authored
    response["item"] = items
    if answered.encounter is not None:
        response["encounter"] = answered.encounter
    if answered.performer is not None:
        response["author"] = answered.performer
    return response


def _total_notes(score: InstrumentScore) -> list[Json]:
    spec = score.instrument
    notes: list[Json] = []
    if "incomplete-answers" in score.data_quality:
        notes.append({"text": "Not all scored items were answered: no total was computed."})
    if "reported-total-mismatch" in score.data_quality:
        computed = score.risk_level if spec.key == "cssrs-screener" else score.total
        notes.append({"text": f"Data quality: the sender reported {score.reported_total}, but the item answers "
                              f"give {computed}. The value shown is computed from the item answers."})
    if "reported-total-unparseable" in score.data_quality:
        notes.append({"text": "Data quality: the reported risk level is not one of none, low, moderate, high; "
                              "it was not compared." if spec.key == "cssrs-screener"
                      else "Data quality: the reported total could not be read as a score."})
    if "audit-c-sex-unknown" in score.data_quality:
        notes.append({"text": "Sex not known: the lower AUDIT-C cut-off (3) was used."})
    return notes


def safety_flag(flag_id: str, patient: Json | None, start: str | None, *, risk: str = "suicide",
                level: str | None = None, encounter: Json | None = None, author: Json | None = None) -> Json:
    """An active safety Flag: suicide and self-harm risk coded SNOMED CT 225444004, other risks as text."""
    if risk in ("suicide", "self-harm"):
        code: Json = {"coding": [{"system": SNOMED, "code": AT_RISK_FOR_SUICIDE[0],
                                  "display": AT_RISK_FOR_SUICIDE[1]}], "text": RISK_TEXT[risk]}
    else:
        code = {"text": RISK_TEXT[risk]}
    if level:
        code["text"] = f"{code['text']} ({level})"
    flag: Json = {
        "resourceType": "Flag",
        "id": flag_id,
        "status": "active",
        "category": [{"coding": [{"system": FLAG_CATEGORY, "code": "safety", "display": "Safety"}]}],
        "code": code,
    }
    if patient is not None:
        flag["subject"] = patient
    flag["period"] = {"start": start}
    if encounter is not None:
        flag["encounter"] = encounter
    if author is not None:
        flag["author"] = author
    return flag


def safety_alert(kind: MapperAlertKind, patient: Json, flag_id: str, event_id: str) -> SafetyAlert:
    """The alert that goes with a safety Flag (``kind`` from ALERT_DETAILS' closed set)."""
    return SafetyAlert(kind=kind, patient_reference=patient["reference"], flag_id=flag_id, event_id=event_id,
                       detail=ALERT_DETAILS[kind])


def scored_instrument_resources(answered: Answered) -> Built:
    """QuestionnaireResponse, panel, item and total Observations, safety Flags and alerts of one response."""
    score = answered.score
    spec = score.instrument
    source, key = answered.source, answered.key
    these_labels = labels.instrument_labels(spec.key)
    qr_id = resource_id("QuestionnaireResponse", source, key)
    response = _questionnaire_response(answered, qr_id)
    # The elements every Observation of one response shares, built once (the Bundle is written out as JSON,
    # so sharing is invisible in the output and saves building the same dicts a dozen times).
    shared: Json = {}
    if answered.patient is not None:
        shared["subject"] = answered.patient
    if answered.authored is not None:
        shared["effectiveDateTime"] = answered.authored
    shared["derivedFrom"] = [{"reference": f"QuestionnaireResponse/{qr_id}"}]
    if answered.encounter is not None:
        shared["encounter"] = answered.encounter
    if answered.performer is not None:
        shared["performer"] = [answered.performer]
    statuses = answered.statuses
    profiles = answered.profiles

    def survey(code: str, display: str) -> Json:
        observation: Json = {"resourceType": "Observation", "id": resource_id("Observation", source, "assessment",
                                                                               key, code)}
        if profiles:
            observation["meta"] = {"profile": [SURVEY_PROFILE]}  # one per resource: labels are added to it
        observation["status"] = statuses.get(code, "final") if statuses else "final"
        observation["category"] = SURVEY
        observation["code"] = {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display}
        observation.update(shared)
        return observation

    members: list[Json] = []
    observations: list[Json] = []
    for item in score.items:
        observation = survey(item.loinc, item.display)
        observation["valueCodeableConcept"] = {"coding": [item.answer_coding()], "text": item.answer_display}
        observations.append(observation)
    total = survey(spec.total_loinc, spec.total_display)
    if spec.key == "cssrs-screener" and score.risk_level is not None and score.band is not None:
        total["valueCodeableConcept"] = {
            "coding": [{"system": CSSRS_RISK_LEVEL, "code": score.risk_level, "display": score.band.display}],
            "text": score.band.display,
        }
    elif score.total is not None:
        total["valueQuantity"] = {"value": score.total, "unit": "{score}", "system": UCUM, "code": "{score}"}
    else:
        total["dataAbsentReason"] = {"coding": [{"system": DATA_ABSENT_REASON, "code": "error", "display": "Error"}]}
    if score.band is not None:
        total["interpretation"] = [{"text": score.band.display}]
    notes = _total_notes(score)
    if notes:
        total["note"] = notes
    observations.append(total)
    for observation in observations:
        members.append({"reference": f"Observation/{observation['id']}"})
    panel = survey(spec.panel_loinc, spec.panel_display)
    panel["hasMember"] = members
    resources: list[tuple[Json, Labels]] = [(response, these_labels), (panel, these_labels)]
    resources.extend((observation, these_labels) for observation in observations)
    alerts: list[SafetyAlert] = []
    for kind in score.safety_alerts:
        flag_id = resource_id("Flag", source, "assessment", key, kind)
        resources.append((safety_flag(flag_id, answered.patient, answered.authored, encounter=answered.encounter,
                                      author=answered.performer), labels.safety_flag_labels()))
        if answered.patient is not None:
            alerts.append(safety_alert(kind, answered.patient, flag_id, answered.event_id))
    return Built(resources, alerts, score.data_quality)
