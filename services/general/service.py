"""The general-topic loop: consume ``fhir.bundles.v1`` -> :func:`general_bundle` -> produce
``fhir.bundles.general.v1`` (same key, so the same partition and per-key order) -> commit after the acks.

A crash repeats work and never loses it: offsets are committed only after every record of the batch is
acknowledged (acks=all), and a repeated record carries the same ``ce_id`` header as its first copy.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import CommitFailedError
from kafka.structs import OffsetAndMetadata
from prometheus_client import Counter

from services.common.errors import BrokerUnavailable
from services.common.kafka import OutboundRecord, RecordProducer
from services.common.metrics import Metrics
from services.common.topics import HEADER_SECURITY
from services.general.filter import general_bundle

log = logging.getLogger(__name__)


class GeneralTopicService:
    def __init__(self, consumer: KafkaConsumer, producer: RecordProducer, target_topic: str, metrics: Metrics) -> None:
        self._consumer = consumer
        self._producer = producer
        self._target = target_topic
        self.forwarded = Counter("carebus_general_bundles_total", "Bundles written to the general topic.",
                                 registry=metrics.registry)
        self.skipped = Counter("carebus_general_skipped_total", "Bundle-topic records that are not FHIR Bundles "
                               "(not forwarded).", registry=metrics.registry)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.run_once()
            except BrokerUnavailable as exc:
                log.warning("general topic write failed; retrying the batch", extra={"error": type(exc).__name__})
                stop.wait(2.0)

    def run_once(self, timeout_ms: int = 500) -> int:
        polled = self._consumer.poll(timeout_ms=timeout_ms, max_records=500)
        records: list[Any] = sorted((r for batch in polled.values() for r in batch),
                                    key=lambda r: (r.partition, r.offset))
        if not records:
            return 0
        out: list[OutboundRecord] = []
        for r in records:
            try:
                value, security = general_bundle(r.value or b"")
            except ValueError:
                self.skipped.inc()
                log.warning("bundle-topic record is not a Bundle; not forwarded",
                            extra={"partition": r.partition, "offset": r.offset})
                continue
            headers = {n: (v or b"").decode(errors="replace") for n, v in (r.headers or ())}
            headers[HEADER_SECURITY] = security
            out.append(OutboundRecord(self._target, (r.key or b"").decode(errors="replace"), value, headers))
        try:
            self._producer.send_all_and_wait(out)
        except BrokerUnavailable:
            self._rewind(records)
            raise
        self.forwarded.inc(len(out))
        last: dict[TopicPartition, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            last[tp] = max(r.offset, last.get(tp, -1))
        try:
            self._consumer.commit({tp: OffsetAndMetadata(o + 1, "", -1) for tp, o in last.items()})
        except CommitFailedError:
            log.warning("offset commit failed after a rebalance; the batch will be re-delivered")
        return len(out)

    def _rewind(self, records: list[Any]) -> None:
        first: dict[TopicPartition, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            first[tp] = min(r.offset, first.get(tp, r.offset))
        for tp, offset in first.items():
            self._consumer.seek(tp, offset)

    def close(self) -> None:
        self._consumer.close()
        self._producer.close()
