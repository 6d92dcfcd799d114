"""Composition root of the outcomes service (``carebus run outcomes``): two consumer threads and a timer.

* record changes (group ``outcomes_group_id``, topic ``carebus.record.changes.v1``, written by the record after
  each store commit): a changed score, Patient or Linkage -> recompute the person from the store -> write derived
  resources (bundle topic, source ``urn:carebus:outcomes``) and outcome changes (outcomes topic) -> commit.
* safety alerts (group ``alerts_group_id``, so `carebus status` shows who works the alerts): each alert -> one
  Task (deterministic id; never a second one) on the bundle topic -> commit.
* timer: every ``outcomes_escalation_interval_s`` the unacknowledged Tasks past due are escalated; every
  ``outcomes_sweep_interval_s`` every person is recomputed (follow-ups become overdue as time passes).

Offsets are committed only after every output is acknowledged (acks=all); a crash repeats work, and the
deterministic ids make the repeat converge on the same resources and change ids.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

import orjson
import uvicorn
from fastapi import FastAPI
from kafka import KafkaConsumer
from kafka.errors import KafkaError

from services.common.errors import BrokerUnavailable
from services.common.event_headers import security_codes
from services.common.health import KafkaReadiness
from services.common.http import add_operational_routes
from services.common.kafka import OutboundRecord, RecordProducer, build_consumer
from services.common.log import configure_logging
from services.common.metrics import Metrics
from services.common.runtime import prepare_topics, tune_gc
from services.common.settings import Settings
from services.common.topics import FHIR_BUNDLES, HEADER_SECURITY, OUTCOMES, RECORD_CHANGES, SAFETY_ALERTS
from services.outcomes.engine import OutcomesEngine
from services.record.errors import StoreUnavailable
from services.record.store import SqlStore, identity_policy, open_store, store_dsn

log = logging.getLogger("services.outcomes")

Handler = Callable[[Sequence[Any]], list[OutboundRecord]]


class ConsumerLoop:
    """poll -> handle (pure-ish) -> write and wait for acks -> commit, on a thread; retried on failure."""

    def __init__(self, name: str, factory: Callable[[], KafkaConsumer], handle: Handler, producer: RecordProducer,
                 retry_pause_s: float = 2.0) -> None:
        self.name = name
        self._factory = factory
        self._handle = handle
        self._producer = producer
        self._retry_pause_s = retry_pause_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.healthy = False
        self.reason = "not started"
        self.processed = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"outcomes-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

    def _run(self) -> None:
        consumer: KafkaConsumer | None = None
        while not self._stop.is_set():
            try:
                if consumer is None:
                    consumer = self._factory()
                batch = consumer.poll(timeout_ms=500, max_records=200)
                self.healthy, self.reason = True, "ok"
                records = [r for rs in batch.values() for r in rs]
                if not records:
                    continue
                records.sort(key=lambda r: (r.timestamp, r.partition, r.offset))
                outputs = self._handle(records)
                if outputs:
                    self._producer.send_all_and_wait(outputs)
                consumer.commit()
                self.processed += len(records)
            except (KafkaError, BrokerUnavailable, StoreUnavailable) as exc:
                self.healthy, self.reason = False, type(exc).__name__
                log.warning("outcomes consumer failed; retrying", extra={"loop": self.name,
                                                                        "error": type(exc).__name__})
                self._reset(consumer)
                consumer = None
            except Exception:
                self.healthy, self.reason = False, "unexpected error"
                log.exception("outcomes consumer crashed; restarting it", extra={"loop": self.name})
                self._reset(consumer)
                consumer = None
        if consumer is not None:
            consumer.close(autocommit=False)

    def _reset(self, consumer: KafkaConsumer | None) -> None:
        if consumer is not None:
            try:
                consumer.close(autocommit=False)  # uncommitted records are fetched again by the next consumer
            except (KafkaError, OSError):
                log.debug("consumer close failed")
        self._stop.wait(self._retry_pause_s)
        return None


def _headers(record: Any) -> dict[str, str]:
    return {name: (value or b"").decode(errors="replace") for name, value in (record.headers or ())}


@dataclass
class OutcomesService:
    settings: Settings
    store: SqlStore
    engine: OutcomesEngine
    metrics: Metrics
    producer: RecordProducer
    bundles: ConsumerLoop
    alerts: ConsumerLoop
    kafka: KafkaReadiness
    app: FastAPI

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None

    # --- handlers ---------------------------------------------------------------------------------------

    def handle_changes(self, records: Sequence[Any]) -> list[OutboundRecord]:
        patients: set[str] = set()
        for record in records:
            try:
                change = orjson.loads(record.value or b"{}")
            except orjson.JSONDecodeError:
                continue
            if isinstance(change, dict):
                patients |= self.engine.affected_by_change(change)
        if not patients:
            return []
        out = self.engine.recompute(patients)
        for kind, count in out.changes_by_kind.items():
            self.metrics.outcome_changes.labels(kind=kind).inc(count)
        return out.records

    def handle_alerts(self, records: Sequence[Any]) -> list[OutboundRecord]:
        outputs: list[OutboundRecord] = []
        for record in records:
            try:
                value = orjson.loads(record.value or b"{}")
                key = (record.key or b"").decode(errors="replace")
                labels = security_codes(_headers(record).get(HEADER_SECURITY, "[]"))
                outputs.extend(self.engine.task_for_alert(value, key, labels))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                log.warning("unreadable safety alert skipped", extra={"offset": record.offset,
                                                                      "partition": record.partition})
        return outputs

    def escalate_once(self) -> int:
        records, kinds = self.engine.escalations(self.metrics.safety_alerts_unacknowledged)
        if records:
            self.producer.send_all_and_wait(records)
            for kind in kinds:
                self.metrics.safety_task_escalations.labels(kind=kind).inc()
            log.info("safety tasks escalated", extra={"count": len(kinds)})
        return len(kinds)

    def sweep_once(self) -> int:
        patients = self.engine.all_patients()
        out = self.engine.recompute(patients)
        if out.records:
            self.producer.send_all_and_wait(out.records)
        for kind, count in out.changes_by_kind.items():
            self.metrics.outcome_changes.labels(kind=kind).inc(count)
        log.info("outcomes sweep", extra={"patients": len(patients), "records": len(out.records)})
        return len(patients)

    # --- lifecycle ------------------------------------------------------------------------------------

    def _timer_loop(self) -> None:
        next_sweep = time.monotonic() + self.settings.outcomes_sweep_interval_s
        while not self._stop.wait(self.settings.outcomes_escalation_interval_s):
            try:
                self.escalate_once()
                if time.monotonic() >= next_sweep:
                    self.sweep_once()
                    next_sweep = time.monotonic() + self.settings.outcomes_sweep_interval_s
            except (KafkaError, BrokerUnavailable, StoreUnavailable) as exc:
                log.warning("escalation check failed; next round retries", extra={"error": type(exc).__name__})
            except Exception:
                log.exception("escalation check crashed; next round retries")

    def readiness(self) -> tuple[bool, str]:
        try:
            self.store.ping()
        except StoreUnavailable:
            return False, "record store unreachable"
        if not self.kafka.ready:
            return False, self.kafka.reason
        for loop in (self.bundles, self.alerts):
            if not loop.healthy:
                return False, f"{loop.name} consumer: {loop.reason}"
        return True, "ok"

    def start(self) -> None:
        self.kafka.start()
        self.bundles.start()
        self.alerts.start()
        self._timer = threading.Thread(target=self._timer_loop, name="outcomes-timer", daemon=True)
        self._timer.start()

    def stop(self) -> None:
        self._stop.set()
        self.bundles.stop()
        self.alerts.stop()
        if self._timer is not None:
            self._timer.join(timeout=10)
        self.kafka.stop()
        self.producer.close()
        self.store.close()


def build_service(settings: Settings, store: SqlStore | None = None) -> OutcomesService:
    metrics = Metrics(known_sources=settings.known_sources)
    store = store or open_store(store_dsn(settings), identity_policy(settings))
    engine = OutcomesEngine(settings, store)
    producer = RecordProducer(settings, "carebus-outcomes")
    prefix = settings.topic_prefix
    changes_topic, alert_topic = RECORD_CHANGES.name(prefix), SAFETY_ALERTS.name(prefix)
    holder: list[OutcomesService] = []
    bundles = ConsumerLoop(
        "changes", lambda: build_consumer(settings, "carebus-outcomes", settings.outcomes_group_id, [changes_topic]),
        lambda records: holder[0].handle_changes(records), producer)
    alerts = ConsumerLoop(
        "alerts", lambda: build_consumer(settings, "carebus-outcomes", settings.alerts_group_id, [alert_topic]),
        lambda records: holder[0].handle_alerts(records), producer)
    kafka = KafkaReadiness(settings, [changes_topic, alert_topic, OUTCOMES.name(prefix),
                                      FHIR_BUNDLES.name(prefix)], metrics)
    app = FastAPI(title="carebus outcomes", docs_url=None, redoc_url=None, openapi_url=None)
    add_operational_routes(app, metrics, lambda: holder[0].readiness())
    service = OutcomesService(settings, store, engine, metrics, producer, bundles, alerts, kafka, app)
    holder.append(service)
    return service


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main() -> None:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    settings = Settings()
    configure_logging("outcomes", settings.log_level)
    prepare_topics(settings)
    service = build_service(settings)
    tune_gc()
    service.start()
    server = uvicorn.Server(uvicorn.Config(service.app, host=settings.http_host, port=settings.outcomes_port,
                                           log_config=None, access_log=False, timeout_graceful_shutdown=5))
    log.info("outcomes listening", extra={"port": settings.outcomes_port})
    try:
        server.run()
    finally:
        service.stop()
        log.info("outcomes stopped")
