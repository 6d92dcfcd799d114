"""Composition root of the record service: settings -> store, Kafka producer and consumer thread, readiness
probe, FastAPI app. ``python -m services.record`` runs it under uvicorn; SIGTERM stops the HTTP server
gracefully (in-flight requests finish), then the consumer finishes its batch, commits and closes.

At start the outcome measures' state is warmed in the background (services/outcomes/population.py
:class:`Warmup`): ingest starts at once; readiness answers "warming ..." until the warm-up is done, which logs
each step."""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass
from types import FrameType

import uvicorn
from fastapi import FastAPI

from services.common.disclosure import policy_from_settings
from services.common.health import KafkaReadiness
from services.common.kafka import RecordProducer
from services.common.log import configure_logging
from services.common.metrics import Metrics
from services.common.runtime import prepare_topics, tune_gc
from services.common.settings import Settings
from services.common.topics import DEAD_LETTERS, FHIR_BUNDLES, RECORD_CHANGES
from services.outcomes.population import Warmup
from services.record.access import TokenRegistry
from services.record.api import RecordApi, create_app
from services.record.audit_ingest import AuditIngestor
from services.record.consumer import BundleIngestor
from services.record.denials import DeniedAttempts, journal_path
from services.record.disclosures import DisclosureGate
from services.record.errors import StoreUnavailable
from services.record.store import SqlStore, identity_policy, open_store, store_dsn

log = logging.getLogger("services.record")


@dataclass
class RecordService:
    settings: Settings
    store: SqlStore
    metrics: Metrics
    producer: RecordProducer
    ingestor: BundleIngestor
    kafka: KafkaReadiness
    app: FastAPI
    audit: AuditIngestor
    denials: DeniedAttempts
    warmup: Warmup  # the outcome measures' state, read at start-up (services/outcomes/population.py)

    def readiness(self) -> tuple[bool, str]:
        try:
            self.store.ping()
        except StoreUnavailable:
            return False, "record store unreachable"
        if not self.kafka.ready:
            return False, self.kafka.reason
        if not self.ingestor.running or not self.ingestor.healthy:
            return False, f"bundle consumer: {self.ingestor.reason}"
        if not self.warmup.done.is_set():
            return False, self.warmup.reason
        return True, "ok"

    def start(self) -> None:
        self.kafka.start()
        self.ingestor.start()
        self.audit.start()
        self.denials.start()
        self.warmup.start()

    def stop(self) -> None:
        self.warmup.stop()
        self.ingestor.stop()
        self.audit.stop()
        self.denials.stop()  # what is journalled is written before the producer closes (else at the next start)
        self.kafka.stop()
        self.producer.close()
        self.store.close()


def build_service(settings: Settings, store: SqlStore | None = None, group_id: str | None = None) -> RecordService:
    """Build every part (nothing is started). ``store`` defaults to the one ``record_store_dsn`` names."""
    tokens = TokenRegistry(settings.record_tokens)  # validates the grants: a bad one stops the start
    metrics = Metrics(known_sources=settings.known_sources)
    store = store or open_store(store_dsn(settings), identity_policy(settings))
    # the change feed goes out as one burst per ingest batch (one message per new version): a short linger lets
    # the producer ship it in a few requests instead of waking its sender thread for every message (py-spy: the
    # per-message wake-ups were most of the change publishing, a third of the ingestor's time at 100 events/s)
    producer = RecordProducer(settings, "carebus-record", linger_ms=2, batch_size=1024 * 1024)
    ingestor = BundleIngestor(settings, store, metrics, producer, group_id=group_id)
    kafka = KafkaReadiness(
        settings,
        [FHIR_BUNDLES.name(settings.topic_prefix), DEAD_LETTERS.name(settings.topic_prefix),
         RECORD_CHANGES.name(settings.topic_prefix)],
        metrics,
    )
    holder: list[RecordService] = []
    denials = DeniedAttempts(producer.send_all_and_wait, settings.topic_prefix, journal_path(settings, store.dsn),
                             settings.record_denials_interval_s)
    api = RecordApi(
        settings,
        store,
        metrics,
        tokens,
        readiness=lambda: holder[0].readiness(),
        publish=producer.send_all_async,
        audit_sink=producer.send_all_and_wait,
        denials=denials,
    )
    api.gate = DisclosureGate(
        store,
        policy_from_settings(settings.disclosure_policy, settings.disclosure_treatment_purposes),
        api.now_ms,
    )
    audit = AuditIngestor(settings, store, group_id=group_id)
    service = RecordService(settings, store, metrics, producer, ingestor, kafka, create_app(api), audit, denials,
                            Warmup(api.population, log))
    holder.append(service)
    return service


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main() -> None:
    # uvicorn handles SIGTERM/SIGINT while it serves (stops accepting, drains in-flight requests) and then
    # re-raises the signal under the handler found at start: this one, so the clean-up below still runs.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    settings = Settings()
    configure_logging("record", settings.log_level)
    prepare_topics(settings)
    service = build_service(settings)
    tune_gc()  # start-up objects live forever: keep them out of the collector's passes
    service.start()
    server = uvicorn.Server(
        uvicorn.Config(
            service.app,
            host=settings.http_host,
            port=settings.record_port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=10,
        )
    )
    log.info("record listening", extra={"port": settings.record_port})
    try:
        server.run()
    finally:
        service.stop()
        log.info("record stopped")
