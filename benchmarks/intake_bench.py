"""Front-door benchmark: intake under an open-loop load, measured by a load generator that is not intake's peer.

    .venv/bin/python -m benchmarks.intake_bench [--seconds 20] [--rates 200,500,1000,2000]

Load generator: vegeta (github.com/tsenart/vegeta/v12, Go, open loop: it fires at the offered rate whatever
intake answers), built from the Go module proxy into the git-ignored .cache/bin on first use (`go install`).
Every request carries a distinct event (its own id and patient), so nothing is a replay.

Prints:
1. single-event POSTs at each offered rate (after a warm-up): accepted/s, shed/s (503 + Retry-After),
   other answers, p50 / p99 / max latency of the accepted requests and the p99 of the shed ones
2. batches of 100 events: accepted events/s
One intake process (as `python -m services.intake` runs it) against a local broker started here (or the
cluster in CAREBUS_KAFKA_BOOTSTRAP). The machine has 2 cores, shared by the broker, intake and vegeta: the
load average at the end says how busy it was.
"""

from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson

from devstack.journey import sample_care_journey
from devstack.local_broker import LocalKafkaBroker, free_port
from services.common.kafka import ensure_topics
from services.common.settings import REPO_ROOT, Settings
from services.common.topics import CATALOGUE

VEGETA_MODULE = "github.com/tsenart/vegeta/v12@v12.13.0"
BENCH_TOKEN = "intake-bench-token"  # a local, throw-away credential of this script's own intake  # noqa: S105


def vegeta_binary() -> Path:
    """vegeta from the Go module proxy, built once into .cache/bin."""
    binary = REPO_ROOT / ".cache" / "bin" / "vegeta"
    if not binary.exists():
        go = shutil.which("go")
        if go is None:
            raise SystemExit("the load generator vegeta is built with Go: install Go (apt-get install golang)")
        print(f"building the load generator ({VEGETA_MODULE}) into .cache/bin", flush=True)
        subprocess.run([go, "install", VEGETA_MODULE], check=True,  # noqa: S603
                       env={**os.environ, "GOBIN": str(binary.parent)})
    return binary


def _own(value: Any, suffix: str) -> Any:
    """Every source id (``*_id``) and identifier value made one person's own."""
    if isinstance(value, dict):
        if set(value) == {"system", "value"}:  # an identifier
            return {"system": value["system"], "value": f"{value['value']}{suffix}"}
        return {k: (f"{v}{suffix}" if k.endswith("_id") and isinstance(v, str) else _own(v, suffix))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_own(v, suffix) for v in value]
    return value


def distinct_events(count: int, tag: str) -> list[dict[str, Any]]:
    """The sample journey's events for many distinct people: each has its own event ids, source ids and
    identifiers (enterprise id included), so no two replays are one person."""
    journey = sample_care_journey(datetime(2026, 1, 5, 9, 0, tzinfo=UTC) - timedelta(days=1))
    events: list[dict[str, Any]] = []
    person = 0
    while len(events) < count:
        person += 1
        suffix = f"-{tag}{person}"
        for template in journey:
            event = copy.deepcopy(template)
            event["id"] = f"{template['id']}{suffix}"
            event["data"] = _own(event["data"], suffix)
            events.append(event)
    return events[:count]


def write_targets(path: Path, url: str, bodies: list[bytes], content_type: str) -> None:
    headers = {"Content-Type": [content_type], "Authorization": [f"Bearer {BENCH_TOKEN}"]}
    with path.open("wb") as out:
        for body in bodies:
            out.write(orjson.dumps({"method": "POST", "url": url, "header": headers,
                                    "body": base64.b64encode(body).decode()}))
            out.write(b"\n")


@dataclass
class Step:
    offered: float
    seconds: float
    accepted: int
    shed: int
    other: int
    accepted_ms: list[float]
    shed_ms: list[float]

    def percentile(self, values: list[float], q: float) -> float:
        if not values:
            return float("nan")
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def attack(vegeta: Path, targets: Path, rate: float, seconds: float, workdir: Path) -> Step:
    results = workdir / f"results-{int(rate)}.bin"
    subprocess.run([str(vegeta), "attack", "-format=json", f"-targets={targets}", f"-rate={int(rate)}/s",  # noqa: S603
                    f"-duration={seconds}s", "-timeout=10s", "-keepalive=true", f"-output={results}"],
                   check=True)
    encoded = subprocess.run([str(vegeta), "encode", "-to=json", str(results)], check=True,  # noqa: S603
                             capture_output=True).stdout
    accepted_ms: list[float] = []
    shed_ms: list[float] = []
    other = 0
    for line in encoded.splitlines():
        result = json.loads(line)
        latency_ms = result["latency"] / 1e6
        if result["code"] == 202:
            accepted_ms.append(latency_ms)
        elif result["code"] == 503:
            shed_ms.append(latency_ms)
        else:
            other += 1
    return Step(rate, seconds, len(accepted_ms), len(shed_ms), other, accepted_ms, shed_ms)


def start_intake(settings: Settings, workers: int = 1) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    tokens = {hashlib.sha256(BENCH_TOKEN.encode()).hexdigest(): {"sources": ["*"], "label": "intake-bench"}}
    env = {**os.environ, "CAREBUS_KAFKA_BOOTSTRAP": settings.kafka_bootstrap, "CAREBUS_INTAKE_PORT": str(port),
           "CAREBUS_TOPIC_PREFIX": settings.topic_prefix, "CAREBUS_LOG_LEVEL": "WARNING",
           "CAREBUS_MLLP_PORT": str(free_port()), "CAREBUS_INTAKE_TOKENS": json.dumps(tokens),
           "CAREBUS_MAX_BATCH_EVENTS": "500", "CAREBUS_INTAKE_WORKERS": str(workers)}
    server = subprocess.Popen([sys.executable, "-m", "services.intake"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    server.terminate()
    raise SystemExit("intake did not become ready within 60 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each rate step")
    parser.add_argument("--rates", default="200,500,1000,2000", help="offered single-event POSTs per second")
    parser.add_argument("--batch-rate", type=float, default=100.0, help="offered 100-event batches per second")
    parser.add_argument("--workers", type=int, default=1, help="intake worker processes (CAREBUS_INTAKE_WORKERS)")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    vegeta = vegeta_binary()
    print(f"carebus intake benchmark  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  cores={os.cpu_count()}  "
          f"load generator: {VEGETA_MODULE} (open loop)  intake: {args.workers} worker process(es)", flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="intake-bench-"))
    broker = None
    bootstrap = os.environ.get("CAREBUS_KAFKA_BOOTSTRAP")
    if not bootstrap:
        broker = LocalKafkaBroker(REPO_ROOT / ".cache", workdir=workdir / "kafka", heap="1g").start()
        bootstrap = broker.bootstrap
    try:
        settings = Settings(kafka_bootstrap=bootstrap, topic_prefix=f"ibench{uuid.uuid4().hex[:6]}",
                            kafka_topic_partitions=6)
        ensure_topics(settings, CATALOGUE)
        server, url = start_intake(settings, args.workers)
        try:
            warm = workdir / "warm.jsonl"
            write_targets(warm, f"{url}/events", [orjson.dumps(e) for e in distinct_events(1000, "w")],
                          "application/cloudevents+json")
            attack(vegeta, warm, 100, 5, workdir)
            print("1. single-event POSTs (open loop)")
            print("   offered/s  accepted/s  shed/s  other  p50 ms  p99 ms  max ms  shed p99 ms")
            for step_no, rate in enumerate(rates):
                count = int(rate * args.seconds) + 10
                targets = workdir / f"single-{step_no}.jsonl"
                write_targets(targets, f"{url}/events",
                              [orjson.dumps(e) for e in distinct_events(count, f"s{step_no}-")],
                              "application/cloudevents+json")
                step = attack(vegeta, targets, rate, args.seconds, workdir)
                print(f"   {rate:9.0f}  {step.accepted / step.seconds:10.0f}  {step.shed / step.seconds:6.0f}"
                      f"  {step.other:5d}  {statistics.median(step.accepted_ms) if step.accepted_ms else 0:6.1f}"
                      f"  {step.percentile(step.accepted_ms, 0.99):6.1f}"
                      f"  {max(step.accepted_ms, default=0):6.1f}  {step.percentile(step.shed_ms, 0.99):11.1f}",
                      flush=True)
            batches = int(args.batch_rate * args.seconds) + 5
            events = distinct_events(batches * 100, "b")
            bodies = [orjson.dumps(events[i * 100:(i + 1) * 100]) for i in range(batches)]
            targets = workdir / "batches.jsonl"
            write_targets(targets, f"{url}/events", bodies, "application/cloudevents-batch+json")
            step = attack(vegeta, targets, args.batch_rate, args.seconds, workdir)
            print(f"2. batches of 100 at {args.batch_rate:.0f} offered/s: {step.accepted * 100 / step.seconds:.0f} "
                  f"events/s accepted, {step.shed} batches shed, {step.other} other answers, "
                  f"p99 {step.percentile(step.accepted_ms, 0.99):.1f} ms", flush=True)
        finally:
            server.terminate()
            server.wait(timeout=20)
        one, five, fifteen = os.getloadavg()
        print(f"load average {one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min) at the end")
    finally:
        if broker is not None:
            broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
