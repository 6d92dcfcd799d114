# ruff: noqa: S608 -- SQL is assembled from fixed fragments and placeholders; every value is a bound parameter
"""Connections to the record store's database and the statements every other store module writes through.

:class:`ConnectionPool` hands out at most ``size`` DB-API connections, made lazily and dropped when they fail.
:class:`Database` adds the dialect (services/record/store/schema.py) and the one write lock: a read runs on any
connection, a write in one transaction at a time; a database error becomes StoreUnavailable here. Its helpers
run a statement in the dialect's placeholders (:meth:`Database.all`, :meth:`Database.many`) and write rows the
fastest way the dialect allows (COPY and unnest() on PostgreSQL, executemany on SQLite).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from services.record.errors import StoreUnavailable

if TYPE_CHECKING:
    from services.record.store.schema import Dialect

CHUNK = 500  # values per IN (...) list


class Cursor(Protocol):
    def fetchall(self) -> list[Any]: ...

    def fetchone(self) -> Any: ...


class Connection(Protocol):
    def execute(self, sql: Any, params: Any = ...) -> Any: ...

    def cursor(self) -> Any: ...

    def close(self) -> None: ...


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


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def marks(n: int) -> str:
    return ",".join("?" * n)


class Database:
    """The pool, the dialect and the write lock: what every store module runs its statements through."""

    def __init__(self, dialect: Dialect, pool: ConnectionPool) -> None:
        self.dialect = dialect
        self.pool = pool
        self._write_lock = threading.Lock()

    @contextlib.contextmanager
    def connection(self) -> Iterator[Connection]:
        try:
            with self.pool.connection() as conn:
                yield conn
        except self.dialect.errors as exc:
            raise StoreUnavailable(f"record store failed: {type(exc).__name__}") from exc

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        with self._write_lock, self.connection() as conn:
            conn.execute(self.dialect.begin)
            try:
                yield conn
            except BaseException:
                with contextlib.suppress(*self.dialect.errors):
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def all(self, conn: Connection, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        cur = conn.execute(self.dialect.sql(sql), tuple(params))
        rows: list[Any] = cur.fetchall()
        return rows

    def many(self, conn: Connection, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            cur = conn.cursor()
            cur.executemany(self.dialect.sql(sql), rows)
            cur.close()

    def insert(self, conn: Connection, table: str, columns: str, rows: Sequence[Sequence[Any]]) -> None:
        """Append new rows: COPY on PostgreSQL (one stream, no per-row statement), executemany on SQLite."""
        if not rows:
            return
        if self.dialect.copy:
            with conn.cursor() as cur, cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            width = columns.count(",") + 1
            self.many(conn, f"INSERT INTO {table} ({columns}) VALUES ({marks(width)})", rows)

    def upsert(
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
            self.many(conn, f"INSERT INTO {table} ({columns}) VALUES ({marks(len(names))}) {tail}", rows)
            return
        arrays = ", ".join(f"?::{t.strip()}[]" for t in pg_types.split(","))
        conn.execute(
            self.dialect.sql(f"INSERT INTO {table} ({columns}) SELECT * FROM unnest({arrays}) {tail}"),
            [list(column) for column in zip(*rows, strict=True)],
        )

    def delete_keys(self, conn: Connection, table: str, keys: Sequence[tuple[str, str]]) -> None:
        """DELETE the rows of these (resource_type, id) keys."""
        if not keys:
            return
        if not self.dialect.copy:
            self.many(conn, f"DELETE FROM {table} WHERE resource_type = ? AND id = ?", keys)
            return
        conn.execute(
            self.dialect.sql(
                f"DELETE FROM {table} WHERE (resource_type, id) IN (SELECT * FROM unnest(?::text[], ?::text[]))"
            ),
            [[k[0] for k in keys], [k[1] for k in keys]],
        )
