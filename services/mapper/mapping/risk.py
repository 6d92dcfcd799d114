"""risk.flagged -> Flag, built by the safety Flag builder every path shares (instrument_resources.py).

Flag: status active, category flag-category ``safety``, code SNOMED CT 225444004 "At risk for suicide
(finding)" for suicide and self-harm risk; other risks (violence, overdose) are coded as text. Every Flag
comes with a SafetyAlert in MappedEvent.alerts (kind ``risk-flag`` for clinician-raised flags).
Labels: labels.safety_flag_labels (PSY).
"""

from __future__ import annotations

from services.common.events import RiskFlagged
from services.common.fhir import labels
from services.mapper.instrument_resources import safety_alert, safety_flag
from services.mapper.mapping._fhir import Draft, iso


def map_risk_flag(event: RiskFlagged, draft: Draft) -> None:
    data = event.data
    subject = draft.subject
    flag_id = subject.id("Flag", "risk", data.flag_id)
    patient = subject.patient_ref
    flag = safety_flag(
        flag_id, patient, iso(data.flagged_at), risk=data.risk, level=data.level,
        encounter=subject.ref("Encounter", data.encounter_id) if data.encounter_id else None,
        author=subject.practitioner(data.flagged_by) if data.flagged_by is not None else None,
    )
    draft.add(flag, labels.safety_flag_labels())
    draft.alerts.append(safety_alert("risk-flag", patient, flag_id, draft.event_id))
