"""Hostile and careless input for intake, seeded and bounded in time, with a PHI canary in every input.

Inputs: mutated schema examples (single events and batches, forged sources, missing or wrong tokens, broken JSON,
wrong media types, oversized bodies), mutated HL7 v2 samples (POST /hl7v2 and MLLP, the latter with broken
framing and slow senders) and mutated FHIR samples (type swaps anywhere, ``meta`` and ``Bundle.type`` included,
unknown element names). Patient-identifying fields of every input (names, addresses, phones, free text, unknown
element names) carry the canary ``QZCANARY``; identifiers (ids, MSH-10) never do, since ids are logged by design.

What must hold (``FuzzReport.problems`` lists every breach):

- every input is answered: HTTP 2xx/4xx, or 503 with Retry-After; HL7 ACKs with MSA; MLLP one ACK per complete
  frame, in order, and an abandoned frame (a start block inside it) none; no 5xx but 503, no connection reset;
- every accepted input ends in a bundle or a dead letter whose reason is not ``unexpected-error``;
- the canary appears in no answer (bodies, headers, ACKs), no log line, no metric, no dead letter's metadata (all
  of it but the ``original`` record, which is the sender's data kept for replay).

``run_in_process`` drives the real app over ASGI and the real MLLP server on a loopback socket, with the fake
producer (tests/fakes.py) and the real mapping pipeline behind it (fast: most of the inputs).
``python -m tests.intake.fuzzing --inputs 100000`` (``make fuzz``) runs the full count and prints the report.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import io
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from prometheus_client import generate_latest

from services.common.log import json_formatter
from services.common.metrics import Metrics
from services.intake.app import create_app
from services.intake.hl7v2_acceptor import KafkaHl7Acceptor
from services.intake.mllp import END_BLOCK, START_BLOCK, MllpServer
from services.mapper.pipeline import InboundRecord, Pipeline, TopicNames
from tests.fakes import FakeProducer
from tests.intake.helpers import (
    PRIMARY_CARE_TOKEN,
    RELAY_TOKEN,
    SAMPLES,
    bearer,
    intake_settings,
    schema_examples,
)

CANARY = "QZCANARY"
_CANARY_LOWER = CANARY.lower()
PHI_KEYS = frozenset({"family", "given", "line", "city", "phone", "email", "text", "description", "name"})
ODD_VALUES: list[Any] = [
    None, "", " ", 0, -1, 0.5, 1e300, 10**30, True, False, [], {}, [1], {"a": 1}, ["x"], [{}], "x" * 300,
    "\u0000", "\ud7ff", "NaN", "2026-13-45", "2026-01-01", "2026-01-01T10:00:00", "1911111Zyxqvortle",
    f"{CANARY}-value", [f"{CANARY}-list"], {f"{CANARY}Element": f"{CANARY}"},
]
HL7_SAMPLES = sorted((SAMPLES / "hl7v2").glob("*.hl7"))
FHIR_SAMPLES = sorted((SAMPLES / "fhir").glob("*.json"))
TOPICS = TopicNames("bundles", "alerts", "deadletters")


@dataclass
class FuzzReport:
    inputs: Counter[str] = field(default_factory=Counter)
    answers: Counter[str] = field(default_factory=Counter)
    accepted_records: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.inputs.values())

    def problem(self, text: str) -> None:
        if len(self.problems) < 200:
            self.problems.append(text)

    def summary(self) -> str:
        lines = [f"{self.total} inputs in {self.seconds:.1f} s ({self.total / max(self.seconds, 1e-9):.0f}/s): "
                 + ", ".join(f"{k} {v}" for k, v in sorted(self.inputs.items())),
                 "answers: " + ", ".join(f"{k} {v}" for k, v in sorted(self.answers.items())),
                 f"accepted records {self.accepted_records}: "
                 + ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items())),
                 f"problems: {len(self.problems)}"]
        lines += [f"  {p}" for p in self.problems[:20]]
        return "\n".join(lines)


def has_canary(data: str | bytes) -> bool:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return _CANARY_LOWER in text.lower()


# --------------------------------------------------------------------------------------------- generators


def _canary_text(rng: random.Random) -> str:
    surname = rng.choice(["Smith", "O'Brien", "Nguyễn", "de la Cruz"])
    return f"{CANARY}{rng.randint(0, 9999)} {surname}"


def _plant_canaries(node: Any, rng: random.Random) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in PHI_KEYS and isinstance(value, str):
                node[key] = _canary_text(rng)
            elif key in PHI_KEYS and isinstance(value, list) and all(isinstance(v, str) for v in value):
                node[key] = [_canary_text(rng) for _ in value]
            else:
                _plant_canaries(value, rng)
    elif isinstance(node, list):
        for item in node:
            _plant_canaries(item, rng)


def _places(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path] if path else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _places(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            out += _places(value, (*path, index))
    return out


def _mutate(node: dict[str, Any], rng: random.Random, times: int) -> None:
    for _ in range(times):
        places = _places(node)
        if not places:
            return
        place = rng.choice(places)
        parent: Any = node
        for key in place[:-1]:
            parent = parent[key]
        roll = rng.random()
        if roll < 0.12 and isinstance(parent, dict):
            del parent[place[-1]]
        elif roll < 0.2 and isinstance(parent, dict):
            parent[f"{CANARY}{rng.randint(0, 99)}"] = rng.choice(ODD_VALUES)  # an unknown element named with PHI
        else:
            parent[place[-1]] = copy.deepcopy(rng.choice(ODD_VALUES))


class Inputs:
    """Seeded input generators; ``serial`` keeps ids and control ids distinct across inputs."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)  # noqa: S311 - a reproducible input stream
        self.examples = schema_examples()
        self.hl7 = [p.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\r").replace("\n", "\r")
                    for p in HL7_SAMPLES]
        self.fhir = [json.loads(p.read_text()) for p in FHIR_SAMPLES] + [
            {"resourceType": "Patient", "id": "fz-p", "gender": "female", "birthDate": "1980-02-03",
             "name": [{"family": "x", "given": ["y"]}], "address": [{"line": ["z"], "city": "c"}],
             "telecom": [{"system": "phone", "value": "555"}], "text": {"status": "generated", "div": "<div/>"}}]
        self.serial = 0

    def event(self) -> dict[str, Any]:
        rng = self.rng
        self.serial += 1
        event = copy.deepcopy(rng.choice(self.examples))
        event["id"] = f"fz-{self.serial}"
        _plant_canaries(event["data"], rng)
        if rng.random() < 0.55:
            _mutate(event["data"], rng, rng.randint(1, 3))
        if rng.random() < 0.05:
            _mutate(event, rng, 1)
        return event

    def events_request(self) -> tuple[bytes, dict[str, str]]:
        rng = self.rng
        headers = {"content-type": rng.choice(["application/cloudevents+json", "application/json",
                                               "application/cloudevents-batch+json"])}
        roll = rng.random()
        body: Any = [self.event() for _ in range(rng.randint(1, 6))] if roll < 0.3 else self.event()
        raw = json.dumps(body).encode()
        token = RELAY_TOKEN
        roll = rng.random()
        if roll < 0.03:
            raw = raw[: rng.randint(0, max(1, len(raw) - 1))]  # truncated JSON
        elif roll < 0.05:
            raw = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64)))
        elif roll < 0.06:
            headers["content-type"] = rng.choice(["text/plain", "", "application/xml"])
        elif roll < 0.08:
            token = rng.choice(["", f"{CANARY}-token", PRIMARY_CARE_TOKEN])  # none, unknown, other source's
        elif roll < 0.085:
            raw = b"[" + b" " * 70_000 + b"]"  # over the fuzz run's body limit
        if token:
            headers.update(bearer(token))
        return raw, headers

    def hl7_message(self) -> str:
        rng = self.rng
        self.serial += 1
        segments = [s for s in rng.choice(self.hl7).split("\r") if s]
        out = []
        for segment in segments:
            fields = segment.split("|")
            fields[0] = fields[0].removeprefix("\ufeff")  # two NIST samples start with a UTF-8 BOM
            if fields[0] == "MSH" and len(fields) > 9:
                fields[9] = f"FZ{self.serial}"
            elif fields[0] == "PID":
                while len(fields) < 14:
                    fields.append("")
                fields[5] = f"{CANARY}{rng.randint(0, 999)}^Jane^Q"
                fields[11] = f"77 {CANARY} Lane^^Springfield^IL^62701"
                fields[13] = f"(555){CANARY}"
            elif fields[0] == "NTE" and len(fields) > 3:
                fields[3] = f"{CANARY} free text"
            out.append("|".join(fields))
        if rng.random() < 0.5:
            for _ in range(rng.randint(1, 3)):
                index = rng.randrange(len(out))
                fields = out[index].split("|")
                roll = rng.random()
                if roll < 0.15 and index > 0:
                    del out[index]
                    continue
                position = rng.randrange(1, max(2, len(fields)))
                if fields[0] == "MSH" and position in (1, 2, 9):
                    continue  # keep the control id (never a canary) and the separators most of the time
                while len(fields) <= position:
                    fields.append("")
                odd = ["", "^^^", "&~\\", "1911111Zyxqvortle", "ZZZ^Z99", "9.9", "\u0000", "x" * 500, "2026"]
                if fields[0] != "MSH":  # MSH-3..6 are echoed in the ACK by design (applications, facilities)
                    odd.append(f"{CANARY}^x")
                fields[position] = str(rng.choice(odd))
                out[index] = "|".join(fields)
        if rng.random() < 0.02:
            out.insert(0, f"{CANARY} not a segment")
        return "\r".join(out) + "\r"

    def hl7_request(self) -> tuple[bytes, dict[str, str]]:
        rng = self.rng
        headers = {"content-type": rng.choice(["x-application/hl7-v2+er7", "text/plain", "application/hl7-v2"])}
        raw = self.hl7_message().encode()
        token = RELAY_TOKEN
        roll = rng.random()
        if roll < 0.02:
            headers["content-type"] = "application/json"
        elif roll < 0.04:
            token = rng.choice(["", f"{CANARY}-token", PRIMARY_CARE_TOKEN])
        elif roll < 0.05:
            raw = raw.decode().replace("\r", "\n").encode("latin-1", "replace")
        if token:
            headers.update(bearer(token))
        return raw, headers

    def fhir_request(self) -> tuple[bytes, dict[str, str]]:
        rng = self.rng
        self.serial += 1
        resource = copy.deepcopy(rng.choice(self.fhir))
        resource["id"] = f"fz{self.serial}"
        _plant_canaries(resource, rng)
        if rng.random() < 0.5:
            _mutate(resource, rng, rng.randint(1, 3))
        roll = rng.random()
        payload: Any = resource
        if roll < 0.25:
            payload = {"resourceType": "Bundle", "type": rng.choice(["transaction", "collection", "batch"]),
                       "entry": [{"fullUrl": f"urn:uuid:{self.serial:08d}-0000-4000-8000-000000000000",
                                  "resource": resource}]}
            if rng.random() < 0.2:
                _mutate(payload, rng, 1)
        headers = {"content-type": "application/fhir+json", "x-carebus-source": "urn:carebus:source:fuzz-fhir",
                   "x-carebus-event-id": f"fz-fhir-{self.serial}"}
        raw = json.dumps(payload).encode()
        token = RELAY_TOKEN
        roll = rng.random()
        if roll < 0.02:
            raw = raw[: len(raw) // 2]
        elif roll < 0.04:
            token = rng.choice(["", f"{CANARY}-token"])
        elif roll < 0.05:
            del headers["x-carebus-source"]
        elif roll < 0.06:
            headers["content-type"] = "text/plain"
        if token:
            headers.update(bearer(token))
        return raw, headers

    def mllp_session(self) -> tuple[list[bytes], int, bool]:
        """(chunks to send, complete frames expected to be answered, slow sender)."""
        rng = self.rng
        stream = bytearray()
        expected = 0
        for _ in range(rng.randint(1, 4)):
            roll = rng.random()
            message = self.hl7_message().encode()
            if roll < 0.1:
                stream += f"{CANARY} garbage before the frame".encode()
            if roll < 0.05:  # a frame abandoned by a start block inside it: no answer, by design
                stream += bytes([START_BLOCK]) + message[: len(message) // 2]
            stream += bytes([START_BLOCK]) + message + bytes([END_BLOCK])
            if rng.random() < 0.9:
                stream += b"\r"
            expected += 1
        if rng.random() < 0.05:  # the sender hangs up inside a frame: nothing to answer for it
            stream += bytes([START_BLOCK]) + b"MSH|^~\\&|half"
        cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.randint(0, 6))))
        chunks = [bytes(stream[a:b]) for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        return chunks, expected, rng.random() < 0.02


# --------------------------------------------------------------------------------------------- checks


class LogCapture(logging.Handler):
    """Every log line the services write during the run, formatted as in production."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.stream = io.StringIO()
        self.setFormatter(json_formatter("fuzz"))

    def emit(self, record: logging.LogRecord) -> None:
        self.stream.write(self.format(record) + "\n")


def check_http(report: FuzzReport, channel: str, response: httpx.Response) -> None:
    status = response.status_code
    report.answers[f"{channel} {status}"] += 1
    if status >= 500 and not (status == 503 and response.headers.get("retry-after")):
        report.problem(f"{channel}: {status} {response.text[:120]}")
    if has_canary(response.content) or any(has_canary(v) for v in response.headers.values()):
        report.problem(f"{channel}: canary in the answer ({status})")
    if channel == "hl7v2" and "MSA|" not in response.text:
        report.problem(f"hl7v2: answer without MSA ({status})")


def settle(report: FuzzReport, producer: FakeProducer, start: int) -> int:
    """Map every record written since ``start`` (the mapper's pipeline, as the service runs it)."""
    pipeline = Pipeline(TOPICS)
    for offset, record in enumerate(producer.sent[start:], start=start):
        outcome = pipeline.process(InboundRecord(
            record.topic, producer.partition_of(record.key), offset, 1767225600000, record.key.encode(),
            record.value, tuple((name, value.encode()) for name, value in record.headers.items())))
        report.accepted_records += 1
        if outcome.dead_letter_reason is None:
            report.outcomes["bundle"] += 1
            continue
        report.outcomes[f"dead letter {outcome.dead_letter_reason}"] += 1
        if outcome.dead_letter_reason == "unexpected-error":
            report.problem(f"unexpected-error dead letter for {outcome.event_type}")
        letter = next(r for r in outcome.records if r.topic == TOPICS.dead_letters)
        metadata = {k: v for k, v in orjson.loads(letter.value).items() if k != "original"}
        if has_canary(orjson.dumps(metadata)) or any(has_canary(v) for v in letter.headers.values()):
            report.problem(f"canary in dead-letter metadata ({outcome.dead_letter_reason})")
    return len(producer.sent)


# --------------------------------------------------------------------------------------------- the run


async def _mllp_session(report: FuzzReport, port: int, chunks: list[bytes], expected: int, slow: bool) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        report.problem(f"mllp: cannot connect ({type(exc).__name__})")
        return
    try:
        for chunk in chunks:
            if slow:  # a slow sender: the frame dribbles in
                for start in range(0, len(chunk), 97):
                    writer.write(chunk[start:start + 97])
                    await writer.drain()
                    await asyncio.sleep(0.001)
            else:
                writer.write(chunk)
                await writer.drain()
        acks = 0
        buffer = b""
        while acks < expected:
            data = await asyncio.wait_for(reader.read(65536), timeout=30)
            if not data:
                break
            buffer += data
            while b"\x1c\r" in buffer:
                frame_bytes, buffer = buffer.split(b"\x1c\r", 1)
                acks += 1
                text = frame_bytes.decode("utf-8", "replace")
                code = next((s.split("|")[1] for s in text.split("\r") if s.startswith("MSA|")), "none")
                report.answers[f"mllp {code}"] += 1
                if has_canary(text):
                    report.problem("mllp: canary in an ACK")
        if acks != expected:
            report.problem(f"mllp: {acks} ACKs for {expected} frames")
    except (ConnectionError, TimeoutError) as exc:
        report.problem(f"mllp: {type(exc).__name__}")
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError as exc:
            report.problem(f"mllp close: {type(exc).__name__}")


async def run_in_process(inputs: int, seed: int, time_budget_s: float,
                         progress: Callable[[str], None] | None = None) -> FuzzReport:
    """Up to ``inputs`` inputs (or until ``time_budget_s``), spread over the four channels."""
    report = FuzzReport()
    capture = LogCapture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(capture)
    root.setLevel(logging.INFO)
    settings = intake_settings(max_body_bytes=65_536, max_batch_events=5, mllp_max_frame_bytes=65_536)
    producer = FakeProducer()
    metrics = Metrics()
    acceptor = KafkaHl7Acceptor(producer, "inbound", metrics=metrics)
    app = create_app(settings, producer, metrics, lambda: (True, "ok"), acceptor)
    mllp = await MllpServer(acceptor, host="127.0.0.1", port=0, max_frame_bytes=65_536, metrics=metrics).start()
    gen = Inputs(seed)
    started = time.monotonic()
    settled = 0
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://intake") as client:
            for number in range(inputs):
                if time.monotonic() - started > time_budget_s:
                    break
                if number % 1000 == 500:
                    producer.go_down()  # an outage: the next inputs must be answered 503 / AR, nothing kept
                elif number % 1000 == 530:
                    producer.come_back()
                elif number % 1000 == 700:
                    producer.fail_after(1)  # a batch acknowledged part-way
                roll = gen.rng.random()
                if roll < 0.4:
                    report.inputs["events"] += 1
                    body, headers = gen.events_request()
                    check_http(report, "events", await client.post("/events", content=body, headers=headers))
                elif roll < 0.65:
                    report.inputs["fhir"] += 1
                    body, headers = gen.fhir_request()
                    check_http(report, "fhir", await client.post("/fhir", content=body, headers=headers))
                elif roll < 0.85:
                    report.inputs["hl7v2"] += 1
                    body, headers = gen.hl7_request()
                    check_http(report, "hl7v2", await client.post("/hl7v2", content=body, headers=headers))
                else:
                    report.inputs["mllp"] += 1
                    await _mllp_session(report, mllp.port, *gen.mllp_session())
                if number % 2000 == 1999:
                    settled = settle(report, producer, settled)
                    if progress is not None:
                        progress(f"{number + 1} inputs, {report.accepted_records} accepted records mapped, "
                                 f"{len(report.problems)} problems")
            settled = settle(report, producer, settled)
            health = await client.get("/healthz")
            if health.status_code != 200:
                report.problem(f"healthz {health.status_code} after the run")
    finally:
        await mllp.stop()
        root.removeHandler(capture)
        root.setLevel(old_level)
    report.seconds = time.monotonic() - started
    logs = capture.stream.getvalue()
    if has_canary(logs):
        line = next(line for line in logs.splitlines() if has_canary(line))
        report.problem(f"canary in a log line: {line[:160]}")
    if has_canary(generate_latest(metrics.registry)):
        report.problem("canary in the metrics")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=20261203)
    parser.add_argument("--time-budget-s", type=float, default=1800)
    args = parser.parse_args(argv)
    report = asyncio.run(run_in_process(args.inputs, args.seed, args.time_budget_s,
                                        progress=lambda text: print(text, flush=True)))
    print(report.summary())
    raise SystemExit(1 if report.problems or report.total < args.inputs else 0)


if __name__ == "__main__":
    main()
