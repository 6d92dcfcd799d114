"""Composition root of the intake service: `python -m services.intake` — the HTTP API and the MLLP listener.

SIGTERM/SIGINT: stop accepting (HTTP and MLLP), drain in-flight work (each answer already waited for its acks),
flush, exit 0. With CAREBUS_INTAKE_WORKERS > 1 this process supervises that many worker processes
(services/intake/workers.py); ``--worker K`` runs one of them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import socket
import tempfile
from pathlib import Path

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
from services.intake.hl7v2_acceptor import KafkaHl7Acceptor
from services.intake.mllp import MllpServer, server_ssl_context
from services.intake.workers import Hl7ToWorkerZero, reuse_port_socket, supervise

log = logging.getLogger("services.intake")


async def serve(settings: Settings, producer: RecordProducer, metrics: Metrics,
                readiness: KafkaReadiness, worker: int = 0, hl7_socket: Path | None = None) -> None:
    inbound = INBOUND_EVENTS.name(settings.topic_prefix)
    sockets = [reuse_port_socket(settings.http_host, settings.intake_port, shared=hl7_socket is not None)]
    if worker > 0:  # HL7 v2 belongs to worker 0 (its resend memory): hand /hl7v2 on to it
        assert hl7_socket is not None
        app = create_app(settings, producer, metrics, lambda: (readiness.ready, readiness.reason))
        app.add_middleware(Hl7ToWorkerZero, hl7_socket=hl7_socket,
                           timeout_s=settings.kafka_request_timeout_s + 5)
        http = ManagedServer(uvicorn.Config(app, log_config=None, access_log=False, timeout_graceful_shutdown=10))
        _stop_on_signals(http)
        log.info("intake worker listening", extra={"http_port": settings.intake_port, "worker": worker})
        await http.serve(sockets=sockets)
        return
    if hl7_socket is not None:  # the other workers reach this worker's /hl7v2 here
        private = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        private.bind(str(hl7_socket))
        private.listen(256)
        sockets.append(private)
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
    http = ManagedServer(uvicorn.Config(app, log_config=None, access_log=False, timeout_graceful_shutdown=10))
    _stop_on_signals(http)
    await mllp.start()
    log.info("intake listening", extra={"http_port": settings.intake_port, "mllp_port": mllp.port})
    try:
        await http.serve(sockets=sockets)
    finally:
        await mllp.stop()


def _stop_on_signals(http: ManagedServer) -> None:
    def stop() -> None:
        log.info("intake stopping")
        http.should_exit = True

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)


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
    parser = argparse.ArgumentParser(prog="python -m services.intake")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)  # set by the supervisor
    parser.add_argument("--hl7-socket", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    settings = Settings()
    configure_logging("intake", settings.log_level)
    if args.worker is None and settings.intake_workers > 1:
        prepare_topics(settings)
        # the workers share their metrics through files (prometheus_client's multiprocess mode)
        metrics_dir = tempfile.mkdtemp(prefix="carebus-intake-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        try:
            raise SystemExit(supervise(settings.intake_workers))
        finally:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics = Metrics(known_sources=settings.known_sources)
    if args.worker is None:
        announce_sender_check(settings)
        prepare_topics(settings)
    # readiness probes every second: while it knows the broker is away, writes answer 503 at once
    readiness = KafkaReadiness(settings, [INBOUND_EVENTS.name(settings.topic_prefix)], metrics, interval_s=1.0)
    # linger 2 ms: writes that arrive within 2 ms share one produce request. kafka-python's sender thread spends
    # ~0.3 ms of CPU per request (each one a wake-up of a sleeping thread on either side); at 1,000 MLLP messages
    # a second over 16 connections that was a third of intake's CPU per message (docs/benchmarks.md)
    producer = RecordProducer(settings, "carebus-intake", broker_down=lambda: not readiness.ready, linger_ms=2)
    readiness.start()
    tune_gc()
    try:
        asyncio.run(serve(settings, producer, metrics, readiness, args.worker or 0, args.hl7_socket))
    finally:
        producer.close()
        readiness.stop()
        log.info("intake stopped")


if __name__ == "__main__":
    main()
