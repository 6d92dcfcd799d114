"""Ingest (pure) and the store (SQLite and PostgreSQL, the same tests): versioning rules, replay skipping,
reference resolution, bad bundles, index maintenance, policy changes."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from services.record.access import ALL_CLEARANCES, BEHAVIORAL_HEALTH
from services.record.errors import BadBundle, StoreUnavailable
from services.record.identity import IdentityPolicy
from services.record.ingest import CurrentVersion, InboundBundle, plan_versions, prepare_bundle
from services.record.search import parse_search
from services.record.store import EverythingQuery, HistoryQuery, SqlStore, View, open_store
from tests.record.conftest import StoreFactory
from tests.record.fhir_data import CLINIC, HOSPITAL, T0, Event, iso, patient, patient_id, phq9_total

pytestmark = pytest.mark.postgres


def inbound(event: Event, offset: int, at: int, event_id: str | None = None, partition: int = 0) -> InboundBundle:
    out = event.record("t")
    headers = dict(out.headers)
    if event_id is not None:
        headers["ce_id"] = event_id
    return InboundBundle(out.topic, partition, offset, at, out.key, out.value, headers)


def raw(value: Any, offset: int = 0) -> InboundBundle:
    return InboundBundle("t", 0, offset, 1_700_000_000_000, "k",
                         value if isinstance(value, bytes) else orjson.dumps(value), {})


# --- pure ------------------------------------------------------------------------------------------------


def test_bundle_references_to_entries_become_type_and_id() -> None:
    pid = patient_id(CLINIC, "r1")
    obs = phq9_total(CLINIC, pid, "r1", iso(T0), 7)
    obs["subject"] = {"reference": f"urn:uuid:{pid}"}
    obs["derivedFrom"] = [{"reference": "urn:uuid:not-in-this-bundle"}]
    prepared = prepare_bundle(inbound(Event(CLINIC, "r1", [patient(CLINIC, "r1"), obs]), 0, 1))
    observation = prepared.resources[1]
    assert observation.content is not None
    assert observation.content["subject"] == {"reference": f"Patient/{pid}"}
    assert observation.content["derivedFrom"] == [{"reference": "urn:uuid:not-in-this-bundle"}]
    assert observation.index is not None and observation.index.patient_ref == f"Patient/{pid}"


@pytest.mark.parametrize("value, message", [
    (b"not json", "not JSON"),
    ({"resourceType": "Patient", "id": "x"}, "not a FHIR Bundle"),
    ({"resourceType": "Bundle", "entry": {"x": 1}}, "not a list"),
    ({"resourceType": "Bundle", "entry": [{"resource": {"id": "x"}}]}, "valid resourceType"),
    ({"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Patient", "id": "bad id!"}}]},
     "valid id"),
    ({"resourceType": "Bundle", "entry": [{"fullUrl": "urn:uuid:x"}]}, "has no resource"),
    ({"resourceType": "Bundle", "entry": [{"request": {"method": "DELETE", "url": "Patient"}}]}, "Type/id"),
    ({"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Patient", "id": "p",
                                                        "birthDate": "01/02/1990"}}]}, "malformed date"),
])
def test_bad_bundles_are_refused_whole(value: Any, message: str) -> None:
    with pytest.raises(BadBundle, match=message) as caught:
        prepare_bundle(raw(value))
    assert "1990" not in str(caught.value)  # positions and types only, never values


def test_content_hash_ignores_server_meta_only() -> None:
    resource = patient(CLINIC, "h1")
    plain = prepare_bundle(raw({"resourceType": "Bundle", "entry": [{"resource": resource}]}))
    stamped = dict(resource, meta={**resource["meta"], "versionId": "7", "lastUpdated": "2020-01-01T00:00:00Z"})
    again = prepare_bundle(raw({"resourceType": "Bundle", "entry": [{"resource": stamped}]}))
    assert plain.resources[0].content_hash == again.resources[0].content_hash
    changed = prepare_bundle(raw({"resourceType": "Bundle", "entry": [{"resource": dict(resource, gender="male")}]}))
    assert changed.resources[0].content_hash != plain.resources[0].content_hash


def test_plan_versions_counts_and_keeps_last_updated_monotonic() -> None:
    v1 = prepare_bundle(inbound(Event(CLINIC, "m", [patient(CLINIC, "m")]), 0, 5_000, "e1"))
    v2 = prepare_bundle(inbound(Event(CLINIC, "m", [patient(CLINIC, "m", phone="1")]), 1, 4_000, "e2"))
    same = prepare_bundle(inbound(Event(CLINIC, "m", [patient(CLINIC, "m", phone="1")]), 2, 6_000, "e3"))
    current: dict[tuple[str, str], CurrentVersion] = {}
    plan = plan_versions([v1, v2, same, v1], current, {})
    assert [(v.version_id, v.last_updated) for v in plan.versions] == [(1, 5_000), (2, 5_000)]
    assert plan.unchanged == 1 and plan.skipped_bundles == 1
    body = orjson.loads(plan.versions[1].body or b"{}")
    assert body["meta"]["versionId"] == "2" and body["meta"]["lastUpdated"] == "1970-01-01T00:00:05.000Z"


def test_an_older_record_from_another_partition_does_not_overwrite() -> None:
    pid = patient_id(HOSPITAL, "lww")
    original = prepare_bundle(inbound(Event(HOSPITAL, "lww", [patient(HOSPITAL, "lww")]), 7, 1_000, "e1", 0))
    retired = prepare_bundle(inbound(Event(HOSPITAL, "other", [patient(HOSPITAL, "lww", active=False)]), 3, 2_000,
                                     "e2", partition=1))
    # in timestamp order: two versions
    plan = plan_versions([original, retired], {}, {})
    assert [v.version_id for v in plan.versions] == [1, 2] and plan.stale == 0
    # the other way round: the older record is stale and the retired version stays current
    current: dict[tuple[str, str], CurrentVersion] = {}
    late = plan_versions([retired, original], current, {})
    assert [v.version_id for v in late.versions] == [1] and late.stale == 1
    assert current[("Patient", pid)].source == (2_000, 1, 3)
    # within one partition the offset decides, whatever the timestamps
    later_offset = prepare_bundle(inbound(Event(HOSPITAL, "lww", [patient(HOSPITAL, "lww", phone="1")]), 9, 500,
                                          "e3", 1))
    assert plan_versions([later_offset], current, {}).versions[0].version_id == 2


# --- the store, both backends ------------------------------------------------------------------------------


def test_store_versions_and_replay(store: SqlStore) -> None:
    pid = patient_id(HOSPITAL, "s1")
    first = Event(HOSPITAL, "s1", [patient(HOSPITAL, "s1")])
    second = Event(HOSPITAL, "s1", [patient(HOSPITAL, "s1", phone="555-0101")])
    report = store.ingest([prepare_bundle(inbound(first, 0, 1_000))])
    assert (report.versions, report.unchanged) == (1, 0)
    store.ingest([prepare_bundle(inbound(second, 1, 2_000))])
    # the older event re-delivered after the newer one: skipped, the record does not go back
    replay = store.ingest([prepare_bundle(inbound(first, 0, 1_000)), prepare_bundle(inbound(second, 1, 2_000))])
    assert (replay.versions, replay.skipped_bundles) == (0, 2)
    # identical content from a new event: no version either
    resent = store.ingest([prepare_bundle(inbound(Event(HOSPITAL, "s1", [patient(HOSPITAL, "s1",
                                                                                  phone="555-0101")]), 2, 3_000))])
    assert (resent.versions, resent.unchanged) == (0, 1)

    current = store.read("Patient", pid)
    assert current is not None and current.version_id == 2 and current.last_updated == 2_000
    older = store.vread("Patient", pid, 1)
    assert older is not None and b"555-0101" not in (older.body or b"")
    history = store.history(HistoryQuery("Patient", pid, None, 10, 0), View(ALL_CLEARANCES))
    assert [r.version_id for r in history.rows] == [2, 1] and history.total == 2
    assert store.history(HistoryQuery("Patient", pid, 1_500, 10, 0), View(ALL_CLEARANCES)).total == 1
    assert store.stored_types() == ["Patient"]


def test_store_replaces_the_index_of_a_changed_resource(store: SqlStore) -> None:
    pid = patient_id(CLINIC, "ix")
    obs = phq9_total(CLINIC, pid, "ix", iso(T0), 4)
    store.ingest([prepare_bundle(inbound(Event(CLINIC, "ix", [patient(CLINIC, "ix"), obs]), 0, 1))])
    recoded = dict(obs, code={"coding": [{"system": "http://loinc.org", "code": "55758-7"}]},
                   effectiveDateTime=iso(T0, 400))
    store.ingest([prepare_bundle(inbound(Event(CLINIC, "ix", [recoded]), 1, 2))])

    def total(**params: str) -> int:
        query = parse_search("Observation", [("patient", pid), *params.items()], 50, 100)
        return store.search(query, View(ALL_CLEARANCES)).total

    assert total(code="44261-6") == 0 and total(code="55758-7") == 1
    assert total(date=T0.strftime("%Y-%m-%d")) == 0 and total(date=iso(T0, 400)[:10]) == 1
    page = store.search(parse_search("Observation", [("patient", pid)], 50, 100), View(0))
    assert page.total == 0 and page.withheld == {BEHAVIORAL_HEALTH: 1}
    everything = store.everything(EverythingQuery(frozenset({f"Patient/{pid}"}), None, None, 10, 0),
                                  View(ALL_CLEARANCES))
    assert [r.resource_type for r in everything.rows] == ["Patient", "Observation"]


def test_changing_the_identity_policy_regroups_existing_patients(store_factory: StoreFactory,
                                                                  tmp_path: Any) -> None:
    store = store_factory(IdentityPolicy())
    a = patient(CLINIC, "dem-a", family="Ito", given=("Ken",), birth="1961-02-03")
    b = patient(HOSPITAL, "dem-b", family="ITO", given=("Ken",), birth="1961-02-03")
    store.ingest([prepare_bundle(inbound(Event(CLINIC, "dem-a", [a]), 0, 1)),
                  prepare_bundle(inbound(Event(HOSPITAL, "dem-b", [b]), 1, 2))])
    assert len(store.person(f"Patient/{a['id']}").members) == 1
    assert [c.patients for c in store.review_candidates()] == [tuple(sorted((f"Patient/{a['id']}",
                                                                              f"Patient/{b['id']}")))]
    dsn = store.dsn
    store.close()
    reopened = open_store(dsn, IdentityPolicy(demographic_rule="name-birthdate"))
    try:
        assert len(reopened.person(f"Patient/{a['id']}").members) == 2
        assert reopened.review_candidates() == []
    finally:
        reopened.close()


def test_a_closed_store_is_unavailable(store: SqlStore) -> None:
    store.close()
    with pytest.raises(StoreUnavailable):
        store.read("Patient", "x")


def test_unreachable_postgres_is_unavailable() -> None:
    from devstack.local_broker import free_port

    with pytest.raises(StoreUnavailable):
        open_store(f"postgresql://carebus@127.0.0.1:{free_port()}/none", IdentityPolicy())


def test_big_pages_equal_small_pages(store: SqlStore) -> None:
    """Pages above the two-phase threshold (keys sorted first, rows fetched after) match small pages."""
    from services.record.store.query import TWO_PHASE_PAGE

    pid = patient_id(CLINIC, "big")
    observations = [phq9_total(CLINIC, pid, f"big-{i}", iso(T0, i % 17), i % 28) for i in range(TWO_PHASE_PAGE + 30)]
    store.ingest([prepare_bundle(inbound(Event(CLINIC, "big", [patient(CLINIC, "big"), *observations]), 0, 1))])
    store.ingest([prepare_bundle(inbound(Event(CLINIC, "big", [dict(o, status="amended") for o in observations[:40]]),
                                         1, 2))])
    refs = frozenset({f"Patient/{pid}"})

    def everything(count: int, offset: int) -> list[str]:
        page = store.everything(EverythingQuery(refs, None, None, count, offset), View(ALL_CLEARANCES))
        return [r.id for r in page.rows]

    small = [rid for offset in range(0, 200, 20) for rid in everything(20, offset)]
    assert everything(500, 0) == small and len(small) == len(observations) + 1
    assert everything(TWO_PHASE_PAGE + 10, 5) == small[5:TWO_PHASE_PAGE + 15]

    def history(count: int, offset: int) -> list[tuple[str, int]]:
        page = store.history(HistoryQuery("Observation", None, None, count, offset), View(ALL_CLEARANCES))
        return [(r.id, r.version_id) for r in page.rows]

    small_history = [key for offset in range(0, 200, 25) for key in history(25, offset)]
    assert history(400, 0) == small_history and len(small_history) == len(observations) + 40
    query = parse_search("Observation", [("patient", pid), ("_sort", "-date"), ("_count", "300")], 50, 1000)
    big = store.search(query, View(ALL_CLEARANCES))
    assert big.total == len(observations) and len(big.rows) == len(observations)
    times = [orjson.loads(r.body or b"{}")["effectiveDateTime"] for r in big.rows]
    assert times == sorted(times, reverse=True)


def test_a_store_of_another_schema_version_is_refused(store: SqlStore) -> None:
    with store.db.transaction() as conn:  # as if written by another release
        conn.execute(store.dialect.sql("UPDATE store_meta SET value = ? WHERE key = ?"), ("0", "schema_version"))
    dsn = store.dsn
    store.close()
    with pytest.raises(StoreUnavailable, match="replay the topic"):
        open_store(dsn, IdentityPolicy())
