# ruff: noqa: S608 -- SQL is assembled from fixed fragments and placeholders; every value is a bound parameter
"""The record store in SQL, shared by the SQLite and PostgreSQL implementations.

Tables (DDL in :func:`schema`):

* ``resource_version`` - every version of every resource (the served JSON, its hash, patient, labels);
* ``resource_current`` - the current version of each resource, with the columns search sorts and filters on
  (patient, date range, clinical time, lastUpdated, clearance bits);
* ``search_token`` / ``search_string`` - the token and string search index of current versions;
* ``ingested_event`` - which event (and bundle content) has been ingested: replays are skipped;
* ``identity_registration`` / ``identity_identifier`` / ``identity_assertion`` - the identity event state
  (see services/record/identity.py) and ``identity_member`` - the person each Patient belongs to, kept
  current by recomputing only the part of the graph an ingest touched.

Dialects differ only in column types, the parameter placeholder, how a write transaction begins, which
exceptions come from the database and which of those mean "this data can never be stored" (:attr:`Dialect.refusal`).

Failures are of two kinds, told apart in one place (:meth:`SqlStore.ingest`):

* an outage (connection lost, server shutting down, disk full, lock timeout, ...) - StoreUnavailable: the whole
  batch is rolled back and retried later, nothing is committed;
* a refusal of the data itself (a value the database cannot hold, such as U+0000 in PostgreSQL text, a value out
  of range, an index row too large, a constraint broken) - the batch is bisected inside its transaction (one
  savepoint per part) until the bundles the store refuses are isolated; every other bundle is stored and the
  refused ones are listed in :attr:`IngestReport.refused` with a code (SQLSTATE or error class, never the
  database's message, which may quote the value).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from services.common.disclosure import ALL_CLASSES, CLASS_CODES, ORDINARY, restriction_of
from services.record.changes import OutboxRow
from services.record.errors import StoreUnavailable
from services.record.identity import (
    IdentityPolicy,
    IdentityState,
    LinkAssertion,
    Registration,
    ReviewCandidate,
    effective_pairs,
    persons,
    review_candidates,
)
from services.record.indexing import normalize_text
from services.record.ingest import CurrentVersion, NewVersion, PreparedBundle, WritePlan, plan_versions
from services.record.search import (
    Criterion,
    DateCriterion,
    IdCriterion,
    PatientCriterion,
    SearchQuery,
    StringCriterion,
    TokenCriterion,
)
from services.record.store import outbox
from services.record.store.base import (
    EverythingQuery,
    HistoryQuery,
    IngestReport,
    Page,
    Person,
    Refusal,
    StoredRow,
    View,
    merge_reports,
)

log = logging.getLogger(__name__)

CHUNK = 500
SCHEMA_VERSION = "1"
TWO_PHASE_PAGE = 100  # SQLite: pages larger than this sort rowids, then fetch the rows
_ROW = "resource_type, id, version_id, last_updated, deleted, patient_ref, restriction, body"
_C_ROW = ", ".join("c." + column for column in _ROW.split(", "))


class Cursor(Protocol):
    def fetchall(self) -> list[Any]: ...

    def fetchone(self) -> Any: ...


class Connection(Protocol):
    def execute(self, sql: Any, params: Any = ...) -> Any: ...

    def cursor(self) -> Any: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Dialect:
    name: str
    placeholder: str
    text: str
    bigint: str
    blob: str
    begin: str
    errors: tuple[type[BaseException], ...]
    # the code of an error that refuses the data (never retried), or None for an outage
    refusal: Callable[[BaseException], str | None] = lambda exc: None
    rowid: bool = False  # tables have a rowid (SQLite)
    copy: bool = False  # COPY FROM STDIN and multi-row statements (PostgreSQL)
    # run first in the schema transaction, so instances starting together on one database create it one at a
    # time (concurrent CREATE TABLE IF NOT EXISTS races in PostgreSQL's catalogue)
    schema_lock: str | None = None

    def sql(self, text: str) -> str:
        return text if self.placeholder == "?" else text.replace("?", self.placeholder)


def schema(d: Dialect) -> list[str]:
    t, b, blob = d.text, d.bigint, d.blob
    return [
        f"""CREATE TABLE IF NOT EXISTS resource_version (
            resource_type {t} NOT NULL, id {t} NOT NULL, version_id INTEGER NOT NULL,
            last_updated {b} NOT NULL, deleted SMALLINT NOT NULL, content_hash {t} NOT NULL,
            patient_ref {t}, restriction INTEGER NOT NULL, body {blob},
            PRIMARY KEY (resource_type, id, version_id))""",
        "CREATE INDEX IF NOT EXISTS resource_version_updated ON resource_version (resource_type, last_updated)",
        f"""CREATE TABLE IF NOT EXISTS resource_current (
            resource_type {t} NOT NULL, id {t} NOT NULL, version_id INTEGER NOT NULL,
            last_updated {b} NOT NULL, deleted SMALLINT NOT NULL, content_hash {t} NOT NULL,
            patient_ref {t}, restriction INTEGER NOT NULL, date_start {b}, date_end {b}, clinical_time {b},
            src_time {b} NOT NULL, src_partition INTEGER NOT NULL, src_offset {b} NOT NULL,
            body {blob}, PRIMARY KEY (resource_type, id))""",
        "CREATE INDEX IF NOT EXISTS resource_current_patient "
        "ON resource_current (patient_ref, resource_type, clinical_time)",
        "CREATE INDEX IF NOT EXISTS resource_current_date ON resource_current (resource_type, date_start)",
        "CREATE INDEX IF NOT EXISTS resource_current_updated ON resource_current (resource_type, last_updated)",
        f"""CREATE TABLE IF NOT EXISTS search_token (
            resource_type {t} NOT NULL, id {t} NOT NULL, param {t} NOT NULL, system {t} NOT NULL,
            code {t} NOT NULL, patient_ref {t}, PRIMARY KEY (resource_type, id, param, system, code))""",
        # code first, then the patient: "this person's PHQ-9 totals" is a narrow range however many
        # patients share the code
        "CREATE INDEX IF NOT EXISTS search_token_lookup "
        "ON search_token (resource_type, param, code, patient_ref, system)",
        f"""CREATE TABLE IF NOT EXISTS search_string (
            resource_type {t} NOT NULL, id {t} NOT NULL, param {t} NOT NULL, value {t} NOT NULL,
            PRIMARY KEY (resource_type, id, param, value))""",
        "CREATE INDEX IF NOT EXISTS search_string_lookup ON search_string (resource_type, param, value, id)",
        f"""CREATE TABLE IF NOT EXISTS ingested_event (
            event_key {t} PRIMARY KEY, bundle_hash {t} NOT NULL, partition_no INTEGER NOT NULL,
            offset_no {b} NOT NULL, record_time {b} NOT NULL)""",
        f"""CREATE TABLE IF NOT EXISTS identity_registration (
            patient_ref {t} PRIMARY KEY, identifiers {t} NOT NULL, demographics {t}, gender {t},
            asserted_at {b} NOT NULL, tiebreak {t} NOT NULL, active SMALLINT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS identity_registration_demo ON identity_registration (demographics)",
        f"""CREATE TABLE IF NOT EXISTS identity_identifier (
            patient_ref {t} NOT NULL, system {t} NOT NULL, value {t} NOT NULL,
            PRIMARY KEY (patient_ref, system, value))""",
        "CREATE INDEX IF NOT EXISTS identity_identifier_value ON identity_identifier (value, system)",
        f"""CREATE TABLE IF NOT EXISTS identity_assertion (
            assertion_id {t} PRIMARY KEY, ref_a {t} NOT NULL, ref_b {t} NOT NULL, kind {t} NOT NULL,
            survivor {t}, asserted_at {b} NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS identity_assertion_a ON identity_assertion (ref_a)",
        "CREATE INDEX IF NOT EXISTS identity_assertion_b ON identity_assertion (ref_b)",
        f"CREATE TABLE IF NOT EXISTS identity_member (patient_ref {t} PRIMARY KEY, person_id {t} NOT NULL)",
        "CREATE INDEX IF NOT EXISTS identity_member_person ON identity_member (person_id)",
        f"CREATE TABLE IF NOT EXISTS store_meta (key {t} PRIMARY KEY, value {t} NOT NULL)",
        f"CREATE TABLE IF NOT EXISTS resource_type_stored (resource_type {t} PRIMARY KEY)",
        *outbox.schema(d),
    ]


class ConnectionPool:
    """A small blocking pool: at most ``size`` connections, made lazily, dropped when they fail."""

    def __init__(self, factory: Callable[[], Connection], size: int, errors: tuple[type[BaseException], ...]):
        self._factory = factory
        self._errors = errors
        self._idle: queue.LifoQueue[Connection] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(size)
        self._all: list[Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    @contextlib.contextmanager
    def connection(self) -> Iterator[Connection]:
        if self._closed:
            raise StoreUnavailable("the record store is closed")
        self._slots.acquire()
        conn: Connection | None = None
        try:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                try:
                    conn = self._factory()
                except self._errors as exc:
                    raise StoreUnavailable(f"cannot connect to the record store: {type(exc).__name__}") from exc
                with self._lock:
                    self._all.append(conn)
            try:
                yield conn
            except self._errors:
                self._discard(conn)
                conn = None
                raise
            if conn is not None:
                self._idle.put(conn)
        finally:
            self._slots.release()

    def _discard(self, conn: Connection) -> None:
        with self._lock:
            if conn in self._all:
                self._all.remove(conn)
        with contextlib.suppress(Exception):
            conn.close()

    def close(self) -> None:
        self._closed = True
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            with contextlib.suppress(Exception):
                conn.close()


def _chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _row(r: Sequence[Any]) -> StoredRow:
    # both drivers return int for the integer columns and bytes for the body: no conversions on the hot path
    return StoredRow(r[0], r[1], r[2], r[3], bool(r[4]), r[5], r[6], r[7])


class _Where:
    """A WHERE clause and its parameters, built up condition by condition."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.params: list[Any] = []

    def add(self, sql: str, *params: Any) -> None:
        self.parts.append(sql)
        self.params.extend(params)

    def sql(self) -> str:
        return " AND ".join(self.parts) if self.parts else "1=1"


_DATE_SQL = {
    "eq": "({s} >= ? AND {e} <= ?)",
    "ne": "NOT ({s} >= ? AND {e} <= ?)",
    "gt": "{e} > ?",
    "lt": "{s} < ?",
    "ge": "{e} >= ?",
    "le": "{s} <= ?",
    "sa": "{s} > ?",
    "eb": "{e} < ?",
}


def _date_params(prefix: str, start: int, end: int) -> tuple[int, ...]:
    match prefix:
        case "eq" | "ne":
            return start, end
        case "gt" | "le" | "sa":
            return (end,)
        case _:  # lt, ge, eb
            return (start,)


_ORDER = {
    None: "c.id ASC",
    "_id": "c.id ASC",
    "-_id": "c.id DESC",
    "date": "c.clinical_time ASC NULLS LAST, c.id ASC",
    "-date": "c.clinical_time DESC NULLS LAST, c.id ASC",
    "_lastUpdated": "c.last_updated ASC, c.id ASC",
    "-_lastUpdated": "c.last_updated DESC, c.id ASC",
}


class SqlStore:
    """:class:`services.record.store.base.RecordStore` over a DB-API connection pool."""

    dsn: str = ""  # set by the implementation; may carry a password: never log it

    def __init__(self, dialect: Dialect, pool: ConnectionPool, policy: IdentityPolicy) -> None:
        self.dialect = dialect
        self._pool = pool
        self.policy = policy
        self._write_lock = threading.Lock()

    # --- plumbing -------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Connection]:
        try:
            with self._pool.connection() as conn:
                yield conn
        except self.dialect.errors as exc:
            raise StoreUnavailable(f"record store failed: {type(exc).__name__}") from exc

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Connection]:
        with self._write_lock, self._connection() as conn:
            conn.execute(self.dialect.begin)
            try:
                yield conn
            except BaseException:
                with contextlib.suppress(*self.dialect.errors):
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _all(self, conn: Connection, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        cur = conn.execute(self.dialect.sql(sql), tuple(params))
        rows: list[Any] = cur.fetchall()
        return rows

    def _many(self, conn: Connection, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            cur = conn.cursor()
            cur.executemany(self.dialect.sql(sql), rows)
            cur.close()

    def _insert(self, conn: Connection, table: str, columns: str, rows: Sequence[Sequence[Any]]) -> None:
        """Append new rows: COPY on PostgreSQL (one stream, no per-row statement), executemany on SQLite."""
        if not rows:
            return
        if self.dialect.copy:
            with conn.cursor() as cur, cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            width = columns.count(",") + 1
            self._many(conn, f"INSERT INTO {table} ({columns}) VALUES ({_marks(width)})", rows)

    def _upsert(
        self, conn: Connection, table: str, columns: str, key: str, rows: Sequence[Sequence[Any]], pg_types: str
    ) -> None:
        """Insert or replace rows (``key`` unique within ``rows``). PostgreSQL: one statement over unnest()ed
        column arrays (constant text, so it is prepared once; ``pg_types`` are the columns' array types)."""
        if not rows:
            return
        names = [c.strip() for c in columns.split(",")]
        keys = {k.strip() for k in key.split(",")}
        updates = ", ".join(f"{c} = excluded.{c}" for c in names if c not in keys)
        tail = f"ON CONFLICT ({key}) DO UPDATE SET {updates}" if updates else f"ON CONFLICT ({key}) DO NOTHING"
        if not self.dialect.copy:
            self._many(conn, f"INSERT INTO {table} ({columns}) VALUES ({_marks(len(names))}) {tail}", rows)
            return
        arrays = ", ".join(f"?::{t.strip()}[]" for t in pg_types.split(","))
        conn.execute(
            self.dialect.sql(f"INSERT INTO {table} ({columns}) SELECT * FROM unnest({arrays}) {tail}"),
            [list(column) for column in zip(*rows, strict=True)],
        )

    def _delete_keys(self, conn: Connection, table: str, keys: Sequence[tuple[str, str]]) -> None:
        """DELETE the rows of these (resource_type, id) keys."""
        if not keys:
            return
        if not self.dialect.copy:
            self._many(conn, f"DELETE FROM {table} WHERE resource_type = ? AND id = ?", keys)
            return
        conn.execute(
            self.dialect.sql(
                f"DELETE FROM {table} WHERE (resource_type, id) IN (SELECT * FROM unnest(?::text[], ?::text[]))"
            ),
            [[k[0] for k in keys], [k[1] for k in keys]],
        )

    def initialize(self) -> None:
        """Create the schema (idempotent) and rebuild persons when the identity policy changed."""
        with self._transaction() as conn:
            if self.dialect.schema_lock:
                conn.execute(self.dialect.schema_lock)
            for statement in schema(self.dialect):
                conn.execute(statement)
            version = self._all(conn, "SELECT value FROM store_meta WHERE key = ?", ("schema_version",))
            if version and version[0][0] != SCHEMA_VERSION:
                # no in-place migrations: rebuild by replaying the bundle topic into an empty store
                raise StoreUnavailable(
                    f"record store schema {version[0][0]} is not {SCHEMA_VERSION}: replay the topic into a new store"
                )
            rules = self._all(conn, "SELECT value FROM store_meta WHERE key = ?", ("restriction_rules",))
            if not rules or rules[0][0] != restriction_rules_fingerprint():
                self._recompute_restrictions(conn)
                self._many(
                    conn,
                    "INSERT INTO store_meta (key, value) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    [("restriction_rules", restriction_rules_fingerprint())],
                )
            rows = self._all(conn, "SELECT value FROM store_meta WHERE key = ?", ("identity_policy",))
            fingerprint = self.policy.fingerprint()
            if not rows or rows[0][0] != fingerprint:
                self._rebuild_persons(conn)
                self._many(
                    conn,
                    "INSERT INTO store_meta (key, value) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    [("identity_policy", fingerprint)],
                )
            if not version:
                self._many(
                    conn, "INSERT INTO store_meta (key, value) VALUES (?, ?)", [("schema_version", SCHEMA_VERSION)]
                )

    def _recompute_restrictions(self, conn: Connection) -> None:
        """Re-derive every row's ``restriction`` from its labels (the label classes changed since it was
        stored). A deletion keeps the classes of the newest stored body before it."""
        for table, keys in (("resource_version", "resource_type, id, version_id"), ("resource_current", None)):
            if keys is None:
                rows = self._all(conn, "SELECT c.resource_type, c.id, v.body FROM resource_current c JOIN "
                                 "resource_version v ON v.resource_type = c.resource_type AND v.id = c.id "
                                 "WHERE v.body IS NOT NULL ORDER BY v.version_id")
                latest = {(r[0], r[1]): r[2] for r in rows}
                updates = [(_restriction_of_body(body), rtype, rid) for (rtype, rid), body in latest.items()]
                self._many(conn, "UPDATE resource_current SET restriction = ? WHERE resource_type = ? AND id = ?",
                           updates)
            else:
                rows = self._all(conn, f"SELECT {keys}, body FROM {table} WHERE body IS NOT NULL")
                self._many(
                    conn,
                    f"UPDATE {table} SET restriction = ? WHERE resource_type = ? AND id = ? AND version_id = ?",
                    [(_restriction_of_body(r[3]), r[0], r[1], r[2]) for r in rows],
                )
        if rows:
            log.info("stored restrictions recomputed for new label classes")

    def ping(self) -> None:
        with self._connection() as conn:
            self._all(conn, "SELECT 1")

    def close(self) -> None:
        self._pool.close()

    # --- ingest ---------------------------------------------------------------------------------------

    def ingest(self, bundles: Sequence[PreparedBundle]) -> IngestReport:
        if not bundles:
            return IngestReport(0, 0, 0, 0, 0)
        with self._transaction() as conn:
            return self._ingest_isolating(conn, list(bundles))

    def _ingest_isolating(self, conn: Connection, bundles: list[PreparedBundle]) -> IngestReport:
        """Ingest ``bundles`` under a savepoint; when the database refuses some data, roll the part back and
        ingest its halves, down to single bundles, which are then refused. An outage propagates (the caller's
        transaction is rolled back whole)."""
        conn.execute("SAVEPOINT ingest_part")
        try:
            report = self._ingest_part(conn, bundles)
        except Exception as exc:
            code = self.dialect.refusal(exc)
            if code is None:
                raise
            conn.execute("ROLLBACK TO SAVEPOINT ingest_part")
            conn.execute("RELEASE SAVEPOINT ingest_part")
            if len(bundles) == 1:
                bundle = bundles[0]
                log.warning(
                    "bundle refused by the record store",
                    extra={"code": code, "partition": bundle.partition, "offset": bundle.offset},
                )
                return IngestReport(
                    1, 0, 0, 0, 0, refused=(Refusal(bundle.partition, bundle.offset, bundle.event_key, code),)
                )
            middle = len(bundles) // 2
            return merge_reports(
                self._ingest_isolating(conn, bundles[:middle]), self._ingest_isolating(conn, bundles[middle:])
            )
        conn.execute("RELEASE SAVEPOINT ingest_part")
        return report

    def _ingest_part(self, conn: Connection, bundles: Sequence[PreparedBundle]) -> IngestReport:
        keys = {r.key for b in bundles for r in b.resources}
        current = self._load_current(conn, keys)
        seen = self._load_seen(conn, {b.event_key for b in bundles})
        plan = plan_versions(bundles, current, seen)
        self._write_versions(conn, plan, existing=existing_before(plan))
        self._upsert(
            conn,
            "resource_type_stored",
            "resource_type",
            "resource_type",
            [(t,) for t in sorted({v.resource_type for v in plan.versions})],
            "text",
        )
        events = {e[0]: e for e in plan.events}  # one row per event key (the last bundle of it wins)
        self._upsert(
            conn,
            "ingested_event",
            "event_key, bundle_hash, partition_no, offset_no, record_time",
            "event_key",
            list(events.values()),
            "text, text, int, bigint, bigint",
        )
        if plan.identity:
            self._apply_identity(conn, plan)
        outbox.write(self, conn, plan)  # the change feed, committed with the versions it announces
        by_type: dict[str, int] = defaultdict(int)
        for version in plan.versions:
            by_type[version.resource_type] += 1
        return IngestReport(
            len(bundles),
            plan.skipped_bundles,
            len(plan.versions),
            plan.unchanged,
            len(plan.identity),
            dict(by_type),
            plan.stale,
        )

    def pending_changes(self, limit: int = 1000) -> list[OutboxRow]:
        """Change-feed messages committed but not yet acknowledged by Kafka, oldest first."""
        return outbox.pending(self, limit)

    def forget_changes(self, up_to_seq: int) -> None:
        outbox.forget(self, up_to_seq)

    def _load_current(self, conn: Connection, keys: set[tuple[str, str]]) -> dict[tuple[str, str], CurrentVersion]:
        by_type: dict[str, list[str]] = defaultdict(list)
        for rtype, rid in keys:
            by_type[rtype].append(rid)
        current: dict[tuple[str, str], CurrentVersion] = {}
        for rtype, ids in by_type.items():
            for chunk in _chunks(ids):
                rows = self._all(
                    conn,
                    "SELECT id, version_id, content_hash, deleted, last_updated, patient_ref, restriction, "
                    "src_time, src_partition, src_offset "
                    f"FROM resource_current WHERE resource_type = ? AND id IN ({_marks(len(chunk))})",
                    (rtype, *chunk),
                )
                for r in rows:
                    current[(rtype, r[0])] = CurrentVersion(
                        int(r[1]), r[2], bool(r[3]), int(r[4]), r[5], int(r[6]), (int(r[7]), int(r[8]), int(r[9]))
                    )
        return current

    def _load_seen(self, conn: Connection, event_keys: set[str]) -> dict[str, str]:
        seen: dict[str, str] = {}
        keys = sorted(event_keys)
        for chunk in _chunks(keys):
            rows = self._all(
                conn,
                f"SELECT event_key, bundle_hash FROM ingested_event WHERE event_key IN ({_marks(len(chunk))})",
                chunk,
            )
            seen.update({r[0]: r[1] for r in rows})
        return seen

    def _write_versions(self, conn: Connection, plan: WritePlan, existing: set[tuple[str, str]]) -> None:
        versions = plan.versions
        if not versions:
            return
        self._insert(
            conn,
            "resource_version",
            "resource_type, id, version_id, last_updated, deleted, content_hash, patient_ref, restriction, body",
            [
                (
                    v.resource_type,
                    v.id,
                    v.version_id,
                    v.last_updated,
                    int(v.deleted),
                    v.content_hash,
                    v.patient_ref,
                    v.restriction,
                    v.body,
                )
                for v in versions
            ],
        )
        final: dict[tuple[str, str], NewVersion] = {}
        for v in versions:
            final[(v.resource_type, v.id)] = v
        self._upsert(
            conn,
            "resource_current",
            "resource_type, id, version_id, last_updated, deleted, content_hash, patient_ref, restriction, "
            "date_start, date_end, clinical_time, src_time, src_partition, src_offset, body",
            "resource_type, id",
            [
                (
                    v.resource_type,
                    v.id,
                    v.version_id,
                    v.last_updated,
                    int(v.deleted),
                    v.content_hash,
                    v.patient_ref,
                    v.restriction,
                    v.index.date_start if v.index else None,
                    v.index.date_end if v.index else None,
                    v.clinical_time,
                    *v.source,
                    v.body,
                )
                for v in final.values()
            ],
            "text, text, int, bigint, smallint, text, text, int, bigint, bigint, bigint, bigint, int, bigint, bytea",
        )
        stale = [key for key in final if key in existing]
        self._delete_keys(conn, "search_token", stale)
        self._delete_keys(conn, "search_string", stale)
        tokens: list[tuple[str, str, str, str, str, str | None]] = []
        strings: list[tuple[str, str, str, str]] = []
        for (rtype, rid), v in final.items():
            if v.index is None:
                continue
            tokens.extend((rtype, rid, param, system, code, v.patient_ref) for param, system, code in v.index.tokens)
            strings.extend((rtype, rid, param, value) for param, value in v.index.strings)
        self._insert(conn, "search_token", "resource_type, id, param, system, code, patient_ref", tokens)
        self._insert(conn, "search_string", "resource_type, id, param, value", strings)

    # --- identity -------------------------------------------------------------------------------------

    def _apply_identity(self, conn: Connection, plan: WritePlan) -> None:
        latest: dict[str, Registration] = {}
        earliest: dict[str, LinkAssertion] = {}
        for event in plan.identity:
            if isinstance(event, Registration):
                if event.patient not in latest or event.newer_than(latest[event.patient]):
                    latest[event.patient] = event
            elif (
                event.assertion_id not in earliest
                or event.first_seen_key() < earliest[event.assertion_id].first_seen_key()
            ):
                earliest[event.assertion_id] = event
        affected: set[str] = set()
        existing_regs = self._registrations(conn, latest)
        changed_regs: list[Registration] = []
        for ref, reg in latest.items():
            old = existing_regs.get(ref)
            if old is not None and not reg.newer_than(old):
                continue
            changed_regs.append(reg)
            if old is None or (old.identifiers, old.demographics, old.gender, old.active) != (
                reg.identifiers,
                reg.demographics,
                reg.gender,
                reg.active,
            ):
                affected.add(ref)
        if changed_regs:
            self._many(
                conn,
                "INSERT INTO identity_registration (patient_ref, identifiers, demographics, gender, "
                "asserted_at, tiebreak, active) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (patient_ref) DO UPDATE SET identifiers = excluded.identifiers, "
                "demographics = excluded.demographics, gender = excluded.gender, "
                "asserted_at = excluded.asserted_at, tiebreak = excluded.tiebreak, "
                "active = excluded.active",
                [
                    (
                        r.patient,
                        orjson.dumps(sorted(r.identifiers)).decode(),
                        r.demographics,
                        r.gender,
                        r.asserted_at,
                        r.tiebreak,
                        int(r.active),
                    )
                    for r in changed_regs
                ],
            )
            self._many(
                conn,
                "DELETE FROM identity_identifier WHERE patient_ref = ?",
                [(r.patient,) for r in changed_regs],
            )
            self._many(
                conn,
                "INSERT INTO identity_identifier (patient_ref, system, value) VALUES (?, ?, ?)",
                [(r.patient, s, v) for r in changed_regs if r.active for s, v in sorted(r.identifiers)],
            )
        ids = sorted(earliest)
        known: dict[str, LinkAssertion] = {}
        for chunk in _chunks(ids):
            rows = self._all(
                conn,
                "SELECT assertion_id, ref_a, ref_b, kind, survivor, asserted_at FROM identity_assertion "
                f"WHERE assertion_id IN ({_marks(len(chunk))})",
                chunk,
            )
            known.update({r[0]: _assertion(r) for r in rows})
        new_assertions = [
            a
            for a in earliest.values()
            if a.assertion_id not in known or a.first_seen_key() < known[a.assertion_id].first_seen_key()
        ]
        if new_assertions:
            self._many(
                conn,
                "INSERT INTO identity_assertion (assertion_id, ref_a, ref_b, kind, survivor, "
                "asserted_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (assertion_id) DO UPDATE SET "
                "ref_a = excluded.ref_a, ref_b = excluded.ref_b, kind = excluded.kind, "
                "survivor = excluded.survivor, asserted_at = excluded.asserted_at",
                [
                    (a.assertion_id, a.patients[0], a.patients[1], a.kind, a.survivor, a.asserted_at)
                    for a in new_assertions
                ],
            )
            for a in new_assertions:
                affected.update(a.patients)
        if affected:
            self._recompute_persons(conn, affected)

    def _registrations(self, conn: Connection, refs: Iterable[str]) -> dict[str, Registration]:
        out: dict[str, Registration] = {}
        for chunk in _chunks(sorted(refs)):
            rows = self._all(
                conn,
                "SELECT patient_ref, identifiers, demographics, gender, asserted_at, tiebreak, "
                f"active FROM identity_registration WHERE patient_ref IN ({_marks(len(chunk))})",
                chunk,
            )
            out.update({r[0]: _registration(r) for r in rows})
        return out

    def _assertions_touching(self, conn: Connection, refs: Iterable[str]) -> list[LinkAssertion]:
        out: dict[str, LinkAssertion] = {}
        for chunk in _chunks(sorted(refs)):
            marks = _marks(len(chunk))
            rows = self._all(
                conn,
                "SELECT assertion_id, ref_a, ref_b, kind, survivor, asserted_at "
                f"FROM identity_assertion WHERE ref_a IN ({marks}) OR ref_b IN ({marks})",
                (*chunk, *chunk),
            )
            out.update({r[0]: _assertion(r) for r in rows})
        return list(out.values())

    def _members_of_persons_of(self, conn: Connection, refs: Iterable[str]) -> set[str]:
        found: set[str] = set()
        for chunk in _chunks(sorted(refs)):
            rows = self._all(
                conn,
                "SELECT m.patient_ref FROM identity_member m WHERE m.person_id IN "
                "(SELECT person_id FROM identity_member "
                f"WHERE patient_ref IN ({_marks(len(chunk))}))",
                chunk,
            )
            found.update(r[0] for r in rows)
        return found

    def _recompute_persons(self, conn: Connection, seed: set[str]) -> None:
        """Recompute persons over the closure of ``seed``: every Patient that is, or was, or could be
        connected
        to it. Components outside the closure cannot have changed."""
        nodes: set[str] = set()
        frontier = set(seed)
        registrations: dict[str, Registration] = {}
        assertions: dict[str, LinkAssertion] = {}
        while frontier:
            nodes |= frontier
            found = self._members_of_persons_of(conn, frontier)
            regs = self._registrations(conn, frontier)
            registrations.update(regs)
            values = sorted({v for r in regs.values() for s, v in r.identifiers if s in self.policy.enterprise_systems})
            for chunk in _chunks(values):
                rows = self._all(
                    conn,
                    f"SELECT patient_ref, system FROM identity_identifier WHERE value IN ({_marks(len(chunk))})",
                    chunk,
                )
                found.update(r[0] for r in rows if r[1] in self.policy.enterprise_systems)
            if self.policy.demographic_rule != "none":
                keys = sorted({r.demographics for r in regs.values() if r.demographics})
                for chunk in _chunks(keys):
                    rows = self._all(
                        conn,
                        f"SELECT patient_ref FROM identity_registration WHERE demographics IN ({_marks(len(chunk))})",
                        chunk,
                    )
                    found.update(r[0] for r in rows)
            for a in self._assertions_touching(conn, frontier):
                assertions[a.assertion_id] = a
                found.update(a.patients)
            frontier = found - nodes
        mapping = persons(registrations.values(), assertions.values(), self.policy)
        for ref in nodes:
            mapping.setdefault(ref, ref)
        self._write_members(conn, mapping)

    def _write_members(self, conn: Connection, mapping: dict[str, str]) -> None:
        rows = sorted(mapping.items())
        self._many(conn, "DELETE FROM identity_member WHERE patient_ref = ?", [(ref,) for ref, _ in rows])
        self._many(conn, "INSERT INTO identity_member (patient_ref, person_id) VALUES (?, ?)", rows)

    def _rebuild_persons(self, conn: Connection) -> None:
        state = self._identity_state(conn)
        conn.execute("DELETE FROM identity_member")
        mapping = state.persons(self.policy)
        self._write_members(conn, mapping)

    def _identity_state(self, conn: Connection) -> IdentityState:
        state = IdentityState()
        for r in self._all(
            conn,
            "SELECT patient_ref, identifiers, demographics, gender, asserted_at, tiebreak, "
            "active FROM identity_registration",
        ):
            state.apply(_registration(r))
        for r in self._all(
            conn, "SELECT assertion_id, ref_a, ref_b, kind, survivor, asserted_at FROM identity_assertion"
        ):
            state.apply(_assertion(r))
        return state

    def identity_state(self) -> IdentityState:
        with self._connection() as conn:
            return self._identity_state(conn)

    def _members(self, conn: Connection, patient_ref: str) -> list[str]:
        rows = self._all(
            conn,
            "SELECT m.patient_ref FROM identity_member m WHERE m.person_id = "
            "(SELECT person_id FROM identity_member WHERE patient_ref = ?)",
            (patient_ref,),
        )
        members = sorted(r[0] for r in rows)
        return members or [patient_ref]

    def person(self, patient_ref: str) -> Person:
        with self._connection() as conn:
            members = self._members(conn, patient_ref)
            pairs: dict[tuple[str, str], LinkAssertion] = {}
            if len(members) > 1:
                member_set = set(members)
                touching = self._assertions_touching(conn, members)
                pairs = effective_pairs(a for a in touching if set(a.patients) <= member_set)
            return Person(tuple(members), pairs)

    def review_candidates(self) -> list[ReviewCandidate]:
        with self._connection() as conn:
            keys = [
                r[0]
                for r in self._all(
                    conn,
                    "SELECT demographics FROM identity_registration "
                    "WHERE demographics IS NOT NULL AND active = 1 "
                    "GROUP BY demographics HAVING COUNT(*) > 1",
                )
            ]
            regs: list[Registration] = []
            for chunk in _chunks(keys):
                rows = self._all(
                    conn,
                    "SELECT patient_ref, identifiers, demographics, gender, asserted_at, "
                    "tiebreak, active FROM identity_registration "
                    f"WHERE demographics IN ({_marks(len(chunk))})",
                    chunk,
                )
                regs.extend(_registration(r) for r in rows)
            refs = sorted(r.patient for r in regs)
            person_of: dict[str, str] = {}
            for chunk in _chunks(refs):
                rows = self._all(
                    conn,
                    f"SELECT patient_ref, person_id FROM identity_member WHERE patient_ref IN ({_marks(len(chunk))})",
                    chunk,
                )
                person_of.update({r[0]: r[1] for r in rows})
            pairs = effective_pairs(self._assertions_touching(conn, refs))
            return review_candidates(regs, person_of, pairs)

    # --- reads ----------------------------------------------------------------------------------------

    def read(self, resource_type: str, resource_id: str) -> StoredRow | None:
        with self._connection() as conn:
            rows = self._all(
                conn,
                f"SELECT {_ROW} FROM resource_current WHERE resource_type = ? AND id = ?",
                (resource_type, resource_id),
            )
        return _row(rows[0]) if rows else None

    def vread(self, resource_type: str, resource_id: str, version_id: int) -> StoredRow | None:
        with self._connection() as conn:
            rows = self._all(
                conn,
                f"SELECT {_ROW} FROM resource_version WHERE resource_type = ? AND id = ? AND version_id = ?",
                (resource_type, resource_id, version_id),
            )
        return _row(rows[0]) if rows else None

    def export_versions(self) -> list[tuple[StoredRow, str]]:
        """Every stored version and its content hash, in (type, id, version) order (backups, checks)."""
        with self._connection() as conn:
            rows = self._all(
                conn,
                f"SELECT {_ROW}, content_hash FROM resource_version ORDER BY resource_type, id, version_id",
            )
        return [(_row(r), r[8]) for r in rows]

    def consents(self, patient_refs: Sequence[str] | None) -> list[StoredRow]:
        sql = f"SELECT {_ROW} FROM resource_current WHERE resource_type = 'Consent' AND deleted = 0"
        with self._connection() as conn:
            if patient_refs is None:
                return [_row(r) for r in self._all(conn, sql)]
            found: list[StoredRow] = []
            refs = sorted(set(patient_refs))
            for chunk in _chunks(refs):
                found.extend(
                    _row(r) for r in self._all(conn, f"{sql} AND patient_ref IN ({_marks(len(chunk))})", chunk)
                )
            return found

    def stored_types(self) -> list[str]:
        with self._connection() as conn:
            return sorted(r[0] for r in self._all(conn, "SELECT resource_type FROM resource_type_stored"))

    def _view(self, where: _Where, view: View, prefix: str = "c.") -> bool:
        """Adds the compartment condition; False when the view can see nothing at all."""
        if view.compartment is not None:
            if not view.compartment:
                return False
            refs = sorted(view.compartment)
            where.add(f"{prefix}patient_ref IN ({_marks(len(refs))})", *refs)
        return True

    def _page(
        self, conn: Connection, table: str, where: _Where, view: View, order: str, count: int, offset: int
    ) -> Page:
        """One page of visible matches, the visible total and what was withheld, in as few queries as the
        case allows: a complete first page is its own total, and a caller who may see everything has nothing
        withheld; otherwise one grouped count gives both."""
        rows: list[StoredRow] = []
        condition, visible_params = _visibility(view)
        visible = f"({where.sql()}) AND {condition}"
        params = (*where.params, *visible_params, count, offset)
        if count > TWO_PHASE_PAGE and self.dialect.rowid:
            # SQLite sorts whole rows (bodies included) in its temp B-tree: sort the rowids, then fetch the rows
            ids = [
                r[0]
                for r in self._all(
                    conn, f"SELECT c.rowid FROM {table} c WHERE {visible} ORDER BY {order} LIMIT ? OFFSET ?", params
                )
            ]
            rows = self._rows_by_rowid(conn, table, ids)
        elif count > 0:
            rows = [
                _row(r)
                for r in self._all(
                    conn, f"SELECT {_C_ROW} FROM {table} c WHERE {visible} ORDER BY {order} LIMIT ? OFFSET ?", params
                )
            ]
        complete = count > 0 and offset == 0 and len(rows) < count
        if complete and view.granted == EVERYTHING and not view.by_patient:
            return Page(rows, len(rows))
        total = 0
        withheld: dict[int, int] = {}
        if view.by_patient:
            groups = self._all(
                conn,
                f"SELECT c.patient_ref, c.restriction, COUNT(*) FROM {table} c WHERE {where.sql()} "
                "GROUP BY c.patient_ref, c.restriction",
                where.params,
            )
        else:
            groups = [
                (None, *g)
                for g in self._all(
                    conn,
                    f"SELECT c.restriction, COUNT(*) FROM {table} c WHERE {where.sql()} GROUP BY c.restriction",
                    where.params,
                )
            ]
        for patient_ref, restriction, n in groups:
            missing = _missing(int(restriction), view.mask_of(patient_ref))
            if missing:
                withheld[missing] = withheld.get(missing, 0) + int(n)
            else:
                total += int(n)
        return Page(rows, total, withheld)

    def _rows_by_rowid(self, conn: Connection, table: str, ids: Sequence[int]) -> list[StoredRow]:
        """The rows of ``ids`` in the order given (a row deleted in between is left out)."""
        found: dict[int, StoredRow] = {}
        for chunk in _chunks(ids):
            for r in self._all(conn, f"SELECT rowid, {_ROW} FROM {table} WHERE rowid IN ({_marks(len(chunk))})", chunk):
                found[r[0]] = _row(r[1:])
        return [found[i] for i in ids if i in found]

    def history(self, query: HistoryQuery, view: View) -> Page:
        where = _Where()
        where.add("c.resource_type = ?", query.resource_type)
        if query.resource_id is not None:
            where.add("c.id = ?", query.resource_id)
        if query.since is not None:
            where.add("c.last_updated >= ?", query.since)
        with self._connection() as conn:
            if not self._view(where, view):
                return Page([], 0)
            return self._page(
                conn,
                "resource_version",
                where,
                view,
                "c.last_updated DESC, c.id ASC, c.version_id DESC",
                query.count,
                query.offset,
            )

    def everything(self, query: EverythingQuery, view: View) -> Page:
        if query.types is not None and not query.types:
            return Page([], 0)
        where = _Where()
        refs = sorted(query.patient_refs)
        where.add(f"c.patient_ref IN ({_marks(len(refs))})", *refs)
        where.add("c.deleted = 0")
        if query.types is not None:
            types = sorted(query.types)
            where.add(f"c.resource_type IN ({_marks(len(types))})", *types)
        if query.since is not None:
            where.add("c.last_updated >= ?", query.since)
        with self._connection() as conn:
            if not self._view(where, view):
                return Page([], 0)
            return self._page(
                conn,
                "resource_current",
                where,
                view,
                "c.clinical_time ASC NULLS FIRST, c.resource_type ASC, c.id ASC",
                query.count,
                query.offset,
            )

    def current_with_token(self, resource_type: str, param: str, codes: Sequence[str]
                           ) -> list[tuple[str, StoredRow]]:
        """Bulk read for whole-population work (outcomes, measures): every current, undeleted ``resource_type``
        with one of ``codes`` under token ``param``, each with the person it belongs to (the person id of its
        patient, or the patient reference itself when it is linked to nobody). No paging, no view: callers apply
        their own access rules."""
        if not codes:
            return []
        sql = (
            f"SELECT COALESCE(m.person_id, c.patient_ref, ''), {_C_ROW} FROM resource_current c "
            "LEFT JOIN identity_member m ON m.patient_ref = c.patient_ref "
            "WHERE c.resource_type = ? AND c.deleted = 0 AND EXISTS (SELECT 1 FROM search_token t "
            "WHERE t.resource_type = c.resource_type AND t.id = c.id AND t.param = ? "
            f"AND t.code IN ({_marks(len(codes))}))"
        )
        with self._connection() as conn:
            rows = self._all(conn, sql, (resource_type, param, *codes))
        return [(r[0], _row(r[1:])) for r in rows]

    def current_versions(self, resource_type: str, param: str | None = None, codes: Sequence[str] = ()
                         ) -> list[tuple[str, str, int, str | None, int]]:
        """The cheap half of an incremental bulk read (outcomes, measures): ``(person, id, version, patient_ref,
        restriction)`` of every current, undeleted ``resource_type`` (with one of ``codes`` under token ``param``
        when ``param`` is given), no bodies; a caller that keeps parsed versions fetches only the new ones with
        :meth:`current_bodies`. The person is as in :meth:`current_with_token`."""
        if param is not None and not codes:
            return []
        sql = (
            "SELECT COALESCE(m.person_id, c.patient_ref, ''), c.id, c.version_id, c.patient_ref, c.restriction "
            "FROM resource_current c LEFT JOIN identity_member m ON m.patient_ref = c.patient_ref "
            "WHERE c.resource_type = ? AND c.deleted = 0"
        )
        params: list[Any] = [resource_type]
        if param is not None:
            sql += (" AND c.id IN (SELECT t.id FROM search_token t WHERE t.resource_type = ? AND t.param = ? "
                    f"AND t.code IN ({_marks(len(codes))}))")
            params.extend((resource_type, param, *codes))
        with self._connection() as conn:
            return [(r[0], r[1], r[2], r[3], r[4]) for r in self._all(conn, sql, params)]

    def current_bodies(self, resource_type: str, ids: Sequence[str]) -> dict[str, tuple[int, bytes]]:
        """``id -> (version, body)`` of the current, undeleted versions of ``ids`` (the others are left out)."""
        found: dict[str, tuple[int, bytes]] = {}
        with self._connection() as conn:
            for chunk in _chunks(list(ids)):
                for r in self._all(conn, "SELECT id, version_id, body FROM resource_current WHERE resource_type = ? "
                                   f"AND deleted = 0 AND id IN ({_marks(len(chunk))})", (resource_type, *chunk)):
                    if r[2] is not None:
                        found[r[0]] = (r[1], bytes(r[2]))
        return found

    def search(self, query: SearchQuery, view: View) -> Page:
        where = _Where()
        where.add("c.resource_type = ?", query.resource_type)
        where.add("c.deleted = 0")
        with self._connection() as conn:
            patients: set[str] | None = None  # the patients every patient= criterion allows
            for criterion in query.criteria:
                if isinstance(criterion, PatientCriterion):
                    refs: set[str] = set()
                    for ref in criterion.patient_refs:
                        refs.update(self._members(conn, ref))
                    patients = refs if patients is None else patients & refs
            if view.compartment is not None:
                patients = set(view.compartment) if patients is None else patients & view.compartment
            if patients is not None and not patients:
                return Page([], 0)
            for criterion in query.criteria:
                self._criterion(where, criterion, patients)
            if not self._view(where, view):
                return Page([], 0)
            return self._page(conn, "resource_current", where, view, _ORDER[query.sort], query.count, query.offset)

    def _criterion(self, where: _Where, criterion: Criterion, patients: set[str] | None) -> None:
        """Adds one AND-ed criterion. ``patients``: the patient references the search is limited to, if any."""
        if isinstance(criterion, IdCriterion):
            where.add(f"c.id IN ({_marks(len(criterion.ids))})", *criterion.ids)
        elif isinstance(criterion, PatientCriterion):
            assert patients is not None
            ordered = sorted(patients)
            where.add(f"c.patient_ref IN ({_marks(len(ordered))})", *ordered)
        elif isinstance(criterion, TokenCriterion):
            ors: list[str] = []
            params: list[Any] = [criterion.param]
            for system, code in criterion.values:
                if code is not None and system is not None:
                    ors.append("(t.code = ? AND t.system = ?)")
                    params.extend((code, system))
                elif code is not None:
                    ors.append("t.code = ?")
                    params.append(code)
                elif system is not None:
                    ors.append("t.system = ?")
                    params.append(system)
            scope = ""
            if patients is not None:
                ordered = sorted(patients)
                scope = f"AND t.patient_ref IN ({_marks(len(ordered))}) "
                params.extend(ordered)
            where.add(
                "EXISTS (SELECT 1 FROM search_token t WHERE t.resource_type = c.resource_type "
                f"AND t.id = c.id AND t.param = ? AND ({' OR '.join(ors)}) {scope})",
                *params,
            )
        elif isinstance(criterion, StringCriterion):
            ors = []
            params = [criterion.param + (":exact" if criterion.mode == "exact" else "")]
            for value in criterion.values:
                if criterion.mode == "exact":
                    ors.append("s.value = ?")
                    params.append(value)
                elif criterion.mode == "contains":
                    escaped = normalize_text(value).replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                    ors.append("s.value LIKE ? ESCAPE '\\'")
                    params.append(f"%{escaped}%")
                else:
                    prefix = normalize_text(value)
                    ors.append("(s.value >= ? AND s.value < ?)")
                    params.extend((prefix, prefix + "\U0010ffff"))
            where.add(
                "EXISTS (SELECT 1 FROM search_string s WHERE s.resource_type = c.resource_type "
                f"AND s.id = c.id AND s.param = ? AND ({' OR '.join(ors)}))",
                *params,
            )
        elif isinstance(criterion, DateCriterion):
            if criterion.param == "_lastUpdated":
                start_col = end_col = "c.last_updated"
            else:
                start_col, end_col = "c.date_start", "c.date_end"
                where.add("c.date_start IS NOT NULL")
            ors = []
            params = []
            for prefix, start, end in criterion.clauses:
                ors.append(_DATE_SQL[prefix].format(s=start_col, e=end_col))
                params.extend(_date_params(prefix, start, end))
            where.add(f"({' OR '.join(ors)})", *params)


EVERYTHING = ALL_CLASSES | ORDINARY


def _missing(restriction: int, mask: int) -> int:
    """The classes of a row the mask does not permit (ORDINARY: an unlabelled row that may not go)."""
    if restriction == 0:
        return 0 if mask & ORDINARY else ORDINARY
    return restriction & ~mask


def _mask_sql(mask: int) -> tuple[str, tuple[int, ...]]:
    if mask & ORDINARY:
        return "(c.restriction | ?) = ?", (mask, mask)
    return "((c.restriction | ?) = ? AND c.restriction <> 0)", (mask, mask)


def _visibility(view: View) -> tuple[str, tuple[Any, ...]]:
    """The SQL condition (and its parameters) for the rows ``view`` may see: one clause per distinct per-patient
    mask, and one for every other row."""
    if not view.by_patient:
        return _mask_sql(view.granted)
    clauses: list[str] = []
    params: list[Any] = []
    by_mask: dict[int, list[str]] = defaultdict(list)
    for ref, mask in sorted(view.by_patient.items()):
        by_mask[mask].append(ref)
    for mask, refs in sorted(by_mask.items()):
        sql, mask_params = _mask_sql(mask)
        clauses.append(f"(c.patient_ref IN ({_marks(len(refs))}) AND {sql})")
        params.extend((*refs, *mask_params))
    listed = sorted(view.by_patient)
    sql, mask_params = _mask_sql(view.granted)
    clauses.append(f"((c.patient_ref IS NULL OR c.patient_ref NOT IN ({_marks(len(listed))})) AND {sql})")
    params.extend((*listed, *mask_params))
    return "(" + " OR ".join(clauses) + ")", tuple(params)


def _restriction_of_body(body: Any) -> int:
    resource = orjson.loads(bytes(body))
    meta = resource.get("meta") or {}
    return restriction_of(c.get("code", "") for c in meta.get("security") or () if isinstance(c, dict))


def restriction_rules_fingerprint() -> str:
    """Changes when the label -> class table changes: stored restrictions are then recomputed at start."""
    return ",".join(f"{code}={bit}" for code, bit in sorted(CLASS_CODES.items()))


def existing_before(plan: WritePlan) -> set[tuple[str, str]]:
    """Keys that had a current row before this batch (their index rows must be replaced, not just added)."""
    first_version: dict[tuple[str, str], int] = {}
    for v in plan.versions:
        first_version.setdefault((v.resource_type, v.id), v.version_id)
    return {key for key, version in first_version.items() if version > 1}


def _registration(r: Sequence[Any]) -> Registration:
    identifiers = frozenset((s, v) for s, v in orjson.loads(r[1]))
    return Registration(r[0], identifiers, r[2], r[3], int(r[4]), r[5], bool(r[6]))


def _assertion(r: Sequence[Any]) -> LinkAssertion:
    return LinkAssertion(r[0], (r[1], r[2]), r[3], r[4], int(r[5]))
