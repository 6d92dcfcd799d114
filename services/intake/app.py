"""The intake HTTP API: care events, HL7 v2 messages and FHIR resources in, durable on Kafka before the answer.

POST /events accepts one CloudEvent (application/cloudevents+json or application/json) or a batch
(application/cloudevents-batch+json, or a JSON array). A batch is validated whole: if any event breaks its
contract, nothing is written and the problem detail names every broken event, field and rule. Otherwise every
event is written with acks=all and the 202 is sent only after the broker acknowledged all of them. Kafka
unreachable -> 503 with Retry-After (retrying the same batch is safe: ids are deterministic downstream).

POST /hl7v2 takes one HL7 v2 message (text/plain or x-application/hl7-v2+er7) for senders that use HTTP instead
of MLLP, and answers with the same ACK the MLLP listener gives (AA 200, AE 400, AR 503 + Retry-After).

POST /fhir takes a FHIR R4 resource or a transaction/batch/collection Bundle (application/fhir+json) from a
system named by the X-Carebus-Source header (a URI). Every resource is validated first (422 OperationOutcome
naming the resource and element); psychotherapy notes are refused. 202 with an OperationOutcome once durable.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response

from services.common.errors import BrokerUnavailable, EventValidationError, FieldProblem, InvalidInput
from services.common.events import CareEvent, parse_event, patient_key
from services.common.fhir_ids import patient_key as make_patient_key
from services.common.http import add_operational_routes, problem
from services.common.kafka import OutboundRecord, RecordProducer
from services.common.metrics import Metrics
from services.common.settings import Settings
from services.common.topics import (
    FHIR_RESOURCE_EVENT_TYPE,
    INBOUND_EVENTS,
)
from services.intake.admission import AdmissionLimit
from services.intake.inbound import inbound_record
from services.intake.mllp import Acceptor, KafkaHl7Acceptor
from services.mapper.fhir_in import check_resources

log = logging.getLogger(__name__)

JSON_TYPES = ("application/json", "application/cloudevents+json", "application/cloudevents-batch+json")
HL7_TYPES = ("text/plain", "x-application/hl7-v2+er7", "application/hl7-v2", "application/hl7-v2+er7")
FHIR_TYPES = ("application/fhir+json", "application/json")
RETRY_AFTER_S = "5"
HL7_HTTP_STATUS = {"AA": 200, "AE": 400, "AR": 503}


def operation_outcome(status: int, severity: str, code: str, problems: Sequence[FieldProblem] = (),
                      diagnostics: str | None = None, headers: dict[str, str] | None = None,
                      **extensions: Any) -> Response:
    """A FHIR OperationOutcome answer; ``diagnostics`` and problems never carry PHI."""
    issues: list[dict[str, Any]] = [
        {"severity": severity, "code": code, "diagnostics": f"{p.rule}: {p.message}", "expression": [p.location]}
        for p in problems
    ]
    if diagnostics is not None or not issues:
        issues.insert(0, {"severity": severity, "code": code, "diagnostics": diagnostics or code})
    body = {"resourceType": "OperationOutcome", "issue": issues, **extensions}
    return Response(orjson.dumps(body), status_code=status, media_type="application/fhir+json", headers=headers)


def fhir_patient_key(source: str, resources: Sequence[dict[str, Any]]) -> str:
    """Key FHIR-in records by the source patient: a Patient in the payload, else the first subject/patient."""
    for resource in resources:
        if resource.get("resourceType") == "Patient" and resource.get("id"):
            return make_patient_key(source, str(resource["id"]))
    for resource in resources:
        for element in ("subject", "patient"):
            reference = resource.get(element)
            ref = reference.get("reference") if isinstance(reference, dict) else None
            if isinstance(ref, str) and ref.startswith("Patient/"):
                return make_patient_key(source, ref.split("/", 1)[1])
    return make_patient_key(source, "-")


def event_record(topic: str, event: CareEvent, correlation_id: str) -> OutboundRecord:
    """The Kafka record for one accepted JSON event: its canonical JSON, keyed by source patient."""
    body = event.model_dump(mode="json", by_alias=True, exclude_none=True)
    return inbound_record(topic, patient_key(event), body, event.time.isoformat(), correlation_id)


def _problems_json(index: int | None, problems: Sequence[FieldProblem]) -> list[dict[str, Any]]:
    out = []
    for p in problems:
        item: dict[str, Any] = {"location": p.location, "rule": p.rule, "message": p.message}
        if index is not None:
            item["event_index"] = index
        out.append(item)
    return out


def create_app(settings: Settings, producer: RecordProducer, metrics: Metrics,
               readiness: Callable[[], tuple[bool, str]], hl7_acceptor: Acceptor | None = None) -> FastAPI:
    app = FastAPI(title="carebus intake", version="1", docs_url="/docs", redoc_url=None)
    topic = INBOUND_EVENTS.name(settings.topic_prefix)
    add_operational_routes(app, metrics, readiness)
    app.add_middleware(AdmissionLimit, max_pending=settings.intake_max_pending, metrics=metrics)
    accept_hl7 = hl7_acceptor or KafkaHl7Acceptor(producer, topic, metrics=metrics,
                                                  recent_per_sender=settings.mllp_recent_control_ids)

    @app.post("/hl7v2", response_model=None)
    async def post_hl7v2(request: Request) -> Response:
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type not in HL7_TYPES:
            return rejected("unsupported-media-type", problem(
                415, "unsupported-media-type", "Unsupported media type", f"send one of {', '.join(HL7_TYPES)}"))
        body = await request.body()
        if len(body) > settings.mllp_max_frame_bytes:
            return rejected("too-large", problem(
                413, "too-large", "Message too large", f"message exceeds {settings.mllp_max_frame_bytes} bytes"))
        outcome = await accept_hl7(body.decode("utf-8", errors="replace"))
        metrics.mllp_acks.labels(code=outcome.code).inc()
        headers = {"Retry-After": RETRY_AFTER_S} if outcome.code == "AR" else None
        return Response(outcome.ack.replace("\r", "\r\n"), status_code=HL7_HTTP_STATUS[outcome.code],
                        media_type="x-application/hl7-v2+er7", headers=headers)

    @app.post("/fhir", response_model=None)
    async def post_fhir(request: Request) -> Response:
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type not in FHIR_TYPES:
            metrics.events_rejected.labels(reason="unsupported-media-type", channel="fhir").inc()
            return operation_outcome(415, "error", "not-supported",
                                     diagnostics=f"send one of {', '.join(FHIR_TYPES)}")
        source = request.headers.get("x-carebus-source", "")
        if ":" not in source or len(source) > 256:
            metrics.events_rejected.labels(reason="missing-source", channel="fhir").inc()
            return operation_outcome(400, "error", "required", diagnostics=(
                "name the sending system in the X-Carebus-Source header (a URI such as urn:carebus:source:x)"))
        body = await request.body()
        if len(body) > settings.max_body_bytes:
            metrics.events_rejected.labels(reason="too-large", channel="fhir").inc()
            return operation_outcome(413, "error", "too-costly",
                                     diagnostics=f"body exceeds {settings.max_body_bytes} bytes")
        try:
            payload = orjson.loads(body)
            resources = [resource for _, resource in check_resources(payload)]
        except orjson.JSONDecodeError as exc:
            metrics.events_rejected.labels(reason="malformed-json", channel="fhir").inc()
            return operation_outcome(400, "error", "structure", diagnostics=f"body is not JSON (byte {exc.pos})")
        except InvalidInput as exc:
            metrics.events_rejected.labels(reason=exc.reason, channel="fhir").inc()
            code = "security" if exc.reason == "refused-content" else "invalid"
            return operation_outcome(422, "error", code, exc.problems, diagnostics=exc.message)
        event_id = request.headers.get("x-carebus-event-id") or hashlib.sha256(
            source.encode() + b"\n" + body).hexdigest()[:32]
        now = datetime.now(UTC)
        correlation_id = request.headers.get("x-correlation-id") or event_id
        envelope = {"specversion": "1.0", "id": event_id, "source": source, "type": FHIR_RESOURCE_EVENT_TYPE,
                    "time": now.isoformat(), "datacontenttype": "application/fhir+json", "data": payload}
        record = inbound_record(topic, fhir_patient_key(source, resources), envelope, now.isoformat(),
                                correlation_id)
        try:
            meta = (await producer.send_all_async([record]))[0]
        except BrokerUnavailable:
            metrics.produce_errors.labels(topic=topic).inc()
            metrics.events_rejected.labels(reason="kafka-unavailable", channel="fhir").inc()
            return operation_outcome(503, "error", "transient", headers={"Retry-After": RETRY_AFTER_S},
                                     diagnostics="not durably written; retry later")
        metrics.accepted(FHIR_RESOURCE_EVENT_TYPE, "fhir", source)
        log.info("fhir accepted", extra={"event_id": event_id, "resources": len(resources),
                                         "offset": f"{meta.topic}/{meta.partition}/{meta.offset}"})
        return operation_outcome(
            202, "information", "informational",
            diagnostics=f"accepted {len(resources)} resource(s) as event {event_id}",
            headers={"X-Correlation-Id": correlation_id})

    def rejected(reason: str, response: Response) -> Response:
        metrics.events_rejected.labels(reason=reason, channel="http").inc()
        return response

    @app.post("/events", status_code=202, response_model=None)
    async def post_events(request: Request) -> Response:
        started = time.perf_counter()
        response = await _accept_events(request)
        metrics.request_seconds.labels(route="/events", status=str(response.status_code)).observe(
            time.perf_counter() - started)
        return response

    async def _accept_events(request: Request) -> Response:
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type not in JSON_TYPES:
            return rejected("unsupported-media-type", problem(
                415, "unsupported-media-type", "Unsupported media type",
                f"send one of {', '.join(JSON_TYPES)}"))
        body = await request.body()
        if len(body) > settings.max_body_bytes:
            return rejected("too-large", problem(
                413, "too-large", "Request too large", f"body exceeds {settings.max_body_bytes} bytes"))
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return rejected("malformed-json", problem(
                400, "malformed-json", "Malformed JSON", f"body is not JSON (at byte {exc.pos})"))
        is_batch = isinstance(payload, list)
        items: list[Any] = payload if is_batch else [payload]
        if not items:
            return rejected("empty-batch", problem(400, "empty-batch", "Empty batch", "the batch holds no events"))
        if len(items) > settings.max_batch_events:
            return rejected("too-large", problem(
                413, "batch-too-large", "Batch too large",
                f"{len(items)} events; at most {settings.max_batch_events} per request"))

        events: list[CareEvent] = []
        errors: list[dict[str, Any]] = []
        refused = False
        for index, item in enumerate(items):
            try:
                events.append(parse_event(item))
            except EventValidationError as exc:
                refused = refused or any(p.rule == "psychotherapy-note-refused" for p in exc.problems)
                errors.extend(_problems_json(index if is_batch else None, exc.problems))
        if errors:
            slug = "refused-content" if refused else "invalid-event"
            title = "Content refused" if refused else "Invalid event"
            broken = len({e.get("event_index", 0) for e in errors})
            detail = f"{broken} of {len(items)} event(s) rejected; nothing was accepted"
            metrics.events_rejected.labels(reason=slug, channel="http").inc(broken)
            return problem(422, slug, title, detail, errors=errors)

        correlation_id = request.headers.get("x-correlation-id") or str(uuid.uuid4())
        records = [event_record(topic, event, correlation_id) for event in events]
        try:
            metas = await producer.send_all_async(records)
        except BrokerUnavailable as exc:
            metrics.produce_errors.labels(topic=topic).inc()
            log.warning("intake write failed", extra={"events": len(records), "error": str(exc)})
            return rejected("kafka-unavailable", problem(
                503, "kafka-unavailable", "Event store unavailable",
                "the events were not durably written; retry later", headers={"Retry-After": RETRY_AFTER_S}))
        for event in events:
            metrics.accepted(event.type, "http", event.source)
        accepted = [
            {"id": event.id, "type": event.type, "topic": meta.topic, "partition": meta.partition,
             "offset": meta.offset}
            for event, meta in zip(events, metas, strict=True)
        ]
        log.info("events accepted", extra={
            "count": len(accepted), "correlation_id": correlation_id,
            "events": [f"{a['id']}@{a['topic']}/{a['partition']}/{a['offset']}" for a in accepted]})
        return Response(
            orjson.dumps({"accepted": len(accepted), "correlation_id": correlation_id, "events": accepted}),
            status_code=202, media_type="application/json", headers={"X-Correlation-Id": correlation_id})

    return app
