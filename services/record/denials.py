"""Denied attempts are audited off the request path, on a fixed cadence.

A read, search, history, ``$everything`` or ``$events`` answer that withheld something is a denied attempt: one
AuditEvent (outcome 4) per patient concerned (services/record/disclosures.py). If the request wrote it, an
answer that withheld something would do more work before it leaves (build the events, wait for the broker's
acks) than one that withheld nothing, and an uncleared caller could time ``_count`` answers to learn that a
withheld record exists. So every answer hands this writer exactly one piece of work - a function that builds
its denied-attempt AuditEvents, possibly none - whether or not it withheld anything. The writer's thread does
not wake for it: every ``interval_s`` it takes whatever is queued, builds the AuditEvents and writes them in
one batch (acks=all), in submission order. Work done at a request's own moment would slow that request (and
the next) through the process's shared interpreter - ``benchmarks/side_channel_bench.py`` measured about
0.08 ms on a 2.9 ms median when the writer woke per submission; on a fixed cadence its cost falls on whatever
requests happen to run then. A broker outage is waited out (retried with backoff), never dropped while the
process runs.

The queue is bounded (``capacity``): when the broker has been away so long that it is full, submitting waits
for room (every answer alike) rather than losing an audit record. The queue is in memory: what is queued when
the process is killed (not stopped) is lost - :meth:`DeniedAttempts.stop` writes it first.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from services.common.errors import BrokerUnavailable
from services.common.kafka import OutboundRecord
from services.record.disclosures import AuditSink, audit_records

log = logging.getLogger(__name__)

Build = Callable[[], Sequence[dict[str, Any]]]  # the denied-attempt AuditEvents of one answer (often none)
RETRY_INITIAL_S = 0.2
RETRY_MAX_S = 5.0


class DeniedAttempts:
    """The writer thread and its queue. ``sink`` writes AuditEvent records and waits for the broker's acks."""

    def __init__(self, sink: AuditSink, topic_prefix: str, capacity: int = 10_000, interval_s: float = 0.5) -> None:
        self._sink = sink
        self._prefix = topic_prefix
        self._interval_s = interval_s
        self._queue: queue.Queue[Build] = queue.Queue(capacity)
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._idle = threading.Condition()
        self._unfinished = 0
        self.written = 0  # AuditEvents written since the start (operations, tests)

    def start(self) -> DeniedAttempts:
        if self._thread is None:
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="record-denied-audit", daemon=True)
            self._thread.start()
        return self

    def submit(self, build: Build) -> None:
        """Queue one answer's denied-attempt work: the same call for every answer (constant work on the request
        path; nothing is woken); the AuditEvents are built and written at the writer's next tick."""
        with self._idle:
            self._unfinished += 1
        self._queue.put(build)

    def wait_idle(self, timeout_s: float) -> bool:
        """Until everything submitted so far is written (True), or the time is up (False)."""
        deadline = time.monotonic() + timeout_s
        with self._idle:
            while self._unfinished:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def stop(self, timeout_s: float = 10.0) -> None:
        """Write what is queued (one more attempt if the broker is away), then end the thread."""
        if self._thread is None:
            return
        self._stopping.set()
        self._thread.join(timeout=timeout_s)
        self._thread = None

    def _run(self) -> None:
        while not self._stopping.wait(self._interval_s):
            self._flush()
        self._flush()

    def _flush(self) -> None:
        builds: list[Build] = []
        while True:
            try:
                builds.append(self._queue.get_nowait())
            except queue.Empty:
                break
        if not builds:
            return
        try:
            events: list[dict[str, Any]] = []
            for build in builds:
                try:
                    events.extend(build())
                except Exception:  # a bug in building must not stop the writer; logged without content
                    log.exception("denied-attempt AuditEvents could not be built")
            if events:
                self._write(audit_records(events, self._prefix))
        finally:
            with self._idle:
                self._unfinished -= len(builds)
                self._idle.notify_all()

    def _write(self, records: Sequence[OutboundRecord]) -> None:
        delay = RETRY_INITIAL_S
        while True:
            try:
                self._sink(records)
                self.written += len(records)
                return
            except BrokerUnavailable as exc:
                if self._stopping.is_set():
                    log.error("denied-attempt AuditEvents not written at shutdown", extra={
                        "count": len(records), "error": type(exc).__name__})
                    return
                log.warning("audit topic unavailable; denied-attempt AuditEvents wait", extra={
                    "count": len(records), "error": type(exc).__name__})
                self._stopping.wait(delay)
                delay = min(delay * 2, RETRY_MAX_S)
