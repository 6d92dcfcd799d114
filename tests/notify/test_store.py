"""The notify store on SQLite and PostgreSQL (real servers, no mocks): numbering is per subscription,
monotonic and idempotent on replay; withheld and filtered changes get no number; delivery state, dead letters
and replay; the record's change outbox on PostgreSQL too."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from services.notify.store import NotifyStore, open_notify_store
from services.notify.subscriptions import parse_subscription
from services.notify.topics import TOPIC_BASE, Change, parse_filter
from tests.record.conftest import (
    postgres_server,  # noqa: F401 - the session's PostgreSQL fixture
    side_by_side,
)

LOINC = "http://loinc.org"


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NotifyStore]:
    if request.param == "sqlite":
        dsn = f"sqlite:///{tmp_path}/notify.db"
    else:
        dsn = request.getfixturevalue("postgres_server").fresh_schema_dsn()
    s = open_notify_store(dsn)
    try:
        yield s
    finally:
        s.close()


def _sub(sid: str, patient: str, clearances: int = 1) -> Any:
    resource = {"resourceType": "Subscription", "status": "requested", "reason": "r",
                "criteria": TOPIC_BASE + "assessment-completed",
                "channel": {"type": "rest-hook", "endpoint": "https://ehr.example.org/hook"}}
    sub = parse_subscription(resource, allowlist=["https://ehr.example.org/"], client="clinic",
                             clearances=clearances, patient=None, subscription_id=sid)
    topic = sub.topic_def
    return replace(sub, filters=(parse_filter(topic, f"patient={patient}"),))


def _phq9(oid: str, patient: str, version: int = 1, restriction: int = 1, status: str = "final") -> Change:
    resource = {"resourceType": "Observation", "id": oid, "status": status,
                "code": {"coding": [{"system": LOINC, "code": "44261-6"}]}, "subject": {"reference": patient}}
    return Change("Observation", oid, version, "2024-03-01T10:00:00.000Z", "created" if version == 1 else "updated",
                  patient, "person", (patient,), ("PSY",), restriction, resource)


def test_events_are_numbered_per_subscription_once_and_in_order(store: NotifyStore) -> None:
    store.create(_sub("a", "Patient/p1"))
    store.create(_sub("b", "Patient/p1", clearances=0))  # not cleared for behavioural health
    store.create(_sub("c", "Patient/p2"))
    batch = [_phq9("o1", "Patient/p1"), _phq9("o2", "Patient/p1"), _phq9("o3", "Patient/p2")]
    assert store.record_changes(batch) == {"a": 2, "c": 1}
    assert store.record_changes(batch) == {}  # the same changes again (a replayed feed): nothing new
    assert store.record_changes([_phq9("o1", "Patient/p1", version=2)]) == {}  # a correction, still final
    assert [(e.number, e.resource_id) for e in store.events("a")] == [(1, "o1"), (2, "o2")]
    assert store.events("b") == []  # withheld: no number at all
    assert [(e.number, e.resource_id) for e in store.events("c")] == [(1, "o3")]
    sub = store.get("a")
    assert sub is not None and sub.events_since_start == 2
    assert store.record_changes([_phq9("o4", "Patient/p1", status="preliminary")]) == {}
    assert store.record_changes([_phq9("o4", "Patient/p1", version=2)]) == {"a": 1}  # became final
    assert [e.number for e in store.pending("a", 10)] == [1, 2, 3]


def test_delivery_state_dead_letters_and_replay(store: NotifyStore) -> None:
    store.create(_sub("a", "Patient/p1"))
    store.record_changes([_phq9(f"o{i}", "Patient/p1") for i in range(1, 5)])
    store.mark_delivered("a", [1])
    store.mark_failed("a", [2], first_failure_ms=1000)
    assert [e.number for e in store.pending("a", 10)] == [2, 3, 4]
    assert store.pending("a", 1)[0].first_failure_ms == 1000
    assert store.dead_letter("a", "not delivered within the retry window (24 h)", "error", "why") == 3
    sub = store.get("a")
    assert sub is not None and sub.status == "error" and sub.error == "why"
    assert store.pending("a", 10) == []
    assert [b.dead for b in store.backlog() if b.subscription_id == "a"] == [3]
    store.record_changes([_phq9("o5", "Patient/p1")])  # still counted while in error
    assert [e.number for e in store.events("a")] == [1, 2, 3, 4, 5]
    assert store.replay("a") == 3
    assert [e.number for e in store.pending("a", 10)] == [2, 3, 4, 5]
    sub = store.get("a")
    assert sub is not None and sub.status == "active"
    assert store.set_status("a", "active", None, only_from=("requested",)) is False  # guarded
    assert store.delete("a") and store.get("a") is None and store.events("a") == []


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_the_record_outbox_keeps_committed_changes_until_forgotten(backend: str, request: pytest.FixtureRequest,
                                                                    tmp_path: Path) -> None:
    import orjson

    from services.record.identity import IdentityPolicy
    from services.record.ingest import InboundBundle, prepare_bundle
    from services.record.store import open_store

    dsn = (f"sqlite:///{tmp_path}/record.db" if backend == "sqlite"
           else request.getfixturevalue("postgres_server").fresh_schema_dsn())
    record = open_store(dsn, IdentityPolicy(frozenset({"urn:carebus:empi"}), "none"))
    try:
        bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
            {"resource": {"resourceType": "Patient", "id": "p1"}},
            {"resource": {"resourceType": "Observation", "id": "o1", "status": "final",
                          "code": {"text": "x"}, "subject": {"reference": "Patient/p1"}}}]}
        record.ingest([prepare_bundle(InboundBundle("t", 0, 7, 1_700_000_000_000, "k", orjson.dumps(bundle),
                                                    {"ce_id": "e1"}))])
        rows = record.pending_changes()
        assert [orjson.loads(r.value)["resourceType"] for r in rows] == ["Patient", "Observation"]
        observation = orjson.loads(rows[1].value)
        assert observation["members"] == ["Patient/p1"] and observation["change"] == "created"
        assert rows[0].key == rows[1].key == observation["person"]
        record.forget_changes(rows[0].seq)
        assert [r.seq for r in record.pending_changes()] == [rows[1].seq]
        record.forget_changes(rows[1].seq)
        assert record.pending_changes() == []
    finally:
        record.close()


def test_withheld_changes_wait_once_for_their_audit(store: NotifyStore) -> None:
    """A change the consent seam withholds from a subscription is a denied attempt: remembered once per
    subscription and focus version (a replayed feed adds nothing), until its AuditEvent is written."""
    store.create(_sub("cleared", "Patient/p1"))
    store.create(replace(_sub("uncleared", "Patient/p1", clearances=0), organization="urn:x|org", purpose="TREAT"))
    batch = [_phq9("o1", "Patient/p1"), _phq9("o2", "Patient/p1")]
    assert store.record_changes(batch) == {"cleared": 2}
    store.record_changes(batch)  # replayed
    denied = store.denials()
    assert [(d.subscription_id, d.focus, d.version_id, d.patient_ref, d.client, d.organization) for d in denied] == [
        ("uncleared", "Observation/o1", 1, "Patient/p1", "clinic", "urn:x|org"),
        ("uncleared", "Observation/o2", 1, "Patient/p1", "clinic", "urn:x|org")]
    store.mark_audited([denied[0].key])
    assert [d.focus for d in store.denials()] == ["Observation/o2"]
    store.record_changes(batch)  # replayed again after the audit: not audited twice
    assert [d.focus for d in store.denials()] == ["Observation/o2"]
    # withheld at send time (a revocation since it was numbered): a denial of its own
    store.withdraw("cleared", [1], {1: "Patient/p1"})
    assert sorted((d.subscription_id, d.focus) for d in store.denials()) == [("cleared", "Observation/o1"),
                                                                             ("uncleared", "Observation/o2")]


def _consent_change(cid: str, members: tuple[str, ...], version: int = 1) -> Change:
    resource = {"resourceType": "Consent", "id": cid, "status": "active",
                "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                                      "code": "patient-privacy"}]},
                "category": [{"coding": [{"system": LOINC, "code": "59284-0"}]}],
                "patient": {"reference": members[0]}, "provision": {"type": "permit"}}
    return Change("Consent", cid, version, "2024-03-01T10:00:00.000Z", "created" if version == 1 else "updated",
                  members[0], "person", members, (), 0, resource)


def test_a_persons_consents_are_a_keyed_lookup(store: NotifyStore) -> None:
    """Consents are found by any Patient record of the person they were seen with, through the consent index
    (a change of the Consent's person re-indexes it); no other person's consent comes back."""
    store.record_changes([_consent_change("k1", ("Patient/a", "Patient/b")), _consent_change("k2", ("Patient/c",)),
                          _consent_change("k3", ("Patient/b",))])
    assert [c.reference.removeprefix("Consent/") for c in store.consents(["Patient/a"])] == ["k1"]
    assert [c.reference.removeprefix("Consent/") for c in store.consents(["Patient/b", "Patient/x"])] == ["k1", "k3"]
    assert store.consents(["Patient/x"]) == []
    store.record_changes([_consent_change("k1", ("Patient/c",), version=2)])  # k1's person is now c's
    assert [c.reference.removeprefix("Consent/") for c in store.consents(["Patient/a"])] == []
    assert [c.reference.removeprefix("Consent/") for c in store.consents(["Patient/c"])] == ["k1", "k2"]


def test_the_consent_lookup_uses_the_index_and_old_stores_are_indexed(tmp_path: Path) -> None:
    import sqlite3

    from services.notify.store import CONSENTS_OF_SQL

    path = tmp_path / "notify.db"
    store = open_notify_store(f"sqlite:///{path}")
    try:
        store.record_changes([_consent_change("k1", ("Patient/a", "Patient/b"))])
    finally:
        store.close()
    with sqlite3.connect(path) as db:
        plan = " | ".join(str(r[-1]) for r in db.execute(
            "EXPLAIN QUERY PLAN " + CONSENTS_OF_SQL.format(marks="?,?"), ("Patient/a", "Patient/b")))
        # keyed: the person's Patient records in the index, then each Consent by its key; never a scan
        assert "SEARCH m USING COVERING INDEX" in plan and "(resource_type=? AND resource_id=?)" in plan, plan
        assert "SCAN" not in plan, plan
        db.execute("DROP TABLE notify_consent_member")  # a store from before the index
    reopened = open_notify_store(f"sqlite:///{path}")
    try:
        assert [c.reference.removeprefix("Consent/") for c in reopened.consents(["Patient/b"])] == ["k1"]
    finally:
        reopened.close()


def test_two_record_instances_on_one_postgresql_number_their_changes_apart(
        request: pytest.FixtureRequest) -> None:
    """Two record instances ingest at the same time into one PostgreSQL: every ingest is stored (none refused
    as data because both took the same outbox number), and the outbox numbers are distinct."""
    import orjson

    from services.record.identity import IdentityPolicy
    from services.record.ingest import InboundBundle, prepare_bundle
    from services.record.store import open_store

    dsn = request.getfixturevalue("postgres_server").fresh_schema_dsn()
    policy = IdentityPolicy(frozenset({"urn:carebus:empi"}), "none")
    stores = [open_store(dsn, policy), open_store(dsn, policy)]
    refused: list[Any] = []

    def ingest_many(n: int) -> None:
        for i in range(30):
            pid = f"p{n}-{i}"
            bundle = {"resourceType": "Bundle", "type": "collection",
                      "entry": [{"resource": {"resourceType": "Patient", "id": pid}}]}
            report = stores[n].ingest([prepare_bundle(InboundBundle("t", n, i, 1_700_000_000_000 + i, pid,
                                                                    orjson.dumps(bundle), {"ce_id": pid}))])
            refused.extend(report.refused)

    try:
        side_by_side(ingest_many)
        rows = stores[0].pending_changes(1000)
    finally:
        for s in stores:
            s.close()
    assert refused == []
    assert len(rows) == 60 and len({r.seq for r in rows}) == 60


def test_delivery_marks_of_many_subscriptions_in_one_call(store: NotifyStore) -> None:
    store.create(_sub("a", "Patient/p1"))
    store.create(_sub("c", "Patient/p2"))
    store.record_changes([*(_phq9(f"o{i}", "Patient/p1") for i in range(1, 4)), _phq9("q1", "Patient/p2")])
    assert [e.number for e in store.pending("a", 10, after=1)] == [2, 3]  # 1: delivered, its mark not yet written
    store.record_deliveries({"a": 3, "c": 1}, {"a": [1, 2], "c": [1]})
    assert [e.number for e in store.pending("a", 10)] == [3]
    assert store.pending("c", 10) == []
    store.record_deliveries({"a": 2}, {"a": [1]})  # told never lowered; a delivered event is not counted again
    sub_a, sub_c = store.get("a"), store.get("c")
    assert sub_a is not None and sub_a.told == 3 and sub_c is not None and sub_c.told == 1
    assert [(e.state, e.attempts) for e in store.events("a")] == [("delivered", 1), ("delivered", 1), ("pending", 0)]


def test_changes_no_topic_is_about_are_not_kept(store: NotifyStore) -> None:
    store.create(_sub("a", "Patient/p1"))
    provenance = Change("Provenance", "pv1", 1, "2024-03-01T10:00:00.000Z", "created", "Patient/p1", "person",
                        ("Patient/p1",), (), 0, {"resourceType": "Provenance", "id": "pv1"})
    assert store.record_changes([provenance, _phq9("o1", "Patient/p1")]) == {"a": 1}
    assert store.focus("Provenance", "pv1") is None
    assert store.focus("Observation", "o1") is not None
    assert store.record_changes([provenance]) == {}


def test_the_group_commit_writes_every_waiting_subscription_and_reports_an_outage(store: NotifyStore) -> None:
    from prometheus_client import CollectorRegistry, Histogram

    from services.common.errors import StoreUnavailable
    from services.notify.delivery import MarkWriter

    for sid, patient in (("a", "Patient/p1"), ("c", "Patient/p2")):
        store.create(_sub(sid, patient))
    store.record_changes([_phq9("o1", "Patient/p1"), _phq9("o2", "Patient/p1"), _phq9("q1", "Patient/p2")])
    step = Histogram("step_seconds", "steps", ["step"], registry=CollectorRegistry())
    writer = MarkWriter(store, step)

    async def marks() -> None:
        await asyncio.gather(writer.write("a", 2, [1]), writer.write("c", 1, [1]), writer.write("a", None, [2]))

    asyncio.run(marks())
    assert store.pending("a", 10) == [] and store.pending("c", 10) == []
    sub = store.get("a")
    assert sub is not None and sub.told == 2
    store.close()
    with pytest.raises(StoreUnavailable):
        asyncio.run(writer.write("a", 3, []))
