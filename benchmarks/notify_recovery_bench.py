"""Notify recovery benchmark: a subscriber down for the equivalent of an hour of traffic, then back.

    .venv/bin/python -m benchmarks.notify_recovery_bench [--scale 0.05] [--rate 200] [--max-count 20]

The hour at ``--rate`` events/s (720,000 assessment changes at 200/s) is scaled by ``--scale`` (0.05: 36,000
changes, the outage 3 minutes of real time; ``--scale 1`` is the full hour; ``--scale 0.05 --rate 4000`` builds the
whole hour's backlog at 200/s, 720,000 changes, in minutes instead of an hour). What it runs:

* the real notify process (SQLite store in a temp folder) on a local broker (or CAREBUS_KAFKA_BOOTSTRAP), with its
  retry clock sped up by 1 / scale, so the outage lasts an hour on the retry clock (backoff 1 s doubling to
  600 s, as shipped: after an hour down the next retry is up to 10 retry-clock minutes away);
* one subscription (assessment-completed, unfiltered, id-only, ``--max-count`` events per notification) to a
  local receiver in its own process (uvicorn, raw ASGI; it appends each event number and focus to a file);
* the changes are real change-feed messages: PHQ-9 totals for ``--patients`` patients ingested into a record
  store through the record's own prepare + store path, its change outbox published to the change topic as the
  record service does, paced at the scaled rate while the receiver is down.

Prints: the backlog when the receiver comes back, the wait until the first retry reached it, the time to drain,
notifications and events per second while draining, and the checks: every event number exactly once (ignoring
a repeat of a notification that was in flight), none missing, each patient's events in commit order. Nothing
here asserts a time; the script exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import os
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

from devstack.local_broker import LocalKafkaBroker, free_port
from services.common.kafka import RecordProducer, ensure_topics
from services.common.security_labels import PSYCHIATRIC, meta_security
from services.common.settings import REPO_ROOT, Settings
from services.common.topics import CATALOGUE, RECORD_CHANGES
from services.notify.store import open_notify_store
from services.notify.subscriptions import EXT_MAX_COUNT, EXT_PAYLOAD_CONTENT, parse_subscription
from services.notify.topics import TOPIC_BASE
from services.record.changes import change_records
from services.record.ingest import InboundBundle, prepare_bundle
from services.record.store import identity_policy, open_store

SOURCE = "urn:carebus:bench:recovery"


def receiver_app(out_path: str) -> Any:
    out = open(out_path, "ab", buffering=0)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        arrived = time.time()
        if not body:  # the bench's own "are you listening" probe
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        params = orjson.loads(body)["entry"][0]["resource"]["parameter"]
        kind = next(p["valueCode"] for p in params if p["name"] == "type")
        lines = b""
        for p in params:
            if p["name"] == "notification-event":
                parts = {part["name"]: part for part in p["part"]}
                focus = parts.get("focus", {}).get("valueReference", {}).get("reference", "")
                lines += orjson.dumps([arrived, kind, int(parts["event-number"]["valueString"]), focus]) + b"\n"
        if kind == "event-notification":
            out.write(lines or orjson.dumps([arrived, kind, 0, ""]) + b"\n")
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    return app


def _bundle(n: int, patient: int) -> bytes:
    pid = f"rec-{patient:05d}"
    observation = {
        "resourceType": "Observation", "id": f"{pid}-phq-{n:07d}", "meta": {"security": meta_security(PSYCHIATRIC)},
        "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": "44261-6"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": (datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=n)).isoformat(),
        "valueQuantity": {"value": n % 28, "unit": "{score}", "system": "http://unitsofmeasure.org",
                          "code": "{score}"}}
    patient_resource = {"resourceType": "Patient", "id": pid, "identifier": [{"system": SOURCE, "value": pid}]}
    entries = [{"fullUrl": f"urn:uuid:{pid}", "resource": patient_resource},
               {"fullUrl": f"urn:uuid:{observation['id']}", "resource": observation}]
    return orjson.dumps({"resourceType": "Bundle", "id": f"b-{n}", "type": "collection", "entry": entries})


def wait(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise SystemExit(f"gave up waiting for {what}")


def start_receiver(port: int, out: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-m", "benchmarks.notify_recovery_bench", "--receiver",  # noqa: S603
                                str(port), str(out)], env=env, cwd=REPO_ROOT)
    wait(lambda: _listening(port), 30, "the receiver")
    return process


def _listening(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
        return True
    except httpx.HTTPError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=0.05, help="fraction of the hour (1 = the full hour)")
    parser.add_argument("--rate", type=float, default=200.0, help="events per second of the traffic")
    parser.add_argument("--patients", type=int, default=2000)
    parser.add_argument("--max-count", type=int, default=20, help="events per notification (backport-max-count)")
    parser.add_argument("--receiver", nargs=2, metavar=("PORT", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver:
        import uvicorn

        uvicorn.run(receiver_app(args.receiver[1]), host="127.0.0.1", port=int(args.receiver[0]),
                    log_level="warning", access_log=False)
        return

    count = int(3600 * args.rate * args.scale)
    outage_s = 3600 * args.scale
    print(f"carebus notify recovery benchmark  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  cores={os.cpu_count()}  "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    print(f"the hour scaled by {args.scale}: {count:,} changes at {args.rate:.0f}/s over {outage_s:.0f} s real "
          f"(retry clock x{1 / args.scale:.0f}: one hour down), {args.patients:,} patients, "
          f"max-count {args.max_count}", flush=True)
    folder = Path(tempfile.mkdtemp(prefix="notify-recovery-"))
    broker = None
    bootstrap = os.environ.get("CAREBUS_KAFKA_BOOTSTRAP")
    if not bootstrap:
        broker = LocalKafkaBroker(REPO_ROOT / ".cache", workdir=folder / "kafka", heap="1g").start()
        bootstrap = broker.bootstrap
    prefix = f"nr{uuid.uuid4().hex[:6]}"
    settings = Settings(kafka_bootstrap=bootstrap, topic_prefix=prefix, kafka_topic_partitions=6,
                        record_store_dsn=f"sqlite:///{folder}/record.db")
    ensure_topics(settings, CATALOGUE)
    ports = {"notify": free_port(), "receiver": free_port()}
    notify_dsn = f"sqlite:///{folder}/notify.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAREBUS_")}
    env.update({
        "PYTHONPATH": str(REPO_ROOT), "CAREBUS_KAFKA_BOOTSTRAP": bootstrap, "CAREBUS_TOPIC_PREFIX": prefix,
        "CAREBUS_LOG_LEVEL": "WARNING", "CAREBUS_NOTIFY_PORT": str(ports["notify"]),
        "CAREBUS_NOTIFY_STORE_DSN": notify_dsn, "CAREBUS_NOTIFY_RETRY_TIME_SCALE": str(1 / args.scale),
        "CAREBUS_NOTIFY_ENDPOINT_ALLOWLIST": orjson.dumps([f"http://127.0.0.1:{ports['receiver']}/"]).decode(),
    })
    arrivals = folder / "arrivals.jsonl"
    arrivals.write_bytes(b"")
    processes: dict[str, subprocess.Popen[bytes]] = {}
    store = open_notify_store(notify_dsn)
    record = open_store(str(settings.record_store_dsn), identity_policy(settings))
    producer = RecordProducer(settings, "recovery-bench")
    try:
        with (folder / "notify.log").open("wb") as log:
            processes["notify"] = subprocess.Popen([sys.executable, "-m", "services.notify"], env=env,
                                                   stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        wait(lambda: _listening(ports["notify"]), 90, "notify")
        processes["receiver"] = start_receiver(ports["receiver"], arrivals, env)
        resource = {
            "resourceType": "Subscription", "status": "requested", "reason": "recovery bench",
            "criteria": TOPIC_BASE + "assessment-completed",
            "channel": {"type": "rest-hook", "endpoint": f"http://127.0.0.1:{ports['receiver']}/hooks",
                        "payload": "application/fhir+json",
                        "extension": [{"url": EXT_MAX_COUNT, "valuePositiveInt": args.max_count}],
                        "_payload": {"extension": [{"url": EXT_PAYLOAD_CONTENT, "valueCode": "id-only"}]}}}
        sub = parse_subscription(resource, allowlist=[f"http://127.0.0.1:{ports['receiver']}/"], client="bench",
                                 clearances=1, patient=None)
        store.create(sub)
        wait(lambda: (s := store.get(sub.id)) is not None and s.status == "active", 60, "the handshake")
        processes.pop("receiver").terminate()  # the subscriber goes down
        print("subscriber down; the traffic of the outage goes through the record's change feed ...", flush=True)
        topic = RECORD_CHANGES.name(prefix)
        order: dict[str, list[str]] = {}  # patient -> focus ids in commit order
        started = time.monotonic()
        chunk = max(1, int(args.rate))  # one second of traffic per store commit
        for first in range(0, count, chunk):
            batch = []
            for n in range(first, min(first + chunk, count)):
                patient = n % args.patients
                batch.append(prepare_bundle(InboundBundle("bench", 0, n, 1_700_000_000_000 + n, SOURCE,
                                                          _bundle(n, patient), {"ce_id": f"recovery-{n}"})))
                order.setdefault(f"rec-{patient:05d}", []).append(f"rec-{patient:05d}-phq-{n:07d}")
            record.ingest(batch)
            while rows := record.pending_changes(5000):
                producer.send_all_and_wait(change_records(topic, rows))
                record.forget_changes(rows[-1].seq)
            ahead = started + (first + chunk) / args.rate - time.monotonic()  # paced at the traffic's rate
            if ahead > 0:
                time.sleep(ahead)
        published = time.monotonic() - started
        wait(lambda: (s := store.get(sub.id)) is not None and s.events_since_start >= count, 600,
             "notify to number every change")
        numbered_after = time.monotonic() - started
        left = max(0.0, outage_s - numbered_after)
        time.sleep(left)  # the rest of the outage
        print(f"published {count:,} changes in {published:.1f} s; notify had numbered them all "
              f"{numbered_after:.1f} s after the first; outage {max(outage_s, numbered_after):.0f} s real", flush=True)
        backlog = next((b for b in store.backlog() if b.subscription_id == sub.id), None)
        print(f"backlog when the subscriber comes back: {backlog.pending if backlog else 0:,} pending events, "
              f"{backlog.dead if backlog else 0} dead letters", flush=True)
        back = time.time()
        processes["receiver"] = start_receiver(ports["receiver"], arrivals, env)
        wait(lambda: arrivals.stat().st_size > 0, 3600, "the first retry")
        lines: list[list[Any]] = []
        seen: set[int] = set()
        read_to = 0
        report_at = time.monotonic() + 30

        def drained() -> bool:  # reads only what the receiver appended since the last look (whole lines)
            nonlocal read_to, report_at
            with arrivals.open("rb") as f:
                f.seek(read_to)
                tail = f.read()
            complete = tail[: tail.rfind(b"\n") + 1]
            read_to += len(complete)
            for line in complete.splitlines():
                if line:
                    lines.append(orjson.loads(line))
                    seen.add(lines[-1][2])
            if time.monotonic() >= report_at:  # progress on a drain that can take many minutes
                report_at += 30
                print(f"  ... {len(seen):,} of {count:,} events delivered", flush=True)
            return len(seen) >= count

        wait(drained, 3 * 3600, "the backlog to drain")
        first_at = min(line[0] for line in lines)
        last_at = max(line[0] for line in lines)
        requests = len({line[0] for line in lines})  # the lines of one notification share its arrival time
        print(f"first notification {first_at - back:.1f} s after the subscriber came back "
              f"({(first_at - back) / args.scale:.0f} s on the retry clock)")
        print(f"drained {count:,} events in {last_at - first_at:.1f} s: {count / max(last_at - first_at, 1e-9):,.0f} "
              f"events/s, about {requests:,} notifications ({requests / max(last_at - first_at, 1e-9):,.0f}/s)")
        numbers = [line[2] for line in lines]
        missing = set(range(1, count + 1)) - set(numbers)
        repeats = len(numbers) - len(set(numbers))
        focus_of = {line[2]: line[3].rsplit("/", 1)[1] for line in lines}
        delivered: dict[str, list[str]] = {}
        for number in sorted(focus_of):  # each patient's foci in event-number order
            focus = focus_of[number]
            delivered.setdefault(focus.rsplit("-phq-", 1)[0], []).append(focus)
        out_of_order = sum(delivered.get(patient) != commits for patient, commits in order.items())
        print(f"checks: missing {len(missing)}, repeated {repeats}, patients out of commit order {out_of_order} "
              f"(of {len(order):,})")
        print(f"load average at the end: {os.getloadavg()[0]:.1f}")
        if missing or out_of_order:
            sys.exit(1)
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        producer.close()
        store.close()
        record.close()
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    main()
