"""The record store: one interface (:class:`RecordStore`), two implementations (SQLite, PostgreSQL), chosen by
a DSN: ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` or ``postgresql://...``."""

from __future__ import annotations

from pathlib import Path

from services.common.settings import Settings
from services.record.identity import IdentityPolicy
from services.record.store.base import (
    EverythingQuery,
    HistoryQuery,
    IngestReport,
    Page,
    Person,
    RecordStore,
    StoredRow,
    View,
)
from services.record.store.sql import SqlStore

__all__ = [
    "EverythingQuery",
    "HistoryQuery",
    "IngestReport",
    "Page",
    "Person",
    "RecordStore",
    "SqlStore",
    "StoredRow",
    "View",
    "identity_policy",
    "open_store",
    "store_dsn",
]


def identity_policy(settings: Settings) -> IdentityPolicy:
    return IdentityPolicy(
        frozenset(settings.record_enterprise_identifier_systems), settings.record_demographic_link_rule
    )


def store_dsn(settings: Settings) -> str:
    if settings.record_store_dsn:
        return settings.record_store_dsn
    return f"sqlite:///{(settings.cache_dir / 'record' / 'record.db').resolve()}"


def open_store(dsn: str, policy: IdentityPolicy) -> SqlStore:
    """Open (and create or migrate the schema of) the store a DSN names."""
    if dsn.startswith("sqlite:///"):
        from services.record.store.sqlite import SqliteStore

        store: SqlStore = SqliteStore(Path(dsn.removeprefix("sqlite:///")), policy)
    elif dsn.startswith(("postgresql://", "postgres://")):
        from services.record.store.postgres import PostgresStore

        store = PostgresStore(dsn, policy)
    else:
        raise ValueError("record_store_dsn must start with sqlite:/// or postgresql://")
    store.initialize()
    return store
