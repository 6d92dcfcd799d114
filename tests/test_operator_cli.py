"""The CLI as an operator meets it, in its own process: it follows the local broker (CAREBUS_LOCAL_KAFKA_PORT)
when CAREBUS_KAFKA_BOOTSTRAP is not set, says that it waits on an unreachable Kafka and gives up after
--kafka-timeout, and answers a missing intake with one line and exit code 2; Kafka's own tools run beside it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from devstack.local_broker import free_port
from services.common.kafka import OutboundRecord, RecordProducer, ensure_topics
from services.common.settings import REPO_ROOT, Settings
from services.common.topics import CATALOGUE, FHIR_BUNDLES


def carebus(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CAREBUS_")}
    return subprocess.run(  # noqa: S603  # this interpreter, the project's own CLI
        [sys.executable, "-m", "services.operator.cli", *args], cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=120, check=False, env={**clean, "PYTHONPATH": str(REPO_ROOT), "COLUMNS": "200", **env},
    )


@pytest.mark.integration
def test_the_cli_follows_the_local_broker_port(kafka_bootstrap: str) -> None:
    host, _, port = kafka_bootstrap.rpartition(":")
    if host != "127.0.0.1":
        pytest.skip("the session's broker is not a local one (CAREBUS_KAFKA_BOOTSTRAP is set)")
    prefix = f"cli{uuid.uuid4().hex[:8]}"
    result = carebus("topics", "create", env={"CAREBUS_LOCAL_KAFKA_PORT": port, "CAREBUS_TOPIC_PREFIX": prefix,
                                             "CAREBUS_KAFKA_TOPIC_PARTITIONS": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"created {len(CATALOGUE)} topic(s)" in result.stdout


def test_waiting_on_an_unreachable_kafka_shows_progress_and_gives_up_after_the_timeout() -> None:
    port = str(free_port())  # nothing listens there
    result = carebus("--kafka-timeout", "3", "deadletters", "list", env={"CAREBUS_LOCAL_KAFKA_PORT": port})
    assert result.returncode == 2
    assert f"waiting for Kafka at 127.0.0.1:{port}" in result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Kafka unreachable or failing at 127.0.0.1:{port}")
    assert "CAREBUS_LOCAL_KAFKA_PORT" in lines[0]
    assert "Traceback" not in result.stdout + result.stderr


def test_send_sample_with_intake_down_is_one_line_and_exit_2() -> None:
    result = carebus("send-sample", env={"CAREBUS_INTAKE_PORT": str(free_port())})
    assert result.returncode == 2
    assert result.stdout.strip().count("\n") == 0, result.stdout
    assert result.stdout.startswith("intake unreachable at http://127.0.0.1:")
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.integration
def test_kafka_s_own_tools_run_against_carebus_s_kafka(settings: Settings) -> None:
    ensure_topics(settings, CATALOGUE)
    topic = FHIR_BUNDLES.name(settings.topic_prefix)
    producer = RecordProducer(settings, "test-tools")
    try:
        producer.send_all_and_wait([OutboundRecord(topic, "k|1", b'{"resourceType": "Bundle"}',
                                                   {"ce_type": "org.carebus.fhir.bundle.v1"})])
    finally:
        producer.close()
    group = f"{settings.topic_prefix}-tools-group"
    env = {"CAREBUS_KAFKA_BOOTSTRAP": settings.kafka_bootstrap}
    consumed = carebus("kafka", "console-consumer", "--topic", topic, "--from-beginning", "--max-messages", "1",
                       "--timeout-ms", "30000", "--group", group, "--property", "print.headers=true", env=env)
    assert consumed.returncode == 0, consumed.stderr
    assert 'ce_type:org.carebus.fhir.bundle.v1\t{"resourceType": "Bundle"}' in consumed.stdout
    groups = carebus("kafka", "consumer-groups", "--describe", "--group", group, env=env)
    assert groups.returncode == 0, groups.stderr
    assert topic in groups.stdout
    unknown = carebus("kafka", "no-such-tool", env=env)
    assert unknown.returncode == 2 and "unknown tool no-such-tool" in unknown.stdout


def _serve(port: str, workdir: Path) -> tuple[subprocess.Popen[str], str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CAREBUS_")}
    process = subprocess.Popen(  # noqa: S603  # this interpreter, the project's own CLI
        [sys.executable, "-m", "services.operator.cli", "broker", "--port", port, "--workdir", str(workdir)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**clean, "PYTHONPATH": str(REPO_ROOT)})
    assert process.stdout is not None
    for line in process.stdout:
        if "serving on" in line:
            return process, line
    process.wait(timeout=30)
    pytest.fail(f"carebus broker exited with {process.returncode} before serving")


def _stop(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0


@pytest.mark.integration
def test_carebus_broker_keeps_its_topics_across_restarts(tmp_path: Path) -> None:
    port = str(free_port())
    first, line = _serve(port, tmp_path / "broker")
    try:
        assert f"127.0.0.1:{port} on new storage" in line
        settings = Settings(kafka_bootstrap=f"127.0.0.1:{port}", topic_prefix="kept", kafka_topic_partitions=1)
        assert len(ensure_topics(settings, CATALOGUE)) == len(CATALOGUE)
    finally:
        _stop(first)
    second, line = _serve(port, tmp_path / "broker")
    try:
        assert "on the data kept in" in line
        assert ensure_topics(settings, CATALOGUE) == []  # every topic is still there: nothing to create
    finally:
        _stop(second)
