"""HTTP in -> Kafka -> mapper -> FHIR bundles out, through the real broker, for every schema example."""

from __future__ import annotations

import copy
import io
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fhir.resources.R4B.bundle import Bundle

from services.common.event_headers import parse_security_header
from services.common.kafka import OutboundRecord, RecordProducer, build_consumer
from services.common.log import LINEAGE_LOGGER, BatchedLineHandler, lineage_formatter
from services.common.metrics import Metrics
from services.common.runtime import prepare_topics
from services.common.settings import Settings
from services.common.topics import DEAD_LETTERS, FHIR_BUNDLES, INBOUND_EVENTS, SAFETY_ALERTS
from services.intake.app import create_app
from services.mapper.pipeline import Pipeline, TopicNames
from services.mapper.service import PRODUCER_TUNING, MapperService
from tests.kafka_helpers import binary_cloudevent, header, read_all
from tests.senders import TEST_INTAKE_GRANTS, TEST_INTAKE_HEADERS

pytestmark = pytest.mark.integration

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas" / "events"


def schema_examples() -> list[dict[str, Any]]:
    examples: list[dict[str, Any]] = []
    for path in sorted(SCHEMAS.glob("org.carebus.*.schema.json")):  # one per event type (not the envelope)
        examples.extend(json.loads(path.read_text()).get("examples", []))
    assert len({e["id"] for e in examples}) == len(examples), "schema examples must have distinct ids"
    return examples


@pytest.fixture
def intake(settings: Settings) -> Iterator[tuple[httpx.AsyncClient, RecordProducer]]:
    prepare_topics(settings)
    producer = RecordProducer(settings, "test-intake")
    app = create_app(settings, producer, Metrics(), lambda: (True, "ok"))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://intake",
                               headers=TEST_INTAKE_HEADERS)
    yield client, producer
    producer.close()


@pytest.fixture
def lineage() -> Iterator[io.StringIO]:
    """What the mapper writes to the lineage log (as configure_logging sets it up, into a buffer)."""
    logger = logging.getLogger(LINEAGE_LOGGER)
    saved = logger.handlers[:], logger.propagate, logger.level
    stream = io.StringIO()
    handler = BatchedLineHandler(stream)
    handler.setFormatter(lineage_formatter("mapper"))
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)  # (setLevel, not .level: it clears logging's isEnabledFor cache)
    yield stream
    logger.handlers[:], logger.propagate = saved[0], saved[1]
    logger.setLevel(saved[2])


def mapper(settings: Settings, max_records: int = 500) -> MapperService:
    consumer = build_consumer(settings, "test-mapper", f"{settings.topic_prefix}-mapper",
                              [INBOUND_EVENTS.name(settings.topic_prefix)])
    return MapperService(consumer, RecordProducer(settings, "test-mapper", **PRODUCER_TUNING),
                         Pipeline(TopicNames.for_prefix(settings.topic_prefix)), Metrics(), max_records)


def run_until(service: MapperService, handled: int, max_polls: int = 200) -> None:
    for _ in range(max_polls):
        if service.stats.consumed >= handled:
            return
        service.run_once(timeout_ms=300)
    raise AssertionError(f"mapper handled {service.stats.consumed} of {handled} records")


async def test_every_event_type_becomes_a_valid_labelled_bundle(
        settings: Settings, intake: tuple[httpx.AsyncClient, RecordProducer]) -> None:
    client, _ = intake
    examples = schema_examples()
    types = {e["type"] for e in examples}
    assert len(types) >= 20, f"expected every event type to have an example, found {sorted(types)}"

    response = await client.post("/events", content=orjson.dumps(examples),
                                 headers={"content-type": "application/cloudevents-batch+json"})
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == len(examples)

    service = mapper(settings)
    run_until(service, len(examples))
    service.close()
    assert service.stats.dead_letters == 0

    ids = {e["id"] for e in examples}
    bundles = read_all(settings, FHIR_BUNDLES.name(settings.topic_prefix),
                       until=lambda rs: {header(r, "ce_carebuseventid") for r in rs} >= ids)
    by_event = {header(r, "ce_carebuseventid"): r for r in bundles}
    assert set(by_event) == ids
    for example in examples:
        record = by_event[example["id"]]
        bundle = orjson.loads(record.value)
        Bundle.model_validate(bundle)  # the whole bundle, every resource, with the R4B models
        kinds = {entry["resource"]["resourceType"] for entry in bundle["entry"]}
        assert "Provenance" in kinds
        bundle_labels = [(c["system"], c["code"]) for c in bundle.get("meta", {}).get("security", [])]
        assert parse_security_header(header(record, "carebus_security") or "") == bundle_labels
        # a binary-mode CloudEvent of carebus's own type, naming the event it came from (CloudEvents SDK)
        event = binary_cloudevent(record)
        assert (event.get_type(), event.get_id()) == ("org.carebus.fhir.bundle.v1", bundle["id"])
        assert event.get_extension("carebuseventid") == example["id"]
        assert event.get_extension("carebuseventtype") == example["type"]
        assert event.get_data() == bundle
        # keyed by source patient, so one patient's events share a partition
        assert record.key.decode() == f"{example['source']}|{example['data']['patient_id']}"

    # every safety alert points at a Flag that its bundle carries
    flags = {f"Flag/{entry['resource']['id']}" for r in bundles for entry in orjson.loads(r.value)["entry"]
             if entry["resource"]["resourceType"] == "Flag"}
    alerts = read_all(settings, SAFETY_ALERTS.name(settings.topic_prefix),
                      until=lambda rs: len(rs) >= service.stats.alerts)
    assert service.stats.alerts >= 1
    assert len(alerts) == service.stats.alerts
    assert {orjson.loads(a.value)["flag"] for a in alerts} <= flags
    for alert in alerts:
        event = binary_cloudevent(alert)
        assert event.get_type() == "org.carebus.safety.alert.v1"
        assert f"Flag/{event.get_id()}" == orjson.loads(alert.value)["flag"]
        assert event.get_extension("carebuseventid") == orjson.loads(alert.value)["event_id"]


async def test_bad_input_is_answered_or_dead_lettered_and_counts_balance(
        settings: Settings, intake: tuple[httpx.AsyncClient, RecordProducer], lineage: io.StringIO) -> None:
    client, producer = intake
    examples = schema_examples()
    good = examples[:6]

    # 1. a batch with one broken event: 422 naming the event, field and rule; nothing written
    broken = copy.deepcopy(good)
    del broken[2]["data"]["patient_id"]
    response = await client.post("/events", content=orjson.dumps(broken),
                                 headers={"content-type": "application/cloudevents-batch+json"})
    assert response.status_code == 422
    problem = response.json()
    assert response.headers["content-type"] == "application/problem+json"
    assert problem["errors"][0]["event_index"] == 2
    assert problem["errors"][0]["location"].endswith("patient_id")
    assert problem["errors"][0]["rule"] == "missing"

    # 2. not JSON, wrong media type, empty batch
    assert (await client.post("/events", content=b"{nope",
                              headers={"content-type": "application/json"})).status_code == 400
    assert (await client.post("/events", content=b"{}", headers={"content-type": "text/plain"})).status_code == 415
    assert (await client.post("/events", content=b"[]",
                              headers={"content-type": "application/json"})).status_code == 400

    # 3. the good events, one by one
    for event in good:
        response = await client.post("/events", content=orjson.dumps(event),
                                     headers={"content-type": "application/cloudevents+json"})
        assert response.status_code == 202, response.text

    # 4. records a misbehaving producer wrote straight to the inbound topic: dead letters, with the reason
    inbound = INBOUND_EVENTS.name(settings.topic_prefix)
    unknown_type = {**good[0], "id": "bad-type-1", "type": "org.carebus.unknown.v1"}
    producer.send_all_and_wait([
        OutboundRecord(inbound, "x|1", b"\xff\xfe not json", {"ce_id": "garbage-1"}),
        OutboundRecord(inbound, "x|1", orjson.dumps(unknown_type), {"ce_id": "bad-type-1"}),
        OutboundRecord(inbound, "x|1", orjson.dumps([1, 2]), {"ce_id": "garbage-2"}),
    ])

    sent = len(good) + 3
    service = mapper(settings)
    run_until(service, sent)
    service.close()
    bundles = read_all(settings, FHIR_BUNDLES.name(settings.topic_prefix), until=lambda rs: len(rs) >= len(good))
    letters = read_all(settings, DEAD_LETTERS.name(settings.topic_prefix), until=lambda rs: len(rs) >= 3)
    assert len(bundles) + len(letters) == sent
    assert len(letters) == 3
    reasons = {header(r, "ce_carebuseventid"): orjson.loads(r.value) for r in letters}
    assert reasons["garbage-1"]["reason"] == "malformed-json"
    assert reasons["bad-type-1"]["reason"] == "schema-violation"
    assert reasons["garbage-2"]["reason"] == "mapping-failed"
    for letter in reasons.values():
        assert letter["source"]["topic"] == inbound
        assert isinstance(letter["source"]["offset"], int)
        assert letter["original"]["value"]

    # the lineage: one JSON line per inbound record, naming where it came from and every output it became
    lines = [orjson.loads(line) for line in lineage.getvalue().splitlines()]
    assert len(lines) == sent
    assert len({line["inbound"] for line in lines}) == sent
    assert all(line["inbound"].startswith(f"{inbound}/") for line in lines)
    position = {f"{r.topic}/{r.partition}/{r.offset}": r for r in bundles + letters}
    for line in lines:
        assert line["logger"] == LINEAGE_LOGGER
        assert len(line["outputs"]) == 1
        output = position[line["outputs"][0]]
        if line["message"] == "event mapped":
            assert line["event_id"] == header(output, "ce_carebuseventid")
            entries = orjson.loads(output.value)["entry"]
            assert line["resources"] == [f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in entries]
            assert line["dead_letter_reason"] is None
        else:
            assert line["message"] == "event dead-lettered"
            assert line["dead_letter_reason"] == orjson.loads(output.value)["reason"]
            assert line["resources"] == []
    assert {line["event_id"] for line in lines if line["message"] == "event mapped"} == {e["id"] for e in good}
    # ids, types and positions only (no names, birth dates or note text): exactly these fields
    assert {frozenset(line) for line in lines} == {frozenset({
        "time", "level", "logger", "message", "service", "event_id", "event_type", "correlation_id", "inbound",
        "outputs", "resources", "dead_letter_reason"})}


async def test_mapper_crash_between_produce_and_commit_loses_nothing(
        settings: Settings, intake: tuple[httpx.AsyncClient, RecordProducer]) -> None:
    client, _ = intake
    examples = schema_examples()
    events = []
    for round_no in range(4):
        for example in examples:
            event = copy.deepcopy(example)
            event["id"] = f"{example['id']}-r{round_no}"
            events.append(event)
    response = await client.post("/events", content=orjson.dumps(events),
                                 headers={"content-type": "application/cloudevents-batch+json"})
    assert response.status_code == 202

    first = mapper(settings, max_records=7)
    run_until(first, 20)
    # crash: a batch's outputs are written and acknowledged, but the process dies before committing
    original_commit = first._consumer.commit_async

    def die(*_: object, **__: object) -> None:
        raise SystemExit("simulated crash")

    first._consumer.commit_async = die  # type: ignore[method-assign]
    with pytest.raises(SystemExit):
        for _ in range(100):  # batches overlap: the crash comes when the next one is settled
            first.run_once(timeout_ms=2000)
    first._consumer.commit_async = original_commit  # type: ignore[method-assign]
    first._consumer.close(autocommit=False)

    second = mapper(settings)
    run_until(second, len(events) - first.stats.consumed)  # everything the first one did not commit
    second.close()

    bundles = read_all(settings, FHIR_BUNDLES.name(settings.topic_prefix),
                       until=lambda rs: {header(r, "ce_carebuseventid") for r in rs} >= {e["id"] for e in events})
    seen: dict[str, set[bytes]] = {}
    for record in bundles:
        seen.setdefault(header(record, "ce_carebuseventid") or "", set()).add(record.value)
    assert set(seen) == {e["id"] for e in events}  # nothing lost
    assert all(len(values) == 1 for values in seen.values())  # repeats are byte-identical (same ids)


async def test_intake_answers_503_with_retry_after_when_kafka_is_unreachable() -> None:
    settings = Settings(kafka_bootstrap="127.0.0.1:1", kafka_request_timeout_s=1.0, topic_prefix="nowhere",
                        intake_tokens=TEST_INTAKE_GRANTS)
    producer = RecordProducer(settings, "test-intake-down")
    app = create_app(settings, producer, Metrics(), lambda: (False, "down"))
    examples = schema_examples()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://intake",
                                 headers=TEST_INTAKE_HEADERS) as client:
        response = await client.post("/events", content=orjson.dumps(examples[0]),
                                     headers={"content-type": "application/cloudevents+json"})
        assert response.status_code == 503
        assert response.headers["retry-after"]
        assert response.json()["type"].endswith("kafka-unavailable")
        assert (await client.get("/readyz")).status_code == 503
    threading.Thread(target=producer.close, daemon=True).start()
