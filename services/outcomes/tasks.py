"""Safety alerts as work (pure): every safety alert becomes one FHIR Task, acknowledged and closed through the
record API, escalated when nobody acknowledged it in time.

* Task id = uuid5 of the alert's Flag reference: a resent or replayed alert names the same Flag, so it can
  never make a second Task.
* ``focus`` -> the Flag (or Observation) of the alert, ``for`` -> the patient, ``owner`` -> the first entry of
  the escalation chain configured for the alert's source (``safety_task_owners``), ``priority`` and due time
  (``restriction.period.end``) by the alert's kind (``safety_task_due_minutes``): minutes, not days.
* Status lifecycle (FHIR task-status): requested -> accepted (acknowledged) -> in-progress -> completed;
  cancelled from any open state. A change is made by a practitioner (``owner`` becomes them) and is audited
  (Provenance + AuditEvent in the same bundle).
* Escalation: a Task still ``requested`` after its due time moves to the next owner of its chain,
  ``businessStatus`` ``escalated-<n>``, a new due time; an escalation event goes on the alerts topic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from services.common.fhir.codesystems import (
    AUDIT_ENTITY_TYPE,
    AUDIT_EVENT_TYPE,
    OBJECT_ROLE,
    PROVENANCE_PARTICIPANT_TYPE,
    RESTFUL_INTERACTION,
    SAFETY_ALERT_TASK,
    SAFETY_TASK_CODES,
    SECURITY_SOURCE_TYPE,
    SNOMED,
    V3_DATA_OPERATION,
)
from services.common.security_labels import PSYCHIATRIC, combine, meta_security
from services.outcomes.episodes import outcome_id

PRIORITY: Final = {"cssrs-high-risk": "stat", "phq9-item9": "urgent", "risk-flag": "urgent"}
DESCRIPTION: Final = {
    "cssrs-high-risk": "C-SSRS screen positive for high suicide risk: contact the patient now",
    "phq9-item9": "PHQ-9 item 9 (thoughts of self-harm) answered above 'Not at all': urgent follow-up",
    "risk-flag": "Suicide/self-harm risk flagged by the sending system: urgent follow-up",
}
OPEN: Final = frozenset({"requested", "received", "accepted", "in-progress", "on-hold"})
UNACKNOWLEDGED: Final = frozenset({"requested", "received"})
TRANSITIONS: Final = {
    "requested": {"accepted", "in-progress", "completed", "cancelled"},
    "received": {"accepted", "in-progress", "completed", "cancelled"},
    "accepted": {"in-progress", "completed", "cancelled"},
    "in-progress": {"on-hold", "completed", "cancelled"},
    "on-hold": {"in-progress", "completed", "cancelled"},
}
CHANGEABLE: Final = frozenset({"status", "owner", "note", "meta", "lastModified", "executionPeriod", "businessStatus"})


class TaskChangeRefused(ValueError):
    """A requested change to a safety Task that the lifecycle does not allow (answered 409 / 422)."""

    def __init__(self, message: str, conflict: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.conflict = conflict


@dataclass(frozen=True)
class Alert:
    """One record of the safety-alerts topic (services/mapper/pipeline.py writes them)."""

    kind: str
    patient: str  # Patient/<id>
    focus: str  # Flag/<id>
    event_id: str
    raised_at: datetime
    source: str  # the sending system (first part of the record key)
    labels: tuple[str, ...] = ()

    @classmethod
    def of(cls, value: Mapping[str, Any], key: str, labels: Sequence[str] = ()) -> Alert:
        raised = datetime.fromisoformat(str(value["raised_at"]).replace("Z", "+00:00"))
        return cls(str(value["kind"]), str(value["patient"]), str(value["flag"]), str(value.get("event_id", "")),
                   raised, key.split("|", 1)[0], tuple(labels))


def task_id(focus: str) -> str:
    return outcome_id("safety-task", focus)


def owner_chain(owners: Mapping[str, Sequence[str]], source: str) -> list[str]:
    chain = list(owners.get(source) or owners.get("*") or ())
    if not chain:
        raise ValueError("safety_task_owners has no chain for this source and no '*' entry")
    return chain


def _instant(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def new_task(alert: Alert, chain: Sequence[str], due_minutes: Mapping[str, int]) -> dict[str, Any]:
    minutes = due_minutes.get(alert.kind, 30)
    return {
        "resourceType": "Task",
        "id": task_id(alert.focus),
        "meta": {"security": meta_security(combine(PSYCHIATRIC, alert.labels))},
        "identifier": [{"system": SAFETY_ALERT_TASK, "value": f"{alert.kind}:{alert.focus}"}],
        "status": "requested",
        "businessStatus": {"coding": [{"system": SAFETY_TASK_CODES, "code": "awaiting-acknowledgement"}],
                           "text": "Awaiting acknowledgement"},
        "intent": "order",
        "priority": PRIORITY.get(alert.kind, "urgent"),
        "code": {"coding": [{"system": SAFETY_TASK_CODES, "code": alert.kind}], "text": "Respond to a safety alert"},
        "description": DESCRIPTION.get(alert.kind, DESCRIPTION["risk-flag"]),
        "focus": {"reference": alert.focus},
        "for": {"reference": alert.patient},
        "authoredOn": _instant(alert.raised_at),
        "lastModified": _instant(alert.raised_at),
        "owner": {"reference": chain[0]},
        "restriction": {"period": {"end": _instant(alert.raised_at + timedelta(minutes=minutes))}},
        "reasonCode": {"coding": [{"system": SNOMED, "code": "225444004", "display": "At risk for suicide"}]},
    }


def due_at(task: Mapping[str, Any]) -> datetime | None:
    end = ((task.get("restriction") or {}).get("period") or {}).get("end")
    return parse_instant(end) if isinstance(end, str) else None


def escalation_level(task: Mapping[str, Any]) -> int:
    for coding in (task.get("businessStatus") or {}).get("coding", ()):
        code = str(coding.get("code", ""))
        if coding.get("system") == SAFETY_TASK_CODES and code.startswith("escalated-"):
            return int(code.removeprefix("escalated-"))
    return 0


def escalate(task: Mapping[str, Any], chain: Sequence[str], now: datetime, due_minutes: Mapping[str, int]
             ) -> dict[str, Any] | None:
    """The Task's next version when it is unacknowledged past its due time, else None. The owner moves one step
    along the chain (staying at its last entry), and the Task gets a new due time."""
    due = due_at(task)
    if task.get("status") not in UNACKNOWLEDGED or due is None or now <= due:
        return None
    level = escalation_level(task) + 1
    kind = next((c["code"] for c in task["code"]["coding"] if c.get("system") == SAFETY_TASK_CODES), "risk-flag")
    minutes = due_minutes.get(kind, 30)
    escalated = dict(task)
    escalated.pop("meta", None)
    escalated["meta"] = {"security": task.get("meta", {}).get("security", [])}
    escalated["owner"] = {"reference": chain[min(level, len(chain) - 1)]}
    escalated["businessStatus"] = {"coding": [{"system": SAFETY_TASK_CODES, "code": f"escalated-{level}"}],
                                   "text": f"Escalated (level {level}): not acknowledged in time"}
    # the new due time counts from the missed one, so a late check never moves the schedule
    escalated["restriction"] = {"period": {"end": _instant(due + timedelta(minutes=minutes))}}
    escalated["lastModified"] = _instant(due)
    return escalated


def _without(task: Mapping[str, Any], keys: frozenset[str]) -> dict[str, Any]:
    return {k: v for k, v in task.items() if k not in keys}


def change_status(current: Mapping[str, Any], requested: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """The Task's next version when a practitioner updates it (FHIR update with the whole Task). Only status,
    owner (the acting practitioner) and note may change; anything else is refused."""
    if requested.get("resourceType") != "Task" or requested.get("id") != current.get("id"):
        raise TaskChangeRefused("the body must be the Task being updated (same resourceType and id)")
    if _without(requested, CHANGEABLE) != _without(current, CHANGEABLE):
        raise TaskChangeRefused("only status, owner (the acting practitioner) and note of a safety Task may change")
    owner = str((requested.get("owner") or {}).get("reference", ""))
    if not owner.startswith("Practitioner/") or len(owner) <= len("Practitioner/"):
        raise TaskChangeRefused("owner must name the acting practitioner (Practitioner/<id>)")
    old, new = str(current.get("status")), str(requested.get("status"))
    if new != old and new not in TRANSITIONS.get(old, set()):
        raise TaskChangeRefused(f"a {old} safety Task cannot become {new}", conflict=old not in OPEN)
    updated = dict(current)
    updated["meta"] = {"security": current.get("meta", {}).get("security", [])}
    updated["status"] = new
    updated["owner"] = {"reference": owner}
    updated["lastModified"] = _instant(now)
    updated["businessStatus"] = {"coding": [{"system": SAFETY_TASK_CODES, "code": new}], "text": new.capitalize()}
    if "note" in requested:
        updated["note"] = requested["note"]
    period = dict(current.get("executionPeriod") or {})
    if new != "requested" and "start" not in period:
        period["start"] = _instant(now)
    if new in ("completed", "cancelled"):
        period["end"] = _instant(now)
    if period:
        updated["executionPeriod"] = period
    return updated


def audit_records(task: Mapping[str, Any], version: int, practitioner: str, now: datetime, client: str
                  ) -> list[dict[str, Any]]:
    """A Provenance and an AuditEvent (IHE BALP-style 'update' of a resource by a practitioner) for one Task
    change. ``client``: the token's label (who called the API). One local function; the consent/audit module can
    take its place. Names resources by reference, never copies their content."""
    target = f"Task/{task['id']}/_history/{version}"
    recorded = _instant(now)
    labels = task.get("meta", {}).get("security", [])
    provenance = {
        "resourceType": "Provenance",
        "id": outcome_id("provenance", target),
        "meta": {"security": labels},
        "target": [{"reference": target}],
        "recorded": recorded,
        "activity": {"coding": [{"system": V3_DATA_OPERATION,
                                 "code": "UPDATE", "display": "revise"}]},
        "agent": [{"type": {"coding": [{"system": PROVENANCE_PARTICIPANT_TYPE,
                                        "code": "performer"}]},
                   "who": {"reference": practitioner}}],
    }
    audit = {
        "resourceType": "AuditEvent",
        "id": outcome_id("audit", target),
        "meta": {"security": labels},
        "type": {"system": AUDIT_EVENT_TYPE, "code": "rest",
                 "display": "Restful Operation"},
        "subtype": [{"system": RESTFUL_INTERACTION, "code": "update", "display": "update"}],
        "action": "U",
        "recorded": recorded,
        "outcome": "0",
        "agent": [
            {"who": {"reference": practitioner}, "requestor": True},
            {"who": {"display": client or "record API client"}, "requestor": False},
        ],
        "source": {"observer": {"display": "carebus record"},
                   "type": [{"system": SECURITY_SOURCE_TYPE, "code": "4",
                             "display": "Application Server"}]},
        "entity": [{"what": {"reference": target}},
                   {"what": {"reference": str(task.get("for", {}).get("reference", ""))},
                    "type": {"system": AUDIT_ENTITY_TYPE, "code": "1",
                             "display": "Person"},
                    "role": {"system": OBJECT_ROLE, "code": "1",
                             "display": "Patient"}}],
    }
    return [provenance, audit]


def escalation_event(task: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """The alerts-topic record announcing one escalation (fixed phrases, references only; no PHI)."""
    level = escalation_level(task)
    return {
        "kind": "escalation",
        "patient": task["for"]["reference"],
        "flag": task["focus"]["reference"],
        "task": f"Task/{task['id']}",
        "level": level,
        "owner": task["owner"]["reference"],
        "event_id": outcome_id("escalation", str(task["id"]), str(level)),
        "detail": "safety task not acknowledged in time: escalated to the next owner",
        "raised_at": _instant(now),
    }
