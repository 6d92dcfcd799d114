"""Intake while Kafka is away: answers 503 + Retry-After (HTTP) / AR (MLLP) without waiting out the produce
timeout once readiness knows, never drops a connection, and takes writes again soon after the broker is back.

The broker is this test's own (stopped and resumed on its data); intake is the real process.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from devstack.local_broker import LocalKafkaBroker, free_port
from services.common.errors import BrokerUnavailable
from services.common.kafka import OutboundRecord, RecordProducer
from services.common.settings import REPO_ROOT, Settings
from services.intake.mllp import frame
from tests.intake.helpers import example, hl7_sample
from tests.integration.test_processes import wait_ready
from tests.senders import TEST_INTAKE_ENV, TEST_INTAKE_HEADERS

pytestmark = pytest.mark.integration

EVENT_HEADERS = {"content-type": "application/cloudevents+json", **TEST_INTAKE_HEADERS}


def test_a_producer_told_the_broker_is_down_fails_at_once_without_connecting() -> None:
    settings = Settings(kafka_bootstrap="127.0.0.1:1", kafka_request_timeout_s=30.0)
    producer = RecordProducer(settings, "test-known-down", broker_down=lambda: True)
    record = OutboundRecord("t", "k", b"{}")
    with pytest.raises(BrokerUnavailable, match="known to be unreachable"):
        producer.send_all_and_wait([record])
    assert producer._producer is None  # no client was built: nothing waited for a connection or metadata


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[LocalKafkaBroker]:
    broker = LocalKafkaBroker(REPO_ROOT / ".cache", workdir=tmp_path / "kafka").start()
    try:
        yield broker
    finally:
        broker.stop()


def start_intake(settings: Settings, port: int, mllp_port: int, log: Path) -> subprocess.Popen[bytes]:
    """Output to a file: an outage makes the Kafka client log a lot, and a pipe nobody reads would fill up and
    block the process."""
    env = {**os.environ, "CAREBUS_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
           "CAREBUS_TOPIC_PREFIX": settings.topic_prefix, "CAREBUS_INTAKE_PORT": str(port),
           "CAREBUS_MLLP_PORT": str(mllp_port), "CAREBUS_KAFKA_TOPIC_PARTITIONS": "3",
           "CAREBUS_KAFKA_REQUEST_TIMEOUT_S": "10", **TEST_INTAKE_ENV}
    return subprocess.Popen([sys.executable, "-m", "services.intake"], env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)


def mllp_exchange(port: int, message: str, timeout_s: float = 30.0) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as conn:
        conn.sendall(frame(message))
        data = b""
        while not data.endswith(b"\x1c\r"):
            chunk = conn.recv(65536)
            assert chunk, "connection closed without an ACK"
            data += chunk
    return data.decode()


def test_intake_answers_503_at_once_in_an_outage_and_recovers(own_broker: LocalKafkaBroker, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings(kafka_bootstrap=own_broker.bootstrap, topic_prefix="outage")
    port, mllp_port = free_port(), free_port()
    intake = start_intake(settings, port, mllp_port, tmp_path / "intake.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(port, intake)
        event = example("patient.registered")
        with httpx.Client(base_url=base, timeout=60) as client:
            assert client.post("/events", content=orjson.dumps(event), headers=EVENT_HEADERS).status_code == 202

            own_broker.stop()
            deadline = time.monotonic() + 60
            while client.get("/readyz").status_code == 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            answers = []
            outage_started = time.monotonic()
            for _ in range(20):  # one keep-alive connection: none of these may reset it
                response = client.post("/events", content=orjson.dumps(event), headers=EVENT_HEADERS)
                answers.append((response.status_code, response.headers.get("retry-after")))
            assert set(answers) == {(503, "5")}
            twenty_answers_s = time.monotonic() - outage_started
            ack = mllp_exchange(mllp_port, hl7_sample())
            assert "MSA|AR|MSG00001" in ack

            own_broker.resume()
            resumed = time.monotonic()
            accepted_at = None
            deadline = resumed + 90
            while time.monotonic() < deadline:
                response = client.post("/events", content=orjson.dumps(event), headers=EVENT_HEADERS)
                assert response.status_code in (202, 503), response.text
                if response.status_code == 202:
                    accepted_at = time.monotonic()
                    break
                assert response.headers["retry-after"] == "5"
                time.sleep(0.2)
            assert accepted_at is not None, "intake did not take writes again after the broker came back"
            assert "MSA|AA|MSG00001" in mllp_exchange(mllp_port, hl7_sample())
        with capsys.disabled():  # a measurement for the notes, not an assertion
            print(f"\n[outage] 20 answers while the broker was down took {twenty_answers_s:.2f} s (produce timeout "
                  f"10 s); first 202 {accepted_at - resumed:.1f} s after the broker served again")
    finally:
        intake.send_signal(signal.SIGTERM)
        rc = intake.wait(timeout=30)
    assert rc == 0
