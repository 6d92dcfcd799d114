"""Replay idempotence and offset handling, through the real broker and both stores.

Replaying the whole bundle topic - into the same store, or into an empty one - yields exactly the same record:
same ids, same versions (content, versionId, lastUpdated from the Kafka timestamps), same persons. Offsets are
committed only after the store committed: a failing store commits nothing, and the batch is retried.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.partitioner.default import murmur2

from services.common.fhir_ids import patient_key
from services.common.kafka import client_config
from services.common.metrics import Metrics
from services.common.settings import Settings
from services.common.topics import FHIR_BUNDLES
from services.record.consumer import BundleIngestor
from services.record.errors import StoreUnavailable
from services.record.ingest import PreparedBundle
from services.record.store import IngestReport, SqlStore, identity_policy, open_store
from tests.record.conftest import RecordHarness
from tests.record.fhir_data import (
    CLINIC,
    HOSPITAL,
    T0,
    Event,
    body_weight,
    full_record,
    iso,
    patient,
    patient_id,
    phq9_total,
    unique,
)
from tests.record.test_api_identity import admin, eventually, members

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


def snapshot(store: SqlStore, policy: Any) -> tuple[list[tuple[Any, ...]], dict[str, str]]:
    # AuditEvents come from the audit topic (services/record/audit_ingest.py), not from the bundle topic replayed
    versions = [(row.resource_type, row.id, row.version_id, row.last_updated, row.deleted, row.body, digest)
                for row, digest in store.export_versions() if row.resource_type != "AuditEvent"]
    return versions, store.identity_state().persons(policy)


def end_offsets(settings: Settings) -> list[tuple[int, int]]:
    topic = FHIR_BUNDLES.name(settings.topic_prefix)
    consumer = KafkaConsumer(**client_config(settings, "test-offsets"))
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends = consumer.end_offsets(partitions)
    finally:
        consumer.close()
    return [(tp.partition, end - 1) for tp, end in ends.items() if end > 0]


def keys_on_different_partitions(partitions: int) -> tuple[str, str]:
    """Two MRNs whose record keys the default partitioner puts on different partitions."""
    def partition(mrn: str) -> int:
        return int(murmur2(patient_key(HOSPITAL.system, mrn).encode()) & 0x7FFFFFFF) % partitions

    first = unique("x-")
    while True:
        second = unique("y-")
        if partition(second) != partition(first):
            return first, second


def fresh_store(record: RecordHarness, request: pytest.FixtureRequest, tmp_path: Any) -> SqlStore:
    policy = identity_policy(record.settings)
    if record.backend == "sqlite":
        return open_store(f"sqlite:///{tmp_path}/replayed.db", policy)
    return open_store(request.getfixturevalue("postgres_server").fresh_schema_dsn(), policy)


def replay_into(record: RecordHarness, store: SqlStore) -> None:
    ingestor = BundleIngestor(record.settings, store, Metrics(), producer=None,
                              group_id=f"replay-{uuid.uuid4().hex[:8]}")
    ingestor.start()
    try:
        assert ingestor.wait_for(end_offsets(record.settings), timeout_s=90)
    finally:
        ingestor.stop()


def test_replaying_the_whole_topic_yields_the_same_record(record: RecordHarness, request: pytest.FixtureRequest,
                                                         tmp_path: Any) -> None:
    # history worth replaying: updates, an unchanged re-send, a deletion, identity links and an unlink
    mrn_a, mrn_b = unique("rp-a-"), unique("rp-b-")
    pid_a, pid_b = patient_id(CLINIC, mrn_a), patient_id(HOSPITAL, mrn_b)
    empi = unique("E-")
    weight = body_weight(CLINIC, pid_a, f"{mrn_a}-w", iso(T0), 60.0)
    record.publish(Event(CLINIC, mrn_a, [patient(CLINIC, mrn_a, empi=empi), weight,
                                         *full_record(CLINIC, mrn_a, pid_a)]))
    record.publish(Event(HOSPITAL, mrn_b, [patient(HOSPITAL, mrn_b, empi=empi)]))
    record.publish(Event(CLINIC, mrn_a, [patient(CLINIC, mrn_a, empi=empi, phone="555-0199")]))
    record.publish(Event(CLINIC, mrn_a, [patient(CLINIC, mrn_a, empi=empi, phone="555-0199")]))
    record.publish(Event(CLINIC, mrn_a, [], deletions=[f"Observation/{weight['id']}"]))
    assert admin(record, "unlink", {"patients": [pid_a, pid_b]}).status_code == 202
    eventually(lambda: members(record, pid_a) == {f"Patient/{pid_a}"})
    assert admin(record, "link", {"patients": [pid_a, pid_b]}).status_code == 202
    eventually(lambda: len(members(record, pid_a)) == 2)

    # one resource under two keys on two partitions (HL7 A40: the retired Patient travels under the survivor's
    # key): a replay must apply the two in the same order as the first time
    old, new = keys_on_different_partitions(record.settings.kafka_topic_partitions)
    pid_old, pid_new = patient_id(HOSPITAL, old), patient_id(HOSPITAL, new)
    record.publish(Event(HOSPITAL, old, [patient(HOSPITAL, old)]))
    record.publish(Event(HOSPITAL, new, [
        patient(HOSPITAL, old, active=False, links=((pid_new, "replaced-by"),)),
        patient(HOSPITAL, new, links=((pid_old, "replaces"),))]))

    policy = identity_policy(record.settings)
    before = snapshot(record.store, policy)
    assert any(v[1] == pid_a and v[2] == 2 for v in before[0])
    retired = record.store.read("Patient", pid_old)
    assert retired is not None and retired.version_id == 2 and b'"active":false' in (retired.body or b"")

    replay_into(record, record.store)  # the same store, from the beginning, as a new consumer group
    assert snapshot(record.store, policy) == before

    replayed = fresh_store(record, request, tmp_path)  # an empty store rebuilt from the topic alone
    try:
        replay_into(record, replayed)
        assert snapshot(replayed, policy) == before
    finally:
        replayed.close()


class FlakyStore:
    """The real store, failing its first ``failures`` ingests as if the database were down."""

    def __init__(self, store: SqlStore, failures: int) -> None:
        self.store = store
        self.failures = failures
        self.calls = 0

    def ingest(self, bundles: list[PreparedBundle]) -> IngestReport:
        self.calls += 1
        if self.calls <= self.failures:
            raise StoreUnavailable("simulated outage")
        return self.store.ingest(bundles)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def committed(settings: Settings, group: str) -> dict[int, int | None]:
    topic = FHIR_BUNDLES.name(settings.topic_prefix)
    consumer = KafkaConsumer(**client_config(settings, "test-committed"), group_id=group,
                             enable_auto_commit=False)
    try:
        return {p: consumer.committed(TopicPartition(topic, p)) for p in consumer.partitions_for_topic(topic) or ()}
    finally:
        consumer.close()


def test_offsets_are_committed_only_after_the_store_commits(record: RecordHarness, request: pytest.FixtureRequest,
                                                           tmp_path: Any) -> None:
    mrn = unique("flaky-")
    pid = patient_id(CLINIC, mrn)
    record.publish(Event(CLINIC, mrn, [patient(CLINIC, mrn), phq9_total(CLINIC, pid, mrn, iso(T0), 5)]))
    target = end_offsets(record.settings)

    down = FlakyStore(fresh_store(record, request, tmp_path), failures=10**6)
    group_down = f"down-{uuid.uuid4().hex[:8]}"
    ingestor = BundleIngestor(record.settings, down, Metrics(), producer=None,  # type: ignore[arg-type]
                              group_id=group_down, retry_pause_s=0.05)
    ingestor.start()
    try:
        eventually(lambda: down.calls >= 3)  # polled, failed, rewound, retried ...
        assert not ingestor.wait_for(target, timeout_s=0.5)
    finally:
        ingestor.stop()
    # ... and committed nothing
    assert all(offset is None for offset in committed(record.settings, group_down).values())
    assert down.store.read("Patient", pid) is None
    down.store.close()

    flaky = FlakyStore(fresh_store(record, request, tmp_path / "second"), failures=2)
    group = f"flaky-{uuid.uuid4().hex[:8]}"
    ingestor = BundleIngestor(record.settings, flaky, Metrics(), producer=None,  # type: ignore[arg-type]
                              group_id=group, retry_pause_s=0.05)
    ingestor.start()
    try:
        assert ingestor.wait_for(target, timeout_s=90)
    finally:
        ingestor.stop()
    assert flaky.calls > 2
    offsets = committed(record.settings, group)
    assert all(offsets[p] == last + 1 for p, last in target)
    row = flaky.store.read("Patient", pid)
    assert row is not None and row.version_id == 1
    flaky.store.close()
