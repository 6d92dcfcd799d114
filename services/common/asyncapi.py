"""Builds the AsyncAPI 3 topic catalogue (schemas/asyncapi.yaml) from services/common/topics.py.

    python -m services.common.asyncapi          # rewrite schemas/asyncapi.yaml
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_args

import yaml

from services.common.audit import AUDIT_CE_TYPE
from services.common.event_headers import (
    BUNDLE_EVENT_TYPE,
    DEAD_LETTER_EVENT_TYPE,
    MAPPER_SOURCE,
    OPERATOR_SOURCE,
    OUTCOMES_SOURCE,
    RECORD_SOURCE,
    REPLAYED_DEAD_LETTER_EVENT_TYPE,
    SAFETY_ALERT_EVENT_TYPE,
)
from services.common.settings import REPO_ROOT
from services.common.topics import (
    AUDIT_EVENTS,
    CATALOGUE,
    CHANGE_KINDS,
    DEAD_LETTERS,
    ESCALATION_ALERT_KIND,
    FHIR_BUNDLES,
    FHIR_RESOURCE_EVENT_TYPE,
    GENERAL_BUNDLES,
    HL7V2_MESSAGE_EVENT_TYPE,
    INBOUND_EVENTS,
    MAPPER_ALERT_KINDS,
    OUTCOMES,
    RECORD_CHANGES,
    REPLAYED_DEAD_LETTERS,
    SAFETY_ALERTS,
    EpisodeState,
    OutcomeChangeKind,
    TopicSpec,
    TrackedInstrument,
)

ASYNCAPI_PATH = REPO_ROOT / "schemas" / "asyncapi.yaml"
EVENT_SCHEMAS = REPO_ROOT / "schemas" / "events"
DEFAULT_PREFIX = "carebus"

_BINARY_MODE = (" (CloudEvents Kafka binding: binary mode, except on the inbound topic, where the value is the "
                "structured CloudEvent as sent and the ce_ headers repeat its attributes)")
HEADER_DOCS = {
    "ce_specversion": "CloudEvents spec version: always 1.0" + _BINARY_MODE,
    "ce_id": "CloudEvent id. Inbound: the sender's event id. Bundle: the Bundle's id; alert: its Flag's id (an "
             "escalation: its own id); dead letter: '<topic>/<partition>/<offset>' of the record it refused; "
             "replay ledger: the ledger key; audit: the AuditEvent's id; outcome change: the change's id (all "
             "deterministic, so a replay repeats the same id)",
    "ce_type": "CloudEvent type. Inbound: the care event's type, e.g. org.carebus.assessment.completed.v1; "
               f"bundle: {BUNDLE_EVENT_TYPE}; alert: {SAFETY_ALERT_EVENT_TYPE}; dead letter: "
               f"{DEAD_LETTER_EVENT_TYPE}; replay ledger: {REPLAYED_DEAD_LETTER_EVENT_TYPE}; audit: "
               f"{AUDIT_CE_TYPE}; outcome change: org.carebus.outcome.changed.v1",
    "ce_source": f"CloudEvent source. Inbound: the sending system; otherwise the writing service: {MAPPER_SOURCE}, "
                 f"{RECORD_SOURCE} (identity links, audit, the record's dead letters), {OUTCOMES_SOURCE} or "
                 f"{OPERATOR_SOURCE} (replay ledger)",
    "ce_time": "CloudEvent time (RFC 3339). Inbound: the event's time; bundle, alert and dead letter: when the "
               "record they came from was received; audit: AuditEvent.recorded",
    "ce_carebuseventid": "CloudEvent extension carebuseventid: the id of the inbound event this record came from "
                         "(the lineage id)",
    "ce_carebuseventtype": "CloudEvent extension carebuseventtype: the type of the inbound event this record "
                           "came from",
    "carebus_correlation_id": "correlation id that follows one request through every service",
    "carebus_security": "security labels of the whole bundle (its meta.security): a JSON array of FHIR tokens "
                        "'<system>|<code>' (a bare code for a sender's label of a system carebus does not know), most "
                        "restrictive confidentiality first; '[]' when there are none. "
                        'E.g. ["http://terminology.hl7.org/CodeSystem/v3-Confidentiality|R",'
                        '"http://terminology.hl7.org/CodeSystem/v3-ActCode|PSY"]',
    "content-type": "media type of the value: the CloudEvent's datacontenttype (binary mode); on the inbound topic "
                    "application/cloudevents+json (structured mode: the value is the whole CloudEvent)",
    "carebus_dlq_reason": "machine-readable dead-letter reason (schema-violation, mapping-failed, ...)",
    "carebus_hl7v2_control_id": "HL7 v2 messages only: the sending application (MSH-3) and MSH-10 the message "
                                "was accepted under, so a restarted intake tells a resend from a reused control id",
}

_FHIR_TOKENS = {
    "type": "array",
    "items": {"type": "string", "pattern": "^[^|]+(\\|[^|]+)?$"},
}
HEADER_SCHEMAS: dict[str, dict[str, Any]] = {
    "ce_specversion": {"const": "1.0"},
    "carebus_security": {"contentMediaType": "application/json", "contentSchema": _FHIR_TOKENS,
                         "examples": ["[]", '["http://terminology.hl7.org/CodeSystem/v3-Confidentiality|R",'
                                            '"http://terminology.hl7.org/CodeSystem/v3-ActCode|PSY"]']},
}

# What carebus emits on the bundle topic, described offline: the Bundle envelope carebus guarantees. Each
# resource is FHIR R4 (4.0.1; schema: https://hl7.org/fhir/R4/fhir.schema.json) and passes the HL7 validator.
FHIR_BUNDLE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A FHIR R4 (4.0.1) Bundle of type collection; every resource carries meta.security. "
                   "Resources follow the FHIR R4 JSON schema (https://hl7.org/fhir/R4/fhir.schema.json).",
    "required": ["resourceType", "id", "type"],
    "properties": {
        "resourceType": {"const": "Bundle"},
        "id": {"type": "string", "pattern": "^[A-Za-z0-9\\-.]{1,64}$"},
        "type": {"const": "collection"},
        "timestamp": {"type": "string", "format": "date-time"},
        "meta": {"type": "object", "properties": {
            "security": {"type": "array", "items": {"$ref": "#/components/schemas/Coding"}}}},
        "entry": {"type": "array", "items": {
            "type": "object", "required": ["fullUrl", "resource"],
            "properties": {
                "fullUrl": {"type": "string"},
                "resource": {"type": "object", "required": ["resourceType", "id"], "properties": {
                    "resourceType": {"type": "string"}, "id": {"type": "string"},
                    "meta": {"type": "object", "properties": {
                        "security": {"type": "array", "items": {"$ref": "#/components/schemas/Coding"}}}},
                }},
            },
        }},
    },
}
AUDIT_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A FHIR R4 AuditEvent (https://hl7.org/fhir/R4/auditevent.html), passing the HL7 validator.",
    "required": ["resourceType", "id", "type", "recorded", "agent", "source"],
    "properties": {
        "resourceType": {"const": "AuditEvent"}, "id": {"type": "string"},
        "type": {"$ref": "#/components/schemas/Coding"}, "recorded": {"type": "string", "format": "date-time"},
        "outcome": {"enum": ["0", "4", "8", "12"]},
        "agent": {"type": "array", "minItems": 1, "items": {"type": "object"}},
        "source": {"type": "object"}, "entity": {"type": "array", "items": {"type": "object"}},
    },
}
CODING_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["system", "code"],
    "properties": {"system": {"type": "string"}, "code": {"type": "string"}, "display": {"type": "string"}},
}

PAYLOADS: dict[str, dict[str, Any]] = {
    FHIR_BUNDLES.suffix: {"$ref": "#/components/schemas/FhirBundle"},
    SAFETY_ALERTS.suffix: {
        "description": "Two kinds of record, told apart by kind: a safety alert the mapper raised from one inbound "
        "event, and the outcomes service's escalation of a safety Task nobody acknowledged in time.",
        "oneOf": [
            {"title": "SafetyAlert", "type": "object", "additionalProperties": False,
             "required": ["kind", "patient", "flag", "event_id", "detail", "raised_at"],
             "properties": {
                 "kind": {"enum": list(MAPPER_ALERT_KINDS)},
                 "patient": {"type": "string", "description": "Patient/<id>"},
                 "flag": {"type": "string", "description": "Flag/<id> in the bundle of the same event"},
                 "event_id": {"type": "string", "description": "the inbound event's id"},
                 "detail": {"type": "string", "description": "fixed phrase, never free text"},
                 "raised_at": {"type": "string", "format": "date-time",
                               "description": "when the inbound record was received"},
             }},
            {"title": "Escalation", "type": "object", "additionalProperties": False,
             "required": ["kind", "patient", "flag", "task", "level", "owner", "event_id", "detail", "raised_at"],
             "properties": {
                 "kind": {"const": ESCALATION_ALERT_KIND},
                 "patient": {"type": "string", "description": "Patient/<id>"},
                 "flag": {"type": "string", "description": "the safety Task's focus (Flag/<id>, or Observation/<id>)"},
                 "task": {"type": "string", "description": "Task/<id> of the safety Task"},
                 "level": {"type": "integer", "minimum": 1, "description": "how many times it was escalated"},
                 "owner": {"type": "string", "description": "the Task's new owner (reference)"},
                 "event_id": {"type": "string", "description": "deterministic id of this escalation"},
                 "detail": {"type": "string", "description": "fixed phrase, never free text"},
                 "raised_at": {"type": "string", "format": "date-time", "description": "when it was escalated"},
             }},
        ],
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
    AUDIT_EVENTS.suffix: {
        "description": "A FHIR R4 AuditEvent after IHE BALP (services/common/audit.py): rest read/search/operation "
        "(PatientRead / PatientQuery; outcome 4 = refused by the disclosure policy) or DICOM 110106 Export with "
        "ISO 21089 disclose (a pushed notification). Names the client, the recipient organization (IRCP, the "
        "permitting consents in agent.policy), the patient, the disclosed resources and consents by reference; "
        "never content.",
        "allOf": [{"$ref": "#/components/schemas/AuditEvent"}],
    },
    GENERAL_BUNDLES.suffix: {
        "description": "The Bundle of fhir.bundles.v1 with every resource labelled PSY/MH/BH, SUD/42CFRPart2, "
        "ETHUD/OPIOIDUD/ETH or PSYTHPN removed (and references to them kept as they are); a Bundle with nothing "
        "left is still written (empty collection) so keys and order stay those of the full topic. Part 2 data "
        "never appears here: its disclosures (record API, notifications) carry a Provenance with the "
        "42 CFR 2.32 notice (README: Part 2 disclosure package).",
        "allOf": [{"$ref": "#/components/schemas/FhirBundle"}],
    },
    OUTCOMES.suffix: {
        "type": "object",
        "required": ["id", "kind", "instrument", "patient", "episode", "date"],
        "properties": {
            "id": {"type": "string", "description": "deterministic id of the change (a replay repeats it)"},
            "kind": {"enum": list(get_args(OutcomeChangeKind))},
            "instrument": {"enum": list(get_args(TrackedInstrument))},
            "patient": {"type": "string", "description": "Patient/<id> of the episode's index score"},
            "episode": {"type": "string", "description": "Observation/<id>: the derived episode Observation"},
            "state": {"enum": list(get_args(EpisodeState)), "description": "the episode's state after the change"},
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
            "change": {"enum": list(CHANGE_KINDS)},
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
    """One schema per inbound type, each fixing ``type`` to its own constant: exactly one matches an event."""
    care_events = [{"$ref": f"./events/{path.name}"}
                   for path in sorted(EVENT_SCHEMAS.glob("org.carebus.*.schema.json"))]
    return {"discriminator": "type", "oneOf": [
        *care_events, {"$ref": "#/components/schemas/Hl7v2Message"}, {"$ref": "#/components/schemas/FhirResource"}]}


def _envelope(event_type: str, description: str, content_type: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "required": ["specversion", "id", "source", "type", "time", "datacontenttype", "data"],
        "properties": {
            "specversion": {"const": "1.0"},
            "id": {"type": "string", "minLength": 1},
            "source": {"type": "string", "format": "uri-reference"},
            "type": {"const": event_type},
            "time": {"type": "string", "format": "date-time"},
            "datacontenttype": {"const": content_type},
            "data": data,
        },
    }


INBOUND_SCHEMAS: dict[str, dict[str, Any]] = {
    "Hl7v2Message": _envelope(
        HL7V2_MESSAGE_EVENT_TYPE, "An HL7 v2 message received over MLLP or HTTP: id = MSH-10 scoped to the sender, "
        "source = urn:carebus:hl7v2:<sending facility>", "application/hl7-v2+er7",
        {"type": "string", "description": "the message in ER7, segments separated by \\r"}),
    "FhirResource": _envelope(
        FHIR_RESOURCE_EVENT_TYPE, "A FHIR R4 resource or Bundle POSTed to intake's /fhir", "application/fhir+json",
        {"type": "object", "required": ["resourceType"], "properties": {"resourceType": {"type": "string"}}}),
}


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
                h: {"type": "string", "description": HEADER_DOCS[h], **HEADER_SCHEMAS.get(h, {})}
                for h in spec.headers}},
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
        "components": {
            "messages": messages,
            "schemas": {"FhirBundle": FHIR_BUNDLE_SCHEMA, "AuditEvent": AUDIT_EVENT_SCHEMA, "Coding": CODING_SCHEMA,
                        **INBOUND_SCHEMAS},
        },
    }


def render(prefix: str = DEFAULT_PREFIX) -> str:
    return yaml.safe_dump(json.loads(json.dumps(build(prefix))), sort_keys=False, width=110)


def main() -> None:
    Path(ASYNCAPI_PATH).write_text(render())
    print(ASYNCAPI_PATH)


if __name__ == "__main__":
    main()
