"""careplan.updated -> CarePlan (us-core-careplan) + one Goal (us-core-goal) per goal.

CarePlan: status and intent ``plan``; category us-core careplan-category ``assess-plan``; generated
narrative (US Core requires text) listing modalities, frequency and goals; period; author; ``addresses`` ->
the Conditions of addresses_diagnosis_ids (same source); ``goal`` -> the Goals; one activity per modality
(detail.kind Appointment, code = the modality's SNOMED concept from session.py, scheduledTiming = the session
frequency). Goal: lifecycleStatus, description, target (measure LOINC, detailQuantity "<" value {score},
dueDate).
Labels: with modalities or linked diagnoses -> PSY; otherwise none (goals follow the plan).
"""

from __future__ import annotations

import html
from typing import Any, Final

from services.common.events import CarePlanUpdated
from services.common.events.payloads import FrequencyUnit
from services.common.fhir import labels
from services.common.fhir.codesystems import LOINC, UCUM, US_CORE_CAREPLAN_CATEGORY
from services.mapper.mapping._fhir import Draft, coding, concept, iso, profile
from services.mapper.mapping.session import MODALITIES, modality_concept

_PER: Final[dict[FrequencyUnit, str]] = {"week": "wk", "month": "mo"}


def _narrative(event: CarePlanUpdated) -> str:
    data = event.data
    rows = []
    if data.title:
        rows.append(f"<p><b>{html.escape(data.title)}</b></p>")
    if data.modalities:
        names = ", ".join(html.escape(MODALITIES[m][2]) for m in data.modalities)
        rows.append(f"<p>Modalities: {names}</p>")
    if data.session_frequency:
        rows.append(f"<p>Frequency: {data.session_frequency.sessions} per {data.session_frequency.per}</p>")
    if data.goals:
        goals = "".join(f"<li>{html.escape(goal.description)}</li>" for goal in data.goals)
        rows.append(f"<p>Goals:</p><ul>{goals}</ul>")
    if not rows:
        rows.append("<p>Care plan</p>")
    return '<div xmlns="http://www.w3.org/1999/xhtml">' + "".join(rows) + "</div>"


def map_care_plan(event: CarePlanUpdated, draft: Draft) -> None:
    data = event.data
    subject = draft.subject
    plan_labels = labels.care_plan_labels(bool(data.modalities or data.addresses_diagnosis_ids))
    period: dict[str, str] = {"start": iso(data.period_start)}
    if data.period_end:
        period["end"] = iso(data.period_end)
    care_plan: dict[str, Any] = {
        "resourceType": "CarePlan",
        "id": subject.id("CarePlan", data.care_plan_id),
        "meta": {"profile": profile("us-core-careplan")},
        "identifier": [subject.identifier("careplan", data.care_plan_id)],
        "text": {"status": "generated", "div": _narrative(event)},
        "status": data.status,
        "intent": "plan",
        "category": [concept(US_CORE_CAREPLAN_CATEGORY, "assess-plan", "Assessment and Plan of Treatment")],
        "subject": subject.patient_ref,
        "period": period,
        "created": iso(data.updated_at),
        "author": subject.practitioner(data.author),
    }
    if data.title:
        care_plan["title"] = data.title
    if data.addresses_diagnosis_ids:
        care_plan["addresses"] = [subject.ref("Condition", d) for d in data.addresses_diagnosis_ids]
    goals: list[dict[str, Any]] = []
    for goal in data.goals:
        resource: dict[str, Any] = {
            "resourceType": "Goal",
            "id": subject.id("Goal", goal.goal_id),
            "meta": {"profile": profile("us-core-goal")},
            "identifier": [subject.identifier("goal", goal.goal_id)],
            "lifecycleStatus": goal.status,
            "description": {"text": goal.description},
            "subject": subject.patient_ref,
            "startDate": iso(data.period_start),
            "expressedBy": subject.practitioner(data.author),
        }
        if goal.target is not None:
            target: dict[str, Any] = {
                "measure": {"coding": [coding(LOINC, goal.target.measure)]},
                "detailQuantity": {
                    "value": goal.target.below_value,
                    "comparator": "<",
                    "unit": "{score}",
                    "system": UCUM,
                    "code": "{score}",
                },
            }
            if goal.target.due:
                target["dueDate"] = iso(goal.target.due)
            resource["target"] = [target]
        goals.append(resource)
    if goals:
        care_plan["goal"] = [{"reference": f"Goal/{goal['id']}"} for goal in goals]
    activities = []
    for modality in data.modalities:
        detail: dict[str, Any] = {
            "kind": "Appointment",
            "code": modality_concept(modality),
            "status": "scheduled",
        }
        if data.session_frequency:
            detail["scheduledTiming"] = {
                "repeat": {
                    "frequency": data.session_frequency.sessions,
                    "period": 1,
                    "periodUnit": _PER[data.session_frequency.per],
                }
            }
        activities.append({"detail": detail})
    if activities:
        care_plan["activity"] = activities
    draft.add(care_plan, plan_labels)
    for resource in goals:
        draft.add(resource, plan_labels)
