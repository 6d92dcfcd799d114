# ruff: noqa: S608 -- SQL is assembled from fixed fragments and placeholders; every value is a bound parameter
"""The notify store: subscriptions, their numbered events and delivery state. SQLite by default, PostgreSQL by
DSN (``CAREBUS_NOTIFY_STORE_DSN``), on the SQL layer the record store uses too (services/common/sql.py).

It is the one place subscriptions live: the record API's ``/Subscription`` routes write definitions and status
changes here and answer ``$status`` / ``$events`` from here; the notify process reads the definitions (it
re-reads them when ``updated_ms`` moves), numbers events and records deliveries. Two processes, one store: on
SQLite the same file (WAL), on PostgreSQL the same database.

Tables:

* ``notify_subscription`` - the definition, status, error reason, the recipient consent is decided for
  (``recipient``: organization, care teams, purpose of use, as JSON) and ``events_since_start`` (the counter that
  numbers events: incremented in the transaction that inserts the event, never reset; lowered only by
  :meth:`NotifyStore.withdraw`, for numbers no subscriber has seen) and ``told`` (the highest number the
  subscriber has been shown: raised before each notification goes out and when ``$events`` serves events,
  never lowered; ``events-since-subscription-start`` says it, so that counter never goes down);
* ``notify_event`` - one row per (subscription, event number): the focus version, state ``pending`` |
  ``delivered`` | ``dead`` (with its reason), attempts, first failure time. Unique per subscription and focus
  version, so a change replayed from Kafka never gets a second number;
* ``notify_resource`` - per resource, the last version notify saw (state for the triggers, the served JSON
  for full-resource payloads, labels and person for the consent check at delivery);
* ``notify_consent_member`` - the consent index: (Patient record, Consent id) for each member of the person a
  Consent was last seen with, so a person's consents are a keyed lookup, not a scan of every Consent;
* ``notify_denied`` - the outbox of withheld notifications (denied attempts) until their AuditEvent is written.

The feed consumer commits its Kafka offsets only after :meth:`NotifyStore.record_changes` committed.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from services.common.disclosure import DEFAULT_POLICY, ConsentDirective, Policy, parse_consent
from services.common.settings import Settings
from services.common.sql import (
    POSTGRES,
    SQLITE,
    Connection,
    Database,
    Dialect,
    chunks,
    marks,
    postgres_pool,
    sqlite_pool,
)
from services.common.topics import ChangeKind
from services.notify.routing import route_with_withheld
from services.notify.subscriptions import SubscriptionDef
from services.notify.topics import TYPES_WITH_TOPICS, Change, Filter, state_of

_SUB_COLUMNS = (
    "id, client, clearances, patient, status, topic, filters, endpoint, headers, content, mime, heartbeat_s, "
    "timeout_s, max_count, secret, end_at, reason, error, events_since_start, created_ms, updated_ms, recipient, told"
)
_EVENT_COLUMNS = (
    "subscription_id, event_number, resource_type, resource_id, version_id, change_kind, focus_time, state, "
    "attempts, first_failure_ms, dead_reason, notice, created_ms, delivered_ms"
)


# the resource types notify keeps from the change feed: those some topic is about, and the consents
KEPT_TYPES = TYPES_WITH_TOPICS | {"Consent"}

# the Consents of a person (its Patient records as ``marks``), through the consent index: keyed, never a scan
CONSENTS_OF_SQL = (
    "SELECT r.body FROM notify_resource r WHERE r.resource_type = 'Consent' AND r.body IS NOT NULL AND "
    "r.resource_id IN (SELECT m.resource_id FROM notify_consent_member m WHERE m.patient_ref IN ({marks})) "
    "ORDER BY r.resource_id"
)


def schema(d: Dialect) -> list[str]:
    t, b, blob = d.text, d.bigint, d.blob
    return [
        f"""CREATE TABLE IF NOT EXISTS notify_subscription (
            id {t} PRIMARY KEY, client {t} NOT NULL, clearances INTEGER NOT NULL, patient {t},
            status {t} NOT NULL, topic {t} NOT NULL, filters {t} NOT NULL, endpoint {t} NOT NULL,
            headers {t} NOT NULL, content {t} NOT NULL, mime {t} NOT NULL, heartbeat_s INTEGER,
            timeout_s INTEGER, max_count INTEGER NOT NULL, secret {t} NOT NULL, end_at {t}, reason {t},
            error {t}, events_since_start {b} NOT NULL, created_ms {b} NOT NULL, updated_ms {b} NOT NULL,
            recipient {t}, told {b} NOT NULL DEFAULT 0)""",
        "CREATE INDEX IF NOT EXISTS notify_subscription_client ON notify_subscription (client)",
        f"""CREATE TABLE IF NOT EXISTS notify_event (
            subscription_id {t} NOT NULL, event_number {b} NOT NULL, resource_type {t} NOT NULL,
            resource_id {t} NOT NULL, version_id INTEGER NOT NULL, change_kind {t} NOT NULL,
            focus_time {t} NOT NULL, state {t} NOT NULL, attempts INTEGER NOT NULL, first_failure_ms {b},
            dead_reason {t}, notice {t}, created_ms {b} NOT NULL, delivered_ms {b}, served_ms {b},
            PRIMARY KEY (subscription_id, event_number))""",
        "CREATE UNIQUE INDEX IF NOT EXISTS notify_event_focus "
        "ON notify_event (subscription_id, resource_type, resource_id, version_id)",
        "CREATE INDEX IF NOT EXISTS notify_event_state ON notify_event (subscription_id, state, event_number)",
        # the Consents of each Patient record (any member of the person when the Consent was last seen): the
        # keyed lookup of :meth:`NotifyStore.consents` (every change is decided with its person's consents)
        f"""CREATE TABLE IF NOT EXISTS notify_consent_member (
            patient_ref {t} NOT NULL, resource_id {t} NOT NULL, PRIMARY KEY (patient_ref, resource_id))""",
        "CREATE INDEX IF NOT EXISTS notify_consent_member_resource ON notify_consent_member (resource_id)",
        f"""CREATE TABLE IF NOT EXISTS notify_denied (
            subscription_id {t} NOT NULL, resource_type {t} NOT NULL, resource_id {t} NOT NULL,
            version_id INTEGER NOT NULL, patient_ref {t}, requester {t} NOT NULL, denied_ms {b} NOT NULL,
            audited_ms {b}, PRIMARY KEY (subscription_id, resource_type, resource_id, version_id))""",
        "CREATE INDEX IF NOT EXISTS notify_denied_unaudited ON notify_denied (audited_ms, denied_ms)",
        f"""CREATE TABLE IF NOT EXISTS notify_resource (
            resource_type {t} NOT NULL, resource_id {t} NOT NULL, version_id INTEGER NOT NULL,
            state {t} NOT NULL, previous_state {t}, restriction INTEGER NOT NULL, members {t} NOT NULL,
            body {blob}, PRIMARY KEY (resource_type, resource_id))""",
    ]


# an event's delivery state (notify_event.state): waiting, sent, given up on, or held back by consent
EventState = Literal["pending", "delivered", "dead", "withheld"]


@dataclass(frozen=True)
class EventRow:
    subscription_id: str
    number: int
    resource_type: str
    resource_id: str
    version_id: int
    kind: ChangeKind
    focus_time: str
    state: EventState
    attempts: int
    first_failure_ms: int | None
    dead_reason: str | None
    notice: str | None
    created_ms: int
    delivered_ms: int | None

    @property
    def focus(self) -> str:
        return f"{self.resource_type}/{self.resource_id}"


@dataclass(frozen=True)
class FocusRow:
    version_id: int
    restriction: int
    members: tuple[str, ...]
    body: bytes | None


@dataclass(frozen=True)
class DeniedRow:
    """A notification withheld by the consent seam (a denied disclosure attempt), waiting to be audited."""

    subscription_id: str
    resource_type: str
    resource_id: str
    version_id: int
    patient_ref: str | None
    client: str
    organization: str | None
    purpose: str
    denied_ms: int

    @property
    def focus(self) -> str:
        return f"{self.resource_type}/{self.resource_id}"

    @property
    def key(self) -> tuple[str, str, str, int]:
        return self.subscription_id, self.resource_type, self.resource_id, self.version_id


@dataclass(frozen=True)
class Backlog:
    subscription_id: str
    pending: int
    dead: int
    oldest_pending_ms: int | None


def _filters_json(filters: Sequence[Filter]) -> str:
    return orjson.dumps([[f.name, list(f.values)] for f in filters]).decode()


def _sub(r: Sequence[Any]) -> SubscriptionDef:
    return SubscriptionDef(
        id=r[0], client=r[1], clearances=int(r[2]), patient=r[3], status=r[4], topic=r[5],
        filters=tuple(Filter(n, tuple(v)) for n, v in orjson.loads(r[6])), endpoint=r[7],
        headers=tuple(orjson.loads(r[8])), content=r[9], mime=r[10], heartbeat_s=r[11], timeout_s=r[12],
        max_count=int(r[13]), secret=r[14], end=r[15], reason=r[16], error=r[17],
        events_since_start=int(r[18]), told=int(r[22] or 0), **_recipient(r[21]),
    )


def _recipient(text: str | None) -> dict[str, Any]:
    data = orjson.loads(text) if text else {}
    return {"organization": data.get("organization"), "care_teams": tuple(data.get("care_teams") or ()),
            "purpose": data.get("purpose") or "TREAT"}


def _recipient_json(sub: SubscriptionDef) -> str:
    return orjson.dumps({"organization": sub.organization, "care_teams": list(sub.care_teams),
                         "purpose": sub.purpose}).decode()


def _event(r: Sequence[Any]) -> EventRow:
    return EventRow(r[0], int(r[1]), r[2], r[3], int(r[4]), r[5], r[6], r[7], int(r[8]),
                    None if r[9] is None else int(r[9]), r[10], r[11], int(r[12]),
                    None if r[13] is None else int(r[13]))


def now_ms() -> int:
    return int(time.time() * 1000)


class NotifyStore:
    """Thread-safe; every method is one transaction or one read."""

    def __init__(self, db: Database, dsn: str, policy: Policy = DEFAULT_POLICY) -> None:
        self.db = db  # the pool, the dialect and the write lock (services/common/sql.py, as the record store's)
        self.dialect = db.dialect
        self.policy = policy  # the disclosure policy every decision on these subscriptions is made under
        self.dsn = dsn  # may carry a password: never log it

    def initialize(self) -> None:
        with self.db.transaction() as conn:
            for statement in schema(self.dialect):
                conn.execute(statement)
            # stores made before subscriptions named their recipient (NULL: no organization, purpose TREAT)
            # and before $events was remembered gain the columns
            self._add_column(conn, "notify_subscription", "recipient", "TEXT")
            self._add_column(conn, "notify_event", "served_ms", "BIGINT")
            # and before the subscriber-visible counter was kept apart from the numbering counter
            self._add_column(conn, "notify_subscription", "told", "BIGINT NOT NULL DEFAULT 0")
            self._index_old_consents(conn)

    def _add_column(self, conn: Connection, table: str, column: str, kind: str) -> None:
        if self.dialect.name == "postgresql":
            conn.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {kind}")
            return
        if column not in {row[1] for row in conn.execute(f"PRAGMA table_info({table})").fetchall()}:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    def ping(self) -> None:
        with self.db.connection() as conn:
            self.db.all(conn, "SELECT 1")

    def close(self) -> None:
        self.db.pool.close()

    # --- subscriptions -------------------------------------------------------------------------------------

    def create(self, sub: SubscriptionDef) -> None:
        at = now_ms()
        with self.db.transaction() as conn:
            self.db.exec(
                conn,
                f"INSERT INTO notify_subscription ({_SUB_COLUMNS}) VALUES ({','.join('?' * 23)})",
                (sub.id, sub.client, sub.clearances, sub.patient, sub.status, sub.topic,
                 _filters_json(sub.filters), sub.endpoint, orjson.dumps(list(sub.headers)).decode(), sub.content,
                 sub.mime, sub.heartbeat_s, sub.timeout_s, sub.max_count, sub.secret, sub.end, sub.reason,
                 sub.error, 0, at, at, _recipient_json(sub), 0),
            )

    def get(self, subscription_id: str) -> SubscriptionDef | None:
        with self.db.connection() as conn:
            rows = self.db.all(conn, f"SELECT {_SUB_COLUMNS} FROM notify_subscription WHERE id = ?",
                             (subscription_id,))
        return _sub(rows[0]) if rows else None

    def subscriptions(self, client: str | None = None) -> list[SubscriptionDef]:
        with self.db.connection() as conn:
            if client is None:
                rows = self.db.all(conn, f"SELECT {_SUB_COLUMNS} FROM notify_subscription ORDER BY created_ms, id")
            else:
                rows = self.db.all(conn, f"SELECT {_SUB_COLUMNS} FROM notify_subscription WHERE client = ? "
                                       "ORDER BY created_ms, id", (client,))
        return [_sub(r) for r in rows]

    def generation(self) -> tuple[int, int]:
        """(count, newest updated_ms): changes when any subscription is created, changed or deleted."""
        with self.db.connection() as conn:
            rows = self.db.all(conn, "SELECT COUNT(*), MAX(updated_ms) FROM notify_subscription")
        return int(rows[0][0]), int(rows[0][1] or 0)

    def update_definition(self, sub: SubscriptionDef) -> None:
        """A client's status / end / reason change (the PUT)."""
        with self.db.transaction() as conn:
            self.db.exec(conn, "UPDATE notify_subscription SET status = ?, end_at = ?, reason = ?, error = ?, "
                             "updated_ms = ? WHERE id = ?",
                       (sub.status, sub.end, sub.reason, sub.error, now_ms(), sub.id))

    def set_status(self, subscription_id: str, status: str, error: str | None,
                   only_from: Sequence[str] | None = None) -> bool:
        """notify's own status changes (handshake done, error, off); ``only_from`` guards against a
        concurrent client change. True when the row changed."""
        with self.db.transaction() as conn:
            sql = "UPDATE notify_subscription SET status = ?, error = ?, updated_ms = ? WHERE id = ?"
            params: list[Any] = [status, error, now_ms(), subscription_id]
            if only_from:
                sql += f" AND status IN ({','.join('?' * len(only_from))})"
                params.extend(only_from)
            return self.db.exec(conn, sql, params) > 0

    def delete(self, subscription_id: str) -> bool:
        with self.db.transaction() as conn:
            self.db.exec(conn, "DELETE FROM notify_event WHERE subscription_id = ?", (subscription_id,))
            return self.db.exec(conn, "DELETE FROM notify_subscription WHERE id = ?", (subscription_id,)) > 0

    # --- the change feed -------------------------------------------------------------------------------

    def record_changes(self, changes: Sequence[Change]) -> dict[str, int]:
        """Number the events these changes trigger (one transaction). A change already seen (same or older
        version) is not numbered again. Returns how many events each subscription got.

        Only what notify reads later is kept: resources of a type some topic is about (their trigger state,
        consent and full-resource payload at send time) and Consents; the rest of the feed (Provenance,
        QuestionnaireResponse, Organization, ...) triggers nothing and is skipped before any statement. What is
        known of the batch's resources is read in one statement per chunk, and a person's consents only when a
        subscription's topic and filters match the change."""
        kept = [c for c in changes if c.resource_type in KEPT_TYPES]
        if not kept:
            return {}
        created: dict[str, int] = {}
        at = now_ms()
        with self.db.transaction() as conn:
            subs = [_sub(r) for r in self.db.all(
                conn, f"SELECT {_SUB_COLUMNS} FROM notify_subscription WHERE status <> 'off'")]
            counters = {s.id: s.events_since_start for s in subs}
            by_id = {s.id: s for s in subs}
            known = self._known_versions(conn, kept)
            for change in kept:
                key = (change.resource_type, change.id)
                seen = known.get(key)
                if seen is not None and seen[0] > change.version_id:
                    continue  # an older version, replayed: its events were numbered when it was new
                if seen is not None and seen[0] == change.version_id:
                    previous = seen[2]  # the same version again: decide as the first time
                else:
                    previous = seen[1] if seen is not None else None
                    self._upsert_resource(conn, change, previous, seen is not None)
                    known[key] = (change.version_id, state_of(change), previous)
                notified, withheld = route_with_withheld(
                    change, previous, subs, at, functools.partial(self._consents, conn, change.members), self.policy)
                for denied in withheld:
                    self._deny(conn, by_id[denied.subscription_id], change.resource_type, change.id,
                               change.version_id, _patient(change), at)
                for routed in notified:
                    number = counters[routed.subscription_id] + 1
                    inserted = self.db.exec(
                        conn, f"INSERT INTO notify_event ({_EVENT_COLUMNS}) VALUES ({','.join('?' * 14)}) "
                              "ON CONFLICT (subscription_id, resource_type, resource_id, version_id) DO NOTHING",
                        (routed.subscription_id, number, change.resource_type, change.id, change.version_id,
                         change.kind, change.last_updated, "pending", 0, None, None, routed.notice, at, None))
                    if not inserted:
                        continue  # numbered before (a replayed batch)
                    counters[routed.subscription_id] = number
                    created[routed.subscription_id] = created.get(routed.subscription_id, 0) + 1
            for sub in subs:
                if counters[sub.id] != sub.events_since_start:
                    self.db.exec(conn, "UPDATE notify_subscription SET events_since_start = ? WHERE id = ?",
                               (counters[sub.id], sub.id))
        return created

    def _known_versions(self, conn: Connection, changes: Sequence[Change]
                        ) -> dict[tuple[str, str], tuple[int, str, str | None]]:
        """(type, id) -> (version, state, previous state) of the resources of these changes notify has seen."""
        out: dict[tuple[str, str], tuple[int, str, str | None]] = {}
        by_type: dict[str, set[str]] = {}
        for change in changes:
            by_type.setdefault(change.resource_type, set()).add(change.id)
        for resource_type, ids in by_type.items():
            for part in chunks(sorted(ids)):
                for rid, version, state, previous in self.db.all(
                        conn, "SELECT resource_id, version_id, state, previous_state FROM notify_resource WHERE "
                              f"resource_type = ? AND resource_id IN ({marks(len(part))})", (resource_type, *part)):
                    out[(resource_type, rid)] = (int(version), state, previous)
        return out

    def _deny(self, conn: Connection, sub: SubscriptionDef, resource_type: str, resource_id: str, version_id: int,
              patient_ref: str | None, at: int) -> None:
        """Remember a withheld notification for its audit (once per subscription and focus version)."""
        requester = orjson.dumps({"client": sub.client, "organization": sub.organization,
                                  "purpose": sub.purpose}).decode()
        self.db.exec(conn, "INSERT INTO notify_denied (subscription_id, resource_type, resource_id, version_id, "
                         "patient_ref, requester, denied_ms, audited_ms) VALUES (?, ?, ?, ?, ?, ?, ?, NULL) "
                         "ON CONFLICT DO NOTHING",
                   (sub.id, resource_type, resource_id, version_id, patient_ref, requester, at))

    def denials(self, limit: int = 500) -> list[DeniedRow]:
        """Withheld notifications not yet audited, oldest first."""
        with self.db.connection() as conn:
            rows = self.db.all(conn, "SELECT subscription_id, resource_type, resource_id, version_id, patient_ref, "
                                   "requester, denied_ms FROM notify_denied WHERE audited_ms IS NULL "
                                   "ORDER BY denied_ms LIMIT ?", (limit,))
        out = []
        for r in rows:
            who = orjson.loads(r[5])
            out.append(DeniedRow(r[0], r[1], r[2], int(r[3]), r[4], who.get("client") or "", who.get("organization"),
                                 who.get("purpose") or "TREAT", int(r[6])))
        return out

    def mark_audited(self, keys: Sequence[tuple[str, str, str, int]]) -> None:
        """The AuditEvents of these denials are on the audit topic (acknowledged)."""
        at = now_ms()
        with self.db.transaction() as conn:
            for key in keys:
                self.db.exec(conn, "UPDATE notify_denied SET audited_ms = ? WHERE subscription_id = ? AND "
                                 "resource_type = ? AND resource_id = ? AND version_id = ?", (at, *key))

    def _upsert_resource(self, conn: Connection, change: Change, previous: str | None, exists: bool) -> None:
        body = orjson.dumps(change.resource) if change.resource is not None else None
        members = orjson.dumps(list(change.members)).decode()
        params = (change.version_id, state_of(change), previous, change.restriction, members, body,
                  change.resource_type, change.id)
        if exists:
            self.db.exec(conn, "UPDATE notify_resource SET version_id = ?, state = ?, previous_state = ?, "
                             "restriction = ?, members = ?, body = ? WHERE resource_type = ? AND resource_id = ?",
                       params)
        else:
            self.db.exec(conn, "INSERT INTO notify_resource (version_id, state, previous_state, restriction, "
                             "members, body, resource_type, resource_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", params)
        if change.resource_type == "Consent":
            self._index_consent(conn, change.id, change.members)

    def _index_consent(self, conn: Connection, resource_id: str, members: Sequence[str]) -> None:
        self.db.exec(conn, "DELETE FROM notify_consent_member WHERE resource_id = ?", (resource_id,))
        for ref in sorted(set(members)):
            self.db.exec(conn, "INSERT INTO notify_consent_member (patient_ref, resource_id) VALUES (?, ?)",
                       (ref, resource_id))

    def _index_old_consents(self, conn: Connection) -> None:
        """A store from before the consent index: index the Consents it has (once; later ones as they come)."""
        if self.db.all(conn, "SELECT 1 FROM notify_consent_member LIMIT 1"):
            return
        for resource_id, members in self.db.all(conn, "SELECT resource_id, members FROM notify_resource "
                                                    "WHERE resource_type = 'Consent'"):
            self._index_consent(conn, resource_id, orjson.loads(members))

    def _consents(self, conn: Connection, members: Sequence[str]) -> list[ConsentDirective]:
        """The Consents notify has seen for this person (any of its Patient records), as the disclosure engine
        reads them."""
        if not members:
            return []
        wanted = sorted(set(members))
        rows = self.db.all(conn, CONSENTS_OF_SQL.format(marks=",".join("?" * len(wanted))), wanted)
        return [parse_consent(orjson.loads(bytes(row[0]))) for row in rows]

    def consents(self, members: Sequence[str]) -> list[ConsentDirective]:
        with self.db.connection() as conn:
            return self._consents(conn, members)

    def focus(self, resource_type: str, resource_id: str) -> FocusRow | None:
        with self.db.connection() as conn:
            rows = self.db.all(conn, "SELECT version_id, restriction, members, body FROM notify_resource "
                                   "WHERE resource_type = ? AND resource_id = ?", (resource_type, resource_id))
        if not rows:
            return None
        r = rows[0]
        return FocusRow(int(r[0]), int(r[1]), tuple(orjson.loads(r[2])), None if r[3] is None else bytes(r[3]))

    # --- events ------------------------------------------------------------------------------------------

    def pending(self, subscription_id: str, limit: int, after: int = 0) -> list[EventRow]:
        """The first ``limit`` pending events numbered above ``after``."""
        with self.db.connection() as conn:
            rows = self.db.all(conn, f"SELECT {_EVENT_COLUMNS} FROM notify_event WHERE subscription_id = ? AND "
                                   "state = 'pending' AND event_number > ? ORDER BY event_number LIMIT ?",
                               (subscription_id, after, limit))
        return [_event(r) for r in rows]

    def events(self, subscription_id: str, since: int | None = None, until: int | None = None,
               limit: int = 1000, include_withheld: bool = False) -> list[EventRow]:
        """The subscription's events in number order; those ``withheld`` after their number went out only with
        ``include_withheld`` (``$events`` reports their numbers, without focus)."""
        states = "" if include_withheld else "state <> 'withheld' AND "
        with self.db.connection() as conn:
            rows = self.db.all(conn, f"SELECT {_EVENT_COLUMNS} FROM notify_event WHERE subscription_id = ? AND "
                                   f"{states}event_number >= ? AND event_number <= ? ORDER BY event_number LIMIT ?",
                             (subscription_id, since or 0, until if until is not None else 2**62, limit))
        return [_event(r) for r in rows]

    def withdraw(self, subscription_id: str, numbers: Sequence[int],
                 patients: Mapping[int, str | None] | None = None) -> int:
        """Pending events the recipient may no longer receive (a revocation since they were numbered): one
        never sent, with only never-sent events after it, is deleted and the later events move down one number
        (the counter too) - no subscriber saw those numbers, so the sequence stays gap-free; one already on the
        wire or served by ``$events`` (:meth:`mark_served`) becomes ``withheld`` (never sent again, not served by
        ``$events``, its number never reused). Either way it is a denied attempt, remembered for its audit
        (``patients``: the Patient each event is about). Returns how many were deleted. One transaction."""
        deleted = 0
        at = now_ms()
        with self.db.transaction() as conn:
            subs = self.db.all(conn, f"SELECT {_SUB_COLUMNS} FROM notify_subscription WHERE id = ?",
                             (subscription_id,))
            sub = _sub(subs[0]) if subs else None
            told_rows = self.db.all(conn, "SELECT told FROM notify_subscription WHERE id = ?", (subscription_id,))
            told = int(told_rows[0][0] or 0) if told_rows else 0
            for number in sorted(set(numbers), reverse=True):
                rows = self.db.all(conn, "SELECT state, attempts, served_ms, resource_type, resource_id, version_id "
                                       "FROM notify_event WHERE subscription_id = ? AND event_number = ?",
                                 (subscription_id, number))
                if not rows or rows[0][0] != "pending":
                    continue
                if sub is not None:
                    self._deny(conn, sub, rows[0][3], rows[0][4], int(rows[0][5]),
                               (patients or {}).get(number), at)
                rows = [row[:3] for row in rows]
                later = self.db.all(conn, "SELECT event_number, state, attempts, served_ms FROM notify_event WHERE "
                                        "subscription_id = ? AND event_number > ? ORDER BY event_number",
                                  (subscription_id, number))
                unseen = number > told and all(r[-3] == "pending" and int(r[-2]) == 0 and r[-1] is None
                                               for r in (rows[0], *later))
                if not unseen:
                    self.db.exec(conn, "UPDATE notify_event SET state = 'withheld' WHERE subscription_id = ? AND "
                                     "event_number = ?", (subscription_id, number))
                    continue
                self.db.exec(conn, "DELETE FROM notify_event WHERE subscription_id = ? AND event_number = ?",
                           (subscription_id, number))
                for r in later:  # ascending: each number below is free by now
                    self.db.exec(conn, "UPDATE notify_event SET event_number = ? WHERE subscription_id = ? AND "
                                     "event_number = ?", (int(r[0]) - 1, subscription_id, int(r[0])))
                self.db.exec(conn, "UPDATE notify_subscription SET events_since_start = events_since_start - 1 "
                                 "WHERE id = ?", (subscription_id,))
                deleted += 1
        return deleted

    def mark_served(self, subscription_id: str, numbers: Sequence[int]) -> None:
        """``$events`` showed these events to the subscriber: their numbers are never given to other events
        (and the counter the subscriber is told covers them)."""
        if not numbers:
            return
        at = now_ms()
        with self.db.transaction() as conn:
            for n in numbers:
                self.db.exec(conn, "UPDATE notify_event SET served_ms = COALESCE(served_ms, ?) WHERE "
                                 "subscription_id = ? AND event_number = ?", (at, subscription_id, n))
            self._raise_told(conn, subscription_id, max(numbers))

    def mark_told(self, subscription_id: str, number: int) -> None:
        """A notification naming events up to ``number`` is about to go out: from now on the subscriber may
        know that number (``events-since-subscription-start`` never goes below it, and no event at or below
        it is ever renumbered). Written before the request, so a crash after it changes nothing."""
        self.record_deliveries({subscription_id: number}, {})

    def _raise_told(self, conn: Connection, subscription_id: str, number: int) -> None:
        # not updated_ms: that is the definition's generation (notify reconciles on it)
        self.db.exec(conn, "UPDATE notify_subscription SET told = ? WHERE id = ? AND told < ?",
                   (number, subscription_id, number))

    def mark_delivered(self, subscription_id: str, numbers: Sequence[int]) -> None:
        self.record_deliveries({}, {subscription_id: numbers})

    def record_deliveries(self, told: Mapping[str, int], delivered: Mapping[str, Sequence[int]]) -> None:
        """Many subscriptions' delivery marks in one transaction (the delivery loop's group commit,
        services/notify/delivery.py): ``told`` raises what each subscriber may know (:meth:`mark_told`), and
        ``delivered`` marks acknowledged (and audited) events delivered."""
        if not told and not delivered:
            return
        at = now_ms()
        with self.db.transaction() as conn:
            for subscription_id, number in told.items():
                self._raise_told(conn, subscription_id, number)
            self.db.many(conn, "UPDATE notify_event SET state = 'delivered', delivered_ms = ?, "
                               "attempts = attempts + 1 WHERE subscription_id = ? AND event_number = ? "
                               "AND state = 'pending'",
                         [(at, sid, n) for sid, numbers in delivered.items() for n in numbers])

    def mark_failed(self, subscription_id: str, numbers: Sequence[int], first_failure_ms: int) -> None:
        with self.db.transaction() as conn:
            for n in numbers:
                self.db.exec(conn, "UPDATE notify_event SET attempts = attempts + 1, first_failure_ms = "
                                 "COALESCE(first_failure_ms, ?) WHERE subscription_id = ? AND event_number = ?",
                           (first_failure_ms, subscription_id, n))

    def dead_letter(self, subscription_id: str, reason: str, status: str, error: str) -> int:
        """Every pending event of the subscription becomes a dead letter with ``reason``; the subscription's
        status becomes ``status`` (error / off) with ``error``. One transaction."""
        with self.db.transaction() as conn:
            count = self.db.exec(conn, "UPDATE notify_event SET state = 'dead', dead_reason = ? "
                                     "WHERE subscription_id = ? AND state = 'pending'", (reason, subscription_id))
            self.db.exec(conn, "UPDATE notify_subscription SET status = ?, error = ?, updated_ms = ? WHERE id = ?",
                       (status, error, now_ms(), subscription_id))
        return count

    def replay(self, subscription_id: str) -> int:
        """An operator's replay: the subscription's dead letters are pending again (same event numbers) and
        the subscription active. Returns how many."""
        with self.db.transaction() as conn:
            count = self.db.exec(conn, "UPDATE notify_event SET state = 'pending', dead_reason = NULL, "
                                     "first_failure_ms = NULL WHERE subscription_id = ? AND state = 'dead'",
                               (subscription_id,))
            self.db.exec(conn, "UPDATE notify_subscription SET status = 'active', error = NULL, updated_ms = ? "
                             "WHERE id = ? AND status <> 'requested'", (now_ms(), subscription_id))
        return count

    def backlog(self) -> list[Backlog]:
        """Per subscription: pending and dead events, and when the oldest pending one was numbered (reads only
        the pending and dead rows, through the state index)."""
        with self.db.connection() as conn:
            ids = [r[0] for r in self.db.all(conn, "SELECT id FROM notify_subscription")]
            rows = self.db.all(conn, "SELECT subscription_id, state, COUNT(*), MIN(created_ms) FROM notify_event "
                                   "WHERE state IN ('pending', 'dead') GROUP BY subscription_id, state")
        pending: dict[str, tuple[int, int]] = {}
        dead: dict[str, int] = {}
        for sid, state, count, oldest in rows:
            if state == "pending":
                pending[sid] = (int(count), int(oldest))
            else:
                dead[sid] = int(count)
        return [Backlog(sid, pending.get(sid, (0, 0))[0], dead.get(sid, 0),
                        pending[sid][1] if sid in pending else None) for sid in ids]


def _patient(change: Change) -> str | None:
    """The Patient a change is about (for the audit of a withheld notification)."""
    if change.resource_type == "Patient":
        return f"Patient/{change.id}"
    return change.patient or (change.members[0] if change.members else None)


def notify_store_dsn(settings: Settings) -> str:
    if settings.notify_store_dsn:
        return settings.notify_store_dsn
    return f"sqlite:///{(settings.cache_dir / 'notify' / 'notify.db').resolve()}"


def open_notify_store(dsn: str, pool_size: int = 8, policy: Policy = DEFAULT_POLICY) -> NotifyStore:
    """Open (and create the schema of) the notify store a DSN names; ``policy`` is the disclosure policy."""
    if dsn.startswith("sqlite:///"):
        db = Database(SQLITE, sqlite_pool(Path(dsn.removeprefix("sqlite:///")), pool_size, "notify store"))
    elif dsn.startswith(("postgresql://", "postgres://")):
        db = Database(POSTGRES, postgres_pool(dsn, pool_size, "notify store"))
    else:
        raise ValueError("notify_store_dsn must start with sqlite:/// or postgresql://")
    store = NotifyStore(db, dsn, policy)
    store.initialize()
    return store
