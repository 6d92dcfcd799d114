"""Overload protection (services/intake/admission.py): bounded pending writes, the excess shed at once."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.common.metrics import Metrics
from services.intake.admission import AdmissionLimit


def slow_app(release: asyncio.Event | threading.Event, metrics: Metrics, limit: int) -> AdmissionLimit:
    """A write route that waits (like a produce waiting for acks) until released."""

    async def events(request: Request) -> Response:
        await request.body()
        if isinstance(release, asyncio.Event):
            await release.wait()
        else:
            while not release.is_set():
                await asyncio.sleep(0.005)
        return Response(b"{}", status_code=202)

    async def healthz(request: Request) -> Response:
        return Response(b"ok")

    app = Starlette(routes=[Route("/events", events, methods=["POST"]), Route("/healthz", healthz),
                            Route("/events", healthz, methods=["GET"])])
    return AdmissionLimit(app, max_pending=limit, metrics=metrics)


async def test_excess_writes_are_shed_at_once_and_admitted_ones_complete() -> None:
    release = asyncio.Event()
    metrics = Metrics()
    app = slow_app(release, metrics, limit=3)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://intake") as client:
        admitted = [asyncio.create_task(client.post("/events", content=b"{}")) for _ in range(3)]
        while app.pending < 3:
            await asyncio.sleep(0)
        shed = await client.post("/events", content=b"{}")
        assert shed.status_code == 503
        assert shed.headers["retry-after"] == "1"
        assert shed.headers["content-type"] == "application/problem+json"
        assert shed.json()["type"].endswith("/overloaded")
        # operational routes and reads are never shed
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/events")).status_code == 200
        release.set()
        assert [r.status_code for r in await asyncio.gather(*admitted)] == [202, 202, 202]
        assert app.pending == 0
        # capacity is back once the pending writes are answered
        assert (await client.post("/events", content=b"{}")).status_code == 202
    assert metrics.intake_shed.labels(route="/events")._value.get() == 1
    assert metrics.intake_pending._value.get() == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served() -> Iterator[tuple[str, threading.Event, AdmissionLimit]]:
    release = threading.Event()
    app = slow_app(release, Metrics(), limit=1)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", release, app
    finally:
        release.set()
        server.should_exit = True
        thread.join(timeout=10)


def test_a_shed_request_keeps_the_connection_usable(served: tuple[str, threading.Event, AdmissionLimit]) -> None:
    """The shed answer is sent before the body is read; the keep-alive connection must still work after it."""
    url, release, app = served
    with httpx.Client(base_url=url, timeout=10) as blocker, httpx.Client(base_url=url, timeout=10) as client:
        pending = threading.Thread(target=lambda: blocker.post("/events", content=b"x" * 10_000))
        pending.start()
        deadline = time.monotonic() + 10
        while app.pending < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        first = client.post("/events", content=b"y" * 200_000)
        assert first.status_code == 503
        release.set()
        pending.join(timeout=10)
        second = client.post("/events", content=b"{}")  # same client connection (keep-alive)
        assert second.status_code == 202


def test_correlation_ids_are_distinct_version_4_uuids() -> None:
    import uuid

    from services.intake.app import new_correlation_id

    ids = [new_correlation_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(uuid.UUID(value).version == 4 for value in ids[:100])
