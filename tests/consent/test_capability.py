"""The CapabilityStatement does not drift from what the record API serves: every FHIR operation route
(``$name``) and every resource-specific interaction route of the real app is stated, under its resource type,
and nothing is stated that no route serves. The app is the real one (create_app) on a real SQLite store."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute

from services.common.metrics import Metrics
from services.common.settings import Settings
from services.record.access import TokenRegistry
from services.record.api import RecordApi, create_app
from services.record.capability import capability_statement
from services.record.store import identity_policy, open_store
from tests.record.conftest import validate_fhir

_OPERATION = re.compile(r"^/([A-Z][A-Za-z]+)(/\{[a-z_]+\})?/\$([a-z-]+)$")
_TYPED = re.compile(r"^/([A-Z][A-Za-z]+)(/\{[a-z_]+\})?$")  # /Measure, /Task/{task_id}: not the generic routes
_INTERACTION = {("GET", False): "search-type", ("GET", True): "read", ("PUT", True): "update",
                ("POST", False): "create", ("DELETE", True): "delete"}


def _flatten(routes: list[Any]) -> Iterator[APIRoute]:
    """The app's routes, those of included routers too (FastAPI keeps an included router as one entry)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _flatten(included.routes)
        elif isinstance(route, APIRoute):
            yield route


@pytest.fixture
def routes(tmp_path: Path) -> Iterator[list[APIRoute]]:
    settings = Settings(kafka_bootstrap="127.0.0.1:1", cache_dir=tmp_path, record_tokens={})
    store = open_store(f"sqlite:///{tmp_path}/record.db", identity_policy(settings))
    try:
        app = create_app(RecordApi(settings, store, Metrics(), TokenRegistry({}), lambda: (True, "ok")))
        yield list(_flatten(app.routes))
    finally:
        store.close()


def test_every_operation_served_is_stated_and_every_one_stated_is_served(routes: list[APIRoute]) -> None:
    served: set[tuple[str, str]] = set()
    for route in routes:
        match = _OPERATION.match(route.path)
        if match:
            served.add((match.group(1), match.group(3)))
    statement = capability_statement("http://x", [])
    validate_fhir(statement)
    stated = {(r["type"], op["name"]) for r in statement["rest"][0]["resource"] for op in r.get("operation", ())}
    assert ("Patient", "disclosures") in served and ("Patient", "everything") in served
    assert served == stated
    for resource in statement["rest"][0]["resource"]:
        for op in resource.get("operation", ()):
            assert op["definition"].startswith(("http://hl7.org/fhir/", "https://carebus.dev/fhir/"))


def test_resource_specific_routes_are_stated_interactions(routes: list[APIRoute]) -> None:
    statement = capability_statement("http://x", [])
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
    for route in routes:
        match = _TYPED.match(route.path)
        if match is None or match.group(1) == "Patient":  # Patient/{id} (HTML page) is the generic read too
            continue
        rtype, instance = match.group(1), match.group(2) is not None
        assert rtype in resources, route.path
        codes = {i["code"] for i in resources[rtype]["interaction"]}
        for method in route.methods - {"HEAD"}:
            assert _INTERACTION[(method, instance)] in codes, (method, route.path)
