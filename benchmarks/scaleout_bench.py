"""Consumer scale-out benchmark: one against two mapper processes in one consumer group, and the mapper against
two ceilings measured in the same run.

    .venv/bin/python -m benchmarks.scaleout_bench [--events 100000]

1. one mapper process (``python -m services.mapper``) maps the events (distinct people) of a 6-partition inbound
   topic: events/s, from its first committed offset to its last
2. two mapper processes in one group over the same events (a group of their own): events/s together, and 2/1
3. ceiling A, kafka-python passthrough as the old benchmark ran it: consume -> produce the same bytes -> wait for
   every ack -> commit, then poll again (synchronous, no headers)
4. ceiling B, pipelined passthrough: consume -> produce the same bytes *with their headers*; the offsets of a batch
   are committed once its acks are in, while the next batches are already being read and sent
and the ratios of 1 and 2 to both ceilings. The broker runs on the same 2-core machine as everything else, so
the two mapper processes compete with it for the cores: the load average at the end says how busy it was.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from datetime import UTC, datetime
from pathlib import Path

from kafka import KafkaAdminClient, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from benchmarks.intake_bench import distinct_events
from benchmarks.pipeline_bench import bench_passthrough, load_inbound
from devstack.local_broker import LocalKafkaBroker, free_port
from services.common.kafka import RecordProducer, build_consumer, client_config, ensure_topics
from services.common.settings import REPO_ROOT, Settings
from services.common.topics import CATALOGUE, INBOUND_EVENTS, TopicSpec
from services.mapper.service import PRODUCER_TUNING


def committed_total(admin: KafkaAdminClient, group: str, topic: str) -> int:
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
    except KafkaError:  # the group does not exist yet
        return 0
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset > 0)


def bench_mappers(settings: Settings, processes: int, count: int, run: str) -> float:
    """events/s of ``processes`` mapper processes in one group, from the first commit to the last."""
    group = f"{settings.topic_prefix}-mappers-{run}"
    env = {**os.environ, "CAREBUS_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
           "CAREBUS_TOPIC_PREFIX": settings.topic_prefix, "CAREBUS_MAPPER_GROUP_ID": group,
           "CAREBUS_LOG_LEVEL": "WARNING", "CAREBUS_KAFKA_CREATE_TOPICS": "false"}
    mappers = [subprocess.Popen([sys.executable, "-m", "services.mapper"],
                                env={**env, "CAREBUS_MAPPER_PORT": str(free_port())},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(processes)]
    topic = INBOUND_EVENTS.name(settings.topic_prefix)
    admin = KafkaAdminClient(**client_config(settings, "bench-scaleout"))
    try:
        first_at, first, done = 0.0, 0, 0
        deadline = time.monotonic() + 600
        while done < count and time.monotonic() < deadline:
            assert all(m.poll() is None for m in mappers), "a mapper process exited"
            done = committed_total(admin, group, topic)
            if done and not first_at:
                first_at, first = time.perf_counter(), done
            time.sleep(0.2)
        if done < count:
            raise SystemExit(f"{processes} mapper(s) mapped only {done} of {count} events in 10 minutes")
        return (done - first) / (time.perf_counter() - first_at)
    finally:
        admin.close()
        for mapper in mappers:
            mapper.terminate()
        for mapper in mappers:
            mapper.wait(timeout=60)


def bench_pipelined_passthrough(settings: Settings, count: int, run: int = 0) -> float:
    """Consume -> produce the same bytes and headers; commit a batch's offsets once its acks are in, without
    waiting for them before reading on (at most ``in_flight`` batches outstanding)."""
    consumer = build_consumer(settings, "bench-pipe", f"{settings.topic_prefix}-pipe-{run}",
                              [INBOUND_EVENTS.name(settings.topic_prefix)])
    producer = RecordProducer(settings, "bench-pipe", **PRODUCER_TUNING)
    out = TopicSpec("passthrough-pipelined", "benchmark ceiling: the same bytes and headers out", "as inbound",
                    "application/octet-stream", ())
    ensure_topics(settings, [out])
    out_topic = out.name(settings.topic_prefix)
    kafka = producer._client()  # the raw client: headers are passed through as bytes, unchanged
    pending: deque[tuple[list[object], dict[TopicPartition, OffsetAndMetadata]]] = deque()
    in_flight = 8
    handled, started = 0, 0.0

    def settle(block: bool) -> None:
        while pending and (block or len(pending) >= in_flight or all(f.is_done for f in pending[0][0])):
            futures, offsets = pending.popleft()
            for future in futures:
                future.get(timeout=30)
            consumer.commit_async(offsets)

    while handled < count:
        polled = consumer.poll(timeout_ms=1000, max_records=500)
        if not polled:
            continue
        if not started:
            started = time.perf_counter()
        futures = [kafka.send(out_topic, value=r.value, key=r.key, headers=list(r.headers or []))
                   for records in polled.values() for r in records]
        pending.append((futures, {tp: OffsetAndMetadata(rs[-1].offset + 1, "", -1) for tp, rs in polled.items()}))
        handled += len(futures)
        settle(block=False)
    settle(block=True)
    rate = handled / (time.perf_counter() - started)
    consumer.commit()
    producer.close()
    consumer.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each ceiling (medians)")
    args = parser.parse_args()
    print(f"carebus consumer scale-out benchmark  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  cores={os.cpu_count()}",
          flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="scaleout-bench-"))
    broker = None
    bootstrap = os.environ.get("CAREBUS_KAFKA_BOOTSTRAP")
    if not bootstrap:
        broker = LocalKafkaBroker(REPO_ROOT / ".cache", workdir=workdir / "kafka", heap="1g").start()
        bootstrap = broker.bootstrap
    try:
        settings = Settings(kafka_bootstrap=bootstrap, topic_prefix=f"sbench{uuid.uuid4().hex[:6]}",
                            kafka_topic_partitions=6)
        ensure_topics(settings, CATALOGUE)
        events = distinct_events(args.events, "x")
        load_inbound(settings, events)
        print(f"{len(events)} events of {len({e['type'] for e in events})} types (distinct people) on 6 partitions",
              flush=True)
        one = bench_mappers(settings, 1, len(events), "one")
        print(f"1. one mapper process                    {one:10.0f} events/s", flush=True)
        two = bench_mappers(settings, 2, len(events), "two")
        print(f"2. two mapper processes, one group       {two:10.0f} events/s   2/1 = {two / one:.2f}", flush=True)
        sync = statistics.median(bench_passthrough(settings, len(events), run) for run in range(args.rounds))
        print(f"3. ceiling A, synchronous passthrough    {sync:10.0f} events/s   1/A = {one / sync:.3f}  "
              f"2/A = {two / sync:.3f}", flush=True)
        piped = statistics.median(bench_pipelined_passthrough(settings, len(events), run)
                                  for run in range(args.rounds))
        print(f"4. ceiling B, pipelined, with headers    {piped:10.0f} events/s   1/B = {one / piped:.3f}  "
              f"2/B = {two / piped:.3f}", flush=True)
        one_min, five, fifteen = os.getloadavg()
        print(f"load average {one_min:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min) at the end")
    finally:
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    main()
