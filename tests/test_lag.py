"""Lag of the safety-alert consumer group, exported as carebus_consumer_lag_records, from a real broker."""

from __future__ import annotations

import pytest
from kafka import TopicPartition
from kafka.structs import OffsetAndMetadata

from services.common.kafka import OutboundRecord, RecordProducer, build_consumer
from services.common.lag import GroupLagWatcher
from services.common.metrics import Metrics
from services.common.runtime import prepare_topics
from services.common.settings import Settings
from services.common.topics import SAFETY_ALERTS

pytestmark = pytest.mark.integration


def test_alert_lag_counts_unread_alerts_until_the_group_commits(settings: Settings) -> None:
    prepare_topics(settings)
    topic = SAFETY_ALERTS.name(settings.topic_prefix)
    producer = RecordProducer(settings, "test-alerts")
    metas = producer.send_all_and_wait([OutboundRecord(topic, "src|p1", b"{}", {}) for _ in range(3)])
    producer.close()
    partition = metas[0].partition

    metrics = Metrics()
    watcher = GroupLagWatcher(settings, "alert-workers", topic, metrics)
    assert sum(watcher.update_once().values()) == 3  # nobody has read them
    gauge = metrics.registry.get_sample_value(
        "carebus_consumer_lag_records", {"topic": topic, "partition": str(partition)})
    assert gauge == 3

    consumer = build_consumer(settings, "alert-worker", "alert-workers", [])
    consumer.commit({TopicPartition(topic, partition): OffsetAndMetadata(2, "", -1)})
    consumer.close()
    assert watcher.update_once()[TopicPartition(topic, partition)] == 1
    assert metrics.registry.get_sample_value(
        "carebus_consumer_lag_records", {"topic": topic, "partition": str(partition)}) == 1
