"""Builds the AsyncAPI 3 topic catalogue (schemas/asyncapi.yaml) from services/common/topics.py.

    python -m services.common.asyncapi          # rewrite schemas/asyncapi.yaml
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from services.common.settings import REPO_ROOT
from services.common.topics import (
    CATALOGUE,
    DEAD_LETTERS,
    FHIR_BUNDLES,
    FHIR_RESOURCE_EVENT_TYPE,
    HL7V2_MESSAGE_EVENT_TYPE,
    INBOUND_EVENTS,
    OUTCOMES,
    RECORD_CHANGES,
    REPLAYED_DEAD_LETTERS,
    SAFETY_ALERTS,
    TopicSpec,
)

ASYNCAPI_PATH = REPO_ROOT / "schemas" / "asyncapi.yaml"
EVENT_SCHEMAS = REPO_ROOT / "schemas" / "events"
DEFAULT_PREFIX = "carebus"

HEADER_DOCS = {
    "ce_id": "CloudEvent id of the inbound event (also the lineage id)",
    "ce_type": "CloudEvent type, e.g. org.carebus.assessment.completed.v1",
    "ce_source": "CloudEvent source: the sending system",
    "ce_time": "CloudEvent time (ISO 8601)",
    "carebus_correlation_id": "correlation id that follows one request through every service",
    "carebus_security": "comma-separated meta.security codes of the bundle (e.g. R,PSY or R,42CFRPart2,...)",
    "content-type": "media type of the value",
    "carebus_dlq_reason": "machine-readable dead-letter reason (schema-violation, mapping-failed, ...)",
}

PAYLOADS: dict[str, dict[str, Any]] = {
    FHIR_BUNDLES.suffix: {
        "description": "A FHIR R4 (4.0.1) Bundle of type collection; every resource carries meta.security.",
        "$ref": "https://hl7.org/fhir/R4/bundle.schema.json",
    },
    SAFETY_ALERTS.suffix: {
        "type": "object",
        "required": ["kind", "patient", "flag", "event_id", "raised_at"],
        "properties": {
            "kind": {"enum": ["phq9-item9", "cssrs-high-risk", "epds-item10", "risk-flag", "escalation"]},
            "patient": {"type": "string", "description": "Patient/<id>"},
            "flag": {"type": "string", "description": "Flag/<id> in the bundle of the same event"},
            "task": {"type": "string", "description": "escalation only: Task/<id> of the safety Task"},
            "level": {"type": "integer", "description": "escalation only: how many times it was escalated"},
            "owner": {"type": "string", "description": "escalation only: the Task's new owner (reference)"},
            "event_id": {"type": "string"},
            "detail": {"type": "string", "description": "fixed phrase, never free text"},
            "raised_at": {"type": "string", "format": "date-time"},
        },
    },
    DEAD_LETTERS.suffix: {
        "type": "object",
        "required": ["reason", "message", "stage", "source", "original"],
        "properties": {
            "reason": {"type": "string"},
            "message": {"type": "string", "description": "what is wrong, without PHI"},
            "problems": {"type": "array", "items": {"type": "object", "properties": {
                "location": {"type": "string"}, "rule": {"type": "string"}, "message": {"type": "string"}}}},
            "stage": {"type": "string"},
            "event_id": {"type": "string"},
            "event_type": {"type": "string"},
            "source": {"type": "object", "description": "topic, partition, offset, key, timestamp_ms of the original"},
            "headers": {"type": "object"},
            "original": {"type": "object", "description": "{encoding: utf-8|base64, value}: the original record"},
        },
    },
    OUTCOMES.suffix: {
        "type": "object",
        "required": ["id", "kind", "instrument", "patient", "episode", "date"],
        "properties": {
            "id": {"type": "string", "description": "deterministic id of the change (a replay repeats it)"},
            "kind": {"enum": ["episode-started", "response-reached", "partial-response-reached",
                              "remission-reached", "deterioration", "follow-up-overdue"]},
            "instrument": {"enum": ["phq-9", "gad-7"]},
            "patient": {"type": "string", "description": "Patient/<id> of the episode's index score"},
            "episode": {"type": "string", "description": "Observation/<id>: the derived episode Observation"},
            "state": {"type": "string", "description": "the episode's state after the change"},
            "date": {"type": "string", "format": "date", "description": "clinical date of the change"},
            "score": {"type": ["string", "null"], "description": "Observation/<id> of the score behind it"},
        },
    },
    RECORD_CHANGES.suffix: {
        "type": "object",
        "required": ["resourceType", "id", "versionId", "lastUpdated", "change", "security", "restriction"],
        "properties": {
            "resourceType": {"type": "string"},
            "id": {"type": "string"},
            "versionId": {"type": "integer", "description": "meta.versionId of the new version (from 1)"},
            "lastUpdated": {"type": "string", "format": "date-time", "description": "meta.lastUpdated"},
            "change": {"enum": ["created", "updated", "deleted"]},
            "patient": {"type": ["string", "null"], "description": "Patient/<id> the resource belongs to"},
            "person": {"type": ["string", "null"], "description": "the person (linked Patients) at commit time"},
            "members": {"type": "array", "items": {"type": "string"},
                        "description": "every Patient/<id> of that person (identity links, merges)"},
            "security": {"type": "array", "items": {"type": "string"}, "description": "meta.security codes"},
            "restriction": {"type": "integer", "description": "clearance bits the labels need (record access)"},
            "resource": {"type": ["object", "null"], "description": "the version as the record API serves it "
                         "(null for a deletion)"},
        },
    },
    REPLAYED_DEAD_LETTERS.suffix: {
        "type": "object",
        "required": ["replayed_at"],
        "properties": {
            "replayed_at": {"type": "string", "format": "date-time"},
            "reason": {"type": "string", "description": "the dead letter's reason"},
            "source_offset": {"type": "integer", "description": "offset of the original inbound record"},
        },
    },
}


def _inbound_payload() -> dict[str, Any]:
    refs = [{"$ref": f"./events/{path.name}"} for path in sorted(EVENT_SCHEMAS.glob("*.schema.json"))
            if "envelope" not in path.name]
    refs.append({"description": f"HL7 v2 message: type {HL7V2_MESSAGE_EVENT_TYPE}, data = ER7 text"})
    refs.append({"description": f"FHIR R4 resource or Bundle: type {FHIR_RESOURCE_EVENT_TYPE}"})
    return {"oneOf": refs}


def _channel(spec: TopicSpec, prefix: str) -> dict[str, Any]:
    return {
        "address": spec.name(prefix),
        "description": spec.summary,
        "messages": {"record": {"$ref": f"#/components/messages/{_message_name(spec)}"}},
        "bindings": {"kafka": {
            "topic": spec.name(prefix),
            "topicConfiguration": {"cleanup.policy": [spec.cleanup_policy], "retention.ms": spec.retention_ms,
                                   "max.message.bytes": spec.max_message_bytes},
            "bindingVersion": "0.5.0",
        }},
    }


def _message_name(spec: TopicSpec) -> str:
    return "".join(part.capitalize() for part in spec.suffix.replace(".v1", "").split("."))


def build(prefix: str = DEFAULT_PREFIX) -> dict[str, Any]:
    messages = {}
    for spec in CATALOGUE:
        payload = _inbound_payload() if spec is INBOUND_EVENTS else PAYLOADS[spec.suffix]
        messages[_message_name(spec)] = {
            "contentType": spec.content_type,
            "summary": spec.summary,
            "headers": {"type": "object", "properties": {
                h: {"type": "string", "description": HEADER_DOCS[h]} for h in spec.headers}},
            "payload": payload,
            "bindings": {"kafka": {"key": {"type": "string", "description": spec.key}, "bindingVersion": "0.5.0"}},
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "carebus topics",
            "version": "1.0.0",
            "description": (
                "Every Kafka topic carebus creates. Generated from services/common/topics.py by "
                "`python -m services.common.asyncapi`; tests/test_contracts.py fails when they drift. Topic "
                f"names carry the configured prefix (CAREBUS_TOPIC_PREFIX, default '{prefix}')."),
        },
        "defaultContentType": "application/json",
        "servers": {"local": {"host": "127.0.0.1:9092", "protocol": "kafka",
                              "description": "the broker `make demo` starts"}},
        "channels": {_message_name(spec): _channel(spec, prefix) for spec in CATALOGUE},
        "operations": {
            f"receive{_message_name(spec)}": {"action": "receive",
                                               "channel": {"$ref": f"#/channels/{_message_name(spec)}"}}
            for spec in CATALOGUE
        },
        "components": {"messages": messages},
    }


def render(prefix: str = DEFAULT_PREFIX) -> str:
    return yaml.safe_dump(json.loads(json.dumps(build(prefix))), sort_keys=False, width=110)


def main() -> None:
    Path(ASYNCAPI_PATH).write_text(render())
    print(ASYNCAPI_PATH)


if __name__ == "__main__":
    main()
