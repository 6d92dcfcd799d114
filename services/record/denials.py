"""Denied attempts are journalled on the request path and audited off it, on a fixed cadence.

A read, search, history, ``$everything`` or ``$events`` answer that withheld something is a denied attempt: one
AuditEvent (outcome 4) per patient concerned (services/record/disclosures.py). If the request wrote them to
Kafka, an answer that withheld something would do more work before it leaves (build the events, wait for the
broker's acks) than one that withheld nothing, and an uncleared caller could time ``_count`` answers to learn
that a withheld record exists. So every answer does the same thing: before it leaves it appends exactly one row
to a local journal - the facts its denied-attempt AuditEvents are built from
(:class:`~services.record.disclosures.DeniedAttempt`, JSON), with nothing withheld when it withheld nothing.

The journal is a SQLite file of this process (WAL, ``synchronous=NORMAL``: a committed row survives the
process being killed - kill -9, an OOM kill, a crash - but not necessarily a power loss or a kernel crash,
which may lose the last rows; ``FULL`` would make every answer wait for an fsync). Its place is the setting
``record_denials_journal`` (:func:`journal_path`). Each row has an increasing id.

The writer's thread does not wake for a row: every ``interval_s`` it reads the rows not yet written (oldest
first), builds their AuditEvents (a pure function of the row), writes them in one batch (acks=all) and then
deletes the rows (a row that withheld nothing is deleted without a write; while the broker is away such rows are
deleted at each retry, so only denied attempts wait). At start-up it first writes what a killed process left.
An AuditEvent's id comes from the row (its attempt id and patient), so a crash between the write and the
delete sends the same AuditEvents again, which the record's audit ingest keeps once
(services/record/audit_ingest.py): one AuditEvent per denied attempt. A broker outage is waited out (retried
with backoff); the rows stay in the journal until the broker has them, across restarts.

Work done at a request's own moment slows that request (and the next) through the process's shared interpreter
- ``benchmarks/side_channel_bench.py`` measured about 0.08 ms on a 2.9 ms median when the writer woke per
submission; on a fixed cadence its cost falls on whatever requests happen to run then. The journal row costs each
answer about 0.08 ms (median; ``synchronous=FULL`` about 0.4 ms, p99 several ms: not used). One journal serves one
process: two processes on one journal would each write (and delete) the other's rows - the same AuditEvent ids,
kept once by the record, but twice on the topic.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from services.common.errors import BrokerUnavailable, StoreUnavailable
from services.common.kafka import OutboundRecord
from services.common.settings import Settings
from services.common.sql import SQLITE, Database, sqlite_pool
from services.record.disclosures import AuditSink, DeniedAttempt, audit_records, denied_events
from services.record.store import store_dsn

log = logging.getLogger(__name__)

RETRY_INITIAL_S = 0.2
RETRY_MAX_S = 5.0
BATCH = 5_000  # journal rows per write
JOURNAL_FILE = "denied-attempts.db"


def journal_path(settings: Settings, dsn: str | None = None) -> Path:
    """``record_denials_journal``, or beside the record's SQLite store (``dsn``, default the settings'), or
    (PostgreSQL) in the cache folder, named by the topic prefix."""
    if settings.record_denials_journal is not None:
        return settings.record_denials_journal
    dsn = dsn or store_dsn(settings)
    if dsn.startswith("sqlite:///"):
        return Path(dsn.removeprefix("sqlite:///")).parent / JOURNAL_FILE
    return settings.cache_dir / "record" / f"{settings.topic_prefix}-{JOURNAL_FILE}"


class Journal:
    """The SQLite file of the denied attempts whose AuditEvents are not yet on the audit topic."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = Database(SQLITE, sqlite_pool(path, 4, "denied-attempts journal"))
        with self._db.transaction() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS denied_attempt "
                         "(id INTEGER PRIMARY KEY AUTOINCREMENT, withheld INTEGER NOT NULL, facts BLOB NOT NULL)")

    def append(self, attempt: DeniedAttempt) -> None:
        """One row, committed (StoreUnavailable when it cannot be)."""
        with self._db.connection() as conn:
            self._db.exec(conn, "INSERT INTO denied_attempt (withheld, facts) VALUES (?, ?)",
                          (len(attempt.withheld), attempt.to_json()))

    def pending(self, limit: int) -> list[tuple[int, bytes]]:
        with self._db.connection() as conn:
            rows = self._db.all(conn, "SELECT id, facts FROM denied_attempt ORDER BY id LIMIT ?", (limit,))
        return [(int(i), bytes(f)) for i, f in rows]

    def count(self) -> int:
        with self._db.connection() as conn:
            return int(self._db.all(conn, "SELECT count(*) FROM denied_attempt")[0][0])

    def delete_empty(self) -> None:
        """Delete the rows of answers that withheld nothing (while the broker is away, only the others wait)."""
        with self._db.connection() as conn:
            self._db.exec(conn, "DELETE FROM denied_attempt WHERE withheld = 0")

    def delete_through(self, last_id: int) -> None:
        """Delete the rows up to ``last_id``: a row's id is assigned and committed under SQLite's one write lock,
        so no row with a smaller id can appear after the writer has read ``last_id``."""
        with self._db.connection() as conn:
            self._db.exec(conn, "DELETE FROM denied_attempt WHERE id <= ?", (last_id,))

    def close(self) -> None:
        self._db.pool.close()


class DeniedAttempts:
    """The journal and its writer thread. ``sink`` writes AuditEvent records and waits for the broker's acks."""

    def __init__(self, sink: AuditSink, topic_prefix: str, journal: Path, interval_s: float = 0.5) -> None:
        self._sink = sink
        self._prefix = topic_prefix
        self._interval_s = interval_s
        self.journal = Journal(journal)
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._flushed = threading.Condition()
        self.written = 0  # AuditEvents written since the start (operations, tests)

    def start(self) -> DeniedAttempts:
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="record-denied-audit", daemon=True)
            self._thread.start()
        return self

    def submit(self, attempt: DeniedAttempt) -> None:
        """Journal one answer's denied-attempt facts before it leaves: the same call for every answer (constant
        work on the request path; nothing is woken). StoreUnavailable when the journal cannot take it (the
        answer fails: it is not given without its audit)."""
        self.journal.append(attempt)

    def wait_idle(self, timeout_s: float) -> bool:
        """Until the journal is empty (True: everything submitted so far is written), or the time is up."""
        deadline = time.monotonic() + timeout_s
        with self._flushed:
            while self.journal.count():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._flushed.wait(min(left, 1.0))
        return True

    def stop(self, timeout_s: float = 10.0) -> None:
        """Write what is journalled (one more attempt if the broker is away: else it waits in the journal for
        the next start), end the thread, close the journal."""
        if self._thread is not None:
            self._stopping.set()
            self._thread.join(timeout=timeout_s)
            self._thread = None
        self.journal.close()

    def _run(self) -> None:
        self._tick()  # first what a killed process left
        while not self._stopping.wait(self._interval_s):
            self._tick()
        self._tick()

    def _tick(self) -> None:
        try:
            self._flush()
        except StoreUnavailable as exc:  # the journal's file: the rows wait for the next tick
            log.error("denied-attempt journal unreadable", extra={"error": str(exc)})
        finally:
            with self._flushed:
                self._flushed.notify_all()

    def _flush(self) -> None:
        while True:
            rows = self.journal.pending(BATCH)
            if not rows:
                return
            events: list[dict[str, Any]] = []
            for row_id, facts in rows:
                try:
                    events.extend(denied_events(DeniedAttempt.from_json(facts)))
                except Exception:  # a bug in building must not stop the writer; logged without content
                    log.exception("denied-attempt AuditEvents could not be built", extra={"row": row_id})
            if events and not self._write(audit_records(events, self._prefix)):
                return
            self.journal.delete_through(rows[-1][0])
            if len(rows) < BATCH:
                return

    def _write(self, records: Sequence[OutboundRecord]) -> bool:
        """Whether the broker has them (False only when stopping with the broker away)."""
        delay = RETRY_INITIAL_S
        while True:
            try:
                self._sink(records)
                self.written += len(records)
                return True
            except BrokerUnavailable as exc:
                if self._stopping.is_set():
                    log.warning("denied-attempt AuditEvents stay in the journal for the next start", extra={
                        "count": len(records), "error": type(exc).__name__})
                    return False
                log.warning("audit topic unavailable; denied-attempt AuditEvents wait", extra={
                    "count": len(records), "error": type(exc).__name__})
                try:  # what withheld nothing need not wait with them: the journal grows only by denied attempts
                    self.journal.delete_empty()
                except StoreUnavailable:
                    pass
                self._stopping.wait(delay)
                delay = min(delay * 2, RETRY_MAX_S)
