"""Soak: the real services under a steady load for a long time; memory, lag and latency, minute by minute.

    make soak                                             # 30 minutes at 50 events/s (installs vegeta first)
    .venv/bin/python -m benchmarks.soak --minutes 3 --rate 50 [--store postgres]

Starts its own Kafka broker (or uses CAREBUS_KAFKA_BOOTSTRAP) and, with ``--store postgres``, its own PostgreSQL;
runs intake, mapper and record as processes, as ``make demo`` does, logging JSON at INFO to files in a work
folder. The load is open-loop: vegeta (``go install github.com/tsenart/vegeta/v12``) POSTs single care events to
intake at a constant rate, whatever the answers' latency; the events are the sample care journey lived by
distinct people (devstack.journey.distinct_people_events), fed to vegeta as it asks for them. Every
``--sample-s`` seconds the script reads each service's resident memory (RSS, /proc; the broker's JVM too), the
mapper's and the record's consumer lag, and the end-to-end latency of one event (intake's 202 to the record API
serving the event's Provenance). It prints one line per minute and a summary; not a test (no assertion).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import secrets
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import httpx
import orjson

from devstack.journey import distinct_people_events
from devstack.local_broker import LocalKafkaBroker, free_port
from services.common.fhir_ids import resource_id
from services.common.kafka import ensure_topics
from services.common.settings import REPO_ROOT, Settings
from services.common.topics import CATALOGUE, DEAD_LETTERS, FHIR_BUNDLES, INBOUND_EVENTS
from services.operator.status import dead_letter_depth, group_lags

MAPPER_GROUP = "soak-mapper"
RECORD_GROUP = "soak-record"
SERVICES = {"intake": "CAREBUS_INTAKE_PORT", "mapper": "CAREBUS_MAPPER_PORT", "record": "CAREBUS_RECORD_PORT"}


def vegeta() -> str:
    built = Settings().cache_dir.resolve() / "tools" / "bin" / "vegeta"  # where `make soak` builds it
    found = str(built) if built.exists() else shutil.which("vegeta")
    if found is None:
        raise SystemExit("vegeta is needed: `make soak` builds it (go install github.com/tsenart/vegeta/v12)")
    return found


def rss_mb(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


@dataclass
class Minute:
    answers: dict[int, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    e2e_ms: list[float] = field(default_factory=list)
    rss: dict[str, float] = field(default_factory=dict)
    lag: dict[str, int] = field(default_factory=dict)


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.workdir = Path(tempfile.mkdtemp(prefix="carebus-soak-"))
        self.broker: LocalKafkaBroker | None = None
        self.postgres: Any = None
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.ports = {name: free_port() for name in SERVICES}
        self.intake_token = secrets.token_hex(16)
        self.record_token = secrets.token_hex(16)
        self.minutes: list[Minute] = []
        self.started = 0.0
        self.sent_at: dict[str, tuple[float, str]] = {}  # event id -> (handed to vegeta, source)
        self.recent: list[str] = []
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.settings: Settings | None = None
        self.dsn = ""

    # --- set-up -----------------------------------------------------------------------------------------

    def start(self) -> None:
        bootstrap = os.environ.get("CAREBUS_KAFKA_BOOTSTRAP")
        if not bootstrap:
            self.broker = LocalKafkaBroker(REPO_ROOT / ".cache", workdir=self.workdir / "kafka", heap="1g").start()
            bootstrap = self.broker.bootstrap
        self.settings = Settings(kafka_bootstrap=bootstrap, topic_prefix=f"soak{uuid.uuid4().hex[:6]}",
                                 kafka_topic_partitions=6)
        ensure_topics(self.settings, CATALOGUE)
        if self.args.store == "postgres":
            from devstack.local_postgres import LocalPostgres

            self.postgres = LocalPostgres(durable=True).start()
            self.dsn = self.postgres.dsn()
        else:
            self.dsn = f"sqlite:///{self.workdir / 'record.db'}"
        digest = hashlib.sha256
        env = {
            **os.environ,
            "CAREBUS_KAFKA_BOOTSTRAP": bootstrap,
            "CAREBUS_TOPIC_PREFIX": self.settings.topic_prefix,
            "CAREBUS_KAFKA_TOPIC_PARTITIONS": "6",
            "CAREBUS_MLLP_PORT": str(free_port()),
            "CAREBUS_MAPPER_GROUP_ID": MAPPER_GROUP,
            "CAREBUS_RECORD_GROUP_ID": RECORD_GROUP,
            "CAREBUS_RECORD_STORE_DSN": self.dsn,
            "CAREBUS_INTAKE_TOKENS": orjson.dumps({digest(self.intake_token.encode()).hexdigest(): {
                "sources": ["*"], "label": "soak"}}).decode(),
            "CAREBUS_RECORD_TOKENS": orjson.dumps({digest(self.record_token.encode()).hexdigest(): {
                "scopes": ["system/*.read"], "clearances": ["behavioral-health", "part2"], "label": "soak",
                "organization": "Organization/benchmark"}}).decode(),
            **{var: str(self.ports[name]) for name, var in SERVICES.items()},
        }
        for name in SERVICES:
            log = (self.workdir / f"{name}.log").open("ab")
            self.processes[name] = subprocess.Popen(  # noqa: S603 - this interpreter, a fixed module
                [sys.executable, "-m", f"services.{name}"], env=env, stdout=log, stderr=subprocess.STDOUT)
            log.close()
        for name in SERVICES:
            self._wait_ready(name)

    def _wait_ready(self, name: str) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.processes[name].poll() is not None:
                raise SystemExit(f"{name} exited; see {self.workdir / (name + '.log')}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.ports[name]}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise SystemExit(f"{name} not ready; see {self.workdir / (name + '.log')}")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        if self.broker is not None:
            self.broker.stop()
        if self.postgres is not None:
            self.postgres.stop()

    # --- load -------------------------------------------------------------------------------------------

    def targets(self, events: list[dict[str, Any]], sink: IO[bytes]) -> None:
        """Feed vegeta one JSON target per event as it reads them (-lazy): it asks only when it sends."""
        url = f"http://127.0.0.1:{self.ports['intake']}/events"
        header = {"Content-Type": ["application/cloudevents+json"], "Authorization": [f"Bearer {self.intake_token}"]}
        try:
            for event in events:
                body = orjson.dumps(event)
                sink.write(orjson.dumps({"method": "POST", "url": url, "header": header,
                                         "body": base64.b64encode(body).decode()}) + b"\n")
                sink.flush()  # blocks while vegeta has enough: the write time is about when it is sent
                with self.lock:
                    self.sent_at[str(event["id"])] = (time.monotonic(), str(event["source"]))
                    self.recent.append(str(event["id"]))
                    del self.recent[:-50]
        except (BrokenPipeError, ValueError):
            pass  # vegeta finished its duration
        finally:
            try:
                sink.close()
            except (BrokenPipeError, ValueError, OSError):
                pass

    def minute_of(self, at: float) -> Minute:
        index = int((at - self.started) // 60)
        with self.lock:
            while len(self.minutes) <= index:
                self.minutes.append(Minute())
            return self.minutes[index]

    def read_results(self, results: IO[bytes]) -> None:
        for line in results:
            result = orjson.loads(line)
            minute = self.minute_of(time.monotonic())
            code = int(result.get("code", 0))
            with self.lock:
                minute.answers[code] = minute.answers.get(code, 0) + 1
                if code == 202:
                    minute.latencies_ms.append(result["latency"] / 1e6)

    def sample(self) -> None:
        assert self.settings is not None
        groups = {MAPPER_GROUP: INBOUND_EVENTS.name(self.settings.topic_prefix),
                  RECORD_GROUP: FHIR_BUNDLES.name(self.settings.topic_prefix)}
        while not self.done.wait(self.args.sample_s):
            minute = self.minute_of(time.monotonic())
            rss = {name: rss_mb(process.pid) for name, process in self.processes.items()}
            rss["broker"] = rss_mb(self.broker.pid if self.broker is not None else None)
            try:
                lag = {("mapper" if g.group == MAPPER_GROUP else "record"): g.lag
                       for g in group_lags(self.settings, groups)}
            except Exception:  # a probe; the next one tries again
                lag = {}
            with self.lock:
                for name, value in rss.items():
                    minute.rss[name] = max(minute.rss.get(name, 0.0), value)
                for name, value in lag.items():
                    minute.lag[name] = max(minute.lag.get(name, 0), value)
            self.probe_end_to_end()

    def probe_end_to_end(self) -> None:
        """The latest event handed to vegeta: how long until the record serves its Provenance."""
        with self.lock:
            if not self.recent:
                return
            event_id = self.recent[-1]
            handed, source = self.sent_at[event_id]
        url = f"http://127.0.0.1:{self.ports['record']}/Provenance/{resource_id('Provenance', source, event_id)}"
        headers = {"Authorization": f"Bearer {self.record_token}"}
        deadline = handed + 60
        with httpx.Client(timeout=5) as client:
            while time.monotonic() < deadline and not self.done.is_set():
                try:
                    if client.get(url, headers=headers).status_code == 200:
                        elapsed = (time.monotonic() - handed) * 1000
                        minute = self.minute_of(handed)
                        with self.lock:
                            minute.e2e_ms.append(elapsed)
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.02)

    def run(self) -> None:
        args = self.args
        seconds = int(args.minutes * 60)
        events = distinct_people_events(int(args.rate * seconds * 1.05) + 100,
                                        datetime(2026, 1, 5, 9, 0, tzinfo=UTC) - timedelta(days=120))
        print(f"carebus soak  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  cores={os.cpu_count()}  "
              f"{args.minutes:g} min at {args.rate:g} events/s  store={args.store}  load: vegeta (open loop)  "
              f"events: {len({e['data']['patient_id'] for e in events})} distinct source patients", flush=True)
        print(f"work folder (service logs): {self.workdir}", flush=True)
        attack = subprocess.Popen(  # noqa: S603 - vegeta, fixed arguments
            [vegeta(), "attack", "-lazy", "-format=json", f"-rate={args.rate:g}/1s", f"-duration={seconds}s",
             "-timeout=30s", "-keepalive=true", "-max-workers=64"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        encode = subprocess.Popen([vegeta(), "encode", "--to", "json"],  # noqa: S603
                                  stdin=attack.stdout, stdout=subprocess.PIPE)
        assert attack.stdin is not None and encode.stdout is not None
        self.started = time.monotonic()
        feeder = threading.Thread(target=self.targets, args=(events, attack.stdin), daemon=True)
        reader = threading.Thread(target=self.read_results, args=(encode.stdout,), daemon=True)
        sampler = threading.Thread(target=self.sample, daemon=True)
        for thread in (feeder, reader, sampler):
            thread.start()
        printed = 0
        print("min  accepted/s  other  intake p50/p99 ms  end-to-end p50/p99 ms  lag mapper/record  "
              "RSS MB intake/mapper/record/broker", flush=True)
        while attack.poll() is None:
            time.sleep(1)
            complete = int((time.monotonic() - self.started) // 60)
            while printed < complete and printed < len(self.minutes):
                self.print_minute(printed)
                printed += 1
        encode.wait(timeout=60)
        reader.join(timeout=30)
        drain_started = time.monotonic()
        while time.monotonic() - drain_started < 120:  # the backlog after the load stops
            lags = [g.lag for g in group_lags(self.settings, {  # type: ignore[arg-type]
                MAPPER_GROUP: INBOUND_EVENTS.name(self.settings.topic_prefix),  # type: ignore[union-attr]
                RECORD_GROUP: FHIR_BUNDLES.name(self.settings.topic_prefix)})]  # type: ignore[union-attr]
            if not any(lags):
                break
            time.sleep(1)
        drained_s = time.monotonic() - drain_started
        self.done.set()
        sampler.join(timeout=90)
        while printed < len(self.minutes):
            self.print_minute(printed)
            printed += 1
        self.summary(drained_s)

    # --- figures ----------------------------------------------------------------------------------------

    def print_minute(self, index: int) -> None:
        m = self.minutes[index]
        accepted = m.answers.get(202, 0)
        other = sum(n for code, n in m.answers.items() if code != 202)
        rss = "/".join(f"{m.rss.get(n, 0):.0f}" for n in ("intake", "mapper", "record", "broker"))
        print(f"{index + 1:3d}  {accepted / 60:10.1f}  {other:5d}  "
              f"{percentile(m.latencies_ms, 0.5):7.1f} / {percentile(m.latencies_ms, 0.99):6.1f}  "
              f"{percentile(m.e2e_ms, 0.5):10.0f} / {percentile(m.e2e_ms, 0.99):6.0f}  "
              f"{m.lag.get('mapper', -1):8d} / {m.lag.get('record', -1):6d}  {rss}", flush=True)

    def summary(self, drained_s: float) -> None:
        assert self.settings is not None
        answers: dict[int, int] = {}
        latencies: list[float] = []
        e2e: list[float] = []
        for m in self.minutes:
            for code, n in m.answers.items():
                answers[code] = answers.get(code, 0) + n
            latencies.extend(m.latencies_ms)
            e2e.extend(m.e2e_ms)
        full = [m for m in self.minutes if m.rss]
        print("summary")
        print(f"  answers: {dict(sorted(answers.items()))}  (202 = durable in Kafka)")
        print(f"  intake latency p50 {statistics.median(latencies) if latencies else float('nan'):.1f} ms, "
              f"p99 {percentile(latencies, 0.99):.1f} ms, max {max(latencies, default=float('nan')):.1f} ms")
        print(f"  end to end (202 -> served by the record) p50 {percentile(e2e, 0.5):.0f} ms, "
              f"p99 {percentile(e2e, 0.99):.0f} ms over {len(e2e)} probes")
        if full:
            first, last = full[0].rss, full[-1].rss
            print("  RSS MB first minute -> last minute: " + ", ".join(
                f"{n} {first.get(n, 0):.0f} -> {last.get(n, 0):.0f}" for n in ("intake", "mapper", "record", "broker")))
            print(f"  max lag mapper {max(m.lag.get('mapper', 0) for m in full)}, "
                  f"record {max(m.lag.get('record', 0) for m in full)}; "
                  f"backlog drained {drained_s:.1f} s after the load")
        print(f"  dead letters: {dead_letter_depth(self.settings, 0)} "
              f"(topic {DEAD_LETTERS.name(self.settings.topic_prefix)})")
        if self.dsn.startswith("sqlite:///"):
            with sqlite3.connect(self.dsn.removeprefix("sqlite:///")) as conn:
                events, versions = conn.execute(
                    "SELECT (SELECT count(*) FROM resource_current WHERE resource_type = 'Provenance'), "
                    "(SELECT count(*) FROM resource_version)").fetchone()
            print(f"  record: {events} events (Provenances) for {answers.get(202, 0)} accepted, {versions} versions")
        one, five, fifteen = os.getloadavg()
        print(f"  load average {one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min) at the end")


def main(argv: Iterator[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=50.0, help="events per second (one event per POST)")
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--sample-s", type=float, default=10.0, help="seconds between RSS / lag / latency probes")
    args = parser.parse_args(list(argv) if argv is not None else None)
    soak = Soak(args)
    try:
        soak.start()
        soak.run()
    finally:
        soak.stop()


if __name__ == "__main__":
    main()
