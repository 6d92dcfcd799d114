"""Overload protection: a bounded number of write requests may wait for Kafka's acks; the rest are shed at once.

A hospital sends bursts (morning ADT storms, a nightly batch, an interface engine replaying its queue). Queueing
them inside intake only turns a burst into seconds of latency for everyone and, past the sender's timeout, into
duplicate resends. So intake admits at most ``intake_max_pending`` write requests (POST /events, /hl7v2, /fhir)
at a time; one more is answered **503 with Retry-After immediately**, before its body is read, and counted in
``carebus_intake_shed_total``. Nothing is written for a shed request, so retrying it is always safe. Accepted
requests keep their latency because the queue in front of the producer stays short.

MLLP needs no shedding: a connection's next frame is read only after the previous one was answered (senders wait
for the ACK), so each connection has at most one message in flight and a slow broker slows the sender down
instead of piling up work here.

Health, readiness and metrics routes are never shed.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from services.common.http import PROBLEM_BASE, PROBLEM_JSON
from services.common.metrics import Metrics

WRITE_ROUTES = frozenset({"/events", "/hl7v2", "/fhir"})
SHED_RETRY_AFTER_S = "1"

_SHED_BODY = orjson.dumps({
    "type": PROBLEM_BASE + "overloaded", "title": "Intake is at capacity", "status": 503,
    "detail": "too many requests are waiting for Kafka's acknowledgement; nothing was written, retry after the "
              "Retry-After delay"})
_SHED_HEADERS = [(b"content-type", PROBLEM_JSON.encode()), (b"retry-after", SHED_RETRY_AFTER_S.encode()),
                 (b"content-length", str(len(_SHED_BODY)).encode())]


class AdmissionLimit:
    """Pure ASGI middleware: at most ``max_pending`` write requests in progress; beyond that, 503 at once.

    The count is per process (each intake worker process has its own producer and its own limit). The event
    loop is single-threaded, so a plain integer is a correct counter."""

    def __init__(self, app: ASGIApp, max_pending: int, metrics: Metrics) -> None:
        self.app = app
        self.max_pending = max_pending
        self.pending = 0
        self._shed = metrics.intake_shed
        self._pending_gauge = metrics.intake_pending

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in WRITE_ROUTES:
            await self.app(scope, receive, send)
            return
        if self.pending >= self.max_pending:
            self._shed.labels(route=scope["path"]).inc()
            await _answer_shed(send)
            return
        self.pending += 1
        self._pending_gauge.set(self.pending)
        try:
            await self.app(scope, receive, send)
        finally:
            self.pending -= 1
            self._pending_gauge.set(self.pending)


async def _answer_shed(send: Send) -> None:
    start: dict[str, Any] = {"type": "http.response.start", "status": 503, "headers": _SHED_HEADERS}
    await send(start)
    await send({"type": "http.response.body", "body": _SHED_BODY})
