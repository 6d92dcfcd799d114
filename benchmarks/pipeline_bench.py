"""Core-pipeline benchmark: one run prints every figure of the README's pipeline table.

    .venv/bin/python -m benchmarks.pipeline_bench [--events 20000]

1. map + validate + serialize in one process (events/s, one core)
2. the same through the real broker: consume -> map -> produce -> commit, one mapper process
   (2 and 4 run alternately, --rounds times each, over the same 20,000 events; medians and their ratio)
3. naive baseline: build fhir.resources model objects and call model_dump_json
4. kafka-python passthrough (consume -> produce the same bytes -> commit): the ceiling of any Python stage
5. intake: single-event POSTs at a steady 200 requests/s; accepted events/s and p50/p99 latency
Starts its own local broker (or uses CAREBUS_KAFKA_BOOTSTRAP).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
from fhir.resources.R4B import get_fhir_model_class

from devstack.journey import distinct_people_events
from devstack.local_broker import LocalKafkaBroker, free_port
from services.common.events import parse_event, patient_key
from services.common.kafka import OutboundRecord, RecordProducer, build_consumer, ensure_topics
from services.common.log import configure_logging
from services.common.metrics import Metrics
from services.common.runtime import tune_gc
from services.common.settings import REPO_ROOT, Settings
from services.common.topics import CATALOGUE, INBOUND_EVENTS, TopicSpec
from services.mapper.mapping import map_event, serialize, validate_bundle
from services.mapper.pipeline import InboundRecord, Pipeline, TopicNames
from services.mapper.result import MappingContext
from services.mapper.service import PRODUCER_TUNING, MapperService

BENCH_TOKEN = "carebus-bench-sender"  # noqa: S105 - a local benchmark credential


def event_mix(count: int) -> list[dict[str, Any]]:
    """A realistic mix: the sample journey lived by distinct people (own ids, enterprise ids, names, birth dates;
    deterministic from a seed), 15 event types."""
    return distinct_people_events(count, datetime(2026, 1, 5, 9, 0, tzinfo=UTC) - timedelta(days=1))


def bench_in_process(events: list[dict[str, Any]]) -> tuple[float, float]:
    """(ours events/s, naive events/s) on the same events, one core."""
    context = MappingContext(received_at=datetime(2026, 1, 5, tzinfo=UTC))
    parsed = [parse_event(e) for e in events]
    for event in parsed[:500]:  # warm-up (imports, model classes, the element-validation cache)
        validate_bundle(map_event(event, context).bundle)
    started = time.perf_counter()
    for event in parsed:
        mapped = map_event(event, context)
        validate_bundle(mapped.bundle)
        serialize(mapped.bundle)
    ours = len(parsed) / (time.perf_counter() - started)

    naive_events = parsed[: max(200, len(parsed) // 10)]
    started = time.perf_counter()
    for event in naive_events:
        mapped = map_event(event, context)
        for entry in mapped.bundle["entry"]:
            resource = entry["resource"]
            get_fhir_model_class(resource["resourceType"]).model_validate(resource).model_dump_json()
    naive = len(naive_events) / (time.perf_counter() - started)
    return ours, naive


def bench_pipeline_records(events: list[dict[str, Any]]) -> float:
    """Pipeline.process (parse + map + validate + serialize + output records) from raw record bytes."""
    pipeline = Pipeline(TopicNames.for_prefix("bench"))
    records = [InboundRecord("bench.events.inbound.v1", 0, i, 1767600000000, b"k", orjson.dumps(e),
                             (("ce_id", e["id"].encode()), ("ce_type", e["type"].encode())))
               for i, e in enumerate(events)]
    started = time.perf_counter()
    for record in records:
        pipeline.process(record)
    return len(records) / (time.perf_counter() - started)


def load_inbound(settings: Settings, events: list[dict[str, Any]]) -> None:
    producer = RecordProducer(settings, "bench-loader", linger_ms=20, batch_size=256 * 1024)
    topic = INBOUND_EVENTS.name(settings.topic_prefix)
    records = [OutboundRecord(topic, patient_key(parse_event(e)), orjson.dumps(e),
                              {"ce_id": e["id"], "ce_type": e["type"]}) for e in events]
    for start in range(0, len(records), 5000):
        producer.send_all_and_wait(records[start:start + 5000])
    producer.close()


def bench_through_broker(settings: Settings, count: int, run: int = 0) -> float:
    service = MapperService(
        build_consumer(settings, "bench-mapper", f"{settings.topic_prefix}-mapper-{run}",
                       [INBOUND_EVENTS.name(settings.topic_prefix)]),
        RecordProducer(settings, "bench-mapper", **PRODUCER_TUNING),
        Pipeline(TopicNames.for_prefix(settings.topic_prefix)), Metrics())
    while service.run_once(timeout_ms=1000) == 0:  # wait for the assignment and first batch
        pass
    started = time.perf_counter()
    first = service.stats.consumed
    while service.stats.consumed < count:
        service.run_once(timeout_ms=1000)
    rate = (service.stats.consumed - first) / (time.perf_counter() - started)
    service.close()
    return rate


def bench_passthrough(settings: Settings, count: int, run: int = 0) -> float:
    from kafka.structs import OffsetAndMetadata

    consumer = build_consumer(settings, "bench-pass", f"{settings.topic_prefix}-pass-{run}",
                              [INBOUND_EVENTS.name(settings.topic_prefix)])
    producer = RecordProducer(settings, "bench-pass", **PRODUCER_TUNING)
    passthrough = TopicSpec("passthrough", "benchmark ceiling: the same bytes out", "as inbound",
                            "application/octet-stream", ())
    ensure_topics(settings, [passthrough])
    out_topic = passthrough.name(settings.topic_prefix)
    handled, started = 0, 0.0
    while handled < count:
        polled = consumer.poll(timeout_ms=1000, max_records=500)
        if not polled:
            continue
        if not started:
            started = time.perf_counter()
        outputs = [OutboundRecord(out_topic, (r.key or b"").decode(), r.value, {})
                   for records in polled.values() for r in records]
        producer.send_all_and_wait(outputs)
        consumer.commit({tp: OffsetAndMetadata(rs[-1].offset + 1, "", -1) for tp, rs in polled.items()})
        handled += len(outputs)
    rate = handled / (time.perf_counter() - started)
    producer.close()
    consumer.close()
    return rate


async def _paced_posts(url: str, events: list[dict[str, Any]], rate: float) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    accepted = 0
    interval = 1 / rate
    async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=64)) as client:
        async def one(event: dict[str, Any]) -> None:
            nonlocal accepted
            t0 = time.perf_counter()
            response = await client.post(url, content=orjson.dumps(event),
                                         headers={"content-type": "application/cloudevents+json",
                                                  "authorization": f"Bearer {BENCH_TOKEN}"})
            latencies.append(time.perf_counter() - t0)
            accepted += response.status_code == 202
        tasks = []
        start = time.perf_counter()
        for i, event in enumerate(events):
            delay = start + i * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(event)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    return latencies, accepted, elapsed


def bench_intake(settings: Settings, events: list[dict[str, Any]], rate: float) -> tuple[float, float, float]:
    port = free_port()
    env = {**os.environ, "CAREBUS_KAFKA_BOOTSTRAP": settings.kafka_bootstrap, "CAREBUS_INTAKE_PORT": str(port),
           "CAREBUS_TOPIC_PREFIX": settings.topic_prefix, "CAREBUS_LOG_LEVEL": "WARNING",
           "CAREBUS_MLLP_PORT": str(free_port()), "CAREBUS_INTAKE_TOKENS": orjson.dumps(
               {hashlib.sha256(BENCH_TOKEN.encode()).hexdigest(): {"sources": ["*"], "label": "bench"}}).decode()}
    server = subprocess.Popen([sys.executable, "-m", "services.intake"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        asyncio.run(_paced_posts(f"{url}/events", events[:100], rate))  # warm-up
        latencies, accepted, elapsed = asyncio.run(_paced_posts(f"{url}/events", events[100:], rate))
    finally:
        server.terminate()
        server.wait(timeout=20)
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
    return accepted / elapsed, p50, p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20000, help="events through the broker stages")
    parser.add_argument("--intake-seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=5, help="alternating runs of stages 2 and 4 (medians)")
    args = parser.parse_args()

    # log as the services do (JSON, INFO: one lineage line per event), to /dev/null
    configure_logging("bench", "INFO", open(os.devnull, "w"))
    tune_gc()  # as the services do at start-up
    print(f"carebus pipeline benchmark  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  cores={os.cpu_count()}  "
          f"python={sys.version.split()[0]}", flush=True)
    events = event_mix(args.events)
    types = {e["type"] for e in events}
    people = len({(e["source"], e["data"]["patient_id"]) for e in events})
    print(f"event mix: {len(events)} events of {len(types)} types (the sample care journey lived by distinct people: "
          f"{people} source patients)", flush=True)

    ours, naive = bench_in_process(events[:5000])
    print(f"1. map+validate+serialize, in process      {ours:10.0f} events/s", flush=True)
    print(f"   (with record parse + Kafka records)      {bench_pipeline_records(events[:5000]):10.0f} events/s")
    print(f"3. naive: model objects + model_dump_json  {naive:10.0f} events/s   ratio 1/3 = {ours / naive:.1f}x")

    broker = None
    bootstrap = os.environ.get("CAREBUS_KAFKA_BOOTSTRAP")
    if not bootstrap:
        broker = LocalKafkaBroker(REPO_ROOT / ".cache", workdir=Path(tempfile.mkdtemp(prefix="bench-kafka-")),
                                  heap="1g").start()
        bootstrap = broker.bootstrap
    try:
        settings = Settings(kafka_bootstrap=bootstrap, topic_prefix=f"bench{uuid.uuid4().hex[:6]}",
                            kafka_topic_partitions=6)
        ensure_topics(settings, CATALOGUE)
        load_inbound(settings, events)
        # (2) and (4) alternate, each run reading all the events again: a shared machine's other work then
        # weighs on both alike, and the medians are compared
        throughs, ceilings = [], []
        for run in range(args.rounds):
            throughs.append(bench_through_broker(settings, len(events), run))
            ceilings.append(bench_passthrough(settings, len(events), run))
        through, ceiling = statistics.median(throughs), statistics.median(ceilings)
        print(f"2. through Kafka, one mapper process       {through:10.0f} events/s   (median of "
              f"{', '.join(f'{t:.0f}' for t in throughs)})")
        print(f"4. kafka-python passthrough (ceiling)      {ceiling:10.0f} events/s   (median of "
              f"{', '.join(f'{c:.0f}' for c in ceilings)})")
        print(f"   ratio 2/4 = {through / ceiling:.3f}  (per round: "
              f"{', '.join(f'{t / c:.2f}' for t, c in zip(throughs, ceilings, strict=True))})")
        rate = 200.0
        intake_events = event_mix(int(rate * args.intake_seconds) + 100)
        for e in intake_events:
            e["id"] = f"{e['id']}-i"
        accepted, p50, p99 = bench_intake(settings, intake_events, rate)
        print(f"5. intake at a steady {rate:.0f} req/s: {accepted:.0f} accepted events/s, "
              f"p50 {p50:.1f} ms, p99 {p99:.1f} ms")
        one, five, fifteen = os.getloadavg()  # the machine may be shared: how busy it was
        print(f"load average {one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min) at the end")
    finally:
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    main()
