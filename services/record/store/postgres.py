"""The record store on PostgreSQL (psycopg 3). Text columns use the "C" collation: byte order, which
string prefix search relies on, whatever the database's locale."""

from __future__ import annotations

import psycopg

from services.record.identity import IdentityPolicy
from services.record.store.pool import ConnectionPool
from services.record.store.schema import Dialect
from services.record.store.sql import SqlStore

# SQLSTATE classes that refuse the data, not the connection: 22 data exception (U+0000 in text, a value out of
# range, bad encoding), 23 integrity constraint violation, 54 program limit exceeded (an index row too large)
REFUSAL_CLASSES = frozenset({"22", "23", "54"})


def refusal(exc: BaseException) -> str | None:
    """The code of an error that refuses the data itself, None for an outage (connection, shutdown, ...)."""
    if isinstance(exc, psycopg.Error):
        state = exc.sqlstate or ""
        if state[:2] in REFUSAL_CLASSES:
            return f"sqlstate-{state}"
        if not state and isinstance(exc, psycopg.DataError):  # refused by psycopg before sending (U+0000)
            return "client-data-error"
        return None
    if isinstance(exc, ValueError | OverflowError):  # a value the driver cannot adapt
        return type(exc).__name__
    return None


POSTGRES = Dialect(
    name="postgresql",
    placeholder="%s",
    text='TEXT COLLATE "C"',
    bigint="BIGINT",
    blob="BYTEA",
    begin="BEGIN",
    errors=(psycopg.Error,),
    refusal=refusal,
    copy=True,
    schema_lock="SELECT pg_advisory_xact_lock(7262730)",  # an arbitrary constant: carebus's schema lock
)


def _connect(dsn: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(dsn, autocommit=True, connect_timeout=10)


class PostgresStore(SqlStore):
    def __init__(self, dsn: str, policy: IdentityPolicy, pool_size: int = 8) -> None:
        super().__init__(POSTGRES, ConnectionPool(lambda: _connect(dsn), pool_size, POSTGRES.errors), policy)
        self.dsn = dsn
