"""End-to-end latency: from intake's 202 to the FHIR bundle on the bundle topic, to the safety alert on the alerts
topic, and to the resource being readable in the record API.

    .venv/bin/python -m benchmarks.e2e_bench [--rate 200] [--seconds 30]

Runs intake, mapper and record as processes (``python -m services.<name>``) on a local broker, offers single-event
POSTs at a steady rate with vegeta (open loop; see benchmarks/intake_bench.py), and measures for each accepted
event, on the same clock:
- 202 -> bundle: when a consumer of the bundle topic (reading as a subscriber would) received its bundle;
- 202 -> safety alert: the same on the alerts topic, for the events that raise one (PHQ-9 item 9 and others);
- 202 -> committed: when the record's change feed (published after its store commit) carried the resource;
- 202 -> record API: for a sample of events (--sample, default every 10th), a reader asks the record API for the
  Bundle's first resource once the change feed has it, and again behind the others until it answers 200.
The 202's time is vegeta's request start plus its latency. Percentiles p50 / p99 / max are printed. Under the
bundle and commit lines, "(written)" is the same measured to the record's own Kafka timestamp instead: when the
mapper or the record handed it to its producer, before the broker's ack and this script's consumer (both
compete for the same two cores; the difference is what a subscriber on this machine adds).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from kafka import KafkaConsumer, TopicPartition

from benchmarks.intake_bench import BENCH_TOKEN, distinct_events, vegeta_binary, write_targets
from devstack.local_broker import LocalKafkaBroker, free_port
from services.common.kafka import client_config, ensure_topics
from services.common.settings import REPO_ROOT, Settings
from services.common.topics import CATALOGUE, FHIR_BUNDLES, RECORD_CHANGES, SAFETY_ALERTS

READ_TOKEN = "e2e-bench-reader"  # noqa: S105


def event_id_of(record: Any) -> str | None:
    """The inbound event id a bundle or alert record was made from (its CloudEvents headers)."""
    headers = {key: bytes(value).decode() for key, value in record.headers or ()}
    return headers.get("ce_carebuseventid") or headers.get("ce_id")


def change_focus(record: Any) -> str | None:
    """The resource a record of the record's change feed is about (``Type/id``)."""
    change = orjson.loads(record.value)
    return f"{change['resourceType']}/{change['id']}"


class ArrivalClock(threading.Thread):
    """Reads a topic from its end and notes the wall-clock arrival of each key's first record: by default the
    inbound event id a bundle or alert was made from; ``key_of`` says otherwise (e.g. :func:`change_focus`)."""

    def __init__(self, settings: Settings, topic: str, key_of: Callable[[Any], str | None] = event_id_of) -> None:
        super().__init__(daemon=True, name=f"arrivals-{topic}")
        self.arrived: dict[str, float] = {}
        self.written: dict[str, float] = {}  # the record's own timestamp: when its producer wrote it
        self.first_record: dict[str, bytes] = {}
        self.stopping = threading.Event()
        self.positioned = threading.Event()
        self._settings, self._topic, self._key_of = settings, topic, key_of

    def run(self) -> None:
        consumer = KafkaConsumer(**client_config(self._settings, f"e2e-{self._topic}"), enable_auto_commit=False)
        partitions = [TopicPartition(self._topic, p) for p in consumer.partitions_for_topic(self._topic) or ()]
        consumer.assign(partitions)
        consumer.seek_to_end(*partitions)
        for tp in partitions:
            consumer.position(tp)
        self.positioned.set()
        while not self.stopping.is_set():
            for records in consumer.poll(timeout_ms=50).values():
                now = time.time()
                for record in records:
                    key = self._key_of(record)
                    if key and key not in self.arrived:
                        self.arrived[key] = now
                        self.written[key] = record.timestamp / 1000
                        self.first_record[key] = record.value
        consumer.close()


class RecordReader:
    """Asks the record API, while the load runs, for the first resource of each sampled event's bundle, and notes
    when it answered 200. A resource is asked for once the change feed says it was committed, so the readers
    never queue behind a resource that is not there yet (a reader waiting on one resource while others became
    readable measured its own backlog, seconds at 200 events/s, not the record's); one that still answers 404
    is asked again a moment later, behind the others. The figure is therefore commit, change feed, a reader's
    turn and the GET: an upper bound of when the record could first serve it."""

    def __init__(self, base_url: str, event_ids: list[str], bundles: ArrivalClock, commits: ArrivalClock,
                 timeout_s: float = 120, readers: int = 8) -> None:
        self.readable_at: dict[str, float] = {}
        self.not_found_after_commit = 0
        self._base_url, self._bundles, self._commits, self._timeout_s = base_url, bundles, commits, timeout_s
        self._pending = list(event_ids)
        self._paths: dict[str, str | None] = {}
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._read, daemon=True, name=f"record-reader-{n}")
                         for n in range(readers)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _next(self) -> str | None:
        """The path of the first sampled resource, in offer order, that the change feed says is committed ("" when
        none is yet; None when none is left)."""
        with self._lock:
            for index, event_id in enumerate(self._pending):
                if event_id not in self._paths:
                    bundle = self._bundles.first_record.get(event_id)
                    if bundle is None:
                        continue
                    self._paths[event_id] = first_resource_path(bundle)
                path = self._paths[event_id]
                if path is None:  # the bundle holds only a Provenance
                    del self._pending[index]
                    return ""
                if path in self._commits.arrived:
                    del self._pending[index]
                    return event_id
            return None if not self._pending else ""

    def _read(self) -> None:
        deadline = time.monotonic() + self._timeout_s
        with httpx.Client(base_url=self._base_url, timeout=10,
                          headers={"Authorization": f"Bearer {READ_TOKEN}"}) as client:
            while time.monotonic() < deadline:
                event_id = self._next()
                if event_id is None:
                    return
                if not event_id:
                    time.sleep(0.005)
                    continue
                path = self._paths[event_id]
                try:
                    found = client.get(f"/{path}").status_code == 200
                except httpx.HTTPError:  # the record API is busy or restarting: ask again
                    found = False
                if found:
                    self.readable_at[event_id] = time.time()
                    continue
                with self._lock:
                    self.not_found_after_commit += 1
                    self._pending.append(event_id)


def vegeta_time(stamp: str) -> float:
    """vegeta's RFC 3339 timestamps carry up to nine fractional digits (Python reads at most six)."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp() + float(f"0.{fraction or 0}")


def start(module: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", module], env=env, stdout=out, stderr=subprocess.STDOUT)  # noqa: S603


def wait_ready(port: int, what: str) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise SystemExit(f"{what} did not become ready")


def percentiles(label: str, values_s: list[float]) -> str:
    if not values_s:
        return f"{label}: no samples"
    ms = sorted(v * 1000 for v in values_s)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return f"{label}: n={len(ms)}  p50 {statistics.median(ms):.0f} ms  p99 {p99:.0f} ms  max {ms[-1]:.0f} ms"


def first_resource_path(bundle: bytes) -> str | None:
    for entry in orjson.loads(bundle).get("entry", []):
        resource = entry.get("resource", {})
        if resource.get("resourceType") not in (None, "Provenance") and resource.get("id"):
            return f"{resource['resourceType']}/{resource['id']}"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--sample", type=int, default=10, help="poll the record API for every Nth event")
    args = parser.parse_args()
    vegeta = vegeta_binary()
    print(f"carebus end-to-end latency benchmark  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  cores={os.cpu_count()}  "
          f"{args.rate:.0f} events/s for {args.seconds:.0f} s (vegeta, open loop)", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="e2e-bench-"))
    broker = None
    bootstrap = os.environ.get("CAREBUS_KAFKA_BOOTSTRAP")
    if not bootstrap:
        broker = LocalKafkaBroker(REPO_ROOT / ".cache", workdir=workdir / "kafka", heap="1g").start()
        bootstrap = broker.bootstrap
    processes: list[subprocess.Popen[bytes]] = []
    try:
        settings = Settings(kafka_bootstrap=bootstrap, topic_prefix=f"e2e{uuid.uuid4().hex[:6]}",
                            kafka_topic_partitions=6)
        ensure_topics(settings, CATALOGUE)
        ports = {"intake": free_port(), "mapper": free_port(), "record": free_port()}
        intake_tokens = {hashlib.sha256(BENCH_TOKEN.encode()).hexdigest(): {"sources": ["*"], "label": "e2e"}}
        record_tokens = {hashlib.sha256(READ_TOKEN.encode()).hexdigest(): {
            "scopes": ["system/*.read"], "clearances": ["behavioral-health", "part2"], "label": "e2e",
            "organization": "Organization/benchmark"}}
        env = {**os.environ, "CAREBUS_KAFKA_BOOTSTRAP": bootstrap, "CAREBUS_TOPIC_PREFIX": settings.topic_prefix,
               "CAREBUS_LOG_LEVEL": "WARNING", "CAREBUS_INTAKE_PORT": str(ports["intake"]),
               "CAREBUS_MAPPER_PORT": str(ports["mapper"]), "CAREBUS_RECORD_PORT": str(ports["record"]),
               "CAREBUS_MLLP_PORT": str(free_port()), "CAREBUS_INTAKE_TOKENS": json.dumps(intake_tokens),
               "CAREBUS_RECORD_TOKENS": json.dumps(record_tokens),
               "CAREBUS_RECORD_STORE_DSN": f"sqlite:///{workdir}/record.db"}
        log = workdir / "services.log"
        for name in ("intake", "mapper", "record"):
            processes.append(start(f"services.{name}", env, log))
        for name, port in ports.items():
            wait_ready(port, name)
        bundles = ArrivalClock(settings, FHIR_BUNDLES.name(settings.topic_prefix))
        alerts = ArrivalClock(settings, SAFETY_ALERTS.name(settings.topic_prefix))
        commits = ArrivalClock(settings, RECORD_CHANGES.name(settings.topic_prefix), change_focus)
        for clock in (bundles, alerts, commits):
            clock.start()
            clock.positioned.wait(30)

        count = int(args.rate * args.seconds)
        events = distinct_events(count, "e")
        targets = workdir / "targets.jsonl"
        write_targets(targets, f"http://127.0.0.1:{ports['intake']}/events", [orjson.dumps(e) for e in events],
                      "application/cloudevents+json")
        sampled = [event["id"] for event in events[:: args.sample]]
        reader = RecordReader(f"http://127.0.0.1:{ports['record']}", sampled, bundles, commits)
        reader.start()
        results = workdir / "results.bin"
        subprocess.run([str(vegeta), "attack", "-format=json", f"-targets={targets}", f"-rate={int(args.rate)}/s",  # noqa: S603
                        f"-duration={args.seconds}s", "-timeout=10s", f"-output={results}"], check=True)
        encoded = subprocess.run([str(vegeta), "encode", "-to=json", str(results)], check=True,  # noqa: S603
                                 capture_output=True).stdout
        accepted_at: dict[str, float] = {}
        other: dict[int, int] = {}
        for line in encoded.splitlines():
            result = json.loads(line)
            if result["code"] != 202:
                other[result["code"]] = other.get(result["code"], 0) + 1
                continue
            body = orjson.loads(base64.b64decode(result["body"]))
            start_s = vegeta_time(result["timestamp"])
            accepted_at[body["events"][0]["id"]] = start_s + result["latency"] / 1e9
        print(f"accepted {len(accepted_at)} of {count} offered; other answers by status (0: no answer): {other}",
              flush=True)
        reader.join(timeout=120)
        time.sleep(2)
        for clock in (bundles, alerts, commits):
            clock.stopping.set()
        readable = [t - accepted_at[e] for e, t in reader.readable_at.items() if e in accepted_at]
        to_bundle = [bundles.arrived[e] - t for e, t in accepted_at.items() if e in bundles.arrived]
        to_alert = [alerts.arrived[e] - t for e, t in accepted_at.items() if e in alerts.arrived]
        print(percentiles("202 -> bundle topic", to_bundle))
        print(percentiles("  (written)", [bundles.written[e] - t for e, t in accepted_at.items()
                                          if e in bundles.written]))
        print(percentiles("202 -> safety alert", to_alert))
        first_paths = {e: first_resource_path(b) for e, b in bundles.first_record.items()}
        to_commit = [commits.arrived[p] - accepted_at[e] for e, p in first_paths.items()
                     if p and p in commits.arrived and e in accepted_at]
        print(percentiles("202 -> committed in the record (its change feed)", to_commit))
        print(percentiles("  (written)", [commits.written[p] - accepted_at[e] for e, p in first_paths.items()
                     if p and p in commits.written and e in accepted_at]))
        print(percentiles(f"202 -> record API answers 200 (every {args.sample}th event)", readable))
        if reader.not_found_after_commit:
            print(f"{reader.not_found_after_commit} reads answered other than 200 after the change feed had the "
                  "resource")
        missing = len(accepted_at) - len(to_bundle)
        if missing:
            print(f"{missing} accepted events had no bundle within the run (dead-lettered or late)")
        one, five, fifteen = os.getloadavg()
        print(f"load average {one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min) at the end")
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=60)
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    main()
