"""Composition root of the mapper service: `python -m services.mapper`."""

from __future__ import annotations

import logging
import signal
import threading

import uvicorn
from fastapi import FastAPI

from services.common.fhir_validation import ValidationCollector
from services.common.health import KafkaReadiness
from services.common.http import add_operational_routes
from services.common.kafka import RecordProducer, build_consumer
from services.common.lag import GroupLagWatcher
from services.common.log import configure_logging
from services.common.metrics import Metrics
from services.common.native import compiled_modules
from services.common.runtime import prepare_topics, tune_gc
from services.common.settings import Settings
from services.common.topics import CATALOGUE, INBOUND_EVENTS, SAFETY_ALERTS
from services.mapper.pipeline import Pipeline, TopicNames
from services.mapper.service import PRODUCER_TUNING, MapperService

log = logging.getLogger("services.mapper")


def main() -> None:
    settings = Settings()
    configure_logging("mapper", settings.log_level)
    metrics = Metrics(known_sources=settings.known_sources)
    metrics.registry.register(ValidationCollector())
    prepare_topics(settings)
    readiness = KafkaReadiness(settings, [spec.name(settings.topic_prefix) for spec in CATALOGUE], metrics)
    readiness.start()
    # safety alerts waiting unread: the lag of whoever works them, for the CarebusSafetyAlertsNotConsumed rule
    alerts_lag = GroupLagWatcher(settings, settings.alerts_group_id, SAFETY_ALERTS.name(settings.topic_prefix),
                                 metrics)
    alerts_lag.start()
    consumer = build_consumer(settings, "carebus-mapper", settings.mapper_group_id,
                              [INBOUND_EVENTS.name(settings.topic_prefix)])
    producer = RecordProducer(settings, "carebus-mapper", **PRODUCER_TUNING)
    service = MapperService(consumer, producer, Pipeline(TopicNames.for_prefix(settings.topic_prefix),
                                                         frozenset(settings.part2_sources),
                                                         settings.hl7_assigning_authorities,
                                                         frozenset(settings.psychiatric_sources),
                                                         time_zones=settings.hl7_sender_time_zones,
                                                         default_time_zone=settings.hl7_default_time_zone),
                            metrics)

    app = FastAPI(title="carebus mapper", docs_url=None, redoc_url=None)
    add_operational_routes(app, metrics, lambda: (readiness.ready, readiness.reason))
    http = uvicorn.Server(uvicorn.Config(app, host=settings.http_host, port=settings.mapper_port,
                                         log_config=None, access_log=False))
    http_thread = threading.Thread(target=http.run, name="mapper-http", daemon=True)
    http_thread.start()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    tune_gc()
    log.info("mapper consuming", extra={"group": settings.mapper_group_id,
                                        "compiled_modules": len(compiled_modules())})
    try:
        service.run(stop)  # returns after the batch in hand is written and committed
    finally:
        service.close()
        http.should_exit = True
        readiness.stop()
        alerts_lag.stop()
        # let the HTTP thread's event loop finish before the interpreter finalizes (a loop still running in a
        # daemon thread at exit can crash the process)
        http_thread.join(timeout=10)
        log.info("mapper stopped", extra={"consumed": service.stats.consumed,
                                          "dead_letters": service.stats.dead_letters})


if __name__ == "__main__":
    main()
