"""Composition root of notify: settings -> store, change-feed consumer thread, delivery thread (asyncio), the
producer of push AuditEvents (carebus.audit.v1), readiness, and the operational HTTP routes (/healthz, /readyz,
/metrics) under uvicorn. SIGTERM stops the HTTP server, then the consumer (it finishes its batch and commits) and
the delivery tasks."""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass
from types import FrameType

import uvicorn
from fastapi import FastAPI

from services.common.disclosure import policy_from_settings
from services.common.errors import StoreUnavailable
from services.common.health import KafkaReadiness
from services.common.http import add_operational_routes
from services.common.kafka import RecordProducer
from services.common.log import configure_logging
from services.common.metrics import Metrics
from services.common.runtime import prepare_topics
from services.common.settings import Settings
from services.common.topics import AUDIT_EVENTS, RECORD_CHANGES
from services.notify.delivery import Deliverer, NotifyMetrics
from services.notify.feed import ChangeFeedConsumer
from services.notify.store import NotifyStore, notify_store_dsn, open_notify_store

log = logging.getLogger("services.notify")


def fhir_base_url(settings: Settings) -> str:
    """The FHIR base subscribers know (the record API's): notifications refer to Subscriptions and foci there."""
    return (settings.record_base_url or f"http://{settings.http_host}:{settings.record_port}").rstrip("/")


@dataclass
class NotifyService:
    settings: Settings
    store: NotifyStore
    metrics: Metrics
    feed: ChangeFeedConsumer
    deliverer: Deliverer
    kafka: KafkaReadiness
    app: FastAPI
    producer: RecordProducer | None = None
    _delivery_thread: threading.Thread | None = None

    def readiness(self) -> tuple[bool, str]:
        try:
            self.store.ping()
        except StoreUnavailable:
            return False, "notify store unreachable"
        if not self.kafka.ready:
            return False, self.kafka.reason
        if not self.feed.running or not self.feed.healthy:
            return False, f"change-feed consumer: {self.feed.reason}"
        if not self.deliverer.running:
            return False, "delivery not running"
        return True, "ok"

    def start(self) -> None:
        self.kafka.start()
        self._delivery_thread = threading.Thread(target=self.deliverer.run, name="notify-delivery", daemon=True)
        self._delivery_thread.start()
        self.feed.start()

    def stop(self) -> None:
        self.feed.stop()
        self.deliverer.stop()
        if self._delivery_thread is not None:
            self._delivery_thread.join(timeout=15)
        self.kafka.stop()
        if self.producer is not None:
            self.producer.close()
        self.store.close()


def build_service(settings: Settings, store: NotifyStore | None = None) -> NotifyService:
    metrics = Metrics(known_sources=settings.known_sources)
    store = store or open_notify_store(notify_store_dsn(settings), policy=policy_from_settings(
        settings.disclosure_policy, settings.disclosure_treatment_purposes))
    notify_metrics = NotifyMetrics(metrics)
    producer = RecordProducer(settings, "carebus-notify")
    deliverer = Deliverer(settings, store, notify_metrics, fhir_base_url(settings),
                          audit_sink=producer.send_all_async)
    feed = ChangeFeedConsumer(settings, store, metrics, deliverer.wake, notify_metrics.events_numbered)
    kafka = KafkaReadiness(settings, [RECORD_CHANGES.name(settings.topic_prefix),
                                      AUDIT_EVENTS.name(settings.topic_prefix)], metrics)
    app = FastAPI(title="carebus notify", version="1", docs_url=None, redoc_url=None, openapi_url=None)
    holder: list[NotifyService] = []
    add_operational_routes(app, metrics, lambda: holder[0].readiness())
    service = NotifyService(settings, store, metrics, feed, deliverer, kafka, app, producer)
    holder.append(service)
    return service


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main() -> None:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    settings = Settings()
    configure_logging("notify", settings.log_level)
    prepare_topics(settings)
    service = build_service(settings)
    service.start()
    server = uvicorn.Server(uvicorn.Config(service.app, host=settings.http_host, port=settings.notify_port,
                                           log_config=None, access_log=False, timeout_graceful_shutdown=10))
    log.info("notify listening", extra={"port": settings.notify_port})
    try:
        server.run()
    finally:
        service.stop()
        log.info("notify stopped")
