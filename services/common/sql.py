# ruff: noqa: S608 -- SQL is assembled from fixed fragments and placeholders; every value is a bound parameter
"""The one SQL layer under carebus's stores (the record store, services/record/store/, and the notify store,
services/notify/store.py): SQLite by default (stdlib sqlite3, WAL), PostgreSQL by DSN (psycopg 3).

:class:`ConnectionPool` hands out at most ``size`` DB-API connections, made lazily and dropped when they fail.
:class:`Dialect` is what differs between the two databases: column types, the parameter placeholder, how a write
transaction begins, which exceptions come from the database and which of those mean "this data can never be
stored" (:attr:`Dialect.refusal`). :class:`Database` adds the dialect and the one write lock to a pool: a read
runs on any connection, a write in one transaction at a time; a database error becomes StoreUnavailable here
(services/common/errors.py). Its helpers run a statement in the dialect's placeholders (:meth:`Database.all`,
:meth:`Database.exec`, :meth:`Database.many`) and write rows the fastest way the dialect allows (COPY and
unnest() on PostgreSQL, executemany on SQLite). What each store keeps, its tables and its queries stay in the
store.
"""

from __future__ import annotations

import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import psycopg

from services.common.errors import StoreUnavailable

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

    def __init__(self, factory: Callable[[], Connection], size: int, errors: tuple[type[BaseException], ...],
                 name: str = "store"):
        self._factory = factory
        self.name = name  # in error messages: "record store", "notify store"
        self._errors = errors
        self._idle: queue.LifoQueue[Connection] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(size)
        self._all: list[Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    @contextlib.contextmanager
    def connection(self) -> Iterator[Connection]:
        if self._closed:
            raise StoreUnavailable(f"the {self.name} is closed")
        self._slots.acquire()
        conn: Connection | None = None
        try:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                try:
                    conn = self._factory()
                except self._errors as exc:
                    raise StoreUnavailable(f"cannot connect to the {self.name}: {type(exc).__name__}") from exc
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
            raise StoreUnavailable(f"{self.pool.name} failed: {type(exc).__name__}") from exc

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

    def exec(self, conn: Connection, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; the number of rows it changed."""
        cur = conn.execute(self.dialect.sql(sql), tuple(params))
        return int(getattr(cur, "rowcount", 0) or 0)

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


# --- dialects ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Dialect:
    name: str
    placeholder: str
    text: str
    bigint: str
    blob: str
    begin: str
    errors: tuple[type[BaseException], ...]
    # the code of an error that refuses the data (never retried), or None for an outage
    refusal: Callable[[BaseException], str | None] = lambda exc: None
    rowid: bool = False  # tables have a rowid (SQLite)
    copy: bool = False  # COPY FROM STDIN and multi-row statements (PostgreSQL)
    # run first in the schema transaction, so instances starting together on one database create it one at a
    # time (concurrent CREATE TABLE IF NOT EXISTS races in PostgreSQL's catalogue)
    schema_lock: str | None = None
    # taken by an ingest before it recomputes persons and numbers its change-outbox rows, held to its commit:
    # instances ingesting together on one database see each other's identity links (two Patients of one person
    # ingested at once on two partitions) and number their rows one after the other, in commit order
    ingest_lock: str | None = None

    def sql(self, text: str) -> str:
        return text if self.placeholder == "?" else text.replace("?", self.placeholder)


def sqlite_refusal(exc: BaseException) -> str | None:
    """The code of an error that refuses the data itself (a constraint, a value SQLite cannot hold), None for an
    outage (locked, I/O error, disk full, ...)."""
    if isinstance(exc, sqlite3.IntegrityError | sqlite3.DataError):
        return f"sqlite-{getattr(exc, 'sqlite_errorname', type(exc).__name__)}"
    if isinstance(exc, sqlite3.Error):
        return None
    if isinstance(exc, ValueError | OverflowError):  # a value the driver cannot bind (an int beyond 64 bits)
        return type(exc).__name__
    return None


SQLITE = Dialect(
    name="sqlite",
    placeholder="?",
    text="TEXT",
    bigint="INTEGER",
    blob="BLOB",
    begin="BEGIN IMMEDIATE",
    errors=(sqlite3.Error,),
    refusal=sqlite_refusal,
    rowid=True,
)


def connect_sqlite(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")  # the pool's WalCheckpointer does it, off the writer's commit
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA cache_size=-65536")
    conn.execute("PRAGMA temp_store=MEMORY")
    optimize_sqlite(conn)
    return conn


def optimize_sqlite(conn: sqlite3.Connection) -> None:
    """Refresh the query planner's statistics where tables changed a lot (bounded work: ``analysis_limit``).
    Without statistics SQLite drives a search such as ``Observation?patient=X&code=Y`` by the primary key (for its
    ORDER BY id) over every row of the type instead of by the patient index: 0.1 s at 10,000 patients instead
    of 0.3 ms, growing with the record. SQLite's documented practice: at open, then periodically."""
    conn.execute("PRAGMA analysis_limit=1000")
    conn.execute("PRAGMA busy_timeout=1000")  # statistics can wait for the next time; never stall on a writer
    try:
        conn.execute("PRAGMA optimize=0x10002")
    except sqlite3.OperationalError:  # busy or locked: another connection is writing
        pass
    finally:
        conn.execute("PRAGMA busy_timeout=30000")


# SQLSTATE classes that refuse the data, not the connection: 22 data exception (U+0000 in text, a value out of
# range, bad encoding), 23 integrity constraint violation, 54 program limit exceeded (an index row too large)
REFUSAL_CLASSES = frozenset({"22", "23", "54"})


def postgres_refusal(exc: BaseException) -> str | None:
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
    refusal=postgres_refusal,
    copy=True,
    schema_lock="SELECT pg_advisory_xact_lock(7262730)",  # an arbitrary constant: carebus's schema lock
    ingest_lock="SELECT pg_advisory_xact_lock(7262731)",
)


def connect_postgres(dsn: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(dsn, autocommit=True, connect_timeout=10)


WAL_CHECKPOINT_INTERVAL_S = 1.0


class WalCheckpointer:
    """Copies the write-ahead log back into the SQLite file on a thread of its own, every second.

    By default SQLite does it inside the COMMIT that takes the log past 1,000 pages, and that COMMIT then waits
    for the copy and its fsync: up to a quarter of a second on this machine's disk, once every few ingest batches
    (a fifth of the record ingestor's time at 200 events/s). A PASSIVE checkpoint never blocks the writer or the
    readers; the log restarts from its beginning once a checkpoint has caught up with it."""

    def __init__(self, path: Path, interval_s: float = WAL_CHECKPOINT_INTERVAL_S) -> None:
        self._path = path
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"wal-checkpoint-{path.stem}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        while not self._stop.wait(self._interval_s):
            try:
                if conn is None:
                    conn = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None, timeout=1.0)
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error:  # busy or gone: the next round tries again
                if conn is not None:
                    with contextlib.suppress(sqlite3.Error):
                        conn.close()
                conn = None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


class SqlitePool(ConnectionPool):
    """The pool of one SQLite file, with its checkpointer (stopped with the pool)."""

    def __init__(self, path: Path, size: int, name: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        super().__init__(lambda: connect_sqlite(path), size, SQLITE.errors, name)
        self._checkpointer = WalCheckpointer(path)

    def close(self) -> None:
        self._checkpointer.close()
        super().close()


def sqlite_pool(path: Path, size: int, name: str) -> ConnectionPool:
    """A pool of connections to the SQLite file ``path`` (its folder is made)."""
    return SqlitePool(path, size, name)


def postgres_pool(dsn: str, size: int, name: str) -> ConnectionPool:
    """A pool of connections to the PostgreSQL database ``dsn`` names (it may carry a password: never logged)."""
    return ConnectionPool(lambda: connect_postgres(dsn), size, POSTGRES.errors, name)
