"""A resend of the same event - a new inbound record, later, after a 503 or a lost ACK - converges on the same
record: no resource gets a new version, Provenance included (its ``recorded`` is the time the sender states for
the event, not when carebus received this copy). JSON care events (every type), HL7 v2 (every sample) and FHIR
posts that state their time (Bundle.timestamp or meta.lastUpdated), on SQLite and PostgreSQL. A FHIR post that
states no time gets its receipt as ``recorded``, so its copies differ there: the record keeps the first copy's
Provenance (services/record/ingest.py ``_compared``)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from services.common.hl7v2 import inspect_message
from services.common.topics import FHIR_RESOURCE_EVENT_TYPE, HEADER_EVENT_ID, HL7V2_MESSAGE_EVENT_TYPE
from services.mapper.pipeline import InboundRecord, Pipeline, TopicNames
from services.record.ingest import InboundBundle, prepare_bundle
from services.record.store import SqlStore
from tests.hl7v2.helpers import HL7_SAMPLES, sample
from tests.integration.test_pipeline import schema_examples

pytestmark = pytest.mark.postgres

FHIR_SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "fhir"
FHIR_SOURCE = "urn:carebus:source:lakeside-therapy-fhir"
FIRST_MS = 1_767_600_000_000  # the first delivery; the resend comes 25 minutes later, through intake again
RESEND_MS = FIRST_MS + 25 * 60_000


def hl7_envelope(text: str, received: str) -> dict[str, Any]:
    summary = inspect_message(text)
    return {"specversion": "1.0", "id": summary.event_id, "source": summary.source, "type": HL7V2_MESSAGE_EVENT_TYPE,
            "time": received, "datacontenttype": "application/hl7-v2+er7", "data": text}


def fhir_envelope(data: dict[str, Any], event_id: str, received: str) -> dict[str, Any]:
    return {"specversion": "1.0", "id": event_id, "source": FHIR_SOURCE, "type": FHIR_RESOURCE_EVENT_TYPE,
            "time": received, "data": copy.deepcopy(data)}


UNSTATED = "fhir-unstated-"  # event ids of the posts that state no time


def fhir_posts() -> list[tuple[str, dict[str, Any]]]:
    """Clinical samples, each posted as a resource with meta.lastUpdated, in a timestamped Bundle, and both again
    without any stated time (no meta.lastUpdated, no Bundle.timestamp)."""
    posts = []
    for path in sorted(FHIR_SAMPLES.glob("*.json")):
        resource = json.loads(path.read_text())
        if resource["resourceType"] in ("CodeSystem", "ValueSet", "Questionnaire"):
            continue
        stated = copy.deepcopy(resource)
        stated.setdefault("meta", {})["lastUpdated"] = "2025-11-03T08:15:00Z"
        posts.append((f"fhir-{path.stem}", stated))
        posts.append((f"fhir-bundle-{path.stem}", {
            "resourceType": "Bundle", "type": "collection", "timestamp": "2025-11-03T08:16:00+01:00",
            "entry": [{"fullUrl": f"urn:uuid:{path.stem}", "resource": resource}]}))
        bare = copy.deepcopy(resource)
        if isinstance(bare.get("meta"), dict):
            bare["meta"].pop("lastUpdated", None)
        posts.append((f"{UNSTATED}{path.stem}", bare))
        posts.append((f"{UNSTATED}bundle-{path.stem}", {
            "resourceType": "Bundle", "type": "collection",
            "entry": [{"fullUrl": f"urn:uuid:{path.stem}", "resource": bare}]}))
    return posts


def inbound_events(received: str) -> list[dict[str, Any]]:
    """Every kind of inbound event as intake would write it when it receives it at ``received``."""
    events: list[dict[str, Any]] = list(schema_examples())  # care events: the sender sets time
    events += [hl7_envelope(sample(path.name), received) for path in HL7_SAMPLES]
    events += [fhir_envelope(data, event_id, received) for event_id, data in fhir_posts()]
    # two pairs of published HL7 samples reuse one sender's MSH-10 for different messages: one of each is kept
    first_of: dict[tuple[str, str], dict[str, Any]] = {}
    for event in events:
        first_of.setdefault((event["source"], event["id"]), event)
    return list(first_of.values())


def deliver(pipeline: Pipeline, events: list[dict[str, Any]], timestamp_ms: int, first_offset: int
            ) -> list[InboundBundle | None]:
    """Map each event from a new inbound record; return the bundle-topic records as the record consumes them
    (None for an event the mapper dead-letters)."""
    bundles: list[InboundBundle | None] = []
    for i, event in enumerate(events):
        record = InboundRecord(topic="carebus.events.inbound.v1", partition=0, offset=first_offset + i,
                               timestamp_ms=timestamp_ms + i, key=b"k", value=orjson.dumps(event),
                               headers=(("ce_id", str(event["id"]).encode()), ("ce_type", str(event["type"]).encode())))
        outcome = pipeline.process(record)
        if outcome.dead_letter_reason is not None:
            bundles.append(None)
            continue
        out = outcome.records[0]
        bundles.append(InboundBundle("carebus.fhir.bundles.v1", 0, first_offset + i, timestamp_ms + i, out.key,
                                     out.value, {HEADER_EVENT_ID: out.headers[HEADER_EVENT_ID]}))
    return bundles


def entries(bundle: InboundBundle) -> Any:
    return orjson.loads(bundle.value)["entry"]


def provenance_recorded(bundle: InboundBundle) -> str:
    return next(str(e["resource"]["recorded"]) for e in entries(bundle)
                if e["resource"]["resourceType"] == "Provenance")


def without_recorded(bundle: InboundBundle) -> Any:
    return [{**e, "resource": {k: v for k, v in e["resource"].items() if k != "recorded"}}
            if e["resource"]["resourceType"] == "Provenance" else e for e in entries(bundle)]


def test_a_resend_of_every_kind_of_event_makes_no_new_version_of_any_resource(store: SqlStore) -> None:
    pipeline = Pipeline(TopicNames.for_prefix("carebus"))
    first = deliver(pipeline, inbound_events("2026-01-05T08:00:00+00:00"), FIRST_MS, 0)
    mapped = [b for b in first if b is not None]
    assert len(mapped) >= len(first) - 4  # (one SDC sample has no subject: each of its 4 posts dead-lettered)
    report = store.ingest([prepare_bundle(b) for b in mapped])
    assert report.versions > 0 and not report.refused
    stored = {(row.resource_type, row.id): row.version_id for row, _ in store.export_versions()}
    assert "Provenance" in {rtype for rtype, _ in stored}

    events = inbound_events("2026-01-05T08:25:00+00:00")  # intake stamps the resend's receipt
    resend = deliver(pipeline, events, RESEND_MS, len(first))
    assert [b is None for b in resend] == [b is None for b in first]
    pairs = [(str(event["id"]), a, b) for event, a, b in zip(events, first, resend, strict=True)
             if a is not None and b is not None]
    # the same event maps to the same resources; only a Provenance whose message states no time (a FHIR post
    # without one, an HL7 message without MSH-7) carries each copy's receipt, and the record keeps the first
    changed = [eid for eid, a, b in pairs if without_recorded(a) != without_recorded(b)]
    assert changed == []
    unstated = [(eid, a, b) for eid, a, b in pairs if eid.startswith(UNSTATED)]
    assert len(unstated) >= 4
    for eid, a, b in unstated:  # no stated time: the copies differ in Provenance.recorded (each copy's receipt)
        assert (provenance_recorded(a), provenance_recorded(b)) == (
            "2026-01-05T08:00:00+00:00", "2026-01-05T08:25:00+00:00"), eid
        assert without_recorded(a) == without_recorded(b), eid
    again = store.ingest([prepare_bundle(b) for b in resend if b is not None])
    assert again.versions == 0
    assert {(row.resource_type, row.id): row.version_id for row, _ in store.export_versions()} == stored
    served = {row.id: orjson.loads(row.body or b"{}") for row, _ in store.export_versions()
              if row.resource_type == "Provenance"}
    for _, bundle, _ in unstated:  # the first copy's Provenance is the one kept
        provenance = next(e["resource"] for e in entries(bundle) if e["resource"]["resourceType"] == "Provenance")
        assert served[provenance["id"]]["recorded"] == "2026-01-05T08:00:00+00:00"
