"""The fuzz run (tests/intake/fuzzing.py) in the suite, with the PHI canary.

In process: several thousand seeded inputs over ASGI and a loopback MLLP socket, bounded in time (``make fuzz``
runs 100,000). Real processes: intake and mapper as deployed, the session's broker, some hundred inputs over
real HTTP keep-alive connections and MLLP sockets; every accepted input is then found on the bundle or dead-letter
topic, and the processes' logs and metrics hold no canary.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest

from devstack.local_broker import free_port
from services.common.hl7v2 import inspect_message
from services.common.settings import Settings
from services.common.topics import DEAD_LETTERS, FHIR_BUNDLES
from tests.intake.fuzzing import Inputs, has_canary, run_in_process
from tests.intake.helpers import SENDER_GRANTS
from tests.integration.test_processes import wait_ready
from tests.kafka_helpers import header, read_all

CI_INPUTS = int(os.environ.get("CAREBUS_FUZZ_INPUTS", "4000"))
CI_TIME_BUDGET_S = float(os.environ.get("CAREBUS_FUZZ_SECONDS", "45"))


async def test_fuzz_in_process_every_input_answered_mapped_and_no_canary_leaks(
        capsys: pytest.CaptureFixture[str]) -> None:
    report = await run_in_process(CI_INPUTS, seed=20261203, time_budget_s=CI_TIME_BUDGET_S)
    with capsys.disabled():
        print("\n[fuzz in process]\n" + report.summary())
    assert report.problems == []
    assert report.total >= min(CI_INPUTS, 1000)  # the time bound must leave a meaningful run
    # not vacuous: every channel, acceptances and refusals of each kind, outages, and mapped records
    assert {"events", "fhir", "hl7v2", "mllp"} <= set(report.inputs)
    for answer in ("events 202", "events 422", "events 503", "fhir 202", "fhir 422", "hl7v2 200", "hl7v2 400",
                   "mllp AA"):
        assert report.answers[answer] > 0, answer
    assert report.outcomes["bundle"] > 0 and report.accepted_records == sum(report.outcomes.values())


def _start(module: str, settings: Settings, env_extra: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """The service as a process; its output goes to ``log`` (a pipe nobody reads would fill and block it)."""
    tokens = orjson.dumps({d: g.model_dump() for d, g in SENDER_GRANTS.items()}).decode()
    env = {**os.environ, "CAREBUS_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
           "CAREBUS_TOPIC_PREFIX": settings.topic_prefix, "CAREBUS_KAFKA_TOPIC_PARTITIONS": "3",
           "CAREBUS_INTAKE_TOKENS": tokens, "CAREBUS_MAX_BODY_BYTES": "65536", "CAREBUS_MAX_BATCH_EVENTS": "5",
           "CAREBUS_MLLP_MAX_FRAME_BYTES": "65536", **env_extra}
    return subprocess.Popen([sys.executable, "-m", module], env=env,  # noqa: S603
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)


def _stop(process: subprocess.Popen[bytes], log: Path) -> tuple[int, bytes]:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)
    return process.returncode, log.read_bytes()


def _mllp(port: int, chunks: list[bytes], expected: int) -> list[str]:
    acks: list[str] = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        for chunk in chunks:
            conn.sendall(chunk)
        buffer = b""
        while len(acks) < expected:
            data = conn.recv(65536)
            assert data, "MLLP connection closed before every frame was answered"
            buffer += data
            while b"\x1c\r" in buffer:
                ack, buffer = buffer.split(b"\x1c\r", 1)
                acks.append(ack.decode("utf-8", "replace"))
    return acks


@pytest.mark.integration
def test_fuzz_real_processes_accepted_inputs_reach_a_topic_and_no_canary_leaks(settings: Settings,
                                                                              tmp_path: Path) -> None:
    intake_port, mllp_port, mapper_port = free_port(), free_port(), free_port()
    intake_log, mapper_log = tmp_path / "intake.log", tmp_path / "mapper.log"
    intake = _start("services.intake", settings, {"CAREBUS_INTAKE_PORT": str(intake_port),
                                                  "CAREBUS_MLLP_PORT": str(mllp_port)}, intake_log)
    mapper = _start("services.mapper", settings, {"CAREBUS_MAPPER_PORT": str(mapper_port)}, mapper_log)
    gen = Inputs(seed=4242)
    accepted: set[str] = set()
    statuses: dict[int, int] = {}
    leaks: list[str] = []
    try:
        wait_ready(intake_port, intake)
        wait_ready(mapper_port, mapper)
        with httpx.Client(base_url=f"http://127.0.0.1:{intake_port}", timeout=30) as client:
            for _ in range(150):  # one keep-alive connection: a reset would raise here
                for path, (body, headers) in (("/events", gen.events_request()), ("/fhir", gen.fhir_request()),
                                              ("/hl7v2", gen.hl7_request())):
                    try:
                        response = client.post(path, content=body, headers=headers)
                    except httpx.HTTPError as exc:  # a reset or a hang: name the input (no body: it has PHI)
                        raise AssertionError(f"{path} {type(exc).__name__}: {len(body)} bytes, "
                                             f"{headers.get('content-type')}") from exc
                    statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                    assert response.status_code < 500 or (
                        response.status_code == 503 and response.headers.get("retry-after")), response.text
                    if has_canary(response.content):
                        leaks.append(f"{path} {response.status_code}")
                    if response.status_code == 202 and path == "/events":
                        accepted.update(e["id"] for e in response.json()["events"])
                    elif response.status_code == 202:
                        accepted.add(headers["x-carebus-event-id"])
                    elif response.status_code == 200:
                        accepted.add(inspect_message(body.decode("utf-8", "replace")).event_id)
        for _ in range(40):
            chunks, expected, _slow = gen.mllp_session()
            for ack in _mllp(mllp_port, chunks, expected):
                if has_canary(ack):
                    leaks.append("mllp ack")
            # the AA'd messages of the session: their event ids (frames in order; an ACK per complete frame)
            for chunk_text in b"".join(chunks).split(bytes([0x0B]))[1:]:
                if b"\x1c" in chunk_text:
                    message = chunk_text.split(b"\x1c", 1)[0].decode("utf-8", "replace")
                    with contextlib.suppress(Exception):  # refused (AE/AR): nothing to find downstream
                        accepted.add(inspect_message(message).event_id)
        ids = set(accepted)
        bundles = read_all(settings, FHIR_BUNDLES.name(settings.topic_prefix), timeout_s=90,
                           until=lambda rs: {header(r, "ce_carebuseventid") for r in rs} >= ids)
        found = {header(r, "ce_carebuseventid") for r in bundles}  # a bundle's ce_id is its own id
        letters = read_all(settings, DEAD_LETTERS.name(settings.topic_prefix), timeout_s=30,
                           until=lambda rs: found | {header(r, "ce_carebuseventid") for r in rs} >= ids)
        for letter in letters:
            metadata = {k: v for k, v in orjson.loads(letter.value).items() if k != "original"}
            assert metadata["reason"] != "unexpected-error"
            if has_canary(orjson.dumps(metadata)):
                leaks.append(f"dead letter {metadata['reason']}")
        found |= {header(r, "ce_carebuseventid") for r in letters}
        assert ids - found == set(), f"{len(ids - found)} accepted inputs in neither topic"
        for port in (intake_port, mapper_port):
            assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
            assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
            if has_canary(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).content):
                leaks.append(f"metrics :{port}")
    finally:
        intake_rc, intake_output = _stop(intake, intake_log)
        mapper_rc, mapper_output = _stop(mapper, mapper_log)
    assert intake_rc == 0 and mapper_rc == 0
    assert len(accepted) > 100 and statuses.get(422, 0) > 0  # not vacuous
    if has_canary(intake_output + mapper_output):  # every line, JSON or not (a traceback would count too)
        leaks.append("process logs")
    assert leaks == []
