# ruff: noqa: S608 -- SQL is assembled from fixed fragments and placeholders; every value is a bound parameter
"""Resource versions in the store: an ingest writes the new versions, the current rows and their search index
(with the identity events and the change feed, in the same transaction); reads by key.

Failures are of two kinds, told apart in one place (:func:`ingest_isolating`):

* an outage (connection lost, server shutting down, disk full, lock timeout, ...) - StoreUnavailable: the whole
  batch is rolled back and retried later, nothing is committed;
* a refusal of the data itself (a value the database cannot hold, such as U+0000 in PostgreSQL text, a value out
  of range, an index row too large, a constraint broken) - the batch is bisected inside its transaction (one
  savepoint per part) until the bundles the store refuses are isolated; every other bundle is stored and the
  refused ones are listed in :attr:`IngestReport.refused` with a code (SQLSTATE or error class, never the
  database's message, which may quote the value).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from services.common.sql import Connection, Database, chunks, marks
from services.record.identity import IdentityPolicy
from services.record.ingest import CurrentVersion, NewVersion, PreparedBundle, WritePlan, plan_versions
from services.record.store import identity, outbox
from services.record.store.base import IngestReport, Refusal, StoredRow, merge_reports

log = logging.getLogger(__name__)

ROW = "resource_type, id, version_id, last_updated, deleted, patient_ref, restriction, body"
C_ROW = ", ".join("c." + column for column in ROW.split(", "))  # the same columns of resource_current c


def ingest(db: Database, bundles: Sequence[PreparedBundle], policy: IdentityPolicy) -> IngestReport:
    """Store ``bundles`` in one transaction: refused data is isolated (see the module docstring), an outage
    rolls back everything."""
    if not bundles:
        return IngestReport(0, 0, 0, 0, 0)
    with db.transaction() as conn:
        return ingest_isolating(db, conn, list(bundles), policy)


def ingest_isolating(db: Database, conn: Connection, bundles: list[PreparedBundle], policy: IdentityPolicy
                     ) -> IngestReport:
    """Ingest ``bundles`` under a savepoint; when the database refuses some data, roll the part back and
    ingest its halves, down to single bundles, which are then refused. An outage propagates (the caller's
    transaction is rolled back whole)."""
    conn.execute("SAVEPOINT ingest_part")
    try:
        report = ingest_part(db, conn, bundles, policy)
    except Exception as exc:
        code = db.dialect.refusal(exc)
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
            ingest_isolating(db, conn, bundles[:middle], policy), ingest_isolating(db, conn, bundles[middle:], policy)
        )
    conn.execute("RELEASE SAVEPOINT ingest_part")
    return report


def ingest_part(db: Database, conn: Connection, bundles: Sequence[PreparedBundle], policy: IdentityPolicy
                ) -> IngestReport:
    keys = {r.key for b in bundles for r in b.resources}
    current = load_current(db, conn, keys)
    seen = load_seen(db, conn, {b.event_key for b in bundles})
    plan = plan_versions(bundles, current, seen)
    write_versions(db, conn, plan, existing=existing_before(plan))
    db.upsert(
        conn,
        "resource_type_stored",
        "resource_type",
        "resource_type",
        [(t,) for t in sorted({v.resource_type for v in plan.versions})],
        "text",
    )
    events = {e[0]: e for e in plan.events}  # one row per event key (the last bundle of it wins)
    db.upsert(
        conn,
        "ingested_event",
        "event_key, bundle_hash, partition_no, offset_no, record_time",
        "event_key",
        list(events.values()),
        "text, text, int, bigint, bigint",
    )
    if db.dialect.ingest_lock and (plan.identity or plan.versions):
        conn.execute(db.dialect.ingest_lock)  # to commit: persons and outbox numbers see other instances' ingests
    if plan.identity:
        identity.apply(db, conn, plan, policy)
    outbox.write(db, conn, plan)  # the change feed, committed with the versions it announces
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


def load_current(db: Database, conn: Connection, keys: set[tuple[str, str]]) -> dict[tuple[str, str], CurrentVersion]:
    by_type: dict[str, list[str]] = defaultdict(list)
    for rtype, rid in keys:
        by_type[rtype].append(rid)
    current: dict[tuple[str, str], CurrentVersion] = {}
    for rtype, ids in by_type.items():
        for chunk in chunks(ids):
            rows = db.all(
                conn,
                "SELECT id, version_id, content_hash, deleted, last_updated, patient_ref, restriction, "
                "src_time, src_partition, src_offset "
                f"FROM resource_current WHERE resource_type = ? AND id IN ({marks(len(chunk))})",
                (rtype, *chunk),
            )
            for r in rows:
                current[(rtype, r[0])] = CurrentVersion(
                    int(r[1]), r[2], bool(r[3]), int(r[4]), r[5], int(r[6]), (int(r[7]), int(r[8]), int(r[9]))
                )
    return current


def load_seen(db: Database, conn: Connection, event_keys: set[str]) -> dict[str, str]:
    seen: dict[str, str] = {}
    keys = sorted(event_keys)
    for chunk in chunks(keys):
        rows = db.all(
            conn,
            f"SELECT event_key, bundle_hash FROM ingested_event WHERE event_key IN ({marks(len(chunk))})",
            chunk,
        )
        seen.update({r[0]: r[1] for r in rows})
    return seen


def _version_columns(v: NewVersion) -> tuple[Any, ...]:
    """The columns resource_version and resource_current share, in their order."""
    return (v.resource_type, v.id, v.version_id, v.last_updated, int(v.deleted), v.content_hash, v.patient_ref,
            v.restriction)


def write_versions(db: Database, conn: Connection, plan: WritePlan, existing: set[tuple[str, str]]) -> None:
    versions = plan.versions
    if not versions:
        return
    db.insert(
        conn,
        "resource_version",
        "resource_type, id, version_id, last_updated, deleted, content_hash, patient_ref, restriction, body",
        [(*_version_columns(v), v.body) for v in versions],
    )
    final: dict[tuple[str, str], NewVersion] = {}
    for v in versions:
        final[(v.resource_type, v.id)] = v
    db.upsert(
        conn,
        "resource_current",
        "resource_type, id, version_id, last_updated, deleted, content_hash, patient_ref, restriction, "
        "date_start, date_end, clinical_time, src_time, src_partition, src_offset, body",
        "resource_type, id",
        [
            (
                *_version_columns(v),
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
    db.delete_keys(conn, "search_token", stale)
    db.delete_keys(conn, "search_string", stale)
    tokens: list[tuple[str, str, str, str, str, str | None]] = []
    strings: list[tuple[str, str, str, str]] = []
    for (rtype, rid), v in final.items():
        if v.index is None:
            continue
        tokens.extend((rtype, rid, param, system, code, v.patient_ref) for param, system, code in v.index.tokens)
        strings.extend((rtype, rid, param, value) for param, value in v.index.strings)
    db.insert(conn, "search_token", "resource_type, id, param, system, code, patient_ref", tokens)
    db.insert(conn, "search_string", "resource_type, id, param, value", strings)


def read(db: Database, resource_type: str, resource_id: str) -> StoredRow | None:
    with db.connection() as conn:
        rows = db.all(
            conn,
            f"SELECT {ROW} FROM resource_current WHERE resource_type = ? AND id = ?",
            (resource_type, resource_id),
        )
    return stored_row(rows[0]) if rows else None


def vread(db: Database, resource_type: str, resource_id: str, version_id: int) -> StoredRow | None:
    with db.connection() as conn:
        rows = db.all(
            conn,
            f"SELECT {ROW} FROM resource_version WHERE resource_type = ? AND id = ? AND version_id = ?",
            (resource_type, resource_id, version_id),
        )
    return stored_row(rows[0]) if rows else None


def export_versions(db: Database) -> list[tuple[StoredRow, str]]:
    """Every stored version and its content hash, in (type, id, version) order (backups, checks)."""
    with db.connection() as conn:
        rows = db.all(
            conn,
            f"SELECT {ROW}, content_hash FROM resource_version ORDER BY resource_type, id, version_id",
        )
    return [(stored_row(r), r[8]) for r in rows]


def consents(db: Database, patient_refs: Sequence[str] | None) -> list[StoredRow]:
    sql = f"SELECT {ROW} FROM resource_current WHERE resource_type = 'Consent' AND deleted = 0"
    with db.connection() as conn:
        if patient_refs is None:
            return [stored_row(r) for r in db.all(conn, sql)]
        found: list[StoredRow] = []
        refs = sorted(set(patient_refs))
        for chunk in chunks(refs):
            found.extend(
                stored_row(r) for r in db.all(conn, f"{sql} AND patient_ref IN ({marks(len(chunk))})", chunk)
            )
        return found


def stored_types(db: Database) -> list[str]:
    with db.connection() as conn:
        return sorted(r[0] for r in db.all(conn, "SELECT resource_type FROM resource_type_stored"))


def existing_before(plan: WritePlan) -> set[tuple[str, str]]:
    """Keys that had a current row before this batch (their index rows must be replaced, not just added)."""
    first_version: dict[tuple[str, str], int] = {}
    for v in plan.versions:
        first_version.setdefault((v.resource_type, v.id), v.version_id)
    return {key for key, version in first_version.items() if version > 1}


def stored_row(r: Sequence[Any]) -> StoredRow:
    # both drivers return int for the integer columns and bytes for the body: no conversions on the hot path
    return StoredRow(r[0], r[1], r[2], r[3], bool(r[4]), r[5], r[6], r[7])
