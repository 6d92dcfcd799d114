"""Intake in process: the real app (services/intake/app.py) over ASGI with tests/fakes.py's producer."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import httpx

from services.common.metrics import Metrics
from services.common.settings import IntakeSenderGrant, Settings
from services.intake.app import create_app
from tests.fakes import FakeProducer

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "tests" / "samples"

RELAY_TOKEN = "test-relay-token"  # noqa: S105 - test credentials
PSYCHIATRY_TOKEN = "test-northgate-psychiatry-token"  # noqa: S105
PRIMARY_CARE_TOKEN = "test-riverside-primary-care-token"  # noqa: S105
PSYCHIATRY = "urn:carebus:source:northgate-psychiatry"
PRIMARY_CARE = "urn:carebus:source:riverside-primary-care"
HL7_SENDER = "urn:carebus:hl7v2:GHHSFacility"  # the sending facility of tests/samples/hl7v2/ADT-A01-01.hl7


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


SENDER_GRANTS = {
    digest(RELAY_TOKEN): IntakeSenderGrant(sources=["*"], label="interface engine"),
    digest(PSYCHIATRY_TOKEN): IntakeSenderGrant(sources=[PSYCHIATRY, HL7_SENDER], label="northgate"),
    digest(PRIMARY_CARE_TOKEN): IntakeSenderGrant(sources=[PRIMARY_CARE], label="riverside"),
}


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def intake_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"kafka_bootstrap": "127.0.0.1:1", "topic_prefix": "intaketest",
                              "intake_tokens": SENDER_GRANTS, **overrides}
    return Settings(**values)


def schema_examples() -> list[dict[str, Any]]:
    examples: list[dict[str, Any]] = []
    for path in sorted((REPO / "schemas" / "events").glob("org.carebus.*.schema.json")):
        examples.extend(json.loads(path.read_text()).get("examples", []))
    return examples


def example(event_type: str) -> dict[str, Any]:
    return next(e for e in schema_examples() if e["type"] == f"org.carebus.{event_type}.v1")


def hl7_sample(name: str = "ADT-A01-01.hl7") -> str:
    return (SAMPLES / "hl7v2" / name).read_text().replace("\r\n", "\r").replace("\n", "\r")


class Intake:
    """The app, its fake producer and metrics, and an ASGI client."""

    def __init__(self, settings: Settings | None = None, ready: bool = True) -> None:
        self.settings = settings or intake_settings()
        self.producer = FakeProducer()
        self.metrics = Metrics()
        self.app = create_app(self.settings, self.producer, self.metrics, lambda: (ready, "ok" if ready else "down"))
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://intake")

    async def __aenter__(self) -> Intake:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()

    async def events(self, body: Any, token: str | None = RELAY_TOKEN,
                     content_type: str = "application/cloudevents+json", raw: bytes | None = None) -> httpx.Response:
        headers = {"content-type": content_type, **(bearer(token) if token else {})}
        return await self.client.post("/events", content=raw if raw is not None else json.dumps(body).encode(),
                                      headers=headers)

    async def hl7(self, er7: str | bytes, token: str | None = RELAY_TOKEN,
                  content_type: str = "x-application/hl7-v2+er7") -> httpx.Response:
        headers = {"content-type": content_type, **(bearer(token) if token else {})}
        return await self.client.post("/hl7v2", content=er7.encode() if isinstance(er7, str) else er7,
                                      headers=headers)

    async def fhir(self, body: Any, token: str | None = RELAY_TOKEN, source: str | None = PSYCHIATRY,
                   content_type: str = "application/fhir+json", raw: bytes | None = None) -> httpx.Response:
        headers = {"content-type": content_type, **(bearer(token) if token else {})}
        if source is not None:
            headers["x-carebus-source"] = source
        return await self.client.post("/fhir", content=raw if raw is not None else json.dumps(body).encode(),
                                      headers=headers)


def msa(response: httpx.Response) -> list[str]:
    segment = next(s for s in response.text.replace("\r\n", "\r").split("\r") if s.startswith("MSA"))
    return segment.split("|")
