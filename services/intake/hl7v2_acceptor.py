"""HL7 v2 acceptance: a message checked, durable on Kafka, then acknowledged; resends answered, not rewritten.

:class:`KafkaHl7Acceptor`, the acceptor of the MLLP listener (services/intake/mllp.py) and of ``POST /hl7v2``,
checks the message cheaply (MSH, type and version, PID-3: no FHIR mapping here), wraps it as a CloudEvent (type
``org.carebus.hl7v2.message.v1``, id from the sender, MSH-3, MSH-10 and a digest of the content
(services/common/hl7v2/ids.py), source ``urn:carebus:hl7v2:<facility>``, data = the ER7 text), writes it to the
inbound topic keyed by ``<source>|<PID-3 id>`` with acks=all, and only then answers AA. Content errors -> AE
with ERR; unsupported types or versions, and Kafka not acknowledging -> AR (the sender should retry later).
Refusals, resends and reused control ids are logged at INFO; an accepted message only at DEBUG (it is on the topic
and in ``carebus_events_accepted_total``).

Resends: a message is named by its sender (MSH-4, else MSH-3), its sending application (MSH-3) and MSH-10, and
compared by a digest of its content (every segment, MSH-7 left out). The same name and content again is a
resend: answered AA again without a second record. The same name with other content (two applications of one
facility numbering alike, or a sender reusing control ids) is another message: it has another event id and is
written like any new message, never acknowledged and dropped. Both are counted
(``carebus_hl7v2_repeated_control_ids_total{outcome="resend"|"conflict"}``) and logged with ids, type and digest
only. The memory of accepted messages is bounded: ``recent_per_sender`` per sender (least recently seen evicted
first) for at most ``max_senders`` senders. At start-up it is filled from the tail of the inbound topic
(:meth:`KafkaHl7Acceptor.recall`: event ids and MSH-3 + MSH-10, from the record headers), so a restart does not
forget what was accepted just before it: a resend is still a resend, and a reused control id whose first message
came before the restart is counted as a conflict (and written: its event id differs). Two intake replicas do not
share the memory: a resend that reaches the other replica, or one older than the memory, is written again. That is
harmless downstream, because the CloudEvent id and every FHIR resource id are derived from the sender and the message's
own identifiers (the record converges instead of duplicating).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime

from services.common.errors import BrokerUnavailable
from services.common.hl7v2 import MessageSummary, ack_message, inspect_message
from services.common.hl7v2.er7 import Message, parse_message
from services.common.hl7v2.errors import Hl7v2Error
from services.common.kafka import RecordWriter
from services.common.metrics import Metrics
from services.common.topics import (
    HEADER_EVENT_ID,
    HEADER_EVENT_SOURCE,
    HEADER_EVENT_TYPE,
    HEADER_HL7V2_CONTROL_ID,
    HL7V2_MESSAGE_EVENT_TYPE,
)
from services.intake.inbound import inbound_record
from services.intake.mllp import AckOutcome

log = logging.getLogger(__name__)


class RecentMessages:
    """Per sender, the messages accepted recently: their event ids (a resend has the same one) and, for those
    accepted by this process, which event id each MSH-3 + MSH-10 was last accepted with (a reused control id
    with other content has another). A bounded LRU of senders, each a bounded LRU of messages."""

    def __init__(self, per_sender: int = 10_000, max_senders: int = 1_000) -> None:
        self.per_sender = per_sender
        self.max_senders = max_senders
        self._senders: OrderedDict[str, OrderedDict[str, None]] = OrderedDict()
        self._controls: dict[str, OrderedDict[str, str]] = {}

    def __contains__(self, item: tuple[str, str]) -> bool:
        sender, event_id = item
        ids = self._senders.get(sender)
        if ids is None or event_id not in ids:
            return False
        ids.move_to_end(event_id)
        self._senders.move_to_end(sender)
        return True

    def __len__(self) -> int:
        return sum(len(ids) for ids in self._senders.values())

    def accepted_as(self, sender: str, control_key: str) -> str | None:
        """The event id under which ``control_key`` (MSH-3 + MSH-10) of ``sender`` was last accepted."""
        controls = self._controls.get(sender)
        return None if controls is None else controls.get(control_key)

    def add(self, sender: str, event_id: str, control_key: str | None = None) -> None:
        if self.per_sender <= 0:
            return
        ids = self._senders.get(sender)
        if ids is None:
            ids = self._senders[sender] = OrderedDict()
            while len(self._senders) > self.max_senders:
                evicted, _ = self._senders.popitem(last=False)
                self._controls.pop(evicted, None)
        self._senders.move_to_end(sender)
        ids[event_id] = None
        ids.move_to_end(event_id)
        while len(ids) > self.per_sender:
            ids.popitem(last=False)
        if control_key is not None:
            controls = self._controls.setdefault(sender, OrderedDict())
            controls[control_key] = event_id
            controls.move_to_end(control_key)
            while len(controls) > self.per_sender:
                controls.popitem(last=False)


def cloud_event(summary: MessageSummary, er7: str, received_at: datetime) -> dict[str, object]:
    return {
        "specversion": "1.0",
        "id": summary.event_id,
        "source": summary.source,
        "type": HL7V2_MESSAGE_EVENT_TYPE,
        "time": received_at.isoformat(),
        "datacontenttype": "application/hl7-v2+er7",
        "data": er7,
    }


class KafkaHl7Acceptor:
    """Check, write to the inbound topic (acks=all), then acknowledge. See the module docstring."""

    def __init__(self, producer: RecordWriter, topic: str, *, metrics: Metrics | None = None,
                 recent_per_sender: int = 10_000, max_senders: int = 1_000,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._producer = producer
        self._topic = topic
        self._metrics = metrics
        self._clock = clock
        self.recent = RecentMessages(recent_per_sender, max_senders)
        self._in_flight: dict[tuple[str, str], asyncio.Future[bool]] = {}

    def recall(self, headers: Iterable[Mapping[str, bytes]]) -> int:
        """Remember the HL7 v2 messages among ``headers`` (the inbound topic's recent records, oldest first) as
        accepted. Returns how many were remembered."""
        remembered = 0
        for record_headers in headers:
            if record_headers.get(HEADER_EVENT_TYPE) != HL7V2_MESSAGE_EVENT_TYPE.encode():
                continue
            source, event_id = record_headers.get(HEADER_EVENT_SOURCE), record_headers.get(HEADER_EVENT_ID)
            control = record_headers.get(HEADER_HL7V2_CONTROL_ID)
            if source and event_id:
                self.recent.add(source.decode(errors="replace"), event_id.decode(errors="replace"),
                                control.decode(errors="replace") if control else None)
                remembered += 1
        return remembered

    async def __call__(self, er7: str) -> AckOutcome:
        now = self._clock()
        message: Message | str = er7
        try:
            message = parse_message(er7)
            summary = inspect_message(message)
        except Hl7v2Error as exc:
            self._rejected(exc.reason)
            log.info("hl7v2 message refused", extra={"reason": exc.reason, "location": exc.location,
                                                     "rule": exc.rule, "ack": exc.ack_code})
            return AckOutcome(ack_message(message, exc.ack_code, exc, now), exc.ack_code)
        key = (summary.source, summary.event_id)
        while key in self._in_flight:  # the same message arriving twice at once: wait for the first
            with contextlib.suppress(Exception):
                await asyncio.shield(self._in_flight[key])
        if key in self.recent:
            self._repeated("resend", summary)
            return AckOutcome(ack_message(message, "AA", None, now), "AA")
        control_key = summary.sender_control_id
        earlier = self.recent.accepted_as(summary.source, control_key)
        if earlier is not None and earlier != summary.event_id:
            # the same MSH-3 + MSH-10 with other content: another message (it has another event id), written
            self._repeated("conflict", summary)
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = done
        try:
            record = inbound_record(self._topic, summary.key, cloud_event(summary, er7, now), now.isoformat(),
                                    summary.event_id)
            record.headers = {**record.headers, HEADER_HL7V2_CONTROL_ID: control_key}
            try:
                metas = await self._producer.send_all_async([record])
            except BrokerUnavailable as exc:
                if self._metrics is not None:
                    self._metrics.produce_errors.labels(topic=self._topic).inc()
                self._rejected("kafka-unavailable")
                log.warning("hl7v2 message not stored", extra={"event_id": summary.event_id,
                                                               "error": type(exc).__name__})
                return AckOutcome(ack_message(message, "AR", exc, now), "AR", retry=True)
            self.recent.add(summary.source, summary.event_id, control_key)
            if self._metrics is not None:
                header = summary.header
                self._metrics.accepted(f"hl7v2.{header.message_type}.{header.trigger_event}", "mllp",
                                       summary.source)
            meta = metas[0]
            # DEBUG: a line (and a write) per accepted message was ~0.07 ms of intake's CPU per message at
            # 1,000 messages/s; what is accepted is on the topic and counted, what is refused or repeated is logged
            log.debug("hl7v2 message accepted", extra={"event_id": summary.event_id, "topic": meta.topic,
                                                       "partition": meta.partition, "offset": meta.offset})
            return AckOutcome(ack_message(message, "AA", None, now), "AA")
        finally:
            del self._in_flight[key]
            done.set_result(True)

    def _repeated(self, outcome: str, summary: MessageSummary) -> None:
        """Count and log a repeated control id: ids, type and digest only (MSH-10 is a message number, no PHI)."""
        if self._metrics is not None:
            self._metrics.hl7v2_repeated_control_ids.labels(outcome=outcome).inc()
        header = summary.header
        text = ("hl7v2 resend acknowledged, not written again" if outcome == "resend"
                else "hl7v2 control id reused with other content: written as a new message")
        log.info(text, extra={"event_id": summary.event_id, "source": summary.source,
                              "sending_application": header.sending_application.name,
                              "control_id": header.control_id, "digest": summary.digest,
                              "message_type": f"{header.message_type}^{header.trigger_event}"})

    def _rejected(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.events_rejected.labels(reason=reason, channel="mllp").inc()
