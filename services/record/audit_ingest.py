"""The audit topic into the record: every AuditEvent on ``<prefix>.audit.v1`` becomes a resource of the record
(searchable at ``AuditEvent?patient=`` with a privacy-officer scope, listed by ``Patient/{id}/$disclosures``).

A small consumer thread of its own (group ``<record group>-audit``): AuditEvents are immutable and have
unique ids, so they need none of the bundle consumer's cross-partition ordering; a re-delivered AuditEvent is
the same content and makes no new version. Offsets are committed after the store has the batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata

from services.common.errors import InfrastructureError
from services.common.kafka import build_consumer
from services.common.settings import Settings
from services.common.topics import AUDIT_EVENTS
from services.record.errors import BadBundle
from services.record.ingest import InboundBundle, PreparedBundle, prepare_bundle
from services.record.store.base import RecordStore

log = logging.getLogger(__name__)


def audit_bundle(record: InboundBundle) -> PreparedBundle:
    """One AuditEvent record as a one-entry bundle the store ingests (BadBundle when it is not one)."""
    try:
        event = orjson.loads(record.value)
    except orjson.JSONDecodeError as exc:
        raise BadBundle("audit record value is not JSON") from exc
    if not isinstance(event, dict) or event.get("resourceType") != "AuditEvent":
        raise BadBundle("audit record value is not an AuditEvent")
    wrapped = orjson.dumps({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": event}]})
    headers = {**record.headers, "ce_id": f"audit:{event.get('id')}"}
    return prepare_bundle(
        InboundBundle(record.topic, record.partition, record.offset, record.timestamp_ms, record.key, wrapped, headers)
    )


class AuditIngestor:
    def __init__(
        self,
        settings: Settings,
        store: RecordStore,
        consumer_factory: Callable[[], KafkaConsumer] | None = None,
        group_id: str | None = None,
    ) -> None:
        self.topic = AUDIT_EVENTS.name(settings.topic_prefix)
        group = f"{group_id or settings.record_group_id}-audit"
        self._factory = consumer_factory or (lambda: build_consumer(settings, "carebus-record-audit", group,
                                                                     [self.topic]))
        self._store = store
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._progress = threading.Condition()
        self._stored: set[str] = set()  # ids of AuditEvents stored since start (for wait_for)
        self.healthy = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="record-audit-ingestor", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

    def wait_for(self, event_ids: Iterable[str], timeout_s: float = 30.0) -> bool:
        """Block until these AuditEvents are in the store (tests, the demo)."""
        wanted = set(event_ids)
        deadline = time.monotonic() + timeout_s
        with self._progress:
            while not wanted <= self._stored:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._progress.wait(remaining)
        return True

    def _run(self) -> None:
        consumer: KafkaConsumer | None = None
        while not self._stop.is_set():
            try:
                if consumer is None:
                    consumer = self._factory()
                self._poll_once(consumer)
            except (KafkaError, InfrastructureError) as exc:
                self.healthy = False
                log.warning("audit consumer failed; retrying", extra={"error": type(exc).__name__})
                if consumer is not None:
                    _close(consumer)
                    consumer = None
                self._stop.wait(2.0)
            except Exception:
                self.healthy = False
                log.exception("audit consumer crashed; restarting it")
                if consumer is not None:
                    _close(consumer)
                    consumer = None
                self._stop.wait(2.0)
        if consumer is not None:
            _close(consumer)

    def _poll_once(self, consumer: KafkaConsumer) -> None:
        polled = consumer.poll(timeout_ms=500, max_records=500)
        self.healthy = True
        records: list[Any] = [r for batch in polled.values() for r in batch]
        if not records:
            return
        prepared: list[PreparedBundle] = []
        ids: list[str] = []
        for r in records:
            headers = {n: (v or b"").decode(errors="replace") for n, v in (r.headers or ())}
            inbound = InboundBundle(r.topic, r.partition, r.offset, r.timestamp, (r.key or b"").decode(),
                                    r.value or b"", headers)
            try:
                bundle = audit_bundle(inbound)
            except BadBundle as exc:  # not ours to fix: logged (no content) and skipped
                log.error("audit record skipped", extra={"reason": str(exc), "partition": r.partition,
                                                         "offset": r.offset})
                continue
            prepared.append(bundle)
            ids.extend(res.id for res in bundle.resources)
        self._store.ingest(prepared)  # StoreUnavailable: not committed, re-polled after the reconnect
        last: dict[TopicPartition, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            last[tp] = max(r.offset, last.get(tp, -1))
        try:
            consumer.commit({tp: OffsetAndMetadata(o + 1, "", -1) for tp, o in last.items()})
        except CommitFailedError:
            log.warning("audit offset commit failed after a rebalance; the batch will be re-delivered (idempotent)")
        with self._progress:
            if len(self._stored) > 100_000:  # only recent ids are waited for
                self._stored.clear()
            self._stored.update(ids)
            self._progress.notify_all()


def _close(consumer: KafkaConsumer) -> None:
    try:
        consumer.close()
    except (KafkaError, OSError):
        log.debug("audit consumer close failed")
