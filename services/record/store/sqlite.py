"""The record store on SQLite (stdlib sqlite3): one file, WAL mode so reads never wait for the writer (the
connection and dialect: services/common/sql.py)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from services.common.sql import SQLITE, optimize_sqlite, sqlite_pool
from services.record.identity import IdentityPolicy
from services.record.ingest import PreparedBundle
from services.record.store.base import IngestReport
from services.record.store.sql import SqlStore

OPTIMIZE_INTERVAL_S = 300.0


class SqliteStore(SqlStore):
    def __init__(self, path: Path, policy: IdentityPolicy, pool_size: int = 8) -> None:
        self.path = path
        self.dsn = f"sqlite:///{path}"
        super().__init__(SQLITE, sqlite_pool(path, pool_size, "record store"), policy)
        self._optimized_at = time.monotonic()

    def ingest(self, bundles: Sequence[PreparedBundle]) -> IngestReport:
        report = super().ingest(bundles)
        if time.monotonic() - self._optimized_at > OPTIMIZE_INTERVAL_S:
            self._optimized_at = time.monotonic()
            self.optimize()
        return report

    def optimize(self) -> None:
        """Statistics refreshed now (after a bulk load; the ingest path also calls it every few minutes)."""
        with self.db.connection() as conn:
            optimize_sqlite(conn)  # type: ignore[arg-type]
