"""The record store on PostgreSQL (psycopg 3; the connection and dialect: services/common/sql.py, whose text
columns use the "C" collation: byte order, which string prefix search relies on, whatever the database's
locale)."""

from __future__ import annotations

from services.common.sql import POSTGRES, postgres_pool
from services.record.identity import IdentityPolicy
from services.record.store.sql import SqlStore


class PostgresStore(SqlStore):
    def __init__(self, dsn: str, policy: IdentityPolicy, pool_size: int = 8) -> None:
        super().__init__(POSTGRES, postgres_pool(dsn, pool_size, "record store"), policy)
        self.dsn = dsn
