"""Intake's OpenAPI document (/openapi.json): a valid OpenAPI 3.1 document (openapi-spec-validator) that
describes the request bodies and media types of /events, /hl7v2 and /fhir, their success and error answers
(problem details, OperationOutcome, HL7 ACKs, 503 with Retry-After), the bearer token and the health routes; and
what intake answers matches it."""

from __future__ import annotations

from functools import cache
from typing import Any

import httpx
import jsonschema
import orjson
import pytest
from fastapi import FastAPI
from openapi_spec_validator import validate

from services.common.events.examples import EXAMPLES
from services.common.kafka import RecordProducer
from services.common.metrics import Metrics
from services.common.settings import Settings
from services.intake.app import create_app

Obj = dict[str, Any]


@cache
def _app() -> FastAPI:
    settings = Settings(kafka_create_topics=False, intake_allow_anonymous=True)
    return create_app(settings, RecordProducer(settings, "openapi-test"), Metrics(), lambda: (True, "ok"))


def _client() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=_app()), base_url="http://intake")


@cache
def _document() -> Obj:
    return dict(orjson.loads(orjson.dumps(_app().openapi())))


def _schema(schema: Obj) -> jsonschema.protocols.Validator:
    """A validator for a schema of the document, its #/components references resolved."""
    return jsonschema.Draft202012Validator({**schema, "components": _document()["components"]})


async def test_the_document_is_valid_openapi() -> None:
    async with _client() as client:
        served = (await client.get("/openapi.json")).json()
    assert served == _document()
    validate(_document())
    assert _document()["openapi"].startswith("3.1")


@pytest.mark.parametrize(("path", "media_types", "success"), [
    ("/events", {"application/cloudevents+json", "application/cloudevents-batch+json", "application/json"}, "202"),
    ("/hl7v2", {"x-application/hl7-v2+er7", "application/hl7-v2+er7", "application/hl7-v2", "text/plain"}, "200"),
    ("/fhir", {"application/fhir+json", "application/json"}, "202"),
])
def test_each_write_route_describes_its_body_and_answers(path: str, media_types: set[str], success: str) -> None:
    operation = _document()["paths"][path]["post"]
    assert operation["requestBody"]["required"] is True
    assert set(operation["requestBody"]["content"]) == media_types
    responses = operation["responses"]
    assert {success, "400", "401", "403", "413", "415", "422", "503"} <= set(responses)
    assert "Retry-After" in responses["503"]["headers"]
    error_media = {"/events": "application/problem+json", "/hl7v2": "x-application/hl7-v2+er7",
                   "/fhir": "application/fhir+json"}[path]
    for code in ("400", "413", "415", "422", "503"):
        assert set(responses[code]["content"]) == {error_media}, (path, code)
    assert {"senderToken": []} in operation["security"]


def test_health_routes_are_described() -> None:
    paths = _document()["paths"]
    assert {"/healthz", "/readyz", "/metrics"} <= set(paths)
    assert {"200", "503"} <= set(paths["/readyz"]["get"]["responses"])


@pytest.mark.parametrize("event_type", sorted(EXAMPLES))
def test_every_care_event_example_matches_the_request_schema(event_type: str) -> None:
    content = _document()["paths"]["/events"]["post"]["requestBody"]["content"]
    _schema(content["application/cloudevents+json"]["schema"]).validate(EXAMPLES[event_type])
    _schema(content["application/cloudevents-batch+json"]["schema"]).validate([EXAMPLES[event_type]])
    broken = {**EXAMPLES[event_type], "data": {}}
    assert not _schema(content["application/cloudevents+json"]["schema"]).is_valid(broken)


@pytest.mark.parametrize(("path", "headers", "body", "status"), [
    ("/events", {"content-type": "application/cloudevents+json"}, b"{not json", 400),
    ("/events", {"content-type": "text/csv"}, b"a,b", 415),
    ("/events", {"content-type": "application/cloudevents+json"}, b'{"type": "org.carebus.x.v1"}', 422),
    ("/fhir", {"content-type": "text/csv", "x-carebus-source": "urn:carebus:source:x"}, b"a,b", 415),
    ("/fhir", {"content-type": "application/fhir+json"}, b"{}", 400),
    ("/hl7v2", {"content-type": "text/csv"}, b"a,b", 415),
])
async def test_refusals_match_the_documented_answers(path: str, headers: dict[str, str], body: bytes,
                                                     status: int) -> None:
    async with _client() as client:
        response = await client.post(path, content=body, headers=headers)
    assert response.status_code == status, response.text
    documented = _document()["paths"][path]["post"]["responses"][str(status)]["content"]
    media_type = response.headers["content-type"].split(";")[0]
    assert media_type in documented
    if media_type != "x-application/hl7-v2+er7":
        _schema(documented[media_type]["schema"]).validate(orjson.loads(response.content))
