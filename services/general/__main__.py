"""Composition root of the general-topic service: ``python -m services.general`` (``carebus run general``)."""

from __future__ import annotations

import logging
import signal
import threading

import uvicorn
from fastapi import FastAPI

from services.common.health import KafkaReadiness
from services.common.http import add_operational_routes
from services.common.kafka import RecordProducer, build_consumer
from services.common.log import configure_logging
from services.common.metrics import Metrics
from services.common.runtime import prepare_topics
from services.common.settings import Settings
from services.common.topics import FHIR_BUNDLES, GENERAL_BUNDLES
from services.general.service import GeneralTopicService

log = logging.getLogger("services.general")


def main() -> None:
    settings = Settings()
    configure_logging("general", settings.log_level)
    metrics = Metrics(known_sources=settings.known_sources)
    prepare_topics(settings)
    source, target = FHIR_BUNDLES.name(settings.topic_prefix), GENERAL_BUNDLES.name(settings.topic_prefix)
    readiness = KafkaReadiness(settings, [source, target], metrics)
    readiness.start()
    service = GeneralTopicService(build_consumer(settings, "carebus-general", settings.general_group_id, [source]),
                                  RecordProducer(settings, "carebus-general"), target, metrics)
    app = FastAPI(title="carebus general topic", docs_url=None, redoc_url=None)
    add_operational_routes(app, metrics, lambda: (readiness.ready, readiness.reason))
    http = uvicorn.Server(uvicorn.Config(app, host=settings.http_host, port=settings.general_port,
                                         log_config=None, access_log=False))
    http_thread = threading.Thread(target=http.run, name="general-http", daemon=True)
    http_thread.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    log.info("general topic consuming", extra={"group": settings.general_group_id})
    try:
        service.run(stop)
    finally:
        service.close()
        http.should_exit = True
        readiness.stop()
        http_thread.join(timeout=10)
        log.info("general topic stopped")


if __name__ == "__main__":
    main()
