"""Consumer-group lag from outside the group: how far a group's committed offsets trail a topic's end.

Used by `carebus status` and by the mapper to export the lag of whoever works the safety alerts
(``carebus_consumer_lag_records{topic="<prefix>.alerts.safety.v1"}``), so an alert rule can fire when safety
alerts wait unread.
"""

from __future__ import annotations

import logging
import threading
import time

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.errors import CoordinatorNotAvailableError, KafkaError

from services.common.kafka import client_config
from services.common.metrics import Metrics
from services.common.settings import Settings

log = logging.getLogger(__name__)


def group_partition_lag(admin: KafkaAdminClient, consumer: KafkaConsumer, group: str,
                        topic: str) -> dict[TopicPartition, int]:
    """Per partition: end offset minus the group's committed offset (all of it when nothing is committed)."""
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
    if not partitions:
        return {}
    ends = consumer.end_offsets(partitions)
    for attempt in range(5):  # a new cluster creates its offsets topic (the coordinator) on first use
        try:
            committed = admin.list_group_offsets({group: partitions}).get(group, {})
            break
        except CoordinatorNotAvailableError:
            if attempt == 4:
                raise
            time.sleep(0.5)
    lag = {}
    for tp in partitions:
        meta = committed.get(tp)
        position = meta.offset if meta is not None and meta.offset >= 0 else 0
        lag[tp] = max(0, ends[tp] - position)
    return lag


class GroupLagWatcher:
    """Exports one group's lag on one topic every ``interval_s`` (daemon thread; errors are logged, not fatal)."""

    def __init__(self, settings: Settings, group: str, topic: str, metrics: Metrics,
                 interval_s: float = 15.0) -> None:
        self._settings, self._group, self._topic = settings, group, topic
        self._metrics, self._interval_s = metrics, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="group-lag", daemon=True)

    def update_once(self) -> dict[TopicPartition, int]:
        admin = KafkaAdminClient(**client_config(self._settings, "carebus-lag"))
        consumer = KafkaConsumer(**client_config(self._settings, "carebus-lag"))
        try:
            lag = group_partition_lag(admin, consumer, self._group, self._topic)
        finally:
            admin.close()
            consumer.close()
        for tp, records in lag.items():
            self._metrics.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(records)
        return lag

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.update_once()
            except (KafkaError, OSError) as exc:
                log.warning("group lag not read", extra={"group": self._group, "error": type(exc).__name__})
            self._stop.wait(self._interval_s)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
