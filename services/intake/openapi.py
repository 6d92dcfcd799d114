"""What intake's OpenAPI document (/openapi.json) says about its routes: request bodies and media types (JSON care
events as CloudEvents, batches, FHIR, HL7 v2 ER7), every answer (202 / ACK, problem details, OperationOutcome,
503 + Retry-After) and the bearer token. Route metadata only: the routes themselves live in app.py, and the
event schemas come from the pydantic models (services/common/events), so the document cannot drift from them.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import TypeAdapter

from services.common.events import CareEvent
from services.common.http import PROBLEM_JSON

Obj = dict[str, Any]

CLOUDEVENT = "application/cloudevents+json"
CLOUDEVENT_BATCH = "application/cloudevents-batch+json"
FHIR_JSON = "application/fhir+json"
ER7 = "x-application/hl7-v2+er7"


def _ref(name: str) -> Obj:
    return {"$ref": f"#/components/schemas/{name}"}


RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying (the write is safe to repeat: ids "
                                              "are deterministic)", "schema": {"type": "integer"}}}
CORRELATION = {"X-Correlation-Id": {"description": "the correlation id that follows the request through carebus",
                                    "schema": {"type": "string"}}}


def _problem(description: str, headers: Obj | None = None) -> Obj:
    answer: Obj = {"description": description, "content": {PROBLEM_JSON: {"schema": _ref("ProblemDetail")}}}
    if headers:
        answer["headers"] = headers
    return answer


def _outcome(description: str, headers: Obj | None = None) -> Obj:
    answer: Obj = {"description": description, "content": {FHIR_JSON: {"schema": _ref("OperationOutcome")}}}
    if headers:
        answer["headers"] = headers
    return answer


def _ack(description: str, headers: Obj | None = None) -> Obj:
    answer: Obj = {"description": description, "content": {ER7: {"schema": _ref("Hl7v2Ack")}}}
    if headers:
        answer["headers"] = headers
    return answer


EVENTS: Obj = {
    "summary": "Send one JSON care event or a batch",
    "description": "A CloudEvent 1.0 in structured mode, or a JSON array of them. Acknowledged (202) only once "
                   "every event is durable in Kafka (acks=all); a batch is validated whole, and if any event "
                   "breaks its contract nothing is written.",
    "status_code": 202,
    "openapi_extra": {"requestBody": {"required": True, "content": {
        CLOUDEVENT: {"schema": _ref("CareEvent")},
        CLOUDEVENT_BATCH: {"schema": {"type": "array", "minItems": 1, "items": _ref("CareEvent"),
                                      "description": "at most CAREBUS_MAX_BATCH_EVENTS events (500)"}},
        "application/json": {"schema": {"oneOf": [
            _ref("CareEvent"), {"type": "array", "minItems": 1, "items": _ref("CareEvent")}]}},
    }}},
    "responses": {
        "202": {"description": "every event is durable in Kafka", "headers": CORRELATION,
                "content": {"application/json": {"schema": _ref("EventsAccepted")}}},
        "400": _problem("not JSON (malformed-json) or an empty batch"),
        "401": _problem("no or unknown sender token"),
        "403": _problem("the token may not send for this event's source"),
        "413": _problem("body larger than CAREBUS_MAX_BODY_BYTES, or more events than CAREBUS_MAX_BATCH_EVENTS"),
        "415": _problem("not one of the CloudEvents JSON media types"),
        "422": _problem("an event breaks its contract (errors[]: location, rule, message, and event_index in a "
                        "batch), or carries content carebus refuses (psychotherapy notes, SUD counseling notes)"),
        "503": _problem("Kafka did not acknowledge in time, or intake is at capacity: retry", RETRY_AFTER),
    },
}

HL7V2: Obj = {
    "summary": "Send one HL7 v2 message (the MLLP listener's answer, over HTTP)",
    "description": "The message in ER7 (segments separated by CR). The answer is the HL7 ACK: AA only after the "
                   "message is durable in Kafka; a resend of the same MSH-10 from the same sender is acknowledged "
                   "again without a second record.",
    "status_code": 200,
    "openapi_extra": {"requestBody": {"required": True, "content": {
        media: {"schema": {"type": "string", "description": "an HL7 v2 message, ER7 encoding"}}
        for media in (ER7, "application/hl7-v2+er7", "application/hl7-v2", "text/plain")}}},
    "responses": {
        "200": _ack("AA: the message is durable in Kafka"),
        "400": _ack("AE: a content error; the ERR segment names the segment and field"),
        "401": _ack("AR: no or unknown sender token"),
        "403": _ack("AR: the token may not send for this MSH-4"),
        "413": _ack("AR: larger than CAREBUS_MLLP_MAX_FRAME_BYTES"),
        "415": _ack("AR: not an HL7 v2 media type"),
        "422": _ack("AR: a message type or version carebus does not take"),
        "503": _ack("AR: Kafka did not acknowledge in time: retry", RETRY_AFTER),
    },
}

FHIR: Obj = {
    "summary": "Send a FHIR R4 resource or Bundle (transaction, batch or collection)",
    "description": "Every resource is validated first; ids are re-keyed to the sending system named in "
                   "X-Carebus-Source. Accepted (202) once the event is durable in Kafka.",
    "status_code": 202,
    "openapi_extra": {
        "parameters": [
            {"name": "X-Carebus-Source", "in": "header", "required": True,
             "description": "the sending system, a URI (e.g. urn:carebus:source:calmly-app)",
             "schema": {"type": "string", "maxLength": 256}},
            {"name": "X-Carebus-Event-Id", "in": "header", "required": False,
             "description": "the sender's id of this submission (default: a hash of source and body)",
             "schema": {"type": "string"}},
        ],
        "requestBody": {"required": True, "content": {
            media: {"schema": _ref("FhirResource")} for media in (FHIR_JSON, "application/json")}},
    },
    "responses": {
        "202": _outcome("accepted: an informational OperationOutcome naming the event", CORRELATION),
        "400": _outcome("not JSON, or no X-Carebus-Source"),
        "401": _outcome("no or unknown sender token"),
        "403": _outcome("the token may not send for this source"),
        "413": _outcome("body larger than CAREBUS_MAX_BODY_BYTES"),
        "415": _outcome("not application/fhir+json"),
        "422": _outcome("a resource breaks FHIR R4 (the issue names the resource and element), or carries "
                        "content carebus refuses"),
        "503": _outcome("Kafka did not acknowledge in time: retry", RETRY_AFTER),
    },
}


def _schemas() -> Obj:
    events = TypeAdapter(CareEvent).json_schema(ref_template="#/components/schemas/{model}")
    defs: Obj = events.pop("$defs", {})
    events.pop("discriminator", None)  # OpenAPI's discriminator needs a mapping onto components: the oneOf's
    # members each fix "type" to one constant, so exactly one matches anyway
    schemas: Obj = {**defs, "CareEvent": {**events, "description": "A JSON care event (CloudEvents 1.0, "
                                                                     "structured): `type` selects its data."}}
    schemas["ProblemDetail"] = {
        "type": "object", "required": ["type", "title", "status", "detail"],
        "description": "RFC 9457 problem detail; never carries PHI",
        "properties": {
            "type": {"type": "string", "format": "uri"}, "title": {"type": "string"},
            "status": {"type": "integer"}, "detail": {"type": "string"},
            "errors": {"type": "array", "items": {"type": "object", "required": ["location", "rule", "message"],
                                                  "properties": {
                "event_index": {"type": "integer", "description": "the event's index in a batch"},
                "location": {"type": "string"}, "rule": {"type": "string"}, "message": {"type": "string"}}}},
        },
    }
    schemas["EventsAccepted"] = {
        "type": "object", "required": ["accepted", "correlation_id", "events"],
        "properties": {
            "accepted": {"type": "integer"}, "correlation_id": {"type": "string"},
            "events": {"type": "array", "items": {"type": "object",
                                                  "required": ["id", "type", "topic", "partition", "offset"],
                                                  "properties": {
                "id": {"type": "string"}, "type": {"type": "string"}, "topic": {"type": "string"},
                "partition": {"type": "integer"}, "offset": {"type": "integer"}}}},
        },
    }
    schemas["OperationOutcome"] = {
        "type": "object", "required": ["resourceType", "issue"],
        "description": "FHIR R4 OperationOutcome",
        "properties": {
            "resourceType": {"const": "OperationOutcome"},
            "issue": {"type": "array", "minItems": 1, "items": {"type": "object", "required": ["severity", "code"],
                                                               "properties": {
                "severity": {"enum": ["fatal", "error", "warning", "information"]},
                "code": {"type": "string"}, "diagnostics": {"type": "string"},
                "expression": {"type": "array", "items": {"type": "string"}}}}},
        },
    }
    schemas["FhirResource"] = {
        "type": "object", "required": ["resourceType"],
        "description": "A FHIR R4 resource or Bundle (https://hl7.org/fhir/R4/fhir.schema.json)",
        "properties": {"resourceType": {"type": "string"}},
    }
    schemas["Hl7v2Ack"] = {"type": "string", "description": "an HL7 v2 ACK in ER7 (MSH, MSA with AA/AE/AR, ERR)"}
    return schemas


def describe(app: FastAPI) -> None:
    """Give ``app`` an OpenAPI document with intake's components and bearer-token security."""
    cached: list[Obj] = []

    def openapi() -> Obj:
        if not cached:
            document = get_openapi(title=app.title, version=app.version, routes=app.routes,
                                   description="carebus intake: care events, HL7 v2 and FHIR in; every write "
                                               "acknowledged only once durable in Kafka.")
            components = document.setdefault("components", {})
            components.setdefault("schemas", {}).update(_schemas())
            components["securitySchemes"] = {"senderToken": {
                "type": "http", "scheme": "bearer",
                "description": "a sender token (CAREBUS_INTAKE_TOKENS); optional when anonymous writes are allowed"}}
            for path in ("/events", "/hl7v2", "/fhir"):
                for operation in document["paths"].get(path, {}).values():
                    operation["security"] = [{"senderToken": []}, {}]
            cached.append(document)
        return cached[0]

    app.openapi = openapi  # type: ignore[method-assign]

