"""The record store in SQL, shared by the SQLite and PostgreSQL implementations: one object, its jobs in
modules of their own.

    schema.py      the tables and what is checked when a store opens
    (services/common/sql.py, shared with the notify store: connections, the dialects, the one write
    transaction at a time, the statement helpers)
    versions.py    ingest (versions, current rows, search index; refused data isolated) and reads by key
    identity.py    the identity graph's tables: who is one person, kept current per ingest
    query.py       search, $everything, history and bulk reads, filtered by the caller's view
    outbox.py      the change feed, written in the ingest's transaction
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.common.sql import ConnectionPool, Database, Dialect, chunks, marks
from services.record.changes import OutboxRow
from services.record.identity import IdentityPolicy, IdentityState, ReviewCandidate
from services.record.ingest import PreparedBundle
from services.record.search import SearchQuery
from services.record.store import identity, outbox, schema, versions
from services.record.store import query as queries
from services.record.store.base import EverythingQuery, HistoryQuery, IngestReport, Page, Person, StoredRow, View


class SqlStore:
    """:class:`services.record.store.base.RecordStore` over a DB-API connection pool."""

    dsn: str = ""  # set by the implementation; may carry a password: never log it

    def __init__(self, dialect: Dialect, pool: ConnectionPool, policy: IdentityPolicy) -> None:
        self.dialect = dialect
        self.db = Database(dialect, pool)
        self.policy = policy

    def initialize(self) -> None:
        """Create the schema (idempotent), recompute stored restrictions when the label classes changed and
        rebuild persons when the identity policy changed."""
        with self.db.transaction() as conn:
            new = schema.create(self.db, conn)
            schema.refresh_restrictions(self.db, conn)
            fingerprint = self.policy.fingerprint()
            if schema.meta(self.db, conn, "identity_policy") != fingerprint:
                identity.rebuild_persons(self.db, conn, self.policy)
                schema.set_meta(self.db, conn, "identity_policy", fingerprint)
            if new:
                schema.set_meta(self.db, conn, "schema_version", schema.SCHEMA_VERSION)

    def ping(self) -> None:
        with self.db.connection() as conn:
            self.db.all(conn, "SELECT 1")

    def close(self) -> None:
        self.db.pool.close()

    # --- writes ---------------------------------------------------------------------------------------

    def ingest(self, bundles: Sequence[PreparedBundle]) -> IngestReport:
        return versions.ingest(self.db, bundles, self.policy)

    def pending_changes(self, limit: int = 1000, after_seq: int = 0) -> list[OutboxRow]:
        """Change-feed messages committed but not yet forgotten (acknowledged by Kafka), oldest first; those
        numbered above ``after_seq``."""
        return outbox.pending(self.db, limit, after_seq)

    def forget_changes(self, up_to_seq: int) -> None:
        outbox.forget(self.db, up_to_seq)

    # --- identity -------------------------------------------------------------------------------------

    def identity_state(self) -> IdentityState:
        with self.db.connection() as conn:
            return identity.read_state(self.db, conn)

    def person(self, patient_ref: str) -> Person:
        return identity.person(self.db, patient_ref)

    def persons_of(self, patient_refs: Sequence[str]) -> dict[str, tuple[str, ...]]:
        return identity.persons_of(self.db, patient_refs)

    def review_candidates(self) -> list[ReviewCandidate]:
        return identity.candidates_for_review(self.db)

    # --- reads ----------------------------------------------------------------------------------------

    def read(self, resource_type: str, resource_id: str) -> StoredRow | None:
        return versions.read(self.db, resource_type, resource_id)

    def vread(self, resource_type: str, resource_id: str, version_id: int) -> StoredRow | None:
        return versions.vread(self.db, resource_type, resource_id, version_id)

    def export_versions(self) -> list[tuple[StoredRow, str]]:
        """Every stored version and its content hash, in (type, id, version) order (backups, checks)."""
        return versions.export_versions(self.db)

    def consents(self, patient_refs: Sequence[str] | None) -> list[StoredRow]:
        return versions.consents(self.db, patient_refs)

    def stored_types(self) -> list[str]:
        return versions.stored_types(self.db)

    def history(self, query: HistoryQuery, view: View) -> Page:
        return queries.history(self.db, query, view)

    def everything(self, query: EverythingQuery, view: View) -> Page:
        return queries.everything(self.db, query, view)

    def current_with_token(self, resource_type: str, param: str, codes: Sequence[str]
                           ) -> list[tuple[str, StoredRow]]:
        """Bulk read for whole-population work (outcomes, measures): every current, undeleted ``resource_type``
        with one of ``codes`` under token ``param``, each with the person it belongs to. No paging, no view:
        callers apply their own access rules."""
        return queries.current_with_token(self.db, resource_type, param, codes)

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
            sql += (" AND c.id IN (SELECT t.id FROM search_token t WHERE t.resource_type = ? AND t.param = ? "  # noqa: S608 - placeholders only
                    f"AND t.code IN ({marks(len(codes))}))")
            params.extend((resource_type, param, *codes))
        with self.db.connection() as conn:
            return [(r[0], r[1], r[2], r[3], r[4]) for r in self.db.all(conn, sql, params)]

    def version_counts(self, resource_types: Sequence[str]) -> tuple[int, ...]:
        """How many versions of each of ``resource_types`` were ever written, in that order. The count grows with
        every new version, deletion and identity statement (a Patient or Linkage version) and never shrinks, so an
        unchanged answer means nothing of those types changed: the change marker of kept whole-population state
        (services/outcomes/population.py). An index-only count."""
        if not resource_types:
            return ()
        sql = ("SELECT resource_type, COUNT(*) FROM resource_version "  # noqa: S608 - placeholders only
               f"WHERE resource_type IN ({marks(len(resource_types))}) GROUP BY resource_type")
        with self.db.connection() as conn:
            counts = {r[0]: int(r[1]) for r in self.db.all(conn, sql, tuple(resource_types))}
        return tuple(counts.get(t, 0) for t in resource_types)

    def current_bodies(self, resource_type: str, ids: Sequence[str]) -> dict[str, tuple[int, bytes]]:
        """``id -> (version, body)`` of the current, undeleted versions of ``ids`` (the others are left out)."""
        found: dict[str, tuple[int, bytes]] = {}
        with self.db.connection() as conn:
            for chunk in chunks(list(ids)):
                for r in self.db.all(conn, "SELECT id, version_id, body FROM resource_current WHERE resource_type = ? "  # noqa: S608
                                   f"AND deleted = 0 AND id IN ({marks(len(chunk))})", (resource_type, *chunk)):
                    if r[2] is not None:
                        found[r[0]] = (r[1], bytes(r[2]))
        return found

    def search(self, query: SearchQuery, view: View) -> Page:
        return queries.search(self.db, query, view)
