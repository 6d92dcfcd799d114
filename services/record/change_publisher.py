"""The record's change publisher: sends the store's change outbox to the change feed without holding up ingest.

The outbox (services/record/store/outbox.py) is written in each ingest transaction, so a change is durable once
the store has committed; publishing it is the outbox's job, not the ingest's. The bundle consumer therefore
calls :meth:`ChangePublisher.pump` once per cycle, and ``pump`` never waits for Kafka:

1. it takes the acknowledgements that arrived since (oldest first; a write is acknowledged once every in-sync
   replica has it), and forgets the rows Kafka has;
2. it hands every row committed since the last pump to the producer, in outbox order.

Order: rows are sent in sequence order through one idempotent producer, which keeps them in order within a
partition (a person's changes share a key, so a partition). When a write fails, or is not acknowledged within
the request timeout, the producer is dropped (see RecordProducer.reset) and the next pump sends again from the
first row not acknowledged - so order within a partition holds across the failure, and a row may be published
twice (consumers de-duplicate on resourceType, id and versionId; services/record/changes.py).

Durability: nothing is forgotten before Kafka acknowledged it; a crash loses only the publisher's memory of how
far it sent, and the next start publishes every row still in the outbox.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from kafka.errors import KafkaError
from kafka.producer.future import FutureRecordMetadata
from prometheus_client import Counter

from services.common.errors import BrokerUnavailable
from services.common.kafka import RecordProducer
from services.record.changes import change_records
from services.record.store.base import RecordStore

log = logging.getLogger(__name__)

READ_CHUNK = 1000
MAX_ROWS_IN_FLIGHT = 20_000  # beyond this, pump waits for the oldest writes (Kafka slower than ingest)


@dataclass(slots=True)
class _Sent:
    last_seq: int
    futures: list[FutureRecordMetadata]
    at: float


class ChangePublisher:
    """Publishes the outbox of one store. Not thread-safe: one thread (the bundle consumer's) calls it."""

    def __init__(
        self,
        store: RecordStore,
        producer: RecordProducer,
        topic: str,
        published: Counter,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._producer = producer
        self._topic = topic
        self._published = published
        self._clock = clock
        self._sent_seq = 0  # the highest row handed to the producer
        self._acked_seq = 0  # every row up to here is acknowledged
        self._forgotten_seq = 0
        self._in_flight: deque[_Sent] = deque()
        self._rows_in_flight = 0

    @property
    def in_flight(self) -> int:
        """Rows sent and not yet acknowledged."""
        return self._rows_in_flight

    def pump(self) -> None:
        """Take acknowledgements, forget what Kafka has, send what the store committed since. Raises
        BrokerUnavailable when a write failed or timed out: what was not acknowledged is sent again by the next
        call, from the first such row."""
        self._take_acks()
        self._forget()
        while rows := self._store.pending_changes(READ_CHUNK, after_seq=self._sent_seq):
            try:
                futures = [self._producer.send(r) for r in change_records(self._topic, rows)]
            except BrokerUnavailable:
                self._rewind()
                raise
            self._in_flight.append(_Sent(rows[-1].seq, futures, self._clock()))
            self._rows_in_flight += len(futures)
            self._sent_seq = rows[-1].seq
            if len(rows) < READ_CHUNK:
                break
        while self._rows_in_flight > MAX_ROWS_IN_FLIGHT:
            self._wait_oldest()

    def drain(self, timeout_s: float) -> bool:
        """Wait until every row sent is acknowledged (at most ``timeout_s``), then forget them. False if the
        wait ran out or a write failed (the rows stay in the outbox for the next start)."""
        deadline = self._clock() + timeout_s
        try:
            while self._in_flight:
                if self._clock() >= deadline:
                    return False
                self._wait_oldest(max(0.0, deadline - self._clock()))
            self._forget()
        except BrokerUnavailable:
            return False
        return True

    # --- internals ------------------------------------------------------------------------------------

    def _take_acks(self) -> None:
        while self._in_flight:
            head = self._in_flight[0]
            if not all(f.is_done for f in head.futures):
                if self._clock() - head.at > self._producer.request_timeout_s:
                    self._fail("not acknowledged in time")
                return
            if any(f.failed() for f in head.futures):
                self._fail("not acknowledged")
            self._in_flight.popleft()
            self._rows_in_flight -= len(head.futures)
            self._acked_seq = head.last_seq
            self._published.inc(len(head.futures))

    def _wait_oldest(self, timeout_s: float | None = None) -> None:
        """Wait for the oldest write (at most its request timeout, or ``timeout_s``), then take the acks."""
        head = self._in_flight[0]
        budget = self._producer.request_timeout_s - (self._clock() - head.at)
        if timeout_s is not None:
            budget = min(budget, timeout_s)
        deadline = self._clock() + max(0.0, budget)
        for future in head.futures:
            if future.is_done:
                continue
            try:
                future.get(timeout=max(0.0, deadline - self._clock()))
            except KafkaError:  # failed or timed out: _take_acks tells which, and rewinds
                break
        self._take_acks()

    def _forget(self) -> None:
        if self._acked_seq > self._forgotten_seq:
            self._store.forget_changes(self._acked_seq)
            self._forgotten_seq = self._acked_seq

    def _rewind(self) -> None:
        self._producer.reset()
        self._in_flight.clear()
        self._rows_in_flight = 0
        self._sent_seq = self._acked_seq

    def _fail(self, why: str) -> None:
        self._rewind()
        raise BrokerUnavailable(f"change feed write {why}")
