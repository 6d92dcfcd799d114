"""Composition root of the intake service: `python -m services.intake`.

SIGTERM/SIGINT: stop accepting, drain in-flight requests (each already waits for its acks), flush, exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import uvicorn

from services.common.health import KafkaReadiness
from services.common.http import ManagedServer
from services.common.kafka import RecordProducer
from services.common.log import configure_logging
from services.common.metrics import Metrics
from services.common.runtime import prepare_topics
from services.common.settings import Settings
from services.common.topics import INBOUND_EVENTS
from services.intake.app import create_app

log = logging.getLogger("services.intake")


async def serve(settings: Settings, producer: RecordProducer, metrics: Metrics,
                readiness: KafkaReadiness) -> None:
    app = create_app(settings, producer, metrics, lambda: (readiness.ready, readiness.reason))
    http = ManagedServer(uvicorn.Config(
        app, host=settings.http_host, port=settings.intake_port, log_config=None, access_log=False,
        timeout_graceful_shutdown=10))
    loop = asyncio.get_running_loop()

    def stop() -> None:
        log.info("intake stopping")
        http.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    log.info("intake listening", extra={"http_port": settings.intake_port})
    await http.serve()


def main() -> None:
    settings = Settings()
    configure_logging("intake", settings.log_level)
    metrics = Metrics()
    prepare_topics(settings)
    producer = RecordProducer(settings, "carebus-intake")
    readiness = KafkaReadiness(settings, [INBOUND_EVENTS.name(settings.topic_prefix)], metrics)
    readiness.start()
    try:
        asyncio.run(serve(settings, producer, metrics, readiness))
    finally:
        producer.close()
        readiness.stop()
        log.info("intake stopped")


if __name__ == "__main__":
    main()
