"""The mapper's consume -> map -> produce -> commit loop.

Offsets are committed only after every output of the polled batch (bundles, alerts, dead letters) is
acknowledged by the broker (acks=all): a crash can repeat work, never lose it, and repeated work produces the
same resource ids. If Kafka does not acknowledge, nothing is committed: the consumer rewinds to the batch's
first offsets and retries with back-off.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import CommitFailedError, KafkaError
from kafka.producer.future import RecordMetadata
from kafka.structs import OffsetAndMetadata

from services.common.errors import BrokerUnavailable
from services.common.kafka import RecordProducer, end_offsets_lag
from services.common.metrics import Metrics
from services.mapper.pipeline import InboundRecord, Outcome, Pipeline

# The mapper writes whole polled batches and then waits for all acks: let the producer fill large batches.
PRODUCER_TUNING: dict[str, Any] = {"linger_ms": 5, "batch_size": 256 * 1024}

log = logging.getLogger(__name__)
lineage_log = logging.getLogger("carebus.lineage")


@dataclass
class MapperStats:
    consumed: int = 0
    bundles: int = 0
    dead_letters: int = 0
    alerts: int = 0
    batches: int = 0
    by_event_type: Counter[str] = field(default_factory=Counter)


class MapperService:
    def __init__(self, consumer: KafkaConsumer, producer: RecordProducer, pipeline: Pipeline,
                 metrics: Metrics, max_records: int = 500) -> None:
        self._consumer = consumer
        self._producer = producer
        self._pipeline = pipeline
        self._metrics = metrics
        self._max_records = max_records
        self.stats = MapperStats()
        self._last_lag_update = 0.0

    def run(self, stop: threading.Event) -> None:
        backoff_s = 0.5
        while not stop.is_set():
            try:
                handled = self.run_once()
                backoff_s = 0.5
            except BrokerUnavailable as exc:
                log.warning("outputs not acknowledged; retrying the batch", extra={"error": str(exc)})
                stop.wait(backoff_s)
                backoff_s = min(backoff_s * 2, 10.0)
                continue
            except KafkaError as exc:
                log.warning("kafka error in consume loop", extra={"error": type(exc).__name__})
                stop.wait(backoff_s)
                backoff_s = min(backoff_s * 2, 10.0)
                continue
            if not handled:
                self._update_lag(force=False)

    def run_once(self, timeout_ms: int = 500) -> int:
        """Poll one batch, write all its outputs, then commit. Returns the number of records handled."""
        polled = self._consumer.poll(timeout_ms=timeout_ms, max_records=self._max_records)
        if not polled:
            return 0
        started = time.perf_counter()
        outcomes: list[Outcome] = []
        next_offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        first_offsets: dict[TopicPartition, int] = {}
        for tp, records in polled.items():
            first_offsets[tp] = records[0].offset
            for record in records:
                outcomes.append(self._pipeline.process(InboundRecord(
                    topic=record.topic, partition=record.partition, offset=record.offset,
                    timestamp_ms=record.timestamp, key=record.key, value=record.value,
                    headers=tuple(record.headers or ()),
                )))
            next_offsets[tp] = OffsetAndMetadata(records[-1].offset + 1, "", -1)
        mapped_at = time.perf_counter()
        self._metrics.processing_seconds.labels(stage="map").observe((mapped_at - started) / len(outcomes))

        outputs = [out for outcome in outcomes for out in outcome.records]
        try:
            written = self._producer.send_all_and_wait(outputs)
        except BrokerUnavailable:
            for tp, offset in first_offsets.items():
                self._consumer.seek(tp, offset)
            for tp in first_offsets:
                self._metrics.produce_errors.labels(topic=tp.topic).inc()
            raise
        try:
            self._consumer.commit(next_offsets)
        except CommitFailedError:
            # The group rebalanced: the partitions' new owner repeats this batch (same ids), nothing is lost.
            log.warning("commit failed after rebalance; batch will be repeated", extra={"records": len(outcomes)})
        self._account(outcomes, polled)
        self._log_lineage(polled, outcomes, written)
        return len(outcomes)

    def _log_lineage(self, polled: dict[TopicPartition, list[Any]], outcomes: list[Outcome],
                     written: list[RecordMetadata]) -> None:
        """One line per event: inbound position -> resource ids and output positions (the auditor's lineage)."""
        if not lineage_log.isEnabledFor(logging.INFO):
            return
        inbound = [record for records in polled.values() for record in records]
        cursor = 0
        for record, outcome in zip(inbound, outcomes, strict=True):
            metas = written[cursor:cursor + len(outcome.records)]
            cursor += len(outcome.records)
            resource_ids = ([f"{e['resource']['resourceType']}/{e['resource']['id']}"
                             for e in outcome.mapped.bundle.get("entry", [])] if outcome.mapped else [])
            lineage_log.info("event mapped" if outcome.mapped else "event dead-lettered", extra={
                "event_id": outcome.event_id, "event_type": outcome.event_type,
                "correlation_id": outcome.correlation_id,
                "inbound": f"{record.topic}/{record.partition}/{record.offset}",
                "outputs": [f"{m.topic}/{m.partition}/{m.offset}" for m in metas],
                "resources": resource_ids, "dead_letter_reason": outcome.dead_letter_reason,
            })

    def _account(self, outcomes: list[Outcome], polled: dict[TopicPartition, list[Any]]) -> None:
        now_ms = time.time() * 1000
        for outcome in outcomes:
            self.stats.consumed += 1
            self.stats.by_event_type[outcome.event_type] += 1
            if outcome.dead_letter_reason is not None:
                self.stats.dead_letters += 1
                self._metrics.dead_letters.labels(reason=outcome.dead_letter_reason, stage="mapper").inc()
                continue
            mapped = outcome.mapped
            assert mapped is not None
            self.stats.bundles += 1
            self.stats.alerts += len(mapped.alerts)
            self._metrics.bundles_emitted.labels(event_type=outcome.event_type).inc()
            for resource_type, count in mapped.resource_counts.items():
                self._metrics.resources_emitted.labels(resource_type=resource_type).inc(count)
            for alert in mapped.alerts:
                self._metrics.safety_alerts.labels(kind=alert.kind).inc()
            for issue in mapped.data_quality:
                self._metrics.data_quality_issues.labels(kind=issue.split("@", 1)[0]).inc()  # no field position
        for records in polled.values():
            for record in records:
                timestamp = getattr(record, "timestamp", None)
                if isinstance(timestamp, int):
                    self._metrics.end_to_end_seconds.observe(max(0.0, (now_ms - timestamp) / 1000))
        self.stats.batches += 1
        self._update_lag(force=False)

    def _update_lag(self, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._last_lag_update < 5:
            return
        self._last_lag_update = now
        try:
            for tp, lag in end_offsets_lag(self._consumer).items():
                self._metrics.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(lag)
        except KafkaError:
            log.debug("lag update failed")

    def close(self) -> None:
        self._producer.close()
        self._consumer.close(autocommit=False)
