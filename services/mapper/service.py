"""The mapper's consume -> map -> produce -> commit loop.

Offsets are committed only after every output of the polled batch (bundles, alerts, dead letters) is
acknowledged by the broker (acks=all): a crash can repeat work, never lose it, and repeated work produces the
same resource ids. If Kafka does not acknowledge, nothing more is committed: the consumer rewinds to the first
offsets not yet committed and the batches are retried with back-off.

Each event's outputs are written as soon as it is mapped. Batches overlap: while the broker acknowledges one
batch's outputs, the next batch is mapped (at most
MAX_BATCHES_IN_FLIGHT batches are written and not yet acknowledged). Batches are settled (committed, counted,
logged) strictly in order, and each commit covers only batches whose outputs are all acknowledged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import CommitFailedError, KafkaError
from kafka.producer.future import FutureRecordMetadata, RecordMetadata
from kafka.structs import OffsetAndMetadata

from services.common.errors import BrokerUnavailable
from services.common.kafka import RecordProducer, end_offsets_lag
from services.common.log import LINEAGE_LOGGER
from services.common.metrics import Metrics
from services.common.topics import MAX_MESSAGE_BYTES
from services.mapper.pipeline import InboundRecord, Outcome, Pipeline

# The mapper writes whole polled batches (~3.5 MB of Bundles for 500 events) and settles them when acknowledged:
# let the producer fill large batches and send several per request. Batches of up to 4 MiB (the catalogue's
# topics accept 8 MiB, topics.MAX_MESSAGE_BYTES): with 1 MB batches a partition's queue held several of them
# while the sender thread waited for the GIL, and every further append woke it again (a syscall and a thread
# switch for two records in three); 4 MiB batches made the mapper 6-11% faster (benchmarks/pipeline_bench.py).
PRODUCER_TUNING: dict[str, Any] = {"linger_ms": 5, "batch_size": 4 * 1024 * 1024,
                                   "max_request_size": MAX_MESSAGE_BYTES}
MAX_BATCHES_IN_FLIGHT = 4

log = logging.getLogger(__name__)
lineage_log = logging.getLogger(LINEAGE_LOGGER)


@dataclass
class MapperStats:
    consumed: int = 0  # inbound records settled: outputs acknowledged, offsets committed
    bundles: int = 0
    dead_letters: int = 0
    alerts: int = 0
    batches: int = 0
    by_event_type: Counter[str] = field(default_factory=Counter)


@dataclass
class _Batch:
    """One polled batch between its write and its commit."""

    inbound: list[Any]  # kafka-python ConsumerRecords, in the order of ``outcomes``
    outcomes: list[Outcome]
    first_offsets: dict[TopicPartition, int]
    next_offsets: dict[TopicPartition, OffsetAndMetadata]
    futures: list[FutureRecordMetadata] = field(default_factory=list)

    def acknowledged(self) -> bool:
        return all(future.is_done for future in self.futures)


class MapperService:
    def __init__(self, consumer: KafkaConsumer, producer: RecordProducer, pipeline: Pipeline,
                 metrics: Metrics, max_records: int = 500) -> None:
        self._consumer = consumer
        self._producer = producer
        self._pipeline = pipeline
        self._metrics = metrics
        self._max_records = max_records
        self._in_flight: deque[_Batch] = deque()
        self._committed: dict[TopicPartition, OffsetAndMetadata] = {}
        self.stats = MapperStats()
        self._last_lag_update = 0.0

    def run(self, stop: threading.Event) -> None:
        backoff_s = 0.5
        while not stop.is_set():
            try:
                handled = self.run_once()
                backoff_s = 0.5
            except BrokerUnavailable as exc:
                log.warning("outputs not acknowledged; retrying from the last commit", extra={"error": str(exc)})
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
        """Settle what the broker has acknowledged, then poll, map and write one batch (without waiting for
        its acks unless MAX_BATCHES_IN_FLIGHT are already waiting). With nothing new to map, wait for every
        batch in flight. Returns the number of records polled."""
        self._settle(wait=False)
        polled = self._consumer.poll(timeout_ms=0 if self._in_flight else timeout_ms,
                                     max_records=self._max_records)
        if not polled:
            self._settle(wait=True)
            return 0
        batch = _Batch([], [], {tp: records[0].offset for tp, records in polled.items()}, {})
        self._in_flight.append(batch)  # from here a failed write rewinds to the batch's first offsets too
        try:
            self._map_and_send(polled, batch)
        except BrokerUnavailable:
            self._rewind()
            raise
        while len(self._in_flight) > MAX_BATCHES_IN_FLIGHT:
            self._settle(wait=True, batches=1)
        return len(batch.outcomes)

    def _map_and_send(self, polled: dict[TopicPartition, list[Any]], batch: _Batch) -> None:
        """Map each polled record and hand its outputs to the producer at once: an event's bundle leaves while
        the rest of the batch is still being mapped, instead of waiting for the whole batch (up to 500 events,
        most of a second on a busy machine)."""
        started = time.perf_counter()
        for tp, records in polled.items():
            for record in records:
                batch.inbound.append(record)
                outcome = self._pipeline.process(InboundRecord(
                    topic=record.topic, partition=record.partition, offset=record.offset,
                    timestamp_ms=record.timestamp, key=record.key, value=record.value,
                    headers=tuple(record.headers or ()),
                ))
                batch.outcomes.append(outcome)
                batch.futures.extend(self._producer.send(out) for out in outcome.records)
            batch.next_offsets[tp] = OffsetAndMetadata(records[-1].offset + 1, "", -1)
        self._metrics.processing_seconds.labels(stage="map").observe(
            (time.perf_counter() - started) / len(batch.outcomes))

    def _settle(self, wait: bool, batches: int | None = None) -> None:
        """Commit, count and log the oldest batches whose outputs are all acknowledged (waiting for them when
        ``wait``), in order; at most ``batches`` of them."""
        settled = 0
        while self._in_flight and (batches is None or settled < batches):
            batch = self._in_flight[0]
            if not wait and not batch.acknowledged():
                return
            timeout = self._producer.request_timeout_s
            try:
                # an acknowledged write's metadata is read as is; get() waits for the others, or raises
                written = [future.value if future.succeeded() else future.get(timeout=timeout)
                           for future in batch.futures]
            except KafkaError as exc:
                self._rewind()
                raise BrokerUnavailable(f"write not acknowledged: {type(exc).__name__}") from exc
            self._in_flight.popleft()
            self._log_lineage(batch, written)  # before the commit: a crash repeats lineage, never loses it
            self._commit(batch.next_offsets)
            self._account(batch)
            settled += 1

    def _commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        self._committed.update(offsets)
        self._consumer.commit_async(dict(offsets), callback=self._on_commit)

    def _on_commit(self, offsets: Any, response: Any) -> None:
        if isinstance(response, Exception):
            # e.g. a rebalance: the partitions' new owner repeats the batch (same ids), nothing is lost
            log.warning("offset commit failed; the batch will be repeated", extra={"error": type(response).__name__})

    def _rewind(self) -> None:
        """Forget every batch in flight and seek back to its first offsets: all of it is mapped again. The
        producer that did not acknowledge them is replaced (one wedged by a broker crash never recovers)."""
        self._producer.reset()
        first: dict[TopicPartition, int] = {}
        for batch in self._in_flight:
            for tp, offset in batch.first_offsets.items():
                first[tp] = min(offset, first.get(tp, offset))
        self._in_flight.clear()
        for tp, offset in first.items():
            self._consumer.seek(tp, offset)
            self._metrics.produce_errors.labels(topic=tp.topic).inc()

    def _log_lineage(self, batch: _Batch, written: list[RecordMetadata]) -> None:
        """One line per event: inbound position -> resource ids and output positions (the auditor's lineage),
        written (flushed) once per batch."""
        if not lineage_log.isEnabledFor(logging.INFO):
            return
        cursor = 0
        for record, outcome in zip(batch.inbound, batch.outcomes, strict=True):
            end = cursor + len(outcome.records)
            # a dict message (python-json-logger merges it into the line): cheaper than extra=, same line
            lineage_log.info({
                "message": "event mapped" if outcome.mapped else "event dead-lettered",
                "event_id": outcome.event_id, "event_type": outcome.event_type,
                "correlation_id": outcome.correlation_id,
                "inbound": f"{record.topic}/{record.partition}/{record.offset}",
                "outputs": [f"{m.topic}/{m.partition}/{m.offset}" for m in written[cursor:end]],
                "resources": outcome.mapped.resources if outcome.mapped else (),
                "dead_letter_reason": outcome.dead_letter_reason,
            })
            cursor = end
        for handler in lineage_log.handlers:
            handler.flush()

    def _account(self, batch: _Batch) -> None:
        """Stats and metrics of a settled batch: counted per batch, one increment per label value."""
        now_ms = time.time() * 1000
        by_event_type = self.stats.by_event_type
        bundles: dict[str, int] = {}
        resources: dict[str, int] = {}
        dead_letters: dict[str, int] = {}
        alerts: dict[str, int] = {}
        issues: dict[str, int] = {}
        for outcome in batch.outcomes:
            event_type = outcome.event_type
            by_event_type[event_type] += 1
            reason = outcome.dead_letter_reason
            if reason is not None:
                dead_letters[reason] = dead_letters.get(reason, 0) + 1
                continue
            mapped = outcome.mapped
            assert mapped is not None
            bundles[event_type] = bundles.get(event_type, 0) + 1
            for resource_type, count in mapped.resource_counts.items():
                resources[resource_type] = resources.get(resource_type, 0) + count
            for alert in mapped.alerts:
                alerts[alert.kind] = alerts.get(alert.kind, 0) + 1
            for issue in mapped.data_quality:
                kind = issue.split("@", 1)[0]  # no field position
                issues[kind] = issues.get(kind, 0) + 1
        self.stats.consumed += len(batch.outcomes)
        self.stats.bundles += sum(bundles.values())
        self.stats.dead_letters += sum(dead_letters.values())
        self.stats.alerts += sum(alerts.values())
        metrics = self._metrics
        for reason, count in dead_letters.items():
            metrics.dead_letters.labels(reason=reason, stage="mapper").inc(count)
        for event_type, count in bundles.items():
            metrics.bundles_emitted.labels(event_type=event_type).inc(count)
        for resource_type, count in resources.items():
            metrics.resources_emitted.labels(resource_type=resource_type).inc(count)
        for kind, count in alerts.items():
            metrics.safety_alerts.labels(kind=kind).inc(count)
        for kind, count in issues.items():
            metrics.data_quality_issues.labels(kind=kind).inc(count)
        observe_end_to_end = metrics.end_to_end_seconds.observe
        for record in batch.inbound:
            timestamp = getattr(record, "timestamp", None)
            if isinstance(timestamp, int):
                observe_end_to_end(max(0.0, (now_ms - timestamp) / 1000))
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
        """Settle every batch in flight, make the last commit synchronously, and close both clients."""
        try:
            self._settle(wait=True)
            if self._committed:
                self._consumer.commit(dict(self._committed))
        except (BrokerUnavailable, KafkaError, CommitFailedError) as exc:
            log.warning("closing with batches not settled; they will be repeated", extra={"error": type(exc).__name__})
        finally:
            self._producer.close()
            self._consumer.close(autocommit=False)
