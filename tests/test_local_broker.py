"""The local broker the project provisions really serves acks=all writes and reads them back."""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack.local_broker import LocalKafkaBroker
from services.common.kafka import OutboundRecord, RecordProducer, build_consumer, ensure_topics
from services.common.settings import REPO_ROOT, Settings
from services.common.topics import CATALOGUE, INBOUND_EVENTS

pytestmark = pytest.mark.integration


def test_catalogue_topics_created_and_round_trip(settings: Settings) -> None:
    created = ensure_topics(settings, CATALOGUE)
    assert sorted(created) == sorted(spec.name(settings.topic_prefix) for spec in CATALOGUE)
    assert ensure_topics(settings, CATALOGUE) == []  # idempotent

    topic = INBOUND_EVENTS.name(settings.topic_prefix)
    producer = RecordProducer(settings, "test")
    metas = producer.send_all_and_wait(
        [OutboundRecord(topic, "src|p1", f"v{i}".encode(), {"ce_id": f"e{i}"}) for i in range(5)]
    )
    producer.close()
    assert len({m.partition for m in metas}) == 1  # one key, one partition: order kept
    assert [m.offset for m in metas] == sorted(m.offset for m in metas)

    consumer = build_consumer(settings, "test", f"{settings.topic_prefix}-g", [topic])
    values: list[bytes] = []
    for _ in range(40):
        for records in consumer.poll(timeout_ms=500).values():
            values.extend(r.value for r in records)
        if len(values) >= 5:
            break
    consumer.close()
    assert values == [f"v{i}".encode() for i in range(5)]


def test_a_broker_killed_and_started_again_on_its_workdir_keeps_topics_records_and_offsets(tmp_path: Path) -> None:
    broker = LocalKafkaBroker(REPO_ROOT / ".cache", workdir=tmp_path / "kafka").start()
    assert not broker.reused
    try:
        settings = Settings(kafka_bootstrap=broker.bootstrap, topic_prefix="kept", kafka_request_timeout_s=10)
        ensure_topics(settings, CATALOGUE)
        topic = INBOUND_EVENTS.name("kept")
        producer = RecordProducer(settings, "test")
        producer.send_all_and_wait([OutboundRecord(topic, "src|p1", f"v{i}".encode(), {}) for i in range(5)])
        producer.close()
        consumer = build_consumer(settings, "test", "kept-group", [topic])
        values: list[bytes] = []
        for _ in range(40):
            for records in consumer.poll(timeout_ms=500, max_records=3).values():
                values.extend(r.value for r in records)
            if values:
                break
        committed = len(values)
        consumer.commit()  # the group's offsets live in the broker's __consumer_offsets topic
        consumer.close()
        assert 0 < committed <= 3 and values == [f"v{i}".encode() for i in range(committed)]
        broker.kill()  # a crash: no clean shutdown
    finally:
        broker.stop()

    again = LocalKafkaBroker(REPO_ROOT / ".cache", port=broker.port, workdir=tmp_path / "kafka").start()
    try:
        assert again.reused
        settings = Settings(kafka_bootstrap=again.bootstrap, topic_prefix="kept", kafka_request_timeout_s=10)
        assert ensure_topics(settings, CATALOGUE) == []  # the topics survived
        consumer = build_consumer(settings, "test", "kept-group", [topic])
        rest: list[bytes] = []
        for _ in range(60):
            for records in consumer.poll(timeout_ms=500).values():
                rest.extend(r.value for r in records)
            if committed + len(rest) >= 5:
                break
        consumer.close()
        assert rest == [f"v{i}".encode() for i in range(committed, 5)]  # from the committed offset on
    finally:
        again.stop()
