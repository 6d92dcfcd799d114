"""Composition root of the intake service: `python -m services.intake` — the HTTP API and the MLLP listener.

SIGTERM/SIGINT: stop accepting (HTTP and MLLP), drain in-flight work (each answer already waited for its acks),
flush, exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import uvicorn
from kafka.errors import KafkaError

from services.common.errors import BrokerUnavailable
from services.common.health import KafkaReadiness
from services.common.http import ManagedServer
from services.common.kafka import RecordProducer, read_recent_headers
from services.common.log import configure_logging
from services.common.metrics import Metrics
from services.common.runtime import prepare_topics, tune_gc
from services.common.settings import Settings
from services.common.topics import INBOUND_EVENTS
from services.intake.app import create_app
from services.intake.mllp import KafkaHl7Acceptor, MllpServer, server_ssl_context

log = logging.getLogger("services.intake")


async def serve(settings: Settings, producer: RecordProducer, metrics: Metrics,
                readiness: KafkaReadiness) -> None:
    inbound = INBOUND_EVENTS.name(settings.topic_prefix)
    acceptor = KafkaHl7Acceptor(producer, inbound, metrics=metrics,
                                recent_per_sender=settings.mllp_recent_control_ids)
    if settings.mllp_recall_per_partition:  # what was accepted just before a restart is still a resend
        try:
            recalled = await asyncio.to_thread(lambda: acceptor.recall(read_recent_headers(
                settings, "carebus-intake-recall", inbound, settings.mllp_recall_per_partition)))
            log.info("hl7v2 resend memory filled from the inbound topic", extra={"messages": recalled})
        except (BrokerUnavailable, KafkaError) as exc:
            log.warning("hl7v2 resend memory starts empty", extra={"error": type(exc).__name__})
    mllp = MllpServer(acceptor, host=settings.mllp_host, port=settings.mllp_port,
                      ssl_context=server_ssl_context(settings), max_frame_bytes=settings.mllp_max_frame_bytes,
                      idle_timeout_s=settings.mllp_idle_timeout_s, metrics=metrics)
    app = create_app(settings, producer, metrics, lambda: (readiness.ready, readiness.reason), acceptor)
    http = ManagedServer(uvicorn.Config(
        app, host=settings.http_host, port=settings.intake_port, log_config=None, access_log=False,
        timeout_graceful_shutdown=10))
    loop = asyncio.get_running_loop()

    def stop() -> None:
        log.info("intake stopping")
        http.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    await mllp.start()
    log.info("intake listening", extra={"http_port": settings.intake_port, "mllp_port": mllp.port})
    try:
        await http.serve()
    finally:
        await mllp.stop()


def announce_sender_check(settings: Settings) -> None:
    """Say at start-up how writes are authenticated (services/intake/auth.py)."""
    if settings.intake_allow_anonymous:
        log.warning("intake accepts writes WITHOUT authentication (CAREBUS_INTAKE_ALLOW_ANONYMOUS): "
                    "development only")
    elif not settings.intake_tokens:
        log.error("intake has no sender tokens (CAREBUS_INTAKE_TOKENS): every write over HTTP is refused with 401")
    else:
        log.info("intake sender tokens loaded", extra={"senders": len(settings.intake_tokens)})


def main() -> None:
    settings = Settings()
    configure_logging("intake", settings.log_level)
    metrics = Metrics(known_sources=settings.known_sources)
    announce_sender_check(settings)
    prepare_topics(settings)
    # readiness probes every second: while it knows the broker is away, writes answer 503 at once
    readiness = KafkaReadiness(settings, [INBOUND_EVENTS.name(settings.topic_prefix)], metrics, interval_s=1.0)
    producer = RecordProducer(settings, "carebus-intake", broker_down=lambda: not readiness.ready)
    readiness.start()
    tune_gc()
    try:
        asyncio.run(serve(settings, producer, metrics, readiness))
    finally:
        producer.close()
        readiness.stop()
        log.info("intake stopped")


if __name__ == "__main__":
    main()
