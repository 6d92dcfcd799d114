"""AuditEvents of disclosures (pure), after IHE Basic Audit Log Patterns (BALP) on FHIR R4.

One AuditEvent per disclosure and per patient (BALP records one patient per event):

=====================  ===========================================  =======================================
what happened          type / subtype                               action, outcome
=====================  ===========================================  =======================================
API read / vread       audit-event-type ``rest`` / restful-         R, 0 (success); 4 when it was refused
                       interaction ``read`` / ``vread``              by the disclosure policy (a denied attempt)
API search, history,   ``rest`` / ``search-type``, ``history-*``,   E, 0; the query is kept in an entity
$everything            ``operation`` ($everything)                  (role 24 Query), base64 as BALP says
push (notification)    DICOM 110106 Export / ISO 21089 ``disclose``  R, 0 (BALP PrivacyDisclosure.Source); 4
                                                                    when the disclosure policy withheld it
=====================  ===========================================  =======================================

Agents: the client (DICOM 110153 Source Role ID, ``requestor``: the token's client id and label), carebus
(110152 Destination Role ID) and, when known, the recipient organization (v3-ParticipationType IRCP) with the
consents that permitted the disclosure in ``agent.policy``. Entities: the patient (audit-entity-type 1 Person,
object-role 1 Patient), each disclosed resource by reference (type 2 System Object, role 4 Domain Resource) and
each permitting consent (role 13 Security Resource). ``purposeOfEvent`` is the recipient's purpose of use.
Never any resource content: references, codes and counts only.

AuditEvents go to the ``audit.v1`` topic keyed by the patient id (services/common/topics.py) and from there into
the record (services/record/audit_ingest.py), where ``AuditEvent?patient=`` finds them with a privacy-officer
scope and ``Patient/{id}/$disclosures`` lists them.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson

from services.common.event_headers import RECORD_SOURCE, cloudevent_headers
from services.common.fhir.codesystems import (
    AUDIT_ENTITY_TYPE,
    AUDIT_EVENT_TYPE,
    CAREBUS_CLIENT,
    DICOM,
    LIFECYCLE_EVENT,
    OBJECT_ROLE,
    RESTFUL_INTERACTION,
    SECURITY_SOURCE_TYPE,
    V3_ACT_REASON,
    V3_PARTICIPATION_TYPE,
)
from services.common.kafka import OutboundRecord
from services.common.topics import AUDIT_EVENTS

AUDIT_NAMESPACE: Final = uuid.UUID("5b0e7c1e-2f7a-4d55-9a8e-3c1f0a6d2b91")
AUDIT_CONTENT_TYPE: Final = "application/fhir+json"
AUDIT_CE_TYPE: Final = "org.carebus.audit.event.v1"
DENIED_DESCRIPTION: Final = "refused by the disclosure policy"  # outcome 4: a denied attempt

Interaction = Literal["read", "vread", "history-instance", "history-type", "search-type", "operation"]
_INTERACTION_DISPLAY: Final = {
    "read": "read",
    "vread": "vread",
    "history-instance": "history-instance",
    "history-type": "history-type",
    "search-type": "search-type",
    "operation": "operation",
}


@dataclass(frozen=True)
class Requester:
    """Who received (or asked): the client id (never a secret), its label, the organization it acts for, and
    the purpose of use."""

    client: str
    label: str
    organization: str | None
    purpose: str


def _who(name: str) -> dict[str, Any]:
    """A Reference for ``Type/id`` or ``system|value``."""
    if "|" in name:
        system, _, value = name.partition("|")
        return {"identifier": {"system": system, "value": value}} if system else {"identifier": {"value": value}}
    return {"reference": name}


def _agents(requester: Requester, server: str, consents: Sequence[str], base_url: str) -> list[dict[str, Any]]:
    client: dict[str, Any] = {"identifier": {"system": CAREBUS_CLIENT, "value": requester.client or "unknown"}}
    if requester.label:
        client["display"] = requester.label
    agents: list[dict[str, Any]] = [
        {
            "type": {"coding": [{"system": DICOM, "code": "110153", "display": "Source Role ID"}]},
            "who": client,
            "requestor": True,
        },
        {
            "type": {"coding": [{"system": DICOM, "code": "110152", "display": "Destination Role ID"}]},
            "who": {"display": server},
            "requestor": False,
            "network": {"address": base_url, "type": "5"},
        },
    ]
    if requester.organization:
        recipient: dict[str, Any] = {
            "type": {"coding": [{"system": V3_PARTICIPATION_TYPE, "code": "IRCP", "display": "information recipient"}]},
            "who": _who(requester.organization),
            "requestor": False,
        }
        if consents:
            recipient["policy"] = [f"{base_url}/{c}" for c in consents]
        agents.append(recipient)
    return agents


def _entities(
    patient_ref: str, resources: Sequence[str], consents: Sequence[str], query: str | None
) -> list[dict[str, Any]]:
    entities: list[dict[str, Any]] = [
        {
            "what": {"reference": patient_ref},
            "type": {"system": AUDIT_ENTITY_TYPE, "code": "1", "display": "Person"},
            "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"},
        }
    ]
    for ref in resources:
        if ref == patient_ref:
            continue
        entities.append(
            {
                "what": {"reference": ref},
                "type": {"system": AUDIT_ENTITY_TYPE, "code": "2", "display": "System Object"},
                "role": {"system": OBJECT_ROLE, "code": "4", "display": "Domain Resource"},
            }
        )
    for ref in consents:
        entities.append(
            {
                "what": {"reference": ref},
                "type": {"system": AUDIT_ENTITY_TYPE, "code": "2", "display": "System Object"},
                "role": {"system": OBJECT_ROLE, "code": "13", "display": "Security Resource"},
            }
        )
    if query is not None:
        entities.append(
            {
                "type": {"system": AUDIT_ENTITY_TYPE, "code": "2", "display": "System Object"},
                "role": {"system": OBJECT_ROLE, "code": "24", "display": "Query"},
                "query": base64.b64encode(query.encode()).decode(),
            }
        )
    return entities


def _base(
    event_id: str,
    recorded: str,
    requester: Requester,
    server: str,
    base_url: str,
    patient_ref: str,
    resources: Sequence[str],
    consents: Sequence[str],
    query: str | None,
) -> dict[str, Any]:
    return {
        "resourceType": "AuditEvent",
        "id": event_id,
        "recorded": recorded,
        "purposeOfEvent": [{"coding": [{"system": V3_ACT_REASON, "code": requester.purpose}]}],
        "agent": _agents(requester, server, consents, base_url),
        "source": {
            "observer": {"display": server},
            "type": [{"system": SECURITY_SOURCE_TYPE, "code": "4", "display": "Application Server"}],
        },
        "entity": _entities(patient_ref, resources, consents, query),
    }


def api_access_event(
    event_id: str,
    recorded: str,
    interaction: Interaction,
    requester: Requester,
    base_url: str,
    patient_ref: str,
    resources: Sequence[str],
    consents: Sequence[str] = (),
    query: str | None = None,
    denied: bool = False,
) -> dict[str, Any]:
    """BALP PatientRead / PatientQuery: one patient's data returned by (or refused to) the record API."""
    event = _base(event_id, recorded, requester, "carebus record API", base_url, patient_ref, resources, consents,
                  query)
    event["type"] = {"system": AUDIT_EVENT_TYPE, "code": "rest", "display": "Restful Operation"}
    event["subtype"] = [
        {"system": RESTFUL_INTERACTION, "code": interaction, "display": _INTERACTION_DISPLAY[interaction]}
    ]
    event["action"] = "R" if interaction in ("read", "vread") else "E"
    event["outcome"] = "4" if denied else "0"
    if denied:
        event["outcomeDesc"] = DENIED_DESCRIPTION
    return event


def push_disclosure_event(
    event_id: str,
    recorded: str,
    requester: Requester,
    base_url: str,
    patient_ref: str,
    resources: Sequence[str],
    consents: Sequence[str] = (),
    server: str = "carebus notify",
    denied: bool = False,
) -> dict[str, Any]:
    """BALP PrivacyDisclosure.Source: data pushed to a recipient (a delivered notification), or, ``denied``, a
    push the disclosure policy withheld (outcome 4, as a refused API read: a denied attempt; the recipient was
    told nothing). ``event_id`` should be deterministic (e.g. :func:`disclosure_id` of subscription and event
    number) so a retried delivery yields the same AuditEvent, once."""
    event = _base(event_id, recorded, requester, server, base_url, patient_ref, resources, consents, None)
    event["type"] = {"system": DICOM, "code": "110106", "display": "Export"}
    event["subtype"] = [{"system": LIFECYCLE_EVENT, "code": "disclose", "display": "Disclose Record Lifecycle Event"}]
    event["action"] = "R"
    event["outcome"] = "4" if denied else "0"
    if denied:
        event["outcomeDesc"] = DENIED_DESCRIPTION
    return event


def disclosure_id(*parts: str) -> str:
    """A deterministic AuditEvent id (UUIDv5) from what identifies one disclosure."""
    return str(uuid.uuid5(AUDIT_NAMESPACE, "|".join(parts)))


def audit_record(event: dict[str, Any], topic_prefix: str) -> OutboundRecord:
    """The Kafka record of one AuditEvent: keyed by the patient's id, so one patient's audit stays in order."""
    patient = next(
        (e["what"]["reference"] for e in event["entity"] if e.get("role", {}).get("code") == "1" and "what" in e),
        "",
    )
    return OutboundRecord(
        topic=AUDIT_EVENTS.name(topic_prefix),
        key=patient.removeprefix("Patient/"),
        value=orjson.dumps(event),
        headers=cloudevent_headers(str(event["id"]), AUDIT_CE_TYPE, RECORD_SOURCE, AUDIT_CONTENT_TYPE,
                                   str(event["recorded"])),
    )
