"""The change-feed consumer of notify (a thread): record changes in, numbered events in the notify store out;
the Kafka offsets are committed only after the store committed, so a crash repeats a batch (and the store's
uniqueness per subscription and version makes the repeat number nothing twice)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from kafka import KafkaConsumer, OffsetAndMetadata, TopicPartition
from kafka.errors import CommitFailedError, KafkaError
from prometheus_client import Counter

from services.common.errors import BrokerUnavailable, InfrastructureError
from services.common.kafka import build_consumer
from services.common.metrics import Metrics
from services.common.settings import Settings
from services.common.topics import RECORD_CHANGES
from services.notify.store import NotifyStore
from services.notify.topics import Change, MalformedChange, parse_change

log = logging.getLogger(__name__)


class ChangeFeedConsumer:
    def __init__(self, settings: Settings, store: NotifyStore, metrics: Metrics,
                 on_events: Callable[[list[str]], None],
                 events_counter: Counter, retry_pause_s: float = 2.0) -> None:
        self.topic = RECORD_CHANGES.name(settings.topic_prefix)
        self._settings = settings
        self._store = store
        self._on_events = on_events
        self._events = events_counter
        self._retry_pause_s = retry_pause_s
        self._step = metrics.notify_step.labels(step="number")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.healthy = False
        self.reason = "not started"
        self.malformed = Counter("carebus_notify_malformed_changes_total",
                                 "Change-feed records that could not be read (skipped, position logged).",
                                 registry=metrics.registry)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="notify-feed", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        consumer: KafkaConsumer | None = None
        while not self._stop.is_set():
            try:
                if consumer is None:
                    consumer = build_consumer(self._settings, "carebus-notify", self._settings.notify_group_id,
                                              [self.topic])
                    # join the group only once the topic's partitions are known (else the first assignment
                    # may be empty and stay so)
                    while consumer.partitions_for_topic(self.topic) is None and not self._stop.wait(0.2):
                        pass
                self._poll_once(consumer)
            except (KafkaError, BrokerUnavailable) as exc:
                self.healthy, self.reason = False, f"kafka: {type(exc).__name__}"
                log.warning("change-feed consumer failed; reconnecting", extra={"error": type(exc).__name__})
                consumer = self._close(consumer)
                self._stop.wait(self._retry_pause_s)
            except Exception:
                self.healthy, self.reason = False, "unexpected error"
                log.exception("change-feed consumer crashed; restarting it")
                consumer = self._close(consumer)
                self._stop.wait(self._retry_pause_s)
        self._close(consumer)
        self.healthy, self.reason = False, "stopped"

    @staticmethod
    def _close(consumer: KafkaConsumer | None) -> None:
        if consumer is not None:
            try:
                consumer.close()
            except (KafkaError, OSError):
                log.debug("consumer close failed")

    def _poll_once(self, consumer: KafkaConsumer) -> None:
        polled = consumer.poll(timeout_ms=200, max_records=500)
        self.healthy, self.reason = True, "ok"
        if not polled:
            return
        changes: list[Change] = []
        last: dict[TopicPartition, int] = {}
        for tp, records in polled.items():
            for record in records:
                last[tp] = record.offset
                try:
                    changes.append(parse_change(record.value or b""))
                except MalformedChange as exc:
                    self.malformed.inc()
                    log.error("malformed change-feed record skipped",
                              extra={"partition": tp.partition, "offset": record.offset, "error": str(exc)})
        try:
            started = time.perf_counter()
            created = self._store.record_changes(changes)
            self._step.observe(time.perf_counter() - started)
        except InfrastructureError as exc:
            self.healthy, self.reason = False, f"retrying: {type(exc).__name__}"
            log.warning("changes not stored; will retry", extra={"error": type(exc).__name__})
            for tp in last:  # rewind: the batch is read again
                consumer.seek(tp, min(r.offset for r in polled[tp]))
            self._stop.wait(self._retry_pause_s)
            return
        try:
            consumer.commit({tp: OffsetAndMetadata(o + 1, "", -1) for tp, o in last.items()})
        except CommitFailedError:
            log.warning("offset commit failed after a rebalance; the batch will be read again (idempotent)")
        if created:
            self._events.inc(sum(created.values()))
            self._on_events(sorted(created))  # wake only the subscriptions that have something new
        log.debug("changes routed", extra={"changes": len(changes), "events": sum(created.values())})
