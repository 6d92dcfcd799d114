"""assessment.completed -> QuestionnaireResponse + Observations (+ safety Flags), US Core 6.1 pattern.

* QuestionnaireResponse (us-core-questionnaireresponse): what was answered, as the sender reported it;
  questionnaire ``http://loinc.org/q/<panel>``; items with linkId ``/<LOINC item>`` and LOINC answer codings;
  the reported total (if any) as its own item ``/<total code>``, exactly as reported.
* Observations (us-core-observation-screening-assessment, category ``survey``, status final), each with
  ``derivedFrom`` -> the QuestionnaireResponse:
  - one per answered item, valueCodeableConcept = the LOINC answer;
  - the total (e.g. 44261-6) as valueQuantity {value, unit "{score}"} COMPUTED from the items (one form,
    whatever the sender used), interpretation = severity band; for C-SSRS the risk level (93374-7) as a
    CodeableConcept (code system urn:carebus:codesystem:cssrs-risk-level);
  - the panel (e.g. 44249-1) with ``hasMember`` -> the items and the total.
* A reported total that disagrees with the items is never silently overwritten: MappedEvent.data_quality
  gets ``reported-total-mismatch``, the total Observation carries a note naming both numbers, and the QR
  keeps the reported value. Incomplete answers: the total Observation has dataAbsentReason ``error``.
* Safety: PHQ-9 item 9 > 0 and C-SSRS high risk add a Flag (see risk.py) and a SafetyAlert.
Labels: AUDIT-C -> R + ETHUD; every other instrument -> PSY (see labels.py).
"""

from __future__ import annotations

from typing import Any, Final

from services.common.events import AssessmentCompleted
from services.common.fhir.codesystems import (
    CSSRS_RISK_LEVEL,
    DATA_ABSENT_REASON,
    LOINC,
    LOINC_QUESTIONNAIRE,
    OBSERVATION_CATEGORY,
    UCUM,
)
from services.mapper.mapping import labels
from services.mapper.mapping._fhir import Draft, coding, iso, profile
from services.mapper.mapping.instruments import InstrumentScore, score_instrument
from services.mapper.mapping.risk import add_safety_flag

_SURVEY: Final = [{"coding": [coding(OBSERVATION_CATEGORY, "survey", "Survey")]}]


def _reported_answer(reported: int | str) -> dict[str, Any]:
    return {"valueInteger": reported} if isinstance(reported, int) else {"valueString": reported}


def _questionnaire_response(
    event: AssessmentCompleted, score: InstrumentScore, draft: Draft
) -> dict[str, Any]:
    data = event.data
    subject = draft.subject
    spec = score.instrument
    items: list[dict[str, Any]] = [
        {"linkId": f"/{item.loinc}", "text": item.display, "answer": [{"valueCoding": item.answer_coding()}]}
        for item in score.items
    ]
    if score.reported_total is not None:
        items.append(
            {
                "linkId": f"/{spec.total_loinc}",
                "text": spec.total_display,
                "answer": [_reported_answer(score.reported_total)],
            }
        )
    response: dict[str, Any] = {
        "resourceType": "QuestionnaireResponse",
        "id": subject.id("QuestionnaireResponse", data.assessment_id),
        "meta": {"profile": profile("us-core-questionnaireresponse")},
        "identifier": subject.identifier("assessment", data.assessment_id),
        "questionnaire": LOINC_QUESTIONNAIRE + spec.panel_loinc,
        "status": "completed",
        "subject": subject.patient_ref,
        "authored": iso(data.authored),
        "item": items,
    }
    if data.encounter_id:
        response["encounter"] = subject.ref("Encounter", data.encounter_id)
    if data.performer is not None:
        response["author"] = subject.practitioner(data.performer)
    return response


def _shared_observation_elements(event: AssessmentCompleted, draft: Draft, qr_id: str) -> dict[str, Any]:
    """The elements every Observation of one assessment has in common (subject, time, source response,
    encounter, performer). Built once and shared by the assessment's Observations: the Bundle is written out
    as JSON, so sharing is invisible in the output and saves building the same dicts a dozen times."""
    data = event.data
    subject = draft.subject
    shared: dict[str, Any] = {
        "subject": subject.patient_ref,
        "effectiveDateTime": iso(data.authored),
        "derivedFrom": [{"reference": f"QuestionnaireResponse/{qr_id}"}],
    }
    if data.encounter_id:
        shared["encounter"] = subject.ref("Encounter", data.encounter_id)
    if data.performer is not None:
        shared["performer"] = [subject.practitioner(data.performer)]
    return shared


def _observation(
    event: AssessmentCompleted, draft: Draft, shared: dict[str, Any], code: str, display: str, *, key: str
) -> dict[str, Any]:
    observation: dict[str, Any] = {
        "resourceType": "Observation",
        "id": draft.subject.id("Observation", "assessment", event.data.assessment_id, key),
        "meta": {"profile": profile("us-core-observation-screening-assessment")},
        "status": "final",
        "category": _SURVEY,
        "code": {"coding": [coding(LOINC, code, display)], "text": display},
    }
    observation.update(shared)
    return observation


def _total_observation(
    event: AssessmentCompleted, score: InstrumentScore, draft: Draft, shared: dict[str, Any]
) -> dict[str, Any]:
    spec = score.instrument
    total = _observation(event, draft, shared, spec.total_loinc, spec.total_display, key=spec.total_loinc)
    if spec.key == "cssrs-screener" and score.risk_level is not None and score.band is not None:
        total["valueCodeableConcept"] = {
            "coding": [coding(CSSRS_RISK_LEVEL, score.risk_level, score.band.display)],
            "text": score.band.display,
        }
    elif score.total is not None:
        total["valueQuantity"] = {"value": score.total, "unit": "{score}", "system": UCUM, "code": "{score}"}
    else:
        total["dataAbsentReason"] = {"coding": [coding(DATA_ABSENT_REASON, "error", "Error")]}
    if score.band is not None:
        total["interpretation"] = [{"text": score.band.display}]
    notes: list[dict[str, str]] = []
    if "incomplete-answers" in score.data_quality:
        notes.append({"text": "Not all scored items were answered: no total was computed."})
    if "reported-total-mismatch" in score.data_quality:
        computed = score.risk_level if spec.key == "cssrs-screener" else score.total
        notes.append(
            {
                "text": f"Data quality: the sender reported {score.reported_total}, but the item answers "
                f"give {computed}. The value shown is computed from the item answers."
            }
        )
    if "reported-total-unparseable" in score.data_quality:
        notes.append({"text": "Data quality: the reported risk level is not one of none, low, moderate, high; "
                              "it was not compared." if spec.key == "cssrs-screener"
                      else "Data quality: the reported total could not be read as a score."})
    if "audit-c-sex-unknown" in score.data_quality:
        notes.append({"text": "Sex not known: the lower AUDIT-C cut-off (3) was used."})
    if notes:
        total["note"] = notes
    return total


def map_assessment(event: AssessmentCompleted, draft: Draft) -> None:
    data = event.data
    subject = draft.subject
    answers = {item.item_code: item.answer for item in data.items}
    reported = data.reported_total
    score = score_instrument(
        data.instrument,
        answers,
        reported_total=reported.model_dump()
        if reported is not None and not isinstance(reported, str | int)
        else reported,
        sex=data.patient_gender,
    )
    spec = score.instrument
    these_labels = labels.instrument_labels(spec.key)

    response = _questionnaire_response(event, score, draft)
    qr_id = response["id"]
    draft.add(response, these_labels)
    shared = _shared_observation_elements(event, draft, qr_id)
    members: list[dict[str, Any]] = []
    item_observations: list[dict[str, Any]] = []
    for item in score.items:
        observation = _observation(event, draft, shared, item.loinc, item.display, key=item.loinc)
        observation["valueCodeableConcept"] = {
            "coding": [item.answer_coding()],
            "text": item.answer_display,
        }
        item_observations.append(observation)
    total = _total_observation(event, score, draft, shared)
    for observation in (*item_observations, total):
        members.append({"reference": f"Observation/{observation['id']}"})
    panel = _observation(event, draft, shared, spec.panel_loinc, spec.panel_display, key=spec.panel_loinc)
    panel["hasMember"] = members
    draft.add(panel, these_labels)
    for observation in (*item_observations, total):
        draft.add(observation, these_labels)
    draft.data_quality.extend(score.data_quality)
    for kind in score.safety_alerts:
        add_safety_flag(
            draft,
            flag_id=subject.id("Flag", "assessment", data.assessment_id, kind),
            kind=kind,
            start=data.authored,
            encounter_id=data.encounter_id,
            author=data.performer,
        )
