"""Several intake worker processes on one port (CAREBUS_INTAKE_WORKERS): every worker answers, HL7 v2 resends
are recognised whichever worker receives them, metrics cover all workers, SIGTERM stops them all."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest

from devstack.local_broker import free_port
from services.common.settings import Settings
from services.common.topics import INBOUND_EVENTS
from tests.integration.test_pipeline import schema_examples
from tests.integration.test_processes import wait_ready
from tests.kafka_helpers import read_all

pytestmark = pytest.mark.integration

TOKEN = "workers-test-token"  # noqa: S105
HL7_SAMPLE = Path(__file__).parents[1] / "samples" / "hl7v2" / "ADT-A01-01.hl7"


def test_workers_share_the_port_and_hl7_resends_meet_one_memory(settings: Settings) -> None:
    port = free_port()
    tokens = {hashlib.sha256(TOKEN.encode()).hexdigest(): {"sources": ["*"], "label": "workers-test"}}
    env = {**os.environ, "CAREBUS_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
           "CAREBUS_TOPIC_PREFIX": settings.topic_prefix, "CAREBUS_INTAKE_PORT": str(port),
           "CAREBUS_MLLP_PORT": str(free_port()), "CAREBUS_KAFKA_TOPIC_PARTITIONS": "3",
           "CAREBUS_INTAKE_WORKERS": "2", "CAREBUS_INTAKE_TOKENS": json.dumps(tokens)}
    intake = subprocess.Popen([sys.executable, "-m", "services.intake"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    auth = {"authorization": f"Bearer {TOKEN}"}
    try:
        wait_ready(port, intake)
        url = f"http://127.0.0.1:{port}"
        examples = schema_examples()
        # each request on a fresh connection, so the kernel spreads them over both workers
        answers = [httpx.post(f"{url}/events", content=orjson.dumps(e), timeout=30,
                              headers={"content-type": "application/cloudevents+json", **auth}) for e in examples]
        assert [a.status_code for a in answers] == [202] * len(examples)
        # the same HL7 message sent 8 times, each on a new connection (so to either worker): one record
        message = HL7_SAMPLE.read_bytes().replace(b"\r\n", b"\r").replace(b"\n", b"\r")
        acks = [httpx.post(f"{url}/hl7v2", content=message, timeout=30,
                           headers={"content-type": "x-application/hl7-v2+er7", **auth}) for _ in range(8)]
        assert [a.status_code for a in acks] == [200] * 8
        assert all("MSA|AA" in a.text for a in acks)
        deadline = time.monotonic() + 30
        pids: set[str] = set()
        while len(pids) < 2 and time.monotonic() < deadline:  # readiness gauges of both workers
            text = httpx.get(f"{url}/metrics", timeout=5).text
            pids = set(re.findall(r'carebus_kafka_ready\{pid="(\d+)"\} 1\.0', text))
            time.sleep(0.3)
        assert len(pids) == 2, "both workers report through one /metrics"
        accepted = sum(float(v) for v in re.findall(
            r'carebus_events_accepted_total\{[^}]*channel="http"[^}]*\} ([0-9.e+]+)', text))
        assert accepted == len(examples), "the counters of both workers are summed"
    finally:
        intake.send_signal(signal.SIGTERM)
        output, _ = intake.communicate(timeout=60)
    assert intake.returncode == 0, output.decode()[-2000:]
    records = read_all(settings, INBOUND_EVENTS.name(settings.topic_prefix),
                       until=lambda rs: len(rs) >= len(examples) + 1)
    hl7_records = [r for r in records if b"MSH|" in r.value]
    assert len(hl7_records) == 1, "a resend reaching another worker must not write a second record"
    assert len(records) == len(examples) + 1
    stopped = [orjson.loads(line) for line in output.splitlines() if line.startswith(b"{")]
    assert sum(1 for line in stopped if line.get("message") == "intake stopped") == 2
