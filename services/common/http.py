"""Operational HTTP routes every service serves: /healthz, /readyz, /metrics, and RFC 9457 problem details."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import uvicorn
from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from services.common.metrics import Metrics

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "https://carebus.dev/problems/"


def problem(status: int, slug: str, title: str, detail: str, headers: dict[str, str] | None = None,
            **extensions: Any) -> Response:
    """An RFC 9457 problem detail. ``detail`` must never contain PHI."""
    body = {"type": PROBLEM_BASE + slug, "title": title, "status": status, "detail": detail, **extensions}
    return Response(orjson.dumps(body), status_code=status, media_type=PROBLEM_JSON, headers=headers)


def add_operational_routes(app: FastAPI, metrics: Metrics, readiness: Callable[[], tuple[bool, str]]) -> None:
    status_schema = {"type": "object", "required": ["status"], "properties": {
        "status": {"enum": ["alive", "ready", "not-ready"]}, "reason": {"type": "string"}}}
    as_json = {"application/json": {"schema": status_schema}}

    @app.get("/healthz", tags=["operations"], summary="Liveness: the process answers",
             responses={200: {"description": "alive", "content": as_json}})
    def healthz() -> Response:
        return Response(b'{"status":"alive"}', media_type="application/json")

    @app.get("/readyz", tags=["operations"], summary="Readiness: Kafka reachable and the topics present",
             responses={200: {"description": "ready", "content": as_json},
                        503: {"description": "not ready; reason says why (no PHI)", "content": as_json}})
    def readyz() -> Response:
        ready, reason = readiness()
        body = orjson.dumps({"status": "ready" if ready else "not-ready", "reason": reason})
        return Response(body, status_code=200 if ready else 503, media_type="application/json")

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics (carebus_*)",
             responses={200: {"description": "Prometheus text exposition format",
                              "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}})
    def prometheus_metrics() -> Response:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # worker processes of one service (intake workers)
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


class ManagedServer(uvicorn.Server):
    """A uvicorn server whose signals the composition root handles, so its own shutdown code runs afterwards
    (uvicorn would otherwise re-raise SIGTERM after draining and end the process before producers flush)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
