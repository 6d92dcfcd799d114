"""The mapper across a broker outage: while writes are not acknowledged nothing is committed, the batches in
flight are forgotten and mapped again once the broker is back; nothing is lost and repeats are identical."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from devstack.journey import people, person_journey
from devstack.local_broker import LocalKafkaBroker
from services.common.errors import BrokerUnavailable
from services.common.events import parse_event, patient_key
from services.common.kafka import OutboundRecord, RecordProducer, build_consumer, ensure_topics
from services.common.metrics import Metrics
from services.common.settings import REPO_ROOT, Settings
from services.common.topics import CATALOGUE, FHIR_BUNDLES, INBOUND_EVENTS
from services.mapper.pipeline import Pipeline, TopicNames
from services.mapper.service import PRODUCER_TUNING, MapperService
from tests.kafka_helpers import header, read_all

pytestmark = pytest.mark.integration


def journeys(patients: int) -> list[dict[str, object]]:
    """The sample care journey lived by ``patients`` distinct people."""
    start = datetime(2026, 1, 5, 9, 0, tzinfo=UTC) - timedelta(days=1)
    return [event for person in people(patients) for event in person_journey(person, start)]


def test_a_broker_outage_rewinds_the_batches_in_flight_and_loses_nothing(tmp_path: Path) -> None:
    broker = LocalKafkaBroker(REPO_ROOT / ".cache", workdir=tmp_path / "kafka").start()
    try:
        settings = Settings(kafka_bootstrap=broker.bootstrap, topic_prefix="outage", kafka_request_timeout_s=3)
        ensure_topics(settings, CATALOGUE)
        events = journeys(8)
        loader = RecordProducer(settings, "test-loader")
        loader.send_all_and_wait([
            OutboundRecord(INBOUND_EVENTS.name("outage"), patient_key(parse_event(e)), orjson.dumps(e),
                           {"ce_id": str(e["id"]), "ce_type": str(e["type"])}) for e in events])
        loader.close()
        service = MapperService(
            build_consumer(settings, "test-mapper", "outage-mapper", [INBOUND_EVENTS.name("outage")]),
            # a batch waits a second before it is sent, so the last one mapped before the crash is still in
            # flight when the broker dies, however busy the machine is
            RecordProducer(settings, "test-mapper", **{**PRODUCER_TUNING, "linger_ms": 1000}),
            Pipeline(TopicNames.for_prefix("outage")), Metrics(), max_records=25)
        while service.stats.consumed < 75:
            service.run_once(timeout_ms=1000)
        while service.run_once(timeout_ms=1000) == 0:  # the last call mapped and sent a batch: it is in flight
            pass

        broker.kill()  # a crash: what is in flight is never acknowledged
        with pytest.raises(BrokerUnavailable):
            for _ in range(50):  # mapped batches wait in flight until their acks time out
                service.run_once(timeout_ms=500)
        settled_before_outage = service.stats.consumed
        assert settled_before_outage < len(events)

        broker.resume()
        deadline = time.monotonic() + 120
        while service.stats.consumed < len(events) and time.monotonic() < deadline:
            try:
                service.run_once(timeout_ms=1000)
            except BrokerUnavailable:
                time.sleep(0.5)  # the service's run() backs off the same way
        assert service.stats.consumed == len(events)  # every event settled exactly once after the rewind
        service.close()

        ids = {str(e["id"]) for e in events}
        bundles = read_all(settings, FHIR_BUNDLES.name("outage"),
                           until=lambda rs: {header(r, "ce_carebuseventid") for r in rs} >= ids, timeout_s=60)
        seen: dict[str, set[bytes]] = {}
        for record in bundles:
            seen.setdefault(header(record, "ce_carebuseventid") or "", set()).add(record.value)
        assert set(seen) == ids  # nothing lost
        assert all(len(values) == 1 for values in seen.values())  # a repeat is the same bundle
    finally:
        broker.stop()
