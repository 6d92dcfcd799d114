"""Patient identity as pure logic, and the store's incremental person grouping (both backends).

Property: any order (and any repetition) of registration / link / unlink events converges to the same person
grouping; and the store, which recomputes only the part of the graph an ingest touched, agrees with the pure
grouping of all events.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.record.identity import (
    IdentityPolicy,
    IdentityState,
    LinkAssertion,
    Registration,
    assertions_from_linkage,
    assertions_from_patient,
    demographic_key,
    overlay_links,
    registration_of,
)
from services.record.ingest import InboundBundle, prepare_bundle
from tests.record.conftest import StoreFactory, side_by_side
from tests.record.fhir_data import CLINIC, HOSPITAL, SUD_PROGRAM, Event, patient, patient_id

EMPI = "urn:carebus:empi"
POLICY = IdentityPolicy()


def reg(patient: str, *identifiers: tuple[str, str], at: int = 1, demo: str | None = None,
        active: bool = True) -> Registration:
    return Registration(patient, frozenset(identifiers), demo, None, at, f"h{at}", active)


def groups(state: IdentityState, policy: IdentityPolicy = POLICY) -> set[frozenset[str]]:
    by_person: dict[str, set[str]] = {}
    for node, person in state.persons(policy).items():
        by_person.setdefault(person, set()).add(node)
    return {frozenset(m) for m in by_person.values()}


def test_enterprise_identifier_links_other_identifiers_do_not() -> None:
    state = IdentityState().apply_all([
        reg("Patient/a", (EMPI, "E1"), ("urn:clinic:mrn", "1")),
        reg("Patient/b", (EMPI, "E1"), ("urn:hospital:mrn", "9")),
        reg("Patient/c", ("urn:clinic:mrn", "1")),  # same local MRN value but not an enterprise assigner
        reg("Patient/d", ("urn:other:mrn", "E1")),  # same value, other system
    ])
    assert groups(state) == {frozenset({"Patient/a", "Patient/b"}), frozenset({"Patient/c"}),
                             frozenset({"Patient/d"})}
    configured = IdentityPolicy(frozenset({EMPI, "urn:clinic:mrn"}))
    assert frozenset({"Patient/a", "Patient/b", "Patient/c"}) in groups(state, configured)


def test_demographics_alone_never_link_without_a_rule() -> None:
    same = demographic_key(patient(CLINIC, "1", family="Smith", given=("Ann",), birth="1970-01-01"))
    assert same == demographic_key(patient(HOSPITAL, "2", family=" SMITH ", given=("ann", "B"), birth="1970-01-01"))
    assert same != demographic_key(patient(HOSPITAL, "3", family="Smith", given=("Ann",), birth="1970-01-02"))
    state = IdentityState().apply_all([reg("Patient/a", demo=same), reg("Patient/b", demo=same)])
    assert groups(state) == {frozenset({"Patient/a"}), frozenset({"Patient/b"})}
    assert [c.patients for c in state.review_candidates(POLICY)] == [("Patient/a", "Patient/b")]
    rule = IdentityPolicy(demographic_rule="name-birthdate")
    assert groups(state, rule) == {frozenset({"Patient/a", "Patient/b"})}
    assert state.review_candidates(rule) == []
    # the gender rule needs a gender on both
    assert len(groups(state, IdentityPolicy(demographic_rule="name-birthdate-gender"))) == 2


def test_latest_assertion_wins_and_unlink_beats_the_enterprise_id() -> None:
    a, b = "Patient/a", "Patient/b"
    base = [reg(a, (EMPI, "E1")), reg(b, (EMPI, "E1"))]
    unlink = LinkAssertion.of("op-1", a, b, "unlink", 10)
    relink = LinkAssertion.of("op-2", a, b, "link", 20)
    assert groups(IdentityState().apply_all([*base, unlink])) == {frozenset({a}), frozenset({b})}
    assert groups(IdentityState().apply_all([relink, *base, unlink])) == {frozenset({a, b})}
    # an unlinked pair is no longer a review candidate: the operator decided
    demo = "d" * 64
    state = IdentityState().apply_all([reg(a, demo=demo), reg(b, demo=demo), unlink])
    assert state.review_candidates(POLICY) == []


def test_unlink_removes_one_connection_a_third_record_may_still_connect() -> None:
    a, b, c = "Patient/a", "Patient/b", "Patient/c"
    state = IdentityState().apply_all([
        reg(a, (EMPI, "E1")), reg(b, (EMPI, "E1")), reg(c, (EMPI, "E1")),
        LinkAssertion.of("x", a, c, "unlink", 5),
    ])
    assert groups(state) == {frozenset({a, b, c})}
    state.apply(LinkAssertion.of("y", a, b, "unlink", 6))
    assert groups(state) == {frozenset({a}), frozenset({b, c})}


def test_a_re_sent_patient_link_is_not_a_new_statement() -> None:
    retired = patient(HOSPITAL, "old", active=False, links=((patient_id(HOSPITAL, "new"), "replaced-by"),))
    first = assertions_from_patient(retired, 100)
    again = assertions_from_patient(retired, 300)  # a later version still carrying the same link
    assert [x.assertion_id for x in first] == [x.assertion_id for x in again]
    pair = first[0].patients
    unlink = LinkAssertion.of("operator", *pair, "unlink", 200)
    state = IdentityState().apply_all([*first, unlink, *again])
    assert len(groups(state)) == 2  # the operator's later unlink stands


def test_linkage_versions_and_merges() -> None:
    linkage: dict[str, Any] = {"resourceType": "Linkage", "id": "L1", "active": True, "item": [
        {"type": "source", "resource": {"reference": "Patient/s"}},
        {"type": "historical", "resource": {"reference": "Patient/r"}}]}
    [merge] = assertions_from_linkage(linkage, 1, 10)
    assert merge.kind == "merge" and merge.survivor == "Patient/s"
    [unlink] = assertions_from_linkage({**linkage, "active": False}, 2, 20)
    assert unlink.kind == "unlink" and unlink.assertion_id != merge.assertion_id
    assert assertions_from_linkage({**linkage, "item": linkage["item"][:1]}, 3, 30) == []

    state = IdentityState().apply_all([merge])
    person = state.persons(POLICY)
    members = [m for m, p in person.items() if p == person["Patient/r"]]
    served = overlay_links({"resourceType": "Patient", "id": "r", "link": [
        {"other": {"reference": "Patient/zzz"}, "type": "seealso"},  # stale identity link: replaced
        {"other": {"reference": "RelatedPerson/k"}, "type": "seealso"}]}, members, state.effective_pairs())
    assert served["link"] == [{"other": {"reference": "RelatedPerson/k"}, "type": "seealso"},
                              {"other": {"reference": "Patient/s"}, "type": "replaced-by"}]


def test_deleted_patient_stops_linking() -> None:
    a, b = "Patient/a", "Patient/b"
    state = IdentityState().apply_all([reg(a, (EMPI, "E"), at=1), reg(b, (EMPI, "E"), at=1),
                                       reg(b, at=5, active=False)])
    assert groups(state) == {frozenset({a}), frozenset({b})}
    deleted = registration_of({"id": "b"}, 5, "deleted", deleted=True)
    assert deleted.active is False and deleted.identifiers == frozenset()


# --- properties -------------------------------------------------------------------------------------------

PATIENTS = [f"Patient/p{i}" for i in range(6)]
registrations = st.builds(
    lambda p, ids, at, demo: Registration(p, frozenset((EMPI, v) for v in ids), demo, None, at, f"t{at}"),
    st.sampled_from(PATIENTS), st.frozensets(st.sampled_from(["E1", "E2", "E3"]), max_size=2),
    st.integers(0, 50), st.sampled_from([None, "demo-1", "demo-2"]))
assertions = st.builds(
    lambda pair, kind, at, n: LinkAssertion.of(f"a{n}", pair[0], pair[1], kind, at,
                                               survivor=pair[0] if kind == "merge" else None),
    st.lists(st.sampled_from(PATIENTS), min_size=2, max_size=2, unique=True),
    st.sampled_from(["link", "merge", "unlink"]), st.integers(0, 50), st.integers(0, 12))
events = st.lists(st.one_of(registrations, assertions), max_size=25)
policies = st.sampled_from([POLICY, IdentityPolicy(demographic_rule="name-birthdate")])


@given(events=events, data=st.data(), policy=policies)
@settings(max_examples=300, deadline=None)
def test_any_order_converges_to_the_same_persons(events: list[Any], data: st.DataObject,
                                                 policy: IdentityPolicy) -> None:
    reference = IdentityState().apply_all(events)
    shuffled = data.draw(st.permutations(events))
    repeated = data.draw(st.lists(st.sampled_from(events), max_size=10)) if events else []
    other = IdentityState().apply_all([*shuffled, *repeated])
    assert other.persons(policy) == reference.persons(policy)
    assert other.review_candidates(policy) == reference.review_candidates(policy)
    assert other.effective_pairs() == reference.effective_pairs()


def _patient_record(patient_resource: dict[str, Any], offset: int, at: int) -> InboundBundle:
    event = Event(CLINIC, patient_resource["id"], [patient_resource])
    out = event.record("p")
    return InboundBundle(out.topic, 0, offset, at, out.key, out.value, dict(out.headers))


def _linkage_record(a: str, b: str, active: bool, offset: int, at: int) -> InboundBundle:
    import orjson

    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {
        "resourceType": "Linkage", "id": f"L-{min(a, b)}-{max(a, b)}", "active": active,
        "item": [{"type": "source", "resource": {"reference": f"Patient/{a}"}},
                 {"type": "alternate", "resource": {"reference": f"Patient/{b}"}}]}}]}
    return InboundBundle("t", 1, offset, at, "admin|x", orjson.dumps(bundle), {"ce_id": f"link-{offset}"})


STORE_PATIENTS = ["s0", "s1", "s2", "s3", "s4"]
store_events = st.lists(st.one_of(
    st.tuples(st.just("patient"), st.sampled_from(STORE_PATIENTS), st.sampled_from([None, "E1", "E2"]),
              st.sampled_from(["Ng", "Ngo"])),
    st.tuples(st.just("linkage"), st.lists(st.sampled_from(STORE_PATIENTS), min_size=2, max_size=2, unique=True),
              st.booleans(), st.none()),
), min_size=1, max_size=12)


@given(steps=store_events, split=st.integers(1, 4))
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_store_incremental_persons_equal_the_pure_grouping(store_factory: StoreFactory, steps: list[Any],
                                                           split: int) -> None:
    policy = IdentityPolicy(demographic_rule="name-birthdate")
    store = store_factory(policy)
    records: list[InboundBundle] = []
    for offset, (kind, who, arg, family) in enumerate(steps):
        at = 1_700_000_000_000 + offset * 1000
        if kind == "patient":
            resource = patient(SUD_PROGRAM, who, family=family, empi=arg)
            resource["id"] = who
            records.append(_patient_record(resource, offset, at))
        else:
            records.append(_linkage_record(who[0], who[1], arg, offset, at))
    for i in range(0, len(records), split):  # several ingest transactions: the grouping is kept incrementally
        store.ingest([prepare_bundle(r) for r in records[i:i + split]])
    expected = store.identity_state().persons(policy)
    for node, person in expected.items():
        stored = set(store.person(node).members)
        assert stored == {n for n, p in expected.items() if p == person}


def test_two_instances_ingesting_one_persons_patients_at_once_link_them(postgres_server: Any) -> None:
    """Two record instances on one PostgreSQL ingest, at the same moment, two Patients that share an enterprise
    id (one person registered by two systems, whose bundles are on two partitions): each pair is one person,
    however the two transactions interleave."""
    import threading

    from services.record.store import open_store

    policy = IdentityPolicy(frozenset({EMPI}))
    dsn = postgres_server.fresh_schema_dsn()
    stores = [open_store(dsn, policy), open_store(dsn, policy)]
    pairs = 40
    together = threading.Barrier(2, timeout=60)

    def ingest(side: int) -> None:
        for i in range(pairs):
            resource = patient(CLINIC if side == 0 else HOSPITAL, f"{i}", empi=f"E{i}")
            resource["id"] = f"pair{i}-{side}"
            bundle = _patient_record(resource, i, 1_700_000_000_000 + i)
            together.wait()
            stores[side].ingest([prepare_bundle(bundle)])

    try:
        side_by_side(ingest, on_failure=together.abort)
        unlinked = [i for i in range(pairs)
                    if stores[0].person(f"Patient/pair{i}-0").members != (f"Patient/pair{i}-0", f"Patient/pair{i}-1")]
    finally:
        for s in stores:
            s.close()
    assert unlinked == []
