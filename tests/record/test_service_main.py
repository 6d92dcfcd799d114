"""``python -m services.record`` as a real process: starts, becomes ready, serves what it ingests, logs no PHI,
and on SIGTERM drains, commits its offsets and exits 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from devstack.local_broker import free_port
from services.common.kafka import RecordProducer, ensure_topics
from services.common.settings import REPO_ROOT, Settings
from services.common.topics import CATALOGUE
from tests.record.conftest import bearer, token_config
from tests.record.fhir_data import CLINIC, T0, Event, iso, patient, patient_id, phq9_total, unique
from tests.record.test_replay_and_consumer import committed, end_offsets

pytestmark = pytest.mark.integration


def test_main_serves_and_stops_gracefully_on_sigterm(kafka_bootstrap: str, tmp_path: Path) -> None:
    port = free_port()
    prefix = f"main{uuid.uuid4().hex[:8]}"
    group = f"record-main-{uuid.uuid4().hex[:6]}"
    tokens = {digest: grant.model_dump() for digest, grant in token_config().items()}
    env = {
        **os.environ,
        "CAREBUS_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "CAREBUS_TOPIC_PREFIX": prefix,
        "CAREBUS_KAFKA_TOPIC_PARTITIONS": "3",
        "CAREBUS_RECORD_PORT": str(port),
        "CAREBUS_RECORD_GROUP_ID": group,
        "CAREBUS_RECORD_STORE_DSN": f"sqlite:///{tmp_path}/main.db",
        "CAREBUS_RECORD_TOKENS": json.dumps(tokens),
        "CAREBUS_LOG_LEVEL": "DEBUG",
    }
    log_path = tmp_path / "record.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "services.record"], cwd=REPO_ROOT, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, log_path.read_text()
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        assert httpx.get(f"{base}/metadata").json()["resourceType"] == "CapabilityStatement"

        settings = Settings(kafka_bootstrap=kafka_bootstrap, topic_prefix=prefix, kafka_topic_partitions=3)
        ensure_topics(settings, CATALOGUE)
        family = f"Quintero{unique()}"
        mrn = unique("main-")
        pid = patient_id(CLINIC, mrn)
        producer = RecordProducer(settings, "test-main")
        producer.send_all_and_wait([Event(CLINIC, mrn, [
            patient(CLINIC, mrn, family=family, birth="1966-07-19"),
            phq9_total(CLINIC, pid, mrn, iso(T0), 17)]).record(prefix)])
        producer.close()
        deadline = time.monotonic() + 60
        while httpx.get(f"{base}/Patient/{pid}", headers=bearer("full")).status_code != 200:
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        search = httpx.get(f"{base}/Observation", params={"patient": pid}, headers=bearer("full")).json()
        assert search["total"] == 1

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=45) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    logs = log_path.read_text()
    assert family not in logs and "1966-07-19" not in logs  # no PHI in the logs
    assert "record stopped" in logs

    offsets = committed(settings, group)
    assert all(offsets[p] == last + 1 for p, last in end_offsets(settings))
