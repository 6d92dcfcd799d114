"""risk.flagged -> Flag; and the safety Flag every family uses (assessments raise them too).

Flag: status active, category flag-category ``safety``, code SNOMED CT 225444004 "At risk for suicide
(finding)" for suicide and self-harm risk; other risks (violence, overdose) are coded as text. Every Flag
comes with a SafetyAlert in MappedEvent.alerts (kind ``risk-flag`` for clinician-raised flags).
Labels: PSY.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final

from services.common.events import RiskFlagged
from services.common.events._types import Practitioner
from services.common.fhir.codesystems import FLAG_CATEGORY, SNOMED
from services.common.topics import MapperAlertKind
from services.mapper.mapping import labels
from services.mapper.mapping._fhir import Draft, concept, iso
from services.mapper.result import SafetyAlert

AT_RISK_FOR_SUICIDE: Final = ("225444004", "At risk for suicide (finding)")
ALERT_DETAILS: Final = {
    "phq9-item9": "PHQ-9 item 9 (thoughts of self-harm) answered above 'Not at all'",
    "cssrs-high-risk": "C-SSRS screener result: high suicide risk",
    "risk-flag": "Clinician flagged a safety risk",
}
_RISK_TEXT: Final = {
    "suicide": "Suicide risk",
    "self-harm": "Self-harm risk",
    "violence": "Risk of violence",
    "overdose": "Overdose risk",
}


def add_safety_flag(
    draft: Draft,
    *,
    flag_id: str,
    kind: MapperAlertKind,
    start: dt.datetime,
    risk: str = "suicide",
    level: str | None = None,
    encounter_id: str | None = None,
    author: Practitioner | None = None,
) -> dict[str, Any]:
    """Add a safety Flag to the draft and the matching SafetyAlert (``kind`` from a closed set)."""
    subject = draft.subject
    if risk in ("suicide", "self-harm"):
        code = concept(SNOMED, *AT_RISK_FOR_SUICIDE, text=_RISK_TEXT[risk])
    else:
        code = {"text": _RISK_TEXT[risk]}
    if level:
        code["text"] = f"{code['text']} ({level})"
    flag: dict[str, Any] = {
        "resourceType": "Flag",
        "id": flag_id,
        "status": "active",
        "category": [concept(FLAG_CATEGORY, "safety", "Safety")],
        "code": code,
        "subject": subject.patient_ref,
        "period": {"start": iso(start)},
    }
    if encounter_id:
        flag["encounter"] = subject.ref("Encounter", encounter_id)
    if author is not None:
        flag["author"] = subject.practitioner(author)
    draft.add(flag, labels.safety_flag_labels())
    draft.alerts.append(
        SafetyAlert(
            kind=kind,
            patient_reference=subject.patient_ref["reference"],
            flag_id=flag_id,
            event_id=draft.event_id,
            detail=ALERT_DETAILS[kind],
        )
    )
    return flag


def map_risk_flag(event: RiskFlagged, draft: Draft) -> None:
    data = event.data
    add_safety_flag(
        draft,
        flag_id=draft.subject.id("Flag", "risk", data.flag_id),
        kind="risk-flag",
        start=data.flagged_at,
        risk=data.risk,
        level=data.level,
        encounter_id=data.encounter_id,
        author=data.flagged_by,
    )
