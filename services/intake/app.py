"""The intake HTTP API: care events, HL7 v2 messages and FHIR resources in, durable on Kafka before the answer.

Every write carries ``Authorization: Bearer <token>`` of a registered sender (services/intake/auth.py) and may
only name the sources that sender is registered for.

POST /events accepts one CloudEvent (application/cloudevents+json or application/json) or a batch
(application/cloudevents-batch+json, or a JSON array). A batch is validated whole: if any event breaks its
contract, nothing is written and the problem detail names every broken event, field and rule. Otherwise every
event is written with acks=all and the 202 is sent only after the broker acknowledged all of them. Kafka
unreachable -> 503 with Retry-After (retrying the same batch is safe: ids are deterministic downstream).

POST /hl7v2 takes one HL7 v2 message (text/plain or x-application/hl7-v2+er7) for senders that use HTTP instead
of MLLP, and answers with the same ACK the MLLP listener gives: AA 200, AE 400, AR for an unsupported message
422 (permanent), AR 503 + Retry-After when Kafka did not take it; refusals of the request itself (401, 403,
413, 415) are AR ACKs with that status.

POST /fhir takes a FHIR R4 resource or a transaction/batch/collection Bundle (application/fhir+json) from a
system named by the X-Carebus-Source header (a URI). Every resource is validated first (422 OperationOutcome
naming the resource and element); psychotherapy notes are refused. 202 with an OperationOutcome once durable.

Routes raise; the exception handlers below answer, each in its channel's form (problem detail, OperationOutcome
or HL7 ACK). Bodies are read at most ``max_body_bytes`` (``mllp_max_frame_bytes`` for HL7) into memory.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from fastapi import FastAPI, Request, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.errors import (
    BrokerUnavailable,
    EventValidationError,
    FieldProblem,
    InvalidInput,
    MalformedJson,
    RefusedContent,
)
from services.common.events import CareEvent, parse_event, patient_key
from services.common.fhir_ids import patient_key as make_patient_key
from services.common.fhir_payload import Rekeying, check_resources
from services.common.hl7v2 import ack_message
from services.common.hl7v2.er7 import parse_message
from services.common.hl7v2.errors import Hl7v2Error
from services.common.http import PROBLEM_BASE, PROBLEM_JSON, add_operational_routes, problem
from services.common.kafka import OutboundRecord, RecordWriter
from services.common.metrics import Metrics
from services.common.settings import Settings
from services.common.topics import (
    FHIR_RESOURCE_EVENT_TYPE,
    INBOUND_EVENTS,
)
from services.intake import openapi
from services.intake.admission import AdmissionLimit
from services.intake.auth import Sender, SenderRegistry
from services.intake.errors import (
    BadRequest,
    BatchRejected,
    BodyTooLarge,
    RequestRefused,
    UnsupportedMediaType,
)
from services.intake.hl7v2_acceptor import KafkaHl7Acceptor
from services.intake.inbound import inbound_record
from services.intake.mllp import Acceptor, decode_text

log = logging.getLogger(__name__)

JSON_TYPES = ("application/json", "application/cloudevents+json", "application/cloudevents-batch+json")
HL7_TYPES = ("text/plain", "x-application/hl7-v2+er7", "application/hl7-v2", "application/hl7-v2+er7")
FHIR_TYPES = ("application/fhir+json", "application/json")
RETRY_AFTER_S = "5"
HL7_HTTP_STATUS = {"AA": 200, "AE": 400, "AR": 422}  # an AR that a retry may cure is 503 (AckOutcome.retry)
DRAIN_LIMIT_BYTES = 64 * 1024 * 1024  # an oversized body is read and dropped up to this, then the connection closes

Channel = Literal["events", "hl7v2", "fhir"]
_CHANNELS: dict[str, Channel] = {"/events": "events", "/hl7v2": "hl7v2", "/fhir": "fhir"}
_METRIC_CHANNEL = {"events": "http", "hl7v2": "http", "fhir": "fhir"}


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


def fhir_patient_key(source: str, found: Sequence[tuple[str | None, dict[str, Any]]]) -> str:
    """Key FHIR-in records by the source patient, named as the mapper re-keys it (fhir_payload.Rekeying): a Patient
    in the payload, else the first subject/patient reference, however written (``Patient/p1``, an absolute URL,
    an entry's fullUrl), so one patient's posts stay in order."""
    rekeying = Rekeying(source, list(found))
    for (_, resource), source_id in zip(found, rekeying.source_ids, strict=True):
        if resource.get("resourceType") == "Patient":
            return make_patient_key(source, source_id)
    for _, resource in found:
        for element in ("subject", "patient"):
            patient = rekeying.source_id_of(resource.get(element), "Patient")
            if patient is not None:
                return make_patient_key(source, patient)
    return make_patient_key(source, "-")


def event_record(topic: str, event: CareEvent, correlation_id: str) -> OutboundRecord:
    """The Kafka record for one accepted JSON event: its canonical JSON, keyed by source patient."""
    body = event.model_dump(mode="json", by_alias=True, exclude_none=True)
    return inbound_record(topic, patient_key(event), body, event.time.isoformat(), correlation_id)


def new_correlation_id() -> str:
    """A random version-4 UUID for a request without X-Correlation-Id. It only has to be unique, not secret:
    drawn from intake's own PRNG, seeded once from os.urandom (uuid4 makes a system call per request); its own
    instance, so intake never disturbs the interpreter's shared `random` state."""
    return str(uuid.UUID(int=_correlation_ids.getrandbits(128), version=4))


_correlation_ids = random.Random()  # noqa: S311 - unique, not secret (see above)


def _problems_json(index: int | None, problems: Sequence[FieldProblem]) -> list[dict[str, Any]]:
    out = []
    for p in problems:
        item: dict[str, Any] = {"location": p.location, "rule": p.rule, "message": p.message}
        if index is not None:
            item["event_index"] = index
        out.append(item)
    return out


def parse_events(items: Sequence[Any], is_batch: bool) -> list[CareEvent]:
    """Every event of a request, or BatchRejected naming each broken event, field and rule."""
    events: list[CareEvent] = []
    errors: list[dict[str, Any]] = []
    broken: set[int] = set()
    refused = False
    for index, item in enumerate(items):
        try:
            events.append(parse_event(item))
        except (EventValidationError, RefusedContent) as exc:
            refused = refused or isinstance(exc, RefusedContent)
            broken.add(index)
            errors.extend(_problems_json(index if is_batch else None, exc.problems))
    if errors:
        raise BatchRejected(errors, len(broken), len(items), refused)
    return events


def check_event_sources(sender: Sender, items: Sequence[Any], is_batch: bool) -> None:
    """Every source a request names must be one the sender is registered for (a missing or non-string source is
    the contract's to refuse)."""
    for index, item in enumerate(items):
        source = item.get("source") if isinstance(item, dict) else None
        if isinstance(source, str):
            sender.require(source, f"[{index}].source" if is_batch else "source")


def media_type_of(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, never holding more than ``limit`` bytes: BodyTooLarge beyond it. An oversized body is
    read on and dropped (up to DRAIN_LIMIT_BYTES) so the sender gets the 413 rather than a reset connection."""
    declared = request.headers.get("content-length", "")
    too_large = BodyTooLarge(f"the body exceeds {limit} bytes")
    body = bytearray()
    dropped = 0
    oversized = declared.isdigit() and int(declared) > limit
    async for chunk in request.stream():
        if oversized:
            dropped += len(chunk)
            if dropped > DRAIN_LIMIT_BYTES:
                break
            continue
        if len(body) + len(chunk) > limit:
            oversized = True
            dropped = len(body) + len(chunk)
            body = bytearray()
            continue
        body += chunk
    if oversized:
        raise too_large
    return bytes(body)


def load_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedJson(f"the body is not JSON (at byte {exc.pos})", [FieldProblem(
            "body", "malformed-json", f"not JSON (at byte {exc.pos})")]) from None


_INTERNAL_ERROR = orjson.dumps({"type": PROBLEM_BASE + "internal-error", "title": "Internal error", "status": 500,
                                "detail": "the request could not be processed"})


class RequestGuard:
    """Observes ``carebus_request_seconds`` for every write route, by route and status (never by value), and
    answers a bug (an exception no handler knows) with a plain 500: its type is logged, never its message or
    traceback (they may hold the input's values)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope.get("path", "")
        status = 0
        started = time.perf_counter()

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, capture)
        except Exception as exc:
            log.error("intake request failed", extra={"error": type(exc).__name__, "route": route})
            if status:  # the answer has begun: all that is left is to end the connection
                raise RuntimeError("intake request failed after its answer began") from None
            status = 500
            await send({"type": "http.response.start", "status": 500, "headers": [
                (b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(_INTERNAL_ERROR)).encode())]})
            await send({"type": "http.response.body", "body": _INTERNAL_ERROR})
        finally:
            if route in _CHANNELS:
                self.metrics.request_seconds.labels(route=route, status=str(status or 500)).observe(
                    time.perf_counter() - started)


def create_app(settings: Settings, producer: RecordWriter, metrics: Metrics,
               readiness: Callable[[], tuple[bool, str]], hl7_acceptor: Acceptor | None = None) -> FastAPI:
    app = FastAPI(title="carebus intake", version="1", docs_url="/docs", redoc_url=None)
    openapi.describe(app)
    app.add_middleware(RequestGuard, metrics=metrics)
    topic = INBOUND_EVENTS.name(settings.topic_prefix)
    add_operational_routes(app, metrics, readiness)
    senders = SenderRegistry(settings.intake_tokens, allow_anonymous=settings.intake_allow_anonymous)
    app.add_middleware(AdmissionLimit, max_pending=settings.intake_max_pending, metrics=metrics)
    accept_hl7 = hl7_acceptor or KafkaHl7Acceptor(producer, topic, metrics=metrics,
                                                  recent_per_sender=settings.mllp_recent_control_ids)

    # --- answers: one place per error class, in the channel's own form -------------------------------

    def channel_of(request: Request) -> Channel:
        return _CHANNELS.get(request.url.path, "events")

    def refuse(request: Request, status: int, reason: str, exc: InvalidInput, *, slug: str, title: str,
               fhir_code: str, headers: dict[str, str] | None = None, count: int = 1,
               **extensions: Any) -> Response:
        channel = channel_of(request)
        metrics.events_rejected.labels(reason=reason, channel=_METRIC_CHANNEL[channel]).inc(count)
        if channel == "fhir":
            return operation_outcome(status, "error", fhir_code, exc.problems, diagnostics=exc.message,
                                     headers=headers)
        if channel == "hl7v2":
            text = getattr(request.state, "hl7_text", "")
            metrics.mllp_acks.labels(code="AR").inc()
            ack = ack_message(text, "AR", exc, datetime.now(UTC))
            return Response(ack.replace("\r", "\r\n"), status_code=status, media_type="x-application/hl7-v2+er7",
                            headers=headers)
        return problem(status, slug, title, exc.message, headers=headers, **extensions)

    @app.exception_handler(RequestRefused)
    def _refused(request: Request, exc: RequestRefused) -> Response:
        return refuse(request, exc.status, exc.reason, exc, slug=exc.slug, title=exc.title,
                      fhir_code=exc.fhir_code, headers=exc.headers or None)

    @app.exception_handler(MalformedJson)
    def _malformed(request: Request, exc: MalformedJson) -> Response:
        return refuse(request, 400, "malformed-json", exc, slug="malformed-json", title="Malformed JSON",
                      fhir_code="structure")

    @app.exception_handler(BatchRejected)
    def _batch(request: Request, exc: BatchRejected) -> Response:
        slug = "refused-content" if exc.refused else "invalid-event"
        title = "Content refused" if exc.refused else "Invalid event"
        return refuse(request, 422, slug, exc, slug=slug, title=title, fhir_code="invalid", count=exc.broken,
                      errors=exc.errors)

    @app.exception_handler(InvalidInput)
    def _invalid(request: Request, exc: InvalidInput) -> Response:  # the FHIR checks (and any other refusal)
        refused = isinstance(exc, RefusedContent)
        return refuse(request, 422, exc.reason, exc, slug="refused-content" if refused else "invalid",
                      title="Content refused" if refused else "Invalid input",
                      fhir_code="security" if refused else "invalid",
                      errors=_problems_json(None, exc.problems))

    @app.exception_handler(BrokerUnavailable)
    def _broker_down(request: Request, exc: BrokerUnavailable) -> Response:
        channel = channel_of(request)
        metrics.produce_errors.labels(topic=topic).inc()
        metrics.events_rejected.labels(reason="kafka-unavailable", channel=_METRIC_CHANNEL[channel]).inc()
        log.warning("intake write failed", extra={"channel": channel, "error": str(exc)})
        headers = {"Retry-After": RETRY_AFTER_S}
        if channel == "fhir":
            return operation_outcome(503, "error", "transient", headers=headers,
                                     diagnostics="not durably written; retry later")
        return problem(503, "kafka-unavailable", "Event store unavailable",
                       "the events were not durably written; retry later", headers=headers)

    # --- routes --------------------------------------------------------------------------------------

    @app.post("/hl7v2", response_model=None, **openapi.HL7V2)
    async def post_hl7v2(request: Request) -> Response:
        sender = senders.authenticate(request.headers.get("authorization"))
        if media_type_of(request) not in HL7_TYPES:
            raise UnsupportedMediaType(f"send one of {', '.join(HL7_TYPES)}", [FieldProblem(
                "Content-Type", "unsupported-media-type", f"send one of {', '.join(HL7_TYPES)}")])
        body = await read_body(request, settings.mllp_max_frame_bytes)
        text = request.state.hl7_text = decode_text(body)
        try:
            source: str | None = parse_message(text).header.source
        except Hl7v2Error:
            source = None  # not HL7: the acceptor answers AE, and nothing is written
        if source is not None:
            sender.require(source, "MSH-4")
        outcome = await accept_hl7(text)
        metrics.mllp_acks.labels(code=outcome.code).inc()
        status = 503 if outcome.retry else HL7_HTTP_STATUS[outcome.code]
        headers = {"Retry-After": RETRY_AFTER_S} if outcome.retry else None
        return Response(outcome.ack.replace("\r", "\r\n"), status_code=status,
                        media_type="x-application/hl7-v2+er7", headers=headers)

    @app.post("/fhir", response_model=None, **openapi.FHIR)
    async def post_fhir(request: Request) -> Response:
        sender = senders.authenticate(request.headers.get("authorization"))
        if media_type_of(request) not in FHIR_TYPES:
            raise UnsupportedMediaType(f"send one of {', '.join(FHIR_TYPES)}")
        source = request.headers.get("x-carebus-source", "")
        if ":" not in source or len(source) > 256:
            raise BadRequest(
                "name the sending system in the X-Carebus-Source header (a URI such as urn:carebus:source:x)",
                [FieldProblem("X-Carebus-Source", "required", "a URI of at most 256 characters")],
                slug="missing-source")
        sender.require(source, "X-Carebus-Source")
        body = await read_body(request, settings.max_body_bytes)
        payload = load_json(body)
        found = check_resources(payload)
        resources = [resource for _, resource in found]
        event_id = request.headers.get("x-carebus-event-id") or hashlib.sha256(
            source.encode() + b"\n" + body).hexdigest()[:32]
        now = datetime.now(UTC)
        correlation_id = request.headers.get("x-correlation-id") or event_id
        envelope = {"specversion": "1.0", "id": event_id, "source": source, "type": FHIR_RESOURCE_EVENT_TYPE,
                    "time": now.isoformat(), "datacontenttype": "application/fhir+json", "data": payload}
        record = inbound_record(topic, fhir_patient_key(source, found), envelope, now.isoformat(),
                                correlation_id)
        meta = (await producer.send_all_async([record]))[0]
        metrics.accepted(FHIR_RESOURCE_EVENT_TYPE, "fhir", source)
        log.info("fhir accepted", extra={"event_id": event_id, "resources": len(resources),
                                         "offset": f"{meta.topic}/{meta.partition}/{meta.offset}"})
        return operation_outcome(
            202, "information", "informational",
            diagnostics=f"accepted {len(resources)} resource(s) as event {event_id}",
            headers={"X-Correlation-Id": correlation_id})

    @app.post("/events", response_model=None, **openapi.EVENTS)
    async def post_events(request: Request) -> Response:
        sender = senders.authenticate(request.headers.get("authorization"))
        if media_type_of(request) not in JSON_TYPES:
            raise UnsupportedMediaType(f"send one of {', '.join(JSON_TYPES)}")
        payload = load_json(await read_body(request, settings.max_body_bytes))
        is_batch = isinstance(payload, list)
        items: list[Any] = payload if is_batch else [payload]
        if not items:
            raise BadRequest("the batch holds no events", slug="empty-batch")
        if len(items) > settings.max_batch_events:
            raise BodyTooLarge(f"{len(items)} events; at most {settings.max_batch_events} per request",
                               slug="batch-too-large")
        check_event_sources(sender, items, is_batch)
        events = parse_events(items, is_batch)
        correlation_id = request.headers.get("x-correlation-id") or new_correlation_id()
        records = [event_record(topic, event, correlation_id) for event in events]
        metas = await producer.send_all_async(records)
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
