"""Notify benchmark: events through intake at a steady rate, with active subscriptions, to a local receiver.

    .venv/bin/python -m benchmarks.notify_bench [--rate 200] [--seconds 30] [--subscriptions 100]

Runs the real services as processes (intake, mapper, record, notify; SQLite stores in a temp folder) on a local
broker (or CAREBUS_KAFKA_BOOTSTRAP), subscribes ``--subscriptions`` subscriptions (a mix: unfiltered system-level
ones on every topic, and patient-filtered ones on assessments, safety alerts and encounters), and posts the sample
care journey, replayed for distinct patients, one event per request at a steady rate with vegeta (open loop; built
from the Go module proxy by benchmarks/intake_bench.py). The 202's time is vegeta's request start plus its latency.
The receiver is its own process (uvicorn, a raw ASGI app that appends one line per notification).

Prints: notifications delivered per second; p50 / p99 latency from intake's 202 to the receiver's arrival, for the
assessment-completed notifications (their focus id is computable from the event, so each is matched to its 202);
notify's CPU per notification (user + system time of the notify process over the run / notifications).
With ``--outcomes`` the outcomes service runs too, and the script prints issue 15's latency from an assessment's
202 to its outcome change on ``carebus.outcomes.v1`` (matched by person, instrument and clinical date).
The 1-hour-outage recovery run is ``benchmarks/notify_recovery_bench.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import hashlib
import os
import secrets
import shutil
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

from benchmarks.e2e_bench import vegeta_time
from benchmarks.intake_bench import BENCH_TOKEN, vegeta_binary, write_targets
from devstack.journey import sample_care_journey
from devstack.local_broker import LocalKafkaBroker, free_port
from services.common.fhir_ids import resource_id
from services.common.kafka import ensure_topics
from services.common.settings import REPO_ROOT, Settings
from services.common.topics import CATALOGUE
from services.notify.subscriptions import EXT_FILTER, EXT_MAX_COUNT, EXT_PAYLOAD_CONTENT, EXT_SECRET
from services.notify.topics import TOPICS

TOKEN = "bench-subscriber-token"  # noqa: S105 - a local benchmark's token
SENDER_TOKEN = BENCH_TOKEN  # intake_bench's targets carry it
SECRET = secrets.token_hex(32)


# --- the receiver (its own process) -------------------------------------------------------------------------


def receiver_app(out_path: str) -> Any:
    out = open(out_path, "ab", buffering=0)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        arrived = time.time()
        bundle = orjson.loads(body)
        params = bundle["entry"][0]["resource"]["parameter"]
        kind = next(p["valueCode"] for p in params if p["name"] == "type")
        topic = next(p["valueCanonical"] for p in params if p["name"] == "topic").rsplit("/", 1)[1]
        for p in params:
            if p["name"] == "notification-event":
                parts = {part["name"]: part for part in p["part"]}
                focus = parts.get("focus", {}).get("valueReference", {}).get("reference", "")
                out.write(orjson.dumps([arrived, kind, topic, focus.rsplit("/", 1)[-1]]) + b"\n")
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    return app


def run_receiver(port: int, out_path: str) -> None:
    import uvicorn

    uvicorn.run(receiver_app(out_path), host="127.0.0.1", port=port, log_level="warning", access_log=False)


# --- the load -------------------------------------------------------------------------------------------------


def journey_mix(count: int) -> list[dict[str, Any]]:
    """The sample journey replayed for distinct people (every source id and the enterprise id made unique)."""
    journey = sample_care_journey(datetime(2026, 1, 5, 9, 0, tzinfo=UTC) - timedelta(days=1))
    events: list[dict[str, Any]] = []
    n = 0
    while len(events) < count:
        n += 1
        for template in journey:
            event = copy.deepcopy(template)
            event["id"] = f"{template['id']}-n{n}"
            for key, value in list(event["data"].items()):  # every source id: distinct resources per person
                if key.endswith("_id") and isinstance(value, str):
                    event["data"][key] = f"{value}-n{n}"
            for ident in event["data"].get("identifiers") or ():
                if ident.get("system") == "urn:carebus:empi":
                    ident["value"] = f"{ident['value']}-n{n}"
            events.append(event)
            if len(events) == count:
                break
    return events


def assessment_focus(event: dict[str, Any]) -> str | None:
    """The total-score Observation id an assessment event makes (services/mapper/mapping/assessment.py)."""
    if not event["type"].endswith("assessment.completed.v1"):
        return None
    from services.common.fhir.instruments import instrument_spec

    spec = instrument_spec(event["data"]["instrument"])
    return resource_id("Observation", event["source"], "assessment", event["data"]["assessment_id"], spec.total_loinc)


async def paced_posts(url: str, events: list[dict[str, Any]], rate: float) -> tuple[dict[str, float], int, float]:
    accepted_at: dict[str, float] = {}
    refused = 0
    interval = 1 / rate
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=128)) as client:
        async def one(event: dict[str, Any]) -> None:
            nonlocal refused
            try:
                response = await client.post(url, content=orjson.dumps(event),
                                             headers={"content-type": "application/cloudevents+json",
                                                      "authorization": f"Bearer {SENDER_TOKEN}"})
            except httpx.HTTPError:
                refused += 1
                return
            if response.status_code == 202:
                accepted_at[event["id"]] = time.time()
            else:
                refused += 1
        tasks = []
        start = time.perf_counter()
        for i, event in enumerate(events):
            delay = start + i * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(event)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    return accepted_at, refused, elapsed


def vegeta_posts(url: str, events: list[dict[str, Any]], rate: float,
                 folder: Path) -> tuple[dict[str, float], int, float]:
    """The load, offered by vegeta (open loop, benchmarks/intake_bench.py builds it): when each event's 202 came
    (vegeta's request start + its latency), how many were not accepted, and the attack's duration."""
    vegeta = vegeta_binary()
    targets = folder / "targets.jsonl"
    write_targets(targets, url, [orjson.dumps(e) for e in events], "application/cloudevents+json")
    results = folder / "results.bin"
    seconds = len(events) / rate
    started = time.perf_counter()
    subprocess.run([str(vegeta), "attack", "-format=json", f"-targets={targets}", f"-rate={int(rate)}/s",  # noqa: S603
                    f"-duration={seconds:.2f}s", "-timeout=10s", f"-output={results}"], check=True)
    elapsed = time.perf_counter() - started
    encoded = subprocess.run([str(vegeta), "encode", "-to=json", str(results)], check=True,  # noqa: S603
                             capture_output=True).stdout
    accepted_at: dict[str, float] = {}
    refused = 0
    for line in encoded.splitlines():
        result = orjson.loads(line)
        if result["code"] != 202:
            refused += 1
            continue
        body = orjson.loads(base64.b64decode(result["body"]))
        start_s = vegeta_time(result["timestamp"])
        accepted_at[body["events"][0]["id"]] = start_s + result["latency"] / 1e9
    return accepted_at, refused, elapsed


# --- where the time goes ------------------------------------------------------------------------------------


def topic_times(settings: Settings, topic: str, key_of: Any) -> dict[str, float]:
    """``key -> the Kafka timestamp (s)`` of every record of ``topic`` (the first one per key), read without a
    group after the run: when the mapper produced a bundle, when the record published a change."""
    from kafka import KafkaConsumer, TopicPartition

    from services.common.kafka import client_config

    consumer = KafkaConsumer(**client_config(settings, "notify-bench-stages"), group_id=None,
                             enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        found: dict[str, float] = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and any(consumer.position(tp) < ends[tp] for tp in partitions):
            for records in consumer.poll(timeout_ms=500, max_records=5000).values():
                for record in records:
                    key = key_of(record)
                    if key is not None:
                        found.setdefault(key, record.timestamp / 1000)
        return found
    finally:
        consumer.close()


def step_times(notify_url: str) -> dict[str, tuple[float, float, list[tuple[float, float]]]]:
    """notify's ``carebus_notify_step_seconds`` now: step -> (count, sum, cumulative buckets)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{notify_url}/metrics", timeout=10).text
    out: dict[str, tuple[float, float, list[tuple[float, float]]]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "carebus_notify_step_seconds":
            continue
        for sample in family.samples:
            step = sample.labels["step"]
            count, total, buckets = out.get(step, (0.0, 0.0, []))
            if sample.name.endswith("_count"):
                count = sample.value
            elif sample.name.endswith("_sum"):
                total = sample.value
            elif sample.name.endswith("_bucket"):
                buckets = [*buckets, (float(sample.labels["le"]), sample.value)]
            out[step] = (count, total, buckets)
    return out


def print_steps(before: dict[str, tuple[float, float, list[tuple[float, float]]]],
                after: dict[str, tuple[float, float, list[tuple[float, float]]]]) -> None:
    """Where notify's time went during the run: each step's count, mean and p99 (the upper bound of the bucket
    holding it), from notify's own histogram."""
    print("notify's steps over the run (mean, p99 <= bucket bound): ", end="")
    parts = []
    for step in ("number", "claim", "marks", "send", "audit"):
        if step not in after:
            continue
        count0, sum0, buckets0 = before.get(step, (0.0, 0.0, []))
        count1, sum1, buckets1 = after[step]
        count = count1 - count0
        if count <= 0:
            continue
        earlier = dict(buckets0)
        p99 = next((le for le, n in buckets1 if n - earlier.get(le, 0.0) >= 0.99 * count), float("inf"))
        parts.append(f"{step} {count:.0f}x {(sum1 - sum0) / count * 1000:.1f} ms, p99 <= {p99 * 1000:.0f} ms")
    print("; ".join(parts) or "none")


def percentiles(values: list[float]) -> str:
    if not values:
        return "none"
    ordered = sorted(values)
    p99 = ordered[max(int(len(ordered) * 0.99) - 1, 0)]
    return f"p50 {statistics.median(ordered) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms"


def numbered_times(notify_db: Path) -> dict[str, float]:
    """Observation id -> when notify numbered its events (s; the notify store's ``created_ms``)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(notify_db)) as conn:
        rows = conn.execute("SELECT resource_id, MIN(created_ms) FROM notify_event WHERE resource_type = "
                            "'Observation' GROUP BY resource_id").fetchall()
    return {rid: ms / 1000 for rid, ms in rows}


def print_stages(settings: Settings, accepted_at: dict[str, float], expected_foci: dict[str, str],
                 arrived: dict[str, float], numbered: dict[str, float]) -> None:
    """202 -> bundle on the bundle topic (intake + mapper) -> change on the change feed (record's ingest and
    commit) -> numbered in the notify store (notify's feed consumer) -> receiver (notify's delivery), for the
    matched assessment notifications (the first arrival of each)."""
    from services.common.topics import FHIR_BUNDLES, HEADER_INBOUND_EVENT_ID, RECORD_CHANGES

    prefix = settings.topic_prefix
    bundles = topic_times(settings, FHIR_BUNDLES.name(prefix), lambda r: next(
        (v.decode() for k, v in r.headers if k == HEADER_INBOUND_EVENT_ID), None))
    changes = topic_times(settings, RECORD_CHANGES.name(prefix), lambda r: (
        orjson.loads(r.value).get("id") if b'"Observation"' in r.value else None))
    to_bundle, to_change, to_receiver, to_numbered, numbered_to_receiver = [], [], [], [], []
    for focus, event_id in expected_foci.items():
        if event_id not in accepted_at or focus not in arrived:
            continue
        accepted = accepted_at[event_id]
        if event_id in bundles:
            to_bundle.append(bundles[event_id] - accepted)
        if focus in changes:
            to_change.append(changes[focus] - accepted)
            to_receiver.append(arrived[focus] - changes[focus])
            if focus in numbered:
                to_numbered.append(numbered[focus] - changes[focus])
        if focus in numbered:
            numbered_to_receiver.append(arrived[focus] - numbered[focus])
    print(f"  202 -> bundle on the bundle topic (intake, mapper):      {percentiles(to_bundle)}")
    print(f"  202 -> change on the change feed (+ record ingest):      {percentiles(to_change)}")
    print(f"  change on the feed -> receiver (notify):                  {percentiles(to_receiver)}")
    print(f"    of which change on the feed -> numbered (feed consumer): {percentiles(to_numbered)}")
    print(f"    and numbered -> receiver (delivery):                    {percentiles(numbered_to_receiver)}")


def print_outcome_latency(settings: Settings, load: list[dict[str, Any]], accepted_at: dict[str, float]) -> None:
    """202 of an assessment -> its outcome change (episode started, response, remission, deterioration) on the
    outcomes topic: the outcomes service's whole path (change feed, the person's history, the evaluation)."""
    from services.common.topics import OUTCOMES

    person_of: dict[str, str] = {}
    assessment_of: dict[tuple[str, str, str], str] = {}
    for event in load:
        person = event["id"].rsplit("-n", 1)[1]
        person_of[f"Patient/{resource_id('Patient', event['source'], event['data']['patient_id'])}"] = person
        if event["type"].endswith("assessment.completed.v1"):
            assessment_of[(person, event["data"]["instrument"], event["data"]["authored"][:10])] = event["id"]

    def key_of(record: Any) -> str | None:
        change = orjson.loads(record.value)
        person = person_of.get(str(change.get("patient")))
        event_id = assessment_of.get((person or "", str(change.get("instrument")), str(change.get("date"))))
        return event_id

    changes = topic_times(settings, OUTCOMES.name(settings.topic_prefix), key_of)
    latencies = [at - accepted_at[event_id] for event_id, at in changes.items() if event_id in accepted_at]
    print(f"latency assessment 202 -> outcome change on carebus.outcomes.v1 ({len(latencies)} changes): "
          f"{percentiles(latencies)}   (target p99 < 1000 ms)")


# --- the stack ------------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_ready(url: str, process: subprocess.Popen[bytes], name: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{name} exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{name} not ready")


def subscriptions(count: int, receiver: str, patients: list[str]) -> list[dict[str, Any]]:
    """About a third unfiltered (every topic in turn), the rest filtered on one patient each."""
    subs = []
    filtered_topics = ["assessment-completed", "safety-alert-raised", "encounter-started", "medication-prescribed"]
    for i in range(count):
        if i < count // 3:
            topic, filters = TOPICS[i % len(TOPICS)].name, []
        else:
            topic = filtered_topics[i % len(filtered_topics)]
            filters = [f"patient=Patient/{patients[i % len(patients)]}"]
        subs.append({
            "resourceType": "Subscription", "status": "requested", "reason": f"bench {i}",
            "criteria": f"https://carebus.dev/fhir/SubscriptionTopic/{topic}",
            "extension": [{"url": EXT_SECRET, "valueString": SECRET}],
            "_criteria": {"extension": [{"url": EXT_FILTER, "valueString": f} for f in filters]},
            "channel": {"type": "rest-hook", "endpoint": receiver, "payload": "application/fhir+json",
                        "extension": [{"url": EXT_MAX_COUNT, "valuePositiveInt": 20}],
                        "_payload": {"extension": [{"url": EXT_PAYLOAD_CONTENT, "valueCode": "id-only"}]}},
        })
    return subs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=200.0, help="events per second into intake")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the load lasts")
    parser.add_argument("--subscriptions", type=int, default=100)
    parser.add_argument("--outcomes", action="store_true", help="run the outcomes service too; print its latency")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (stores, logs, arrivals)")
    parser.add_argument("--receiver", nargs=2, metavar=("PORT", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver:
        run_receiver(int(args.receiver[0]), args.receiver[1])
        return

    print(f"carebus notify benchmark  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  cores={os.cpu_count()}", flush=True)
    folder = Path(tempfile.mkdtemp(prefix="notify-bench-"))
    broker = None
    bootstrap = os.environ.get("CAREBUS_KAFKA_BOOTSTRAP")
    if not bootstrap:
        broker = LocalKafkaBroker(REPO_ROOT / ".cache", workdir=folder / "kafka", heap="1g").start()
        bootstrap = broker.bootstrap
    ports = {name: free_port() for name in ("intake", "mapper", "record", "notify", "outcomes", "receiver", "mllp")}
    prefix = f"nb{uuid.uuid4().hex[:6]}"
    settings = Settings(kafka_bootstrap=bootstrap, topic_prefix=prefix, kafka_topic_partitions=6)
    ensure_topics(settings, CATALOGUE)
    grant = {"scopes": ["system/Subscription.write"], "clearances": ["behavioral-health", "part2"], "label": "bench",
             "organization": "Organization/benchmark"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREBUS_")}
    env.update({
        "PYTHONPATH": str(REPO_ROOT), "CAREBUS_KAFKA_BOOTSTRAP": bootstrap, "CAREBUS_TOPIC_PREFIX": prefix,
        "CAREBUS_LOG_LEVEL": "WARNING", "CAREBUS_INTAKE_PORT": str(ports["intake"]),
        "CAREBUS_MAPPER_PORT": str(ports["mapper"]), "CAREBUS_RECORD_PORT": str(ports["record"]),
        "CAREBUS_NOTIFY_PORT": str(ports["notify"]), "CAREBUS_MLLP_PORT": str(ports["mllp"]),
        "CAREBUS_OUTCOMES_PORT": str(ports["outcomes"]),
        "CAREBUS_RECORD_STORE_DSN": f"sqlite:///{folder}/record.db",
        "CAREBUS_NOTIFY_STORE_DSN": f"sqlite:///{folder}/notify.db",
        "CAREBUS_NOTIFY_ENDPOINT_ALLOWLIST": orjson.dumps([f"http://127.0.0.1:{ports['receiver']}/"]).decode(),
        "CAREBUS_RECORD_TOKENS": orjson.dumps({hashlib.sha256(TOKEN.encode()).hexdigest(): grant}).decode(),
        "CAREBUS_MLLP_RECALL_PER_PARTITION": "0",
        "CAREBUS_INTAKE_TOKENS": orjson.dumps({hashlib.sha256(SENDER_TOKEN.encode()).hexdigest():
                                               {"sources": ["*"], "label": "bench"}}).decode(),
    })
    arrivals = folder / "arrivals.jsonl"
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        processes["receiver"] = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "benchmarks.notify_bench", "--receiver", str(ports["receiver"]), str(arrivals)],
            env=env, cwd=REPO_ROOT)
        services = ("record", "notify", *(("outcomes",) if args.outcomes else ()), "mapper", "intake")
        for name in services:
            log = (folder / f"{name}.log").open("wb")
            processes[name] = subprocess.Popen([sys.executable, "-m", f"services.{name}"], env=env,  # noqa: S603
                                               stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        for name in services:
            wait_ready(f"http://127.0.0.1:{ports[name]}/readyz", processes[name], name)
        count = int(args.rate * args.seconds)
        events = journey_mix(count + 200)
        warmup, load = events[:200], events[200:]
        patient_refs = sorted({resource_id("Patient", e["source"], e["data"]["patient_id"]) for e in load})
        record = f"http://127.0.0.1:{ports['record']}"
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/fhir+json"}
        receiver_url = f"http://127.0.0.1:{ports['receiver']}/hooks"
        for sub in subscriptions(args.subscriptions, receiver_url, patient_refs):
            response = httpx.post(f"{record}/Subscription", content=orjson.dumps(sub), headers=headers, timeout=10)
            assert response.status_code == 201, response.text
        intake = f"http://127.0.0.1:{ports['intake']}/events"
        asyncio.run(paced_posts(intake, warmup, 50))
        time.sleep(5)
        arrivals.write_bytes(b"")
        notify_url = f"http://127.0.0.1:{ports['notify']}"
        steps_before = step_times(notify_url)
        cpu_before = cpu_seconds(processes["notify"].pid)
        cpu_at_start = {name: cpu_seconds(process.pid) for name, process in processes.items()}
        started = time.time()
        accepted_at, refused, elapsed = vegeta_posts(intake, load, args.rate, folder)
        print(f"load: {len(accepted_at)} events accepted in {elapsed:.1f} s ({len(accepted_at) / elapsed:.0f}/s), "
              f"{refused} refused; {args.subscriptions} subscriptions", flush=True)
        expected_foci = {focus: e["id"] for e in load if (focus := assessment_focus(e))}
        last_size, stable_since = -1, time.monotonic()
        while time.monotonic() - stable_since < 15:  # until nothing more arrives for 15 s
            size = arrivals.stat().st_size
            if size != last_size:
                last_size, stable_since = size, time.monotonic()
            time.sleep(0.5)
        cpu = cpu_seconds(processes["notify"].pid) - cpu_before
        cpu_used = {name: cpu_seconds(process.pid) - cpu_at_start[name] for name, process in processes.items()}
        lines = [orjson.loads(line) for line in arrivals.read_bytes().splitlines() if line]
        notifications = [line for line in lines if line[1] == "event-notification"]
        finished = max((line[0] for line in notifications), default=started)
        latencies = sorted(line[0] - accepted_at[expected_foci[line[3]]] for line in notifications
                           if line[2] == "assessment-completed" and line[3] in expected_foci
                           and expected_foci[line[3]] in accepted_at)
        print(f"delivered: {len(notifications)} event notifications in {finished - started:.1f} s "
              f"({len(notifications) / max(finished - started, 1e-9):.0f}/s)")
        if latencies:
            p50 = statistics.median(latencies) * 1000
            p99 = latencies[max(int(len(latencies) * 0.99) - 1, 0)] * 1000
            print(f"latency intake 202 -> receiver (assessment-completed, {len(latencies)} notifications): "
                  f"p50 {p50:.0f} ms, p99 {p99:.0f} ms   (target p99 < 1000 ms)")
        arrived: dict[str, float] = {}
        for line in notifications:
            if line[2] == "assessment-completed":
                arrived.setdefault(line[3], line[0])
        print_stages(settings, accepted_at, expected_foci, arrived, numbered_times(folder / "notify.db"))
        print_steps(steps_before, step_times(notify_url))
        if args.outcomes:
            print_outcome_latency(settings, load, accepted_at)
        print(f"notify CPU: {cpu:.1f} s for {len(notifications)} notifications = "
              f"{cpu / max(len(notifications), 1) * 1000:.2f} ms per notification")
        span = max(time.time() - started, 1e-9)
        print("CPU of each process over the run (s, and cores while the load and its drain lasted): " + ", ".join(
            f"{name} {used:.1f} ({used / span:.2f})" for name, used in cpu_used.items()))
        print(f"record CPU per accepted event: {cpu_used['record'] / max(len(accepted_at), 1) * 1000:.2f} ms")
        one, five, _ = os.getloadavg()
        print(f"load average at the end: {one:.1f} (1 min), {five:.1f} (5 min)")
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        if broker is not None:
            broker.stop()
        if args.keep or sys.exc_info()[0] is not None:
            print(f"the run's stores, logs and arrivals are in {folder}", flush=True)
        else:
            shutil.rmtree(folder, ignore_errors=True)  # the broker's log and the stores: hundreds of MB a run


if __name__ == "__main__":
    main()
