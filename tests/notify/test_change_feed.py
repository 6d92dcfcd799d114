"""The record's change feed on a real broker: one message per committed version, after the store commit, and
none lost when the record stops between its store commit and the publish, when Kafka refuses the writes, or
when the outbox has run empty between two changes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry, Counter

from services.common.errors import BrokerUnavailable
from services.common.kafka import RecordProducer, client_config
from services.common.settings import Settings
from services.common.topics import RECORD_CHANGES
from services.record.change_publisher import ChangePublisher
from services.record.consumer import inbound
from services.record.ingest import InboundBundle, prepare_bundle
from services.record.store import identity_policy, open_store
from tests.record.conftest import RecordHarness, harness_settings
from tests.record.fhir_data import CLINIC, HOSPITAL, Event, encounter, patient, patient_id, phq9_total, unique


def read_changes(settings: Settings, wanted: int, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    topic = RECORD_CHANGES.name(settings.topic_prefix)
    consumer = KafkaConsumer(**client_config(settings, "test-change-reader"), enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and len(out) < wanted:
            for records in consumer.poll(timeout_ms=300).values():
                out.extend({"key": r.key.decode(), **orjson.loads(r.value)} for r in records)
        time.sleep(0.5)  # anything beyond what was wanted would show up now
        for records in consumer.poll(timeout_ms=500).values():
            out.extend({"key": r.key.decode(), **orjson.loads(r.value)} for r in records)
        return out
    finally:
        consumer.close()


def test_each_committed_version_is_published_once_with_person_and_labels(kafka_bootstrap: str,
                                                                          tmp_path: Path) -> None:
    settings = harness_settings(kafka_bootstrap)
    harness = RecordHarness(settings, f"sqlite:///{tmp_path}/record.db", "sqlite")
    try:
        mrn = unique("cf-")
        pid = patient_id(CLINIC, mrn)
        first = Event(CLINIC, mrn, [patient(CLINIC, mrn), phq9_total(CLINIC, pid, f"{mrn}-phq", "2024-03-01", 14),
                                    encounter(CLINIC, pid, f"{mrn}-enc", "2024-03-01T10:00:00Z", None)])
        harness.publish(first)
        harness.publish(first)  # a resend changes nothing: no change message
        finished = Event(CLINIC, mrn, [encounter(CLINIC, pid, f"{mrn}-enc", "2024-03-01T10:00:00Z",
                                                 "2024-03-01T11:00:00Z")])
        harness.publish(finished)
        changes = read_changes(settings, 4)
    finally:
        harness.close()
    by_version = [(c["resourceType"], c["versionId"], c["change"]) for c in changes]
    assert sorted(by_version) == sorted([("Patient", 1, "created"), ("Observation", 1, "created"),
                                         ("Encounter", 1, "created"), ("Encounter", 2, "updated")])
    encounter_changes = [c for c in changes if c["resourceType"] == "Encounter"]
    assert [c["resource"]["status"] for c in encounter_changes] == ["in-progress", "finished"]
    assert {c["key"] for c in changes} == {changes[0]["person"]}  # one person, one key, one partition
    observation = next(c for c in changes if c["resourceType"] == "Observation")
    assert observation["patient"] == f"Patient/{pid}"
    assert observation["members"] == [f"Patient/{pid}"]
    assert "PSY" in observation["security"] and observation["restriction"] == 1
    assert observation["resource"]["meta"]["versionId"] == "1"


def test_a_linked_person_is_named_with_all_its_members(kafka_bootstrap: str, tmp_path: Path) -> None:
    settings = harness_settings(kafka_bootstrap)
    harness = RecordHarness(settings, f"sqlite:///{tmp_path}/record.db", "sqlite")
    try:
        mrn_a, mrn_b, empi = unique("la-"), unique("lb-"), unique("E-")
        pid_a, pid_b = patient_id(CLINIC, mrn_a), patient_id(HOSPITAL, mrn_b)
        harness.publish(Event(CLINIC, mrn_a, [patient(CLINIC, mrn_a, empi=empi)]))
        harness.publish(Event(HOSPITAL, mrn_b, [patient(HOSPITAL, mrn_b, empi=empi)]))
        harness.publish(Event(HOSPITAL, mrn_b, [phq9_total(HOSPITAL, pid_b, f"{mrn_b}-phq", "2024-03-02", 9)]))
        changes = read_changes(settings, 3)
    finally:
        harness.close()
    observation = next(c for c in changes if c["resourceType"] == "Observation")
    assert observation["members"] == sorted([f"Patient/{pid_a}", f"Patient/{pid_b}"])


def test_a_change_committed_but_not_published_goes_out_at_the_next_start(kafka_bootstrap: str,
                                                                          tmp_path: Path) -> None:
    """The record stops after its store commit, before the publish: the outbox keeps the change."""
    settings = harness_settings(kafka_bootstrap)
    dsn = f"sqlite:///{tmp_path}/record.db"
    harness = RecordHarness(settings, dsn, "sqlite")
    harness.close()  # topics exist; nothing published yet
    mrn = unique("cr-")
    pid = patient_id(CLINIC, mrn)
    event = Event(CLINIC, mrn, [patient(CLINIC, mrn), phq9_total(CLINIC, pid, f"{mrn}-phq", "2024-03-01", 20)])
    producer = RecordProducer(settings, "test-publisher")
    metas = producer.send_all_and_wait([event.record(settings.topic_prefix)])
    producer.close()
    store = open_store(dsn, identity_policy(settings))
    # the commit the crashed process made: same record, same store, no publish, no offset commit
    raw = _fetch(settings, metas[0].partition, metas[0].offset)
    store.ingest([prepare_bundle(inbound(raw))])
    assert len(store.pending_changes()) == 2
    assert read_changes(settings, 1, timeout_s=2) == []
    restarted = RecordHarness(settings, dsn, "sqlite")  # the service again, on the same store and group
    try:
        assert restarted.service.ingestor.wait_for([(metas[0].partition, metas[0].offset)], timeout_s=60)
        changes = read_changes(settings, 2)
    finally:
        restarted.close()
        store.close()
    assert sorted((c["resourceType"], c["versionId"]) for c in changes) == [("Observation", 1), ("Patient", 1)]
    assert open_store(dsn, identity_policy(settings)).pending_changes() == []


def test_a_change_after_the_outbox_ran_empty_is_published(kafka_bootstrap: str, tmp_path: Path) -> None:
    """One long-running record: the first change is published and forgotten (the outbox is empty), then a second
    change comes. Its outbox row is numbered above the first one's, so the publisher, which remembers how far it
    has sent, sends it."""
    settings = harness_settings(kafka_bootstrap)
    harness = RecordHarness(settings, f"sqlite:///{tmp_path}/record.db", "sqlite")
    try:
        mrn = unique("oe-")
        pid = patient_id(CLINIC, mrn)
        harness.publish(Event(CLINIC, mrn, [patient(CLINIC, mrn)]))
        assert len(read_changes(settings, 1)) == 1
        deadline = time.monotonic() + 30
        while harness.store.pending_changes():  # acknowledged and forgotten at a later cycle
            assert time.monotonic() < deadline
            time.sleep(0.1)
        harness.publish(Event(CLINIC, mrn, [phq9_total(CLINIC, pid, f"{mrn}-phq", "2024-03-01", 11)]))
        changes = read_changes(settings, 2)
    finally:
        harness.close()
    assert [c["resourceType"] for c in changes] == ["Patient", "Observation"]


def test_changes_kafka_did_not_take_stay_in_the_outbox_and_go_out_in_order(kafka_bootstrap: str,
                                                                            tmp_path: Path) -> None:
    settings = harness_settings(kafka_bootstrap)
    harness = RecordHarness(settings, f"sqlite:///{tmp_path}/seed.db", "sqlite")
    harness.close()  # the topics exist
    store = open_store(f"sqlite:///{tmp_path}/record.db", identity_policy(settings))
    mrn = unique("kd-")
    pid = patient_id(CLINIC, mrn)
    events = [Event(CLINIC, mrn, [patient(CLINIC, mrn)])] + [
        Event(CLINIC, mrn, [encounter(CLINIC, pid, f"{mrn}-enc", "2024-03-01T10:00:00Z", end)])
        for end in (None, "2024-03-01T11:00:00Z")
    ]
    store.ingest([prepare_bundle(_as_consumed(e, offset)) for offset, e in enumerate(events)])
    published = Counter("published", "changes", registry=CollectorRegistry())
    unreachable = Settings(kafka_bootstrap="127.0.0.1:9", topic_prefix=settings.topic_prefix,
                           kafka_request_timeout_s=1.0)
    dead = RecordProducer(unreachable, "test-dead")
    try:
        with pytest.raises(BrokerUnavailable):
            ChangePublisher(store, dead, RECORD_CHANGES.name(settings.topic_prefix), published).pump()
    finally:
        dead.close(timeout_s=1)
    assert len(store.pending_changes()) == 3  # nothing forgotten that Kafka did not acknowledge
    producer = RecordProducer(settings, "test-live")
    try:
        publisher = ChangePublisher(store, producer, RECORD_CHANGES.name(settings.topic_prefix), published)
        publisher.pump()
        assert publisher.drain(timeout_s=30)
    finally:
        producer.close()
    assert store.pending_changes() == [] and publisher.in_flight == 0
    changes = read_changes(settings, 3)
    store.close()
    assert [(c["resourceType"], c["versionId"]) for c in changes] == [("Patient", 1), ("Encounter", 1),
                                                                       ("Encounter", 2)]


def _as_consumed(event: Event, offset: int) -> InboundBundle:
    """The bundle topic's record of ``event`` as the record's consumer would see it at ``offset``."""
    record = event.record("t")
    return InboundBundle(record.topic, 0, offset, 1_700_000_000_000 + offset, record.key, record.value,
                         dict(record.headers))


def _fetch(settings: Settings, partition: int, offset: int) -> Any:
    from services.common.topics import FHIR_BUNDLES

    consumer = KafkaConsumer(**client_config(settings, "test-fetch"), enable_auto_commit=False)
    try:
        tp = TopicPartition(FHIR_BUNDLES.name(settings.topic_prefix), partition)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for r in records:
                    if r.offset == offset:
                        return r
        raise AssertionError("record not found")
    finally:
        consumer.close()
