"""The intake HTTP API: care events in, durable on Kafka before the 202.

POST /events accepts one CloudEvent (application/cloudevents+json or application/json) or a batch
(application/cloudevents-batch+json, or a JSON array). A batch is validated whole: if any event breaks its
contract, nothing is written and the problem detail names every broken event, field and rule. Otherwise every
event is written with acks=all and the 202 is sent only after the broker acknowledged all of them. Kafka
unreachable -> 503 with Retry-After (retrying the same batch is safe: ids are deterministic downstream).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response

from services.common.errors import BrokerUnavailable, EventValidationError, FieldProblem
from services.common.events import CareEvent, parse_event, patient_key
from services.common.http import add_operational_routes, problem
from services.common.kafka import OutboundRecord, RecordProducer
from services.common.metrics import Metrics
from services.common.settings import Settings
from services.common.topics import (
    HEADER_CONTENT_TYPE,
    HEADER_CORRELATION_ID,
    HEADER_EVENT_ID,
    HEADER_EVENT_SOURCE,
    HEADER_EVENT_TIME,
    HEADER_EVENT_TYPE,
    INBOUND_EVENTS,
)

log = logging.getLogger(__name__)

JSON_TYPES = ("application/json", "application/cloudevents+json", "application/cloudevents-batch+json")
RETRY_AFTER_S = "5"


def inbound_record(topic: str, event: CareEvent, correlation_id: str) -> OutboundRecord:
    """The Kafka record for one accepted event: its canonical JSON, keyed by source patient."""
    body = event.model_dump(mode="json", by_alias=True, exclude_none=True)
    return OutboundRecord(
        topic=topic,
        key=patient_key(event),
        value=orjson.dumps(body),
        headers={
            HEADER_EVENT_ID: event.id,
            HEADER_EVENT_TYPE: event.type,
            HEADER_EVENT_SOURCE: event.source,
            HEADER_EVENT_TIME: event.time.isoformat(),
            HEADER_CORRELATION_ID: correlation_id,
            HEADER_CONTENT_TYPE: "application/cloudevents+json",
        },
    )


def _problems_json(index: int | None, problems: Sequence[FieldProblem]) -> list[dict[str, Any]]:
    out = []
    for p in problems:
        item: dict[str, Any] = {"location": p.location, "rule": p.rule, "message": p.message}
        if index is not None:
            item["event_index"] = index
        out.append(item)
    return out


def create_app(settings: Settings, producer: RecordProducer, metrics: Metrics,
               readiness: Callable[[], tuple[bool, str]]) -> FastAPI:
    app = FastAPI(title="carebus intake", version="1", docs_url="/docs", redoc_url=None)
    topic = INBOUND_EVENTS.name(settings.topic_prefix)
    add_operational_routes(app, metrics, readiness)

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
        records = [inbound_record(topic, event, correlation_id) for event in events]
        try:
            metas = await producer.send_all_async(records)
        except BrokerUnavailable as exc:
            metrics.produce_errors.labels(topic=topic).inc()
            log.warning("intake write failed", extra={"events": len(records), "error": str(exc)})
            return rejected("kafka-unavailable", problem(
                503, "kafka-unavailable", "Event store unavailable",
                "the events were not durably written; retry later", headers={"Retry-After": RETRY_AFTER_S}))
        for event in events:
            metrics.events_accepted.labels(event_type=event.type, channel="http").inc()
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
