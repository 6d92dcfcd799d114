"""The record store on PostgreSQL (psycopg 3). Text columns use the "C" collation: byte order, which
string prefix search relies on, whatever the database's locale."""

from __future__ import annotations

import psycopg

from services.record.identity import IdentityPolicy
from services.record.store.sql import ConnectionPool, Dialect, SqlStore

POSTGRES = Dialect(
    name="postgresql",
    placeholder="%s",
    text='TEXT COLLATE "C"',
    bigint="BIGINT",
    blob="BYTEA",
    begin="BEGIN",
    errors=(psycopg.Error,),
    copy=True,
    schema_lock="SELECT pg_advisory_xact_lock(7262730)",  # an arbitrary constant: carebus's schema lock
)


def _connect(dsn: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(dsn, autocommit=True, connect_timeout=10)


class PostgresStore(SqlStore):
    def __init__(self, dsn: str, policy: IdentityPolicy, pool_size: int = 8) -> None:
        super().__init__(POSTGRES, ConnectionPool(lambda: _connect(dsn), pool_size, POSTGRES.errors), policy)
        self.dsn = dsn
