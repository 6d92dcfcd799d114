"""Poison records: a bundle that can never be stored is dead-lettered with its reason and the rest of its batch is
stored (SQLite and PostgreSQL, the same tests); an outage stores nothing and is retried.

Kinds of poison: U+0000 and other characters FHIR text may not hold (refused at the record's edge), a value the
database refuses (refused by the store itself: the edge is bypassed on purpose), invalid JSON, and Bundles the
record cannot apply (malformed shapes that once raised TypeError in the indexer).
"""

from __future__ import annotations

import dataclasses
import random
import sqlite3
from typing import Any

import orjson
import psycopg
import pytest

from services.common.sql import postgres_refusal, sqlite_refusal
from services.common.topics import DEAD_LETTERS, HEADER_DEAD_LETTER_REASON
from services.record.errors import ForbiddenCharacter, StoreUnavailable
from services.record.ingest import InboundBundle, PreparedBundle, prepare_bundle
from services.record.store import SqlStore
from tests.kafka_helpers import header, read_all
from tests.record.conftest import RecordHarness
from tests.record.fhir_data import CLINIC, T0, Event, iso, patient, patient_id, phq9_total, unique

pytestmark = pytest.mark.postgres

CANARY_FAMILY = "Zqxcanaryfamily"
# larger than a PostgreSQL index row may be (~2.7 kB, after compression): random, so it does not compress
INCOMPRESSIBLE = random.Random(11).randbytes(6000).hex()  # noqa: S311 - test data, not a secret


def event_for(mrn: str, **patient_fields: Any) -> Event:
    pid = patient_id(CLINIC, mrn)
    return Event(CLINIC, mrn, [patient(CLINIC, mrn, **patient_fields), phq9_total(CLINIC, pid, mrn, iso(T0), 11)])


def inbound_of(event: Event, offset: int, value: bytes | None = None) -> InboundBundle:
    out = event.record("t")
    return InboundBundle(out.topic, 0, offset, 1_700_000_000_000 + offset, out.key,
                         value if value is not None else out.value, dict(out.headers))


def prepared(event: Event, offset: int) -> PreparedBundle:
    return prepare_bundle(inbound_of(event, offset))


def with_patient_index(bundle: PreparedBundle, **index_changes: Any) -> PreparedBundle:
    """The bundle with its Patient's search index changed: data the edge would never let through, so the store's
    own refusal is what is tested."""
    resources = []
    for resource in bundle.resources:
        if resource.resource_type == "Patient" and resource.index is not None:
            resource = dataclasses.replace(resource, index=dataclasses.replace(resource.index, **index_changes))
        resources.append(resource)
    return dataclasses.replace(bundle, resources=tuple(resources))


# --- the record's edge ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family, code_point", [
    ("Riv\x00era", "U+0000"),
    ("Riv\x1bera", "U+001B"),
    ("Riv\ufffeera", "U+FFFE"),
    ("Riv\ufdd0era", "U+FDD0"),
    ("Riv\U0001ffffera", "U+1FFFF"),
])
def test_characters_fhir_text_may_not_hold_are_refused_naming_the_code_point_not_the_text(
        family: str, code_point: str) -> None:
    event = event_for(unique("nul-"), family=family)
    with pytest.raises(ForbiddenCharacter) as refused:
        prepared(event, 0)
    assert refused.value.reason == "forbidden-character"
    assert code_point in refused.value.message and "entry[0] (Patient)" in refused.value.message
    assert "Riv" not in refused.value.message


def test_forbidden_characters_in_keys_raw_utf8_and_surrogate_escapes_are_found() -> None:
    event = event_for(unique("nul-"))
    bundle = orjson.loads(orjson.dumps(event.bundle()))
    bundle["entry"][1]["resource"]["note"] = [{"text": "ok", "x\x00": 1}]
    with pytest.raises(ForbiddenCharacter, match=r"entry\[1\] \(Observation\) holds U\+0000"):
        prepare_bundle(inbound_of(event, 0, orjson.dumps(bundle)))
    raw_nonchar = event.record("t").value.replace(b'"Rivera"', '"Riv\uffffera"'.encode())
    with pytest.raises(ForbiddenCharacter, match=r"U\+FFFF"):
        prepare_bundle(inbound_of(event, 0, raw_nonchar))
    escaped_pair = event.record("t").value.replace(b'"Rivera"', b'"Riv\\ud83f\\udffeera"')
    with pytest.raises(ForbiddenCharacter, match=r"U\+1FFFE"):
        prepare_bundle(inbound_of(event, 0, escaped_pair))


def test_text_that_only_looks_like_an_escape_and_ordinary_whitespace_are_kept() -> None:
    event = event_for(unique("ok-"), family="Back\\u0000slash\tTab\nNewline é")
    assert b"\\\\u0000" in event.record("t").value  # the JSON holds a backslash, then "u0000": plain text
    bundle = prepared(event, 0)
    assert bundle.resources[0].content is not None
    assert bundle.resources[0].content["name"][0]["family"] == "Back\\u0000slash\tTab\nNewline é"


@pytest.mark.parametrize("patient_extra", [
    {"name": [{"family": "Rivera", "given": 5}]},
    {"name": "Rivera"},
    {"identifier": 7, "meta": {"security": "R"}},
    {"link": [{"other": {"reference": 5}, "type": "seealso"}]},
    {"link": {"other": "Patient/x"}},
])
def test_a_malformed_patient_is_indexed_without_crashing(store: SqlStore, patient_extra: dict[str, Any]) -> None:
    event = event_for(unique("shape-"))
    bundle = orjson.loads(orjson.dumps(event.bundle()))  # a copy: the event's own resources stay valid
    bundle["entry"][0]["resource"].update(patient_extra)
    report = store.ingest([prepare_bundle(inbound_of(event, 0, orjson.dumps(bundle)))])
    assert report.versions == 2 and not report.refused


# --- the store refuses data: the bundle is left out, the batch goes on ------------------------------------------


def poison_kinds(backend: str) -> list[tuple[str, Any]]:
    kinds: list[tuple[str, Any]] = [
        # a token twice in one resource's index breaks the index's primary key (23505 / SQLITE_CONSTRAINT)
        ("duplicate index row", lambda b: with_patient_index(
            b, tokens=b.resources[0].index.tokens + b.resources[0].index.tokens[:1])),
        # a date beyond 64 bits: bigint out of range (22003) / OverflowError binding it
        ("value out of range", lambda b: with_patient_index(b, date_start=2**70)),
    ]
    if backend == "postgres":  # SQLite stores these; PostgreSQL cannot
        kinds += [
            ("U+0000 in text", lambda b: with_patient_index(b, strings=(("name", "riv\x00era"),))),
            ("index row too large", lambda b: with_patient_index(
                b, tokens=(("identifier", "urn:x", INCOMPRESSIBLE),))),
        ]
    return kinds


def test_a_refused_bundle_is_reported_and_every_other_bundle_of_the_batch_is_stored(
        store_factory: Any) -> None:
    store: SqlStore = store_factory()
    for name, poison in poison_kinds(store_factory.backend):
        good = [event_for(unique("good-")) for _ in range(7)]
        bad = event_for(unique("bad-"))
        batch = [prepared(e, i) for i, e in enumerate(good[:3])]
        batch.append(poison(prepared(bad, 3)))
        batch += [prepared(e, 4 + i) for i, e in enumerate(good[3:])]
        report = store.ingest(batch)
        assert [(r.offset, r.event_key) for r in report.refused] == [(3, f"event:{bad.event_id}")], name
        assert report.refused[0].code and "riv" not in report.refused[0].code
        assert report.versions == 14, name  # 7 good bundles of 2 resources
        for event in good:
            assert store.read("Patient", patient_id(CLINIC, event.mrn)) is not None, name
        assert store.read("Patient", patient_id(CLINIC, bad.mrn)) is None, name
        again = store.ingest(batch)  # a retry: the good ones are already there, the bad one refused again
        assert again.skipped_bundles == 7 and again.versions == 0 and len(again.refused) == 1, name


def test_a_batch_of_only_refused_bundles_stores_nothing_and_refuses_each(store: SqlStore) -> None:
    events = [event_for(unique("bad-")) for _ in range(3)]
    batch = [with_patient_index(prepared(e, i), date_start=2**70) for i, e in enumerate(events)]
    report = store.ingest(batch)
    assert sorted(r.offset for r in report.refused) == [0, 1, 2]
    assert report.versions == 0
    assert all(store.read("Patient", patient_id(CLINIC, e.mrn)) is None for e in events)


def test_the_refusal_codes_tell_data_from_outages() -> None:
    assert sqlite_refusal(sqlite3.IntegrityError("UNIQUE constraint failed")) is not None
    assert sqlite_refusal(OverflowError("Python int too large")) == "OverflowError"
    assert sqlite_refusal(sqlite3.OperationalError("database is locked")) is None
    assert sqlite_refusal(sqlite3.OperationalError("disk I/O error")) is None
    assert postgres_refusal(psycopg.errors.CharacterNotInRepertoire()) is not None
    assert postgres_refusal(psycopg.errors.UniqueViolation()) is not None
    assert postgres_refusal(psycopg.errors.ProgramLimitExceeded()) is not None
    assert postgres_refusal(psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")) \
        == "client-data-error"
    assert postgres_refusal(psycopg.OperationalError("server closed the connection unexpectedly")) is None
    assert postgres_refusal(psycopg.errors.AdminShutdown()) is None
    assert postgres_refusal(psycopg.errors.DiskFull()) is None
    assert postgres_refusal(psycopg.errors.SerializationFailure()) is None


def test_an_outage_stores_nothing_and_is_not_a_refusal(store_factory: Any) -> None:
    if store_factory.backend != "postgres":
        pytest.skip("a PostgreSQL server can be cut off from its clients; SQLite is a file in the process")
    store: SqlStore = store_factory()
    store.ping()  # the pool holds a connection now
    events = [event_for(unique("outage-")) for _ in range(3)]
    pids = [conn.info.backend_pid for conn in store.db.pool._all]  # this store's connections only
    assert pids
    with psycopg.connect(store.dsn, autocommit=True) as admin:
        for pid in pids:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(StoreUnavailable):
        store.ingest([prepared(e, i) for i, e in enumerate(events)])
    assert all(store.read("Patient", patient_id(CLINIC, e.mrn)) is None for e in events)
    report = store.ingest([prepared(e, i) for i, e in enumerate(events)])  # the retry on a new connection
    assert report.versions == 6 and not report.refused


# --- through Kafka: the consumer dead-letters each poison and the other patients' data flows ---------------------


def test_poison_records_on_the_bundle_topic_are_dead_lettered_with_reasons_while_others_flow(
        record: RecordHarness) -> None:
    prefix = record.settings.topic_prefix
    good = [event_for(unique("flow-")) for _ in range(6)]
    nul = event_for(unique("nul-"), family=CANARY_FAMILY + "\x00")
    huge = event_for(unique("huge-"))
    huge.resources[0]["identifier"].append({"system": "urn:x", "value": INCOMPRESSIBLE})
    not_json = event_for(unique("json-"))
    unapplicable = event_for(unique("apply-"))
    shapes = unapplicable.bundle()
    shapes["entry"].append({"fullUrl": "urn:uuid:nothing"})  # an entry without a resource
    records = [good[0].record(prefix), nul.record(prefix), good[1].record(prefix)]
    broken = not_json.record(prefix)
    records.append(dataclasses.replace(broken, value=broken.value[:-5]))
    records.append(good[2].record(prefix))
    records.append(dataclasses.replace(unapplicable.record(prefix), value=orjson.dumps(shapes)))
    records.append(huge.record(prefix))
    records += [e.record(prefix) for e in good[3:]]
    record.publish_raw(records)

    for event in good:
        assert record.store.read("Patient", patient_id(CLINIC, event.mrn)) is not None
    expected = {nul.event_id: "forbidden-character", not_json.event_id: "bad-bundle",
                unapplicable.event_id: "bad-bundle"}
    if record.backend == "postgres":
        expected[huge.event_id] = "store-refused"  # PostgreSQL's index rows are at most ~2.7 kB
    else:
        assert record.store.read("Patient", patient_id(CLINIC, huge.mrn)) is not None
    letters = read_all(record.settings, DEAD_LETTERS.name(prefix),
                       until=lambda rs: {header(r, "ce_carebuseventid") for r in rs} >= set(expected))
    reasons = {header(r, "ce_carebuseventid"): header(r, HEADER_DEAD_LETTER_REASON) for r in letters}
    assert {k: reasons.get(k) for k in expected} == expected
    for letter in letters:
        body = orjson.loads(letter.value)
        assert body["stage"] == "record" and body["reason"] == header(letter, HEADER_DEAD_LETTER_REASON)
        assert CANARY_FAMILY.lower() not in body["message"].lower() and INCOMPRESSIBLE[:50] not in body["message"]
    assert record.service.ingestor.healthy
