"""The fault suite: real processes, a real broker and a real PostgreSQL, broken on purpose while care events flow.

One run, as an operator would see it: a Kafka broker of its own (KRaft, data in a workdir), a PostgreSQL of its
own, the mapper and the record service as processes (record on PostgreSQL), and a sender writing the sample
journeys of many distinct people to the inbound topic at a steady rate (retrying a batch that Kafka did not
acknowledge, as a sender retries after a 503). While it runs:

1. the mapper is killed (SIGKILL) mid-stream and started again;
2. poison records of each kind go onto the bundle topic between other patients' data (U+0000 in a name, an
   identifier PostgreSQL cannot index, bytes that are not JSON, a Bundle the record cannot apply), and one event
   with U+0000 in a family name comes in through the inbound topic;
3. the record service is killed (SIGKILL) mid-batch and started again;
4. the broker is killed (SIGKILL) and started again on its data;
5. PostgreSQL is stopped (immediate: like a crash) and started again on its data.

After recovery: every accepted event is in the record exactly once - the same resources, version counts and
contents as one clean in-process pass of the same events (Pipeline + a SQLite store) - every poison record has a
dead letter with a specific reason, both consumer groups' lag is 0, and no name reached a log.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from kafka.errors import KafkaError

from devstack.journey import JourneyPerson, people, person_journey
from devstack.local_broker import LocalKafkaBroker, free_port
from devstack.local_postgres import LocalPostgres
from services.common.errors import BrokerUnavailable
from services.common.events import parse_event, patient_key
from services.common.fhir_ids import resource_id
from services.common.kafka import OutboundRecord, RecordProducer, ensure_topics
from services.common.settings import REPO_ROOT, Settings
from services.common.topics import CATALOGUE, DEAD_LETTERS, FHIR_BUNDLES, HEADER_DEAD_LETTER_REASON, INBOUND_EVENTS
from services.intake.inbound import inbound_record
from services.mapper.pipeline import InboundRecord, Pipeline, TopicNames
from services.operator.status import group_lags
from services.record.identity import IdentityPolicy
from services.record.ingest import InboundBundle, prepare_bundle
from services.record.store import open_store
from tests.integration.test_processes import start, wait_ready
from tests.kafka_helpers import header, read_all
from tests.record.fhir_data import CLINIC, Event, patient, unique

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.faults]

PREFIX = "faults"
MAPPER_GROUP = "faults-mapper"
RECORD_GROUP = "faults-record"
CANARY = "Qzvcanaryfamilyname"
START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC) - timedelta(days=120)
RATE_EVENTS_PER_S = 40
BATCH = 20


class Sender(threading.Thread):
    """Writes the events to the inbound topic in batches at a steady rate, as intake would (acks=all); a batch
    Kafka did not acknowledge is sent again, whole, until it is. ``accepted``: what Kafka acknowledged."""

    def __init__(self, settings: Settings, events: list[dict[str, Any]]) -> None:
        super().__init__(name="fault-sender", daemon=True)
        self.settings = settings
        self.events = events
        self.accepted: list[dict[str, Any]] = []
        self.resent_batches = 0
        self.stop_after_current = threading.Event()
        self.error: BaseException | None = None

    def record(self, event: dict[str, Any]) -> OutboundRecord:
        key = patient_key(parse_event(event))
        return inbound_record(INBOUND_EVENTS.name(PREFIX), key, event, str(event["time"]), str(event["id"]))

    def run(self) -> None:
        producer = RecordProducer(self.settings, "fault-sender")
        try:
            for first in range(0, len(self.events), BATCH):
                if self.stop_after_current.is_set():
                    return
                batch = self.events[first : first + BATCH]
                began = time.monotonic()
                while True:
                    try:
                        producer.send_all_and_wait([self.record(e) for e in batch])
                        break
                    except (BrokerUnavailable, KafkaError):
                        self.resent_batches += 1  # part of it may be written: the resend must converge
                        time.sleep(0.5)
                self.accepted.extend(batch)
                time.sleep(max(0.0, BATCH / RATE_EVENTS_PER_S - (time.monotonic() - began)))
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            producer.close()


class Stack:
    """The broker, PostgreSQL, mapper and record processes of one run, with their logs."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.broker = LocalKafkaBroker(REPO_ROOT / ".cache", workdir=workdir / "kafka", heap="512m")
        self.postgres = LocalPostgres(durable=True)
        self.settings = Settings(kafka_bootstrap=self.broker.bootstrap, topic_prefix=PREFIX,
                                 kafka_topic_partitions=3, kafka_request_timeout_s=5.0)
        self.ports = {"mapper": free_port(), "record": free_port()}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def dsn(self) -> str:
        return self.postgres.dsn()

    def start(self) -> None:
        self.broker.start()
        self.postgres.start()
        ensure_topics(self.settings, CATALOGUE)
        for name in ("mapper", "record"):
            self.launch(name)
        for name in ("mapper", "record"):
            wait_ready(self.ports[name], self.processes[name])

    def launch(self, name: str) -> None:
        port_var = {"mapper": "CAREBUS_MAPPER_PORT", "record": "CAREBUS_RECORD_PORT"}[name]
        extra = {"CAREBUS_KAFKA_REQUEST_TIMEOUT_S": "5", "CAREBUS_MAPPER_GROUP_ID": MAPPER_GROUP,
                 "CAREBUS_RECORD_GROUP_ID": RECORD_GROUP, "CAREBUS_RECORD_STORE_DSN": self.dsn}
        self.processes[name] = start(f"services.{name}", self.settings, port_var, self.ports[name],
                                     log=self.workdir / f"{name}.log", **extra)

    def kill(self, name: str) -> None:
        process = self.processes[name]
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)

    def restart(self, name: str) -> None:
        self.launch(name)
        wait_ready(self.ports[name], self.processes[name], timeout_s=90)

    def logs(self) -> str:
        return "\n".join((self.workdir / f"{n}.log").read_text(errors="replace") for n in ("mapper", "record"))

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
        self.broker.stop()
        self.postgres.stop()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    running = Stack(tmp_path)
    try:
        running.start()
        yield running
    finally:
        running.close()


def provenances(dsn: str) -> int:
    """Events in the record so far (one Provenance each); -1 while the database cannot be asked."""
    try:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            row = conn.execute("SELECT count(*) FROM resource_current WHERE resource_type = 'Provenance'").fetchone()
            return int(row[0]) if row else 0
    except psycopg.Error:
        return -1


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def poison_bundles() -> dict[str, tuple[OutboundRecord, set[str]]]:
    """Bundle-topic records that can never be stored, by kind: the record and the dead-letter reasons allowed."""
    topic_prefix = PREFIX
    nul = Event(CLINIC, unique("poison-nul-"), [patient(CLINIC, unique("pn-"), family=CANARY + "\x00")])
    huge = Event(CLINIC, unique("poison-huge-"), [patient(CLINIC, unique("ph-"))])
    huge.resources[0]["identifier"].append({"system": "urn:x", "value": os.urandom(6000).hex()})
    broken = Event(CLINIC, unique("poison-json-"), [patient(CLINIC, unique("pj-"))])
    unapplicable = Event(CLINIC, unique("poison-apply-"), [patient(CLINIC, unique("pa-"))])
    bundle = unapplicable.bundle()
    bundle["entry"].append({"request": {"method": "DELETE", "url": "not a reference"}})
    broken_record = broken.record(topic_prefix)
    return {
        nul.event_id: (nul.record(topic_prefix), {"forbidden-character"}),
        huge.event_id: (huge.record(topic_prefix), {"store-refused"}),
        broken.event_id: (dataclasses.replace(broken_record, value=broken_record.value[:-7]), {"bad-bundle"}),
        unapplicable.event_id: (dataclasses.replace(unapplicable.record(topic_prefix), value=orjson.dumps(bundle)),
                                {"bad-bundle"}),
    }


def nul_event(person: JourneyPerson) -> dict[str, Any]:
    """A patient.registered whose family name holds U+0000 (issue 11's first report), for one more person."""
    registered = next(e for e in person_journey(person, START) if e["type"] == "org.carebus.patient.registered.v1")
    registered["data"]["name"]["family"] = CANARY + "\x00"
    registered["id"] = f"{registered['id']}-nul"
    return registered


def reference_record(events: list[dict[str, Any]], path: Path) -> dict[tuple[str, str], tuple[int, str]]:
    """One clean pass of the events, in the order sent, in process: (type, id) -> (versions, final content)."""
    pipeline = Pipeline(TopicNames.for_prefix(PREFIX))
    store = open_store(f"sqlite:///{path}", IdentityPolicy())
    try:
        bundles = []
        for offset, event in enumerate(events):
            inbound = InboundRecord(INBOUND_EVENTS.name(PREFIX), 0, offset, 1_767_000_000_000, b"k",
                                    orjson.dumps(event), (("ce_id", str(event["id"]).encode()),))
            outcome = pipeline.process(inbound)
            assert outcome.dead_letter_reason is None, (event["id"], outcome.dead_letter_reason)
            out = outcome.records[0]
            bundles.append(prepare_bundle(InboundBundle(FHIR_BUNDLES.name(PREFIX), 0, offset,
                                                        1_767_000_000_000 + offset, out.key, out.value,
                                                        dict(out.headers))))
        for first in range(0, len(bundles), 500):  # batches as the record's consumer takes them
            store.ingest(bundles[first : first + 500])
        return versions_of(store)
    finally:
        store.close()


def versions_of(store: Any) -> dict[tuple[str, str], tuple[int, str]]:
    found: dict[tuple[str, str], tuple[int, str]] = {}
    for row, content_hash in store.export_versions():
        found[(row.resource_type, row.id)] = (row.version_id, content_hash)
    return found


@pytest.mark.timeout(600)
def test_kills_and_outages_mid_stream_lose_nothing_store_everything_once_and_dead_letter_the_poison(
        stack: Stack, tmp_path: Path) -> None:
    crowd = people(200, seed=11)
    events = [e for person in crowd[:-1] for e in person_journey(person, START)]
    poison_event = nul_event(crowd[-1])
    events.insert(150, poison_event)  # early: the sender stops once the faults are over
    sender = Sender(stack.settings, events)
    sender.start()

    def progressed(by: int) -> Callable[[], bool]:
        base = max(provenances(stack.dsn), 0)
        return lambda: provenances(stack.dsn) >= base + by

    wait_for(progressed(100), "the first events in the record")
    stack.kill("mapper")  # 1. mid-stream: batches mapped and in flight are not committed
    stack.restart("mapper")

    poison = poison_bundles()  # 2. poison on the bundle topic, between other patients' data
    producer = RecordProducer(stack.settings, "fault-poisoner")
    producer.send_all_and_wait([record for record, _ in poison.values()])
    producer.close()

    wait_for(progressed(100), "progress after the mapper restart")
    stack.kill("record")  # 3. mid-batch: the store transaction is rolled back, no offset committed
    stack.restart("record")

    wait_for(progressed(100), "progress after the record restart")
    stack.broker.kill()  # 4. the broker crashes and comes back on its data
    time.sleep(1)
    stack.broker.start()
    assert stack.broker.reused

    wait_for(progressed(100), "progress after the broker restart")
    stack.postgres.halt("immediate")  # 5. the database crashes mid-ingest and comes back on its data
    time.sleep(3)
    stack.postgres.resume()

    wait_for(progressed(100), "progress after the PostgreSQL restart")
    sender.stop_after_current.set()
    sender.join(timeout=120)
    assert sender.error is None and not sender.is_alive(), (sender.error, sender.resent_batches,
                                                            stack.broker.pid, len(sender.accepted))
    # the producers it abandoned while the broker was down are closed too: no network thread is left reconnecting
    wait_for(lambda: not any(t.name == "fault-sender-network-thread" for t in threading.enumerate()),
             "the sender's Kafka network threads stopped", 30)
    accepted = sender.accepted
    assert len(accepted) > 500, "the faults should have happened while events flowed"
    assert any(e is poison_event for e in accepted)

    groups = {MAPPER_GROUP: INBOUND_EVENTS.name(PREFIX), RECORD_GROUP: FHIR_BUNDLES.name(PREFIX)}
    wait_for(lambda: all(g.lag == 0 for g in group_lags(stack.settings, groups)), "consumer lag 0", 180)

    good = [e for e in accepted if e is not poison_event]
    record_store = open_store(stack.dsn, IdentityPolicy())
    try:
        stored = versions_of(record_store)
    finally:
        record_store.close()
    expected = reference_record(good, tmp_path / "reference.db")
    for event in good:  # every accepted event is in the record, exactly once
        provenance = ("Provenance", resource_id("Provenance", str(event["source"]), str(event["id"])))
        assert stored.get(provenance, (0, ""))[0] == 1, event["id"]
    missing = sorted(set(expected) - set(stored))
    assert not missing, f"{len(missing)} resources missing, e.g. {missing[:3]}"
    assert {k: stored[k] for k in expected} == expected  # same versions and contents as one clean pass

    wanted = {poison_event["id"]} | set(poison)
    letters = read_all(stack.settings, DEAD_LETTERS.name(PREFIX),
                       until=lambda rs: {header(r, "ce_carebuseventid") for r in rs} >= wanted, timeout_s=60)
    reasons: dict[str, set[str]] = {}
    for letter in letters:
        reasons.setdefault(header(letter, "ce_carebuseventid") or "", set()).add(
            header(letter, HEADER_DEAD_LETTER_REASON) or "")
        body = orjson.loads(letter.value)
        assert CANARY.lower() not in (body["message"] + orjson.dumps(body["problems"]).decode()).lower()
    for event_id, (_, allowed) in poison.items():
        assert reasons.get(event_id) and reasons[event_id] <= allowed, (event_id, reasons.get(event_id))
    assert reasons.get(poison_event["id"]) and not reasons[poison_event["id"]] & {"unexpected-error", ""}

    logs = stack.logs()
    assert CANARY not in logs
    for person in crowd[:20]:
        assert f"{person.given[0]} {person.family}" not in logs and f'"{person.family}"' not in logs
