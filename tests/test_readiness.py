"""Readiness follows the broker: false while it is away, true again by itself when it is back."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from devstack.local_broker import LocalKafkaBroker
from services.common.health import KafkaReadiness
from services.common.kafka import ensure_topics
from services.common.metrics import Metrics
from services.common.settings import REPO_ROOT, Settings
from services.common.topics import CATALOGUE

pytestmark = pytest.mark.integration


def wait_for(predicate: object, timeout_s: float = 60) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


def test_readiness_goes_false_and_recovers_with_the_broker(tmp_path: Path) -> None:
    broker = LocalKafkaBroker(REPO_ROOT / ".cache", workdir=tmp_path / "kafka").start()
    try:
        settings = Settings(kafka_bootstrap=broker.bootstrap, topic_prefix="ready", kafka_request_timeout_s=3)
        metrics = Metrics()
        readiness = KafkaReadiness(settings, [s.name("ready") for s in CATALOGUE], metrics, interval_s=0.5)
        assert readiness.check_once() is False
        assert "missing topics" in readiness.reason
        ensure_topics(settings, CATALOGUE)
        readiness.start()
        assert wait_for(lambda: readiness.ready)
        assert metrics.kafka_ready._value.get() == 1

        broker.stop()
        assert wait_for(lambda: not readiness.ready)
        assert "unreachable" in readiness.reason
        assert metrics.kafka_ready._value.get() == 0

        broker.resume()
        assert wait_for(lambda: readiness.ready, timeout_s=90)
        readiness.stop()
    finally:
        broker.stop()
