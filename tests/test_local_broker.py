"""The local broker the project provisions really serves acks=all writes and reads them back."""

from __future__ import annotations

import pytest

from services.common.kafka import OutboundRecord, RecordProducer, build_consumer, ensure_topics
from services.common.settings import Settings
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
