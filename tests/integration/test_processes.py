"""The services as processes: they start, report ready, and stop gracefully on SIGTERM within bounded time."""

from __future__ import annotations

import os
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
from services.common.topics import FHIR_BUNDLES
from tests.integration.test_pipeline import schema_examples
from tests.kafka_helpers import header, read_all
from tests.senders import TEST_INTAKE_ENV, TEST_INTAKE_HEADERS

pytestmark = pytest.mark.integration


def start(module: str, settings: Settings, port_var: str, port: int, log: Path | None = None,
          **env_vars: str) -> subprocess.Popen[bytes]:
    """A service as a process. Its output is piped (read at stop), or appended to ``log`` for a long run."""
    env = {**os.environ, "CAREBUS_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
           "CAREBUS_TOPIC_PREFIX": settings.topic_prefix, port_var: str(port),
           "CAREBUS_MLLP_PORT": str(free_port()), "CAREBUS_KAFKA_TOPIC_PARTITIONS": "3", **TEST_INTAKE_ENV,
           **env_vars}
    output = log.open("ab") if log is not None else subprocess.PIPE
    try:
        return subprocess.Popen([sys.executable, "-m", module], env=env,  # noqa: S603
                                stdout=output, stderr=subprocess.STDOUT)
    finally:
        if log is not None:
            output.close()  # type: ignore[union-attr]


def wait_ready(port: int, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"not ready on :{port}")


def stop(process: subprocess.Popen[bytes]) -> tuple[int, list[dict[str, object]]]:
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=30)
    logs = [orjson.loads(line) for line in output.splitlines() if line.startswith(b"{")]
    return process.returncode, logs


def test_intake_and_mapper_processes_serve_then_stop_gracefully(settings: Settings) -> None:
    intake_port, mapper_port = free_port(), free_port()
    intake = start("services.intake", settings, "CAREBUS_INTAKE_PORT", intake_port)
    mapper = start("services.mapper", settings, "CAREBUS_MAPPER_PORT", mapper_port)
    try:
        wait_ready(intake_port, intake)
        wait_ready(mapper_port, mapper)
        examples = schema_examples()[:5]
        response = httpx.post(f"http://127.0.0.1:{intake_port}/events", content=orjson.dumps(examples),
                              headers={"content-type": "application/cloudevents-batch+json", **TEST_INTAKE_HEADERS},
                              timeout=30)
        assert response.status_code == 202
        ids = {e["id"] for e in examples}
        bundles = read_all(settings, FHIR_BUNDLES.name(settings.topic_prefix),
                           until=lambda rs: {header(r, "ce_carebuseventid") for r in rs} >= ids)
        assert {header(r, "ce_carebuseventid") for r in bundles} >= ids
        metrics = httpx.get(f"http://127.0.0.1:{mapper_port}/metrics", timeout=5).text
        assert "carebus_bundles_emitted_total" in metrics
        assert 'carebus_events_accepted_total{channel="http"' in httpx.get(
            f"http://127.0.0.1:{intake_port}/metrics", timeout=5).text
    finally:
        intake_rc, intake_logs = stop(intake)  # communicate() bounds the wait: a hang fails the test
        mapper_rc, mapper_logs = stop(mapper)
    assert intake_rc == 0
    assert mapper_rc == 0
    assert any(line.get("message") == "mapper stopped" for line in mapper_logs)
    assert any(line.get("message") == "intake stopped" for line in intake_logs)
    # logs are JSON with ids and counts, and carry no event payload (no name, date, text from the events)
    log_text = "\n".join(orjson.dumps(line).decode() for line in intake_logs + mapper_logs)
    for example in examples:
        for value in payload_strings(example["data"]):
            assert value not in log_text


def payload_strings(data: object, key: str = "") -> list[str]:
    """Free-text and demographic leaves of an event (not ids, codes or systems)."""
    if isinstance(data, dict):
        return [v for k, item in data.items() for v in payload_strings(item, k)]
    if isinstance(data, list):
        return [v for item in data for v in payload_strings(item, key)]
    skip = key.endswith("id") or key in {"system", "code", "status", "unit", "type", "use", "gender"}
    return [data] if isinstance(data, str) and len(data) >= 5 and not skip else []
