# ruff: noqa: S608 -- SQL is assembled from fixed fragments and placeholders; every value is a bound parameter
"""The record store's tables, the SQL dialects' differences, and what is checked when a store opens.

Tables (DDL in :func:`schema`):

* ``resource_version`` - every version of every resource (the served JSON, its hash, patient, labels);
* ``resource_current`` - the current version of each resource, with the columns search sorts and filters on
  (patient, date range, clinical time, lastUpdated, clearance bits);
* ``search_token`` / ``search_string`` - the token and string search index of current versions;
* ``ingested_event`` - which event (and bundle content) has been ingested: replays are skipped;
* ``identity_registration`` / ``identity_identifier`` / ``identity_assertion`` - the identity event state
  (see services/record/identity.py) and ``identity_member`` - the person each Patient belongs to
  (services/record/store/identity.py keeps it current);
* ``store_meta`` - the schema version and the fingerprints of the label-class and identity rules the stored
  rows were derived with; ``resource_type_stored``; ``change_outbox`` (services/record/store/outbox.py).

The dialects (services/common/sql.py, shared with the notify store) differ only in column types, the parameter
placeholder, how a write transaction begins, which exceptions come from the database and which of those mean
"this data can never be stored" (:attr:`Dialect.refusal`).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from services.common.disclosure import CLASS_CODES, restriction_of
from services.common.sql import Connection, Database, Dialect
from services.record.errors import StoreUnavailable
from services.record.store import outbox

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1"


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


def meta(db: Database, conn: Connection, key: str) -> str | None:
    rows = db.all(conn, "SELECT value FROM store_meta WHERE key = ?", (key,))
    return str(rows[0][0]) if rows else None


def set_meta(db: Database, conn: Connection, key: str, value: str) -> None:
    db.many(conn, "INSERT INTO store_meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value", [(key, value)])


def create(db: Database, conn: Connection) -> bool:
    """Create the tables that are missing (idempotent); True for a new store. A store of another schema version
    is refused: there are no in-place migrations (rebuild by replaying the bundle topic into an empty store)."""
    if db.dialect.schema_lock:
        conn.execute(db.dialect.schema_lock)
    for statement in schema(db.dialect):
        conn.execute(statement)
    version = meta(db, conn, "schema_version")
    if version is not None and version != SCHEMA_VERSION:
        raise StoreUnavailable(
            f"record store schema {version} is not {SCHEMA_VERSION}: replay the topic into a new store"
        )
    return version is None


def restriction_rules_fingerprint() -> str:
    """Changes when the label -> class table changes: stored restrictions are then recomputed at start."""
    return ",".join(f"{code}={bit}" for code, bit in sorted(CLASS_CODES.items()))


def refresh_restrictions(db: Database, conn: Connection) -> None:
    """Re-derive every row's ``restriction`` from its labels when the label classes changed since it was
    stored. A deletion keeps the classes of the newest stored body before it."""
    if meta(db, conn, "restriction_rules") == restriction_rules_fingerprint():
        return
    for table, keys in (("resource_version", "resource_type, id, version_id"), ("resource_current", None)):
        if keys is None:
            rows = db.all(conn, "SELECT c.resource_type, c.id, v.body FROM resource_current c JOIN "
                          "resource_version v ON v.resource_type = c.resource_type AND v.id = c.id "
                          "WHERE v.body IS NOT NULL ORDER BY v.version_id")
            latest = {(r[0], r[1]): r[2] for r in rows}
            updates = [(_restriction_of_body(body), rtype, rid) for (rtype, rid), body in latest.items()]
            db.many(conn, "UPDATE resource_current SET restriction = ? WHERE resource_type = ? AND id = ?", updates)
        else:
            rows = db.all(conn, f"SELECT {keys}, body FROM {table} WHERE body IS NOT NULL")
            db.many(
                conn,
                f"UPDATE {table} SET restriction = ? WHERE resource_type = ? AND id = ? AND version_id = ?",
                [(_restriction_of_body(r[3]), r[0], r[1], r[2]) for r in rows],
            )
    if rows:
        log.info("stored restrictions recomputed for new label classes")
    set_meta(db, conn, "restriction_rules", restriction_rules_fingerprint())


def _restriction_of_body(body: Any) -> int:
    resource = orjson.loads(bytes(body))
    meta = resource.get("meta") or {}
    return restriction_of(c.get("code", "") for c in meta.get("security") or () if isinstance(c, dict))
