"""Composition root of the intake service: `python -m services.intake`."""

from __future__ import annotations

import logging

import uvicorn

from services.common.health import KafkaReadiness
from services.common.kafka import RecordProducer
from services.common.log import configure_logging
from services.common.metrics import Metrics
from services.common.runtime import prepare_topics
from services.common.settings import Settings
from services.common.topics import INBOUND_EVENTS
from services.intake.app import create_app

log = logging.getLogger("services.intake")


def main() -> None:
    settings = Settings()
    configure_logging("intake", settings.log_level)
    metrics = Metrics()
    prepare_topics(settings)
    producer = RecordProducer(settings, "carebus-intake")
    readiness = KafkaReadiness(settings, [INBOUND_EVENTS.name(settings.topic_prefix)], metrics)
    readiness.start()
    app = create_app(settings, producer, metrics, lambda: (readiness.ready, readiness.reason))
    server = uvicorn.Server(uvicorn.Config(
        app, host=settings.http_host, port=settings.intake_port, log_config=None, access_log=False,
        timeout_graceful_shutdown=10))
    log.info("intake listening", extra={"port": settings.intake_port})
    try:
        server.run()  # handles SIGTERM/SIGINT: stops accepting, drains in-flight requests
    finally:
        producer.close()
        readiness.stop()
        log.info("intake stopped")


if __name__ == "__main__":
    main()
