"""The bundle-topic consumer: Kafka records in, store transactions out, offsets committed only after the store
committed. A thread of the record service.

Per poll: every record is prepared (pure); bad ones go to the dead-letter topic with the reason; the rest are
ingested in one store transaction, which leaves out (and reports) any bundle the database refuses as data -
those are dead-lettered too (reason ``store-refused``), so one poison record never stops the others; then the
dead letters are acknowledged; then the change publisher sends what the transaction added to the change outbox
(without waiting for Kafka's acks: the outbox already holds it durably; services/record/change_publisher.py);
then the offsets are committed (asynchronously: a commit lost in a crash or a rebalance only re-delivers
records, and ingest skips them). If the store (an outage, not a refusal) or Kafka fails, nothing is committed,
the partitions are rewound to the batch's first offsets and the batch is retried after a pause: ingest is
idempotent, so a retried or replayed record changes nothing twice.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson
from kafka import KafkaConsumer, OffsetAndMetadata, TopicPartition
from kafka.errors import KafkaError
from prometheus_client import Counter

from services.common.errors import BrokerUnavailable, InfrastructureError
from services.common.event_headers import RECORD_SOURCE, dead_letter_headers, record_time
from services.common.kafka import OutboundRecord, RecordProducer, build_consumer, end_offsets_lag
from services.common.metrics import Metrics
from services.common.settings import Settings
from services.common.topics import (
    DEAD_LETTERS,
    FHIR_BUNDLES,
    HEADER_CORRELATION_ID,
    HEADER_DEAD_LETTER_REASON,
    HEADER_EVENT_ID,
    HEADER_INBOUND_EVENT_ID,
    HEADER_INBOUND_EVENT_TYPE,
    RECORD_CHANGES,
)
from services.record.change_publisher import ChangePublisher
from services.record.errors import BadBundle
from services.record.ingest import InboundBundle, PreparedBundle, prepare_bundle
from services.record.store.base import RecordStore

log = logging.getLogger(__name__)

ConsumerFactory = Callable[[], KafkaConsumer]


def inbound(record: Any) -> InboundBundle:
    headers = {name: (value or b"").decode(errors="replace") for name, value in (record.headers or ())}
    key = (record.key or b"").decode(errors="replace")
    return InboundBundle(
        record.topic, record.partition, record.offset, record.timestamp, key, record.value or b"", headers
    )


class StoreRefused(BadBundle):
    """The record store refused a prepared bundle as data (a value the database cannot hold)."""

    reason = "store-refused"


class UnprocessableBundle(BadBundle):
    """Preparing the bundle failed in a way no rule names (a bug to fix; the record goes on)."""

    reason = "unexpected-error"


def dead_letter(topic: str, record: InboundBundle, exc: BadBundle) -> OutboundRecord:
    try:
        original: dict[str, str] = {"encoding": "utf-8", "value": record.value.decode()}
    except UnicodeDecodeError:
        original = {"encoding": "base64", "value": base64.b64encode(record.value).decode()}
    event_id = record.headers.get(HEADER_INBOUND_EVENT_ID) or record.headers.get(HEADER_EVENT_ID, "")
    letter = {
        "reason": exc.reason,
        "message": exc.message,
        "problems": [],
        "stage": "record",
        "event_id": event_id,
        "source": {
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "key": record.key,
            "timestamp_ms": record.timestamp_ms,
        },
        "headers": dict(record.headers),
        "original": original,
    }
    return OutboundRecord(
        topic=topic,
        key=record.key,
        value=orjson.dumps(letter),
        headers=dead_letter_headers(
            f"{record.topic}/{record.partition}/{record.offset}", RECORD_SOURCE, record_time(record.timestamp_ms),
            event_id, record.headers.get(HEADER_INBOUND_EVENT_TYPE, ""),
            record.headers.get(HEADER_CORRELATION_ID, event_id), exc.reason,
        ),
    )


LAG_PROBE_INTERVAL_S = 5.0


def _commit_answered(offsets: Any, answer: Any) -> None:
    """The callback of an asynchronous offset commit: a failure only means those records come again."""
    if isinstance(answer, Exception):
        log.info("offset commit not accepted; the records will be re-delivered (idempotent)",
                 extra={"error": type(answer).__name__})
MAX_QUEUED_PER_PARTITION = 2000


def _caught_up(consumer: KafkaConsumer, tp: TopicPartition) -> bool:
    """Nothing more to fetch from ``tp`` right now (its last known high-water mark is reached)."""
    highwater = consumer.highwater(tp)
    return highwater is not None and consumer.position(tp) >= highwater


class PartitionMerge:
    """Per-partition queues of consumed records, released merged by (timestamp, partition, offset).

    Kafka orders records within a partition only. A resource that travels under two keys (an A40 merge carries
    the retired Patient under the survivor's key) can therefore arrive in a different order on a replay than
    the first time. Releasing records in record-timestamp order across partitions - never reordering within
    one - makes the order the store sees a function of the topic, not of fetch timing. A partition with nothing
    queued holds the merge back until it is caught up (its next record could be older).
    """

    def __init__(self) -> None:
        self._queues: dict[TopicPartition, deque[Any]] = {}
        self._seen: dict[TopicPartition, int] = {}

    @property
    def total(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def queued(self, tp: TopicPartition) -> int:
        queue = self._queues.get(tp)
        return len(queue) if queue else 0

    def add(self, tp: TopicPartition, records: Iterable[Any]) -> None:
        queue = self._queues.setdefault(tp, deque())
        seen = self._seen.get(tp, -1)
        for record in records:
            if record.offset > seen:  # a re-fetch after a rebalance repeats records already queued
                queue.append(record)
                seen = record.offset
        self._seen[tp] = seen

    def retain(self, assigned: Iterable[TopicPartition]) -> None:
        keep = set(assigned)
        for tp in list(self._queues):
            if tp not in keep:
                del self._queues[tp]
                self._seen.pop(tp, None)

    def take(
        self, assigned: Iterable[TopicPartition], caught_up: Callable[[TopicPartition], bool], limit: int
    ) -> list[Any]:
        partitions = list(assigned)
        out: list[Any] = []
        idle: dict[TopicPartition, bool] = {}
        while len(out) < limit:
            best: tuple[int, int, int] | None = None
            best_tp: TopicPartition | None = None
            for tp in partitions:
                queue = self._queues.get(tp)
                if queue:
                    head = queue[0]
                    key = (head.timestamp, tp.partition, head.offset)
                    if best is None or key < best:
                        best, best_tp = key, tp
                else:
                    if tp not in idle:
                        idle[tp] = caught_up(tp)
                    if not idle[tp]:
                        return out  # its next record may be older than every queued one
            if best_tp is None:
                return out
            out.append(self._queues[best_tp].popleft())
        return out

    def restore(self, records: Sequence[Any]) -> None:
        """Put taken records back in front of their queues (a failed batch is retried in the same order)."""
        for record in reversed(records):
            tp = TopicPartition(record.topic, record.partition)
            self._queues.setdefault(tp, deque()).appendleft(record)


class BundleIngestor:
    """Consumes the bundle topic into the store on a background thread."""

    def __init__(
        self,
        settings: Settings,
        store: RecordStore,
        metrics: Metrics,
        producer: RecordProducer | None,
        consumer_factory: ConsumerFactory | None = None,
        group_id: str | None = None,
        retry_pause_s: float = 2.0,
    ) -> None:
        self.topic = FHIR_BUNDLES.name(settings.topic_prefix)
        self.dead_letter_topic = DEAD_LETTERS.name(settings.topic_prefix)
        self._store = store
        self._metrics = metrics
        self._producer = producer
        group = group_id or settings.record_group_id
        self._factory = consumer_factory or (lambda: build_consumer(settings, "carebus-record", group, [self.topic]))
        self._retry_pause_s = retry_pause_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._progress = threading.Condition()
        self._next_offsets: dict[tuple[str, int], int] = {}
        self._merge = PartitionMerge()
        self._lag_probed = 0.0
        self.changes_topic = RECORD_CHANGES.name(settings.topic_prefix)
        self._stored_offsets: dict[TopicPartition, OffsetAndMetadata] = {}  # next offset per partition stored
        self.healthy = False
        self.reason = "not started"
        self.versions_written = Counter(
            "carebus_record_versions_written_total",
            "Resource versions the record stored, by resource type.",
            ["resource_type"],
            registry=metrics.registry,
        )
        self.unchanged = Counter(
            "carebus_record_resources_unchanged_total",
            "Ingested resources equal to their current version.",
            registry=metrics.registry,
        )
        self.changes_published = Counter(
            "carebus_record_changes_published_total",
            "Change-feed messages the record published (after the store commit).",
            registry=metrics.registry,
        )
        self.bundles_skipped = Counter(
            "carebus_record_bundles_replayed_total",
            "Bundles skipped because they were already ingested.",
            registry=metrics.registry,
        )
        self._changes = (
            ChangePublisher(store, producer, self.changes_topic, self.changes_published)
            if producer is not None else None
        )

    # --- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="record-ingestor", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait_for(self, positions: Iterable[tuple[int, int]], timeout_s: float = 30.0) -> bool:
        """Block until every (partition, offset) of the bundle topic has been ingested (stored; the offset commit
        follows asynchronously, and a stop commits synchronously)."""
        wanted = [(self.topic, p, o) for p, o in positions]
        deadline = time.monotonic() + timeout_s
        with self._progress:
            while True:
                if all(self._next_offsets.get((t, p), -1) > o for t, p, o in wanted):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._progress.wait(remaining)

    # --- the loop -------------------------------------------------------------------------------------

    def _run(self) -> None:
        consumer: KafkaConsumer | None = None
        while not self._stop.is_set():
            try:
                if consumer is None:
                    consumer = self._factory()
                    self._merge = PartitionMerge()  # a new consumer starts again from the committed offsets
                    self._stored_offsets = {}
                self._poll_once(consumer)
            except (KafkaError, BrokerUnavailable) as exc:
                self.healthy, self.reason = False, f"kafka: {type(exc).__name__}"
                log.warning("bundle consumer failed; reconnecting", extra={"error": type(exc).__name__})
                if consumer is not None:
                    self._close(consumer)
                    consumer = None
                self._stop.wait(self._retry_pause_s)
            except Exception:
                self.healthy, self.reason = False, "unexpected error"
                log.exception("bundle consumer crashed; restarting it")
                if consumer is not None:
                    self._close(consumer)
                    consumer = None
                self._stop.wait(self._retry_pause_s)
        if consumer is not None:
            self._finish(consumer)
        self.healthy, self.reason = False, "stopped"

    def _finish(self, consumer: KafkaConsumer) -> None:
        """At a stop: the changes sent get their acks (briefly), the offsets stored are committed, then close."""
        if self._changes is not None and not self._changes.drain(timeout_s=10.0):
            log.warning("change feed not fully acknowledged at stop; the outbox publishes the rest at the next start")
        offsets = {tp: o for tp, o in self._stored_offsets.items() if tp in consumer.assignment()}
        if offsets:
            try:
                consumer.commit(offsets)
            except (KafkaError, OSError):
                log.warning("final offset commit failed; the last records will be re-delivered (idempotent)")
        self._close(consumer)

    @staticmethod
    def _close(consumer: KafkaConsumer) -> None:
        try:
            consumer.close()
        except (KafkaError, OSError):
            log.debug("consumer close failed")

    def _poll_once(self, consumer: KafkaConsumer) -> None:
        merge = self._merge
        polled = consumer.poll(timeout_ms=100 if merge.total else 500, max_records=500)
        self.healthy, self.reason = True, "ok"
        assigned = consumer.assignment()
        merge.retain(assigned)
        for tp, batch in polled.items():
            merge.add(tp, batch)
        self._flow_control(consumer, assigned)
        records = merge.take(sorted(assigned), lambda tp: _caught_up(consumer, tp), limit=500)
        if not records:
            self._publish_changes()  # acknowledgements, and what a crash left in the outbox
            return
        started = time.perf_counter()
        try:
            self._process(records)
        except InfrastructureError as exc:
            self.healthy, self.reason = False, f"retrying: {type(exc).__name__}"
            log.warning("batch not stored; will retry", extra={"error": type(exc).__name__, "records": len(records)})
            merge.restore(records)
            self._stop.wait(self._retry_pause_s)
            return
        self._publish_changes()
        last: dict[tuple[str, int], int] = {}
        for r in records:
            last[(r.topic, r.partition)] = max(r.offset, last.get((r.topic, r.partition), -1))
        offsets = {TopicPartition(t, p): OffsetAndMetadata(o + 1, "", -1) for (t, p), o in last.items()}
        self._stored_offsets.update(offsets)
        consumer.commit_async(offsets, callback=_commit_answered)
        self._metrics.processing_seconds.labels(stage="record-ingest").observe(time.perf_counter() - started)
        with self._progress:
            for key, offset in last.items():
                self._next_offsets[key] = max(self._next_offsets.get(key, 0), offset + 1)
            self._progress.notify_all()
        if time.monotonic() - self._lag_probed > LAG_PROBE_INTERVAL_S:
            self._lag_probed = time.monotonic()
            try:
                for tp, lag in end_offsets_lag(consumer).items():
                    self._metrics.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(lag)
            except KafkaError:
                log.debug("lag probe failed")

    def _publish_changes(self) -> None:
        """Hand the store's new change rows to Kafka without waiting (a failed write is sent again next time)."""
        if self._changes is None:
            return
        try:
            self._changes.pump()
        except BrokerUnavailable as exc:
            self.healthy, self.reason = False, f"change feed: {type(exc).__name__}"
            log.warning("change feed write failed; resending from the first unacknowledged change")

    def _flow_control(self, consumer: KafkaConsumer, assigned: set[TopicPartition]) -> None:
        """Stop fetching a partition whose queue is long (others may be needed to go on), resume when short."""
        paused = consumer.paused()
        for tp in assigned:
            queued = self._merge.queued(tp)
            if queued >= MAX_QUEUED_PER_PARTITION and tp not in paused:
                consumer.pause(tp)
            elif queued < MAX_QUEUED_PER_PARTITION // 2 and tp in paused:
                consumer.resume(tp)

    def _letter(self, bundle: InboundBundle, exc: BadBundle) -> OutboundRecord:
        log.warning(
            "bundle dead-lettered", extra={"reason": exc.reason, "partition": bundle.partition, "offset": bundle.offset}
        )
        return dead_letter(self.dead_letter_topic, bundle, exc)

    def _process(self, records: list[Any]) -> None:
        prepared: list[PreparedBundle] = []
        letters: list[OutboundRecord] = []
        inbound_at: dict[tuple[int, int], InboundBundle] = {}
        for record in records:
            bundle = inbound(record)
            try:
                prepared.append(prepare_bundle(bundle))
                inbound_at[(bundle.partition, bundle.offset)] = bundle
            except BadBundle as exc:
                letters.append(self._letter(bundle, exc))
            except Exception as exc:  # never the message: it may quote the data
                log.error("bundle could not be prepared", extra={"error": type(exc).__name__})
                letters.append(self._letter(bundle, UnprocessableBundle(f"{type(exc).__name__} while preparing")))
        report = self._store.ingest(prepared)
        for refusal in report.refused:
            letters.append(
                self._letter(
                    inbound_at[(refusal.partition, refusal.offset)],
                    StoreRefused(f"the record store refused the bundle ({refusal.code})"),
                )
            )
        if letters:
            if self._producer is None:
                log.error("no producer for dead letters; bad bundles are skipped", extra={"count": len(letters)})
            else:
                self._producer.send_all_and_wait(letters)
            for letter in letters:
                self._metrics.dead_letters.labels(
                    reason=letter.headers[HEADER_DEAD_LETTER_REASON], stage="record"
                ).inc()
        self.unchanged.inc(report.unchanged)
        self.bundles_skipped.inc(report.skipped_bundles)
        for rtype, count in report.versions_by_type.items():
            self.versions_written.labels(resource_type=rtype).inc(count)
        log.debug(
            "batch ingested",
            extra={
                "bundles": report.bundles,
                "versions": report.versions,
                "unchanged": report.unchanged,
                "replayed": report.skipped_bundles,
            },
        )
