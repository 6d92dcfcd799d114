"""Benchmark of the record service, on SQLite and on PostgreSQL.

    .venv/bin/python benchmarks/record_bench.py [--patients 1250] [--duration 20]

For each store it prints
  * store ingest: resources/s (median of --runs runs) through prepare (parse, resolve, hash, index) + one
    store transaction per 500 bundles, no Kafka;
  * Kafka ingest: resources/s from the bundle topic into an empty store by the service's own consumer thread
    (poll, merge, prepare, store, commit);
  * latency (p50 / p99 / max, open loop: measured from each request's scheduled start, so a slow server
    cannot hide its queueing) of the real service process (``python -m services.record``, uvicorn) under a
    steady request rate for
      - Patient/$everything of a person with 2,000 resources across 3 linked identities, whole record in one
        response (_count=2000), and its first page (_count=50);
      - a typical Observation search: patient (linked person) + code + _sort=-date, 20 per page.
Targets: ingest >= 3,000 resources/s; $everything p99 < 150 ms; search p99 < 30 ms.

Kafka: the broker CAREBUS_KAFKA_BOOTSTRAP names, else a local one started here. PostgreSQL: a local server
started here with default durability (fsync on). Nothing here asserts; it reports.
"""

from __future__ import annotations

import argparse
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
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devstack.local_broker import LocalKafkaBroker, free_port  # noqa: E402
from devstack.local_postgres import LocalPostgres  # noqa: E402
from services.common.kafka import RecordProducer, ensure_topics  # noqa: E402
from services.common.metrics import Metrics  # noqa: E402
from services.common.settings import RecordTokenGrant, Settings  # noqa: E402
from services.common.topics import CATALOGUE  # noqa: E402
from services.record.consumer import BundleIngestor  # noqa: E402
from services.record.identity import IdentityPolicy  # noqa: E402
from services.record.ingest import InboundBundle, prepare_bundle  # noqa: E402
from services.record.store import open_store  # noqa: E402
from tests.record.fhir_data import (  # noqa: E402
    CLINIC,
    HOSPITAL,
    SUD_PROGRAM,
    T0,
    Event,
    Source,
    full_record,
    patient,
    patient_id,
)

TOKEN = "bench-token"  # noqa: S105 - a throw-away token of the benchmark's own service


def ingest_events(patients: int) -> list[Event]:
    """A realistic stream: each patient registered, then four clinical events of ~4 resources each."""
    events: list[Event] = []
    sources = (CLINIC, HOSPITAL, SUD_PROGRAM)
    for n in range(patients):
        source = sources[n % 3]
        mrn = f"bench-{n:06d}"
        pid = patient_id(source, mrn)
        events.append(Event(source, mrn, [patient(source, mrn, family=f"Family{n % 997}")]))
        record = full_record(source, mrn, pid)
        for i in range(0, len(record), 4):
            events.append(Event(source, mrn, record[i:i + 4]))
    return events


def person_events(total: int = 2000) -> tuple[str, list[Event]]:
    """One person, three linked identities (shared enterprise id), ``total`` resources in all."""
    identities: list[tuple[Source, str]] = [(CLINIC, "p2k-c"), (HOSPITAL, "p2k-h"), (SUD_PROGRAM, "p2k-s")]
    events: list[Event] = []
    per_identity = total // 3
    remaining = total
    for index, (source, mrn) in enumerate(identities):
        pid = patient_id(source, mrn)
        events.append(Event(source, mrn, [patient(source, mrn, empi="EMPI-2000")]))
        count = per_identity - 1 if index < 2 else remaining - 1
        remaining -= count + 1
        resources: list[dict[str, Any]] = []
        week = 0
        while len(resources) < count:
            batch = full_record(source, f"{mrn}-{week}", pid, start=T0 - timedelta(days=7 * week))
            resources.extend(batch[: count - len(resources)])
            week += 1
        for i in range(0, len(resources), 10):
            events.append(Event(source, mrn, resources[i:i + 10]))
    return patient_id(CLINIC, "p2k-c"), events


def count_resources(events: list[Event]) -> int:
    return sum(len(e.resources) for e in events)


def store_ingest_rate(dsn: str, events: list[Event]) -> float:
    store = open_store(dsn, IdentityPolicy())
    try:
        records = [e.record("bench") for e in events]
        started = time.perf_counter()
        for i in range(0, len(records), 500):
            prepared = [
                prepare_bundle(InboundBundle(r.topic, 0, i + j, 1_700_000_000_000 + i + j, r.key, r.value,
                                             dict(r.headers)))
                for j, r in enumerate(records[i:i + 500])
            ]
            store.ingest(prepared)
        elapsed = time.perf_counter() - started
    finally:
        store.close()
    return count_resources(events) / elapsed


def kafka_ingest_rate(settings: Settings, dsn: str, events: list[Event], group: str) -> float:
    ensure_topics(settings, CATALOGUE)
    producer = RecordProducer(settings, "bench-producer", linger_ms=20, batch_size=262144)
    metas = producer.send_all_and_wait([e.record(settings.topic_prefix) for e in events])
    producer.close()
    last: dict[int, int] = {}
    for meta in metas:
        last[meta.partition] = max(meta.offset, last.get(meta.partition, -1))
    store = open_store(dsn, IdentityPolicy(frozenset(settings.record_enterprise_identifier_systems)))
    ingestor = BundleIngestor(settings, store, Metrics(), producer=None, group_id=group)
    started = time.perf_counter()
    ingestor.start()
    try:
        if not ingestor.wait_for(last.items(), timeout_s=900):
            raise RuntimeError("the consumer did not catch up")
        elapsed = time.perf_counter() - started
    finally:
        ingestor.stop()
        store.close()
    return count_resources(events) / elapsed


class ServiceProcess:
    def __init__(self, settings: Settings, dsn: str, group: str, workdir: Path) -> None:
        self.port = free_port()
        digest = hashlib.sha256(TOKEN.encode()).hexdigest()
        grant = RecordTokenGrant(scopes=["system/*.read"],
                                 clearances=["behavioral-health", "part2", "psychotherapy-notes"],
                                 organization="Organization/benchmark", label="bench")
        env = {
            **os.environ,
            "CAREBUS_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "CAREBUS_TOPIC_PREFIX": settings.topic_prefix,
            "CAREBUS_KAFKA_TOPIC_PARTITIONS": str(settings.kafka_topic_partitions),
            "CAREBUS_RECORD_PORT": str(self.port),
            "CAREBUS_RECORD_GROUP_ID": group,
            "CAREBUS_RECORD_STORE_DSN": dsn,
            "CAREBUS_RECORD_TOKENS": json.dumps({digest: grant.model_dump()}),
            "CAREBUS_RECORD_MAX_PAGE_SIZE": "2000",
            "CAREBUS_LOG_LEVEL": "WARNING",
        }
        self.log = (workdir / f"service-{self.port}.log").open("wb")
        self.process = subprocess.Popen([sys.executable, "-m", "services.record"], cwd=REPO, env=env,
                                        stdout=self.log, stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 120
        while True:
            if self.process.poll() is not None:
                raise RuntimeError("record service exited; see " + self.log.name)
            try:
                if httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("record service not ready")
            time.sleep(0.2)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)
        self.log.close()


def steady_load(url: str, params: dict[str, Any], rate: float, duration: float) -> dict[str, float]:
    """Open-loop load: request i is due at start + i/rate; latency counts from that due time."""
    total = int(rate * duration)
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    client = httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30,
                          limits=httpx.Limits(max_connections=64, max_keepalive_connections=64))
    for _ in range(5):  # warm up connections and caches
        client.get(url, params=params)
    start = time.perf_counter() + 0.2

    def one(i: int) -> None:
        nonlocal errors
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        response = client.get(url, params=params)
        _ = response.content
        done = time.perf_counter()
        with lock:
            if response.status_code != 200:
                errors += 1
            latencies.append((done - due) * 1000)

    with ThreadPoolExecutor(max_workers=32) as pool:
        list(pool.map(one, range(total)))
    client.close()
    ordered = sorted(latencies)
    return {
        "requests": total,
        "errors": errors,
        "p50": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "max": ordered[-1],
    }


def fresh_pg_dsn(server: LocalPostgres) -> str:
    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server.dsn(database=name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=1250)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of steady load per measurement")
    parser.add_argument("--everything-rate", type=float, default=5.0)
    parser.add_argument("--search-rate", type=float, default=50.0)
    parser.add_argument("--runs", type=int, default=3, help="ingest runs per store (the median is reported)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="carebus-bench-"))
    broker: LocalKafkaBroker | None = None
    bootstrap = os.environ.get("CAREBUS_KAFKA_BOOTSTRAP")
    if not bootstrap:
        broker = LocalKafkaBroker(REPO / ".cache", workdir=workdir / "kafka").start()
        bootstrap = broker.bootstrap
    postgres = LocalPostgres(durable=True).start()
    results: dict[str, dict[str, Any]] = {}
    try:
        stream = ingest_events(args.patients)
        person, person_stream = person_events(2000)
        print(f"data: {len(stream)} bundles / {count_resources(stream)} resources for ingest; "
              f"$everything person: {count_resources(person_stream)} resources across 3 identities", flush=True)
        for backend in ("sqlite", "postgresql"):
            def dsn(label: str, backend: str = backend) -> str:
                if backend == "sqlite":
                    return f"sqlite:///{workdir}/{label}-{uuid.uuid4().hex[:6]}.db"
                return fresh_pg_dsn(postgres)

            row: dict[str, Any] = {"load_before": os.getloadavg()}
            # ingest: the median of three runs, each into an empty store (the machine is shared)
            row["store_ingest_runs"] = [store_ingest_rate(dsn("store"), stream) for _ in range(args.runs)]
            row["store_ingest"] = statistics.median(row["store_ingest_runs"])
            runs = []
            for _ in range(args.runs):
                settings = Settings(kafka_bootstrap=bootstrap, topic_prefix=f"bench{uuid.uuid4().hex[:8]}",
                                    kafka_topic_partitions=3)
                group = f"bench-{uuid.uuid4().hex[:6]}"
                served = dsn("served")
                runs.append(kafka_ingest_rate(settings, served, [*person_stream, *stream], group))
            row["kafka_ingest_runs"] = runs
            row["kafka_ingest"] = statistics.median(runs)
            service = ServiceProcess(settings, served, group, workdir)
            try:
                everything = f"{service.base}/Patient/{person}/$everything"
                row["everything_all"] = steady_load(everything, {"_count": 2000}, args.everything_rate,
                                                    args.duration)
                row["everything_page"] = steady_load(everything, {"_count": 50}, args.search_rate / 2,
                                                     args.duration)
                row["search"] = steady_load(f"{service.base}/Observation",
                                            {"patient": person, "code": "http://loinc.org|44261-6",
                                             "_sort": "-date", "_count": 20},
                                            args.search_rate, args.duration)
                check = httpx.get(everything, params={"_count": 0},
                                  headers={"Authorization": f"Bearer {TOKEN}"}).json()
                row["everything_total"] = check["total"]
            finally:
                service.stop()
            row["load_after"] = os.getloadavg()
            results[backend] = row
            print(f"[{backend}] done", flush=True)
    finally:
        postgres.stop()
        if broker is not None:
            broker.stop()

    print()
    print(f"{'':34}{'SQLite':>22}{'PostgreSQL':>22}")
    print(f"{'store ingest (resources/s)':34}" + "".join(f"{r['store_ingest']:>22,.0f}" for r in results.values()))
    print(f"{'Kafka -> store ingest (res/s)':34}" + "".join(f"{r['kafka_ingest']:>22,.0f}" for r in results.values()))
    for key, label in (("everything_all", f"$everything 2,000 @{args.everything_rate:g}/s"),
                       ("everything_page", f"$everything page 50 @{args.search_rate / 2:g}/s"),
                       ("search", f"Observation search @{args.search_rate:g}/s")):
        cells = "".join(
            f"{r[key]['p50']:>9.1f} /{r[key]['p99']:>6.1f} ms" + (" ERR" if r[key]["errors"] else "    ")
            for r in results.values())
        print(f"{label + ' p50/p99':34}{cells}")
    print(f"{'$everything total (check)':34}" + "".join(f"{r['everything_total']:>22}" for r in results.values()))
    print(f"{'load average before/after':34}" + "".join(
        f"{r['load_before'][0]:>13.2f} / {r['load_after'][0]:<6.2f}" for r in results.values()))
    print(f"\nmachine: {os.cpu_count()} CPUs (shared); each ingest figure is the median of {args.runs} runs")
    print("targets: ingest >= 3,000 resources/s; $everything p99 < 150 ms; search p99 < 30 ms")
    print(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
