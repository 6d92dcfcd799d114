"""The MLLP listener: HL7 v2 messages over TCP (optionally TLS) in, durable on Kafka before the AA.

Framing (MLLP release 1): ``0x0B <message> 0x1C 0x0D``. The server reads any number of connections, any number
of frames per connection (answered in order), frames split across reads or several in one read. Bytes outside
a frame are discarded; a start block inside an unfinished frame abandons that frame (no ACK: the sender's
timeout makes it resend); a frame larger than ``max_frame_bytes`` is read to its end without being kept and
answered AE; a connection idle for ``idle_timeout_s`` (or not reading our ACKs for as long) is closed. A
malformed or hostile connection only ever costs its own task.

The server knows nothing of Kafka: it calls an injected ``accept(er7) -> AckOutcome``. The real acceptor,
:class:`KafkaHl7Acceptor`, checks the message cheaply (MSH, type and version, PID-3: no FHIR mapping here),
wraps it as a CloudEvent (type ``org.carebus.hl7v2.message.v1``, id from the sender, MSH-3, MSH-10 and a digest
of the content (builder.message_event_id), source
``urn:carebus:hl7v2:<facility>``, data = the ER7 text), writes it to the inbound topic keyed by
``<source>|<PID-3 id>`` with acks=all, and only then answers AA. Content errors -> AE with ERR; unsupported
types or versions, and Kafka not acknowledging -> AR (the sender should retry later).

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

The intake composition root (services/intake/__main__.py) builds the acceptor and the server from settings
(``mllp_*``, ``server_ssl_context``) and runs them beside the HTTP API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from services.common.errors import BrokerUnavailable
from services.common.kafka import RecordWriter
from services.common.metrics import Metrics
from services.common.settings import Settings
from services.common.topics import (
    HEADER_EVENT_ID,
    HEADER_EVENT_SOURCE,
    HEADER_EVENT_TYPE,
    HEADER_HL7V2_CONTROL_ID,
    HL7V2_MESSAGE_EVENT_TYPE,
)
from services.intake.inbound import inbound_record
from services.mapper.hl7v2 import MessageSummary, ack_message, inspect_message
from services.mapper.hl7v2.er7 import Message, parse_message
from services.mapper.hl7v2.errors import (
    HL7_APPLICATION_INTERNAL_ERROR,
    AckCode,
    Hl7v2Error,
    MalformedMessage,
)

log = logging.getLogger(__name__)

START_BLOCK = 0x0B
END_BLOCK = 0x1C
CARRIAGE_RETURN = 0x0D
_READ_CHUNK = 65536
_HEAD_BYTES = 4096  # kept of an oversized frame, to answer it with its MSH-10


class FrameTooLarge(MalformedMessage):
    """A frame above the configured size limit: answered AE, never buffered whole."""

    reason = "mllp-frame-too-large"
    hl7_code = HL7_APPLICATION_INTERNAL_ERROR


@dataclass(frozen=True)
class AckOutcome:
    """What the acceptor decided: the ACK text (ER7, unframed) and its MSA-1 code."""

    ack: str
    code: AckCode
    retry: bool = False  # an AR that a later resend may cure (Kafka did not take it), not a permanent refusal


Acceptor = Callable[[str], Awaitable[AckOutcome]]


# ---------------------------------------------------------------------------------------------------------
# framing


@dataclass(frozen=True)
class Frame:
    payload: bytes


@dataclass(frozen=True)
class OversizedFrame:
    head: bytes  # the first bytes of the frame (for its MSH)


class FrameDecoder:
    """Incremental MLLP decoder. ``feed`` returns the frames completed by the new bytes.

    Counters (``discarded_bytes``, ``abandoned_frames``) say how much malformed framing was seen.
    """

    def __init__(self, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self._in_frame = False
        self._oversized = False
        self._size = 0
        self._pending_end = False  # saw END_BLOCK; a following CR is part of the trailer
        self.discarded_bytes = 0
        self.abandoned_frames = 0

    @property
    def in_frame(self) -> bool:
        return self._in_frame

    def feed(self, data: bytes) -> list[Frame | OversizedFrame]:
        out: list[Frame | OversizedFrame] = []
        view = memoryview(data)
        i, n = 0, len(data)
        while i < n:
            if self._pending_end:
                self._pending_end = False
                if view[i] == CARRIAGE_RETURN:
                    i += 1
                    continue
            if not self._in_frame:
                start = data.find(START_BLOCK, i)
                if start == -1:
                    self.discarded_bytes += n - i
                    break
                self.discarded_bytes += start - i
                self._begin()
                i = start + 1
                continue
            # inside a frame: copy up to the next END_BLOCK or START_BLOCK
            end = data.find(END_BLOCK, i)
            restart = data.find(START_BLOCK, i)
            if restart != -1 and (end == -1 or restart < end):
                self._append(view[i:restart])
                self.abandoned_frames += 1
                self._begin()
                i = restart + 1
                continue
            if end == -1:
                self._append(view[i:])
                break
            self._append(view[i:end])
            out.append(self._finish())
            self._pending_end = True
            i = end + 1
        return out

    def _begin(self) -> None:
        self._buffer = bytearray()
        self._in_frame = True
        self._oversized = False
        self._size = 0

    def _append(self, chunk: memoryview) -> None:
        self._size += len(chunk)
        if self._oversized:
            return
        if self._size > self.max_frame_bytes:
            self._oversized = True
            self._buffer = self._buffer[:_HEAD_BYTES]
            room = _HEAD_BYTES - len(self._buffer)
            if room > 0:
                self._buffer += chunk[:room]
            return
        self._buffer += chunk

    def _finish(self) -> Frame | OversizedFrame:
        self._in_frame = False
        buffer, self._buffer = bytes(self._buffer), bytearray()
        if self._oversized:
            return OversizedFrame(buffer)
        return Frame(buffer)


def frame(message: str) -> bytes:
    """Wrap one message (segments separated by CR) in MLLP framing, UTF-8 encoded."""
    return bytes([START_BLOCK]) + message.encode() + bytes([END_BLOCK, CARRIAGE_RETURN])


def decode_text(payload: bytes) -> str:
    """Frame bytes -> text: UTF-8 (HL7's preferred set since v2.8), else Latin-1 (never fails)."""
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        return payload.decode("latin-1")


# ---------------------------------------------------------------------------------------------------------
# server


class MllpServer:
    """An asyncio MLLP server around an injected acceptor."""

    def __init__(self, accept: Acceptor, *, host: str = "127.0.0.1", port: int = 0,
                 ssl_context: ssl.SSLContext | None = None, max_frame_bytes: int = 2_000_000,
                 idle_timeout_s: float = 300.0, metrics: Metrics | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._accept = accept
        self._host = host
        self._port = port
        self._ssl = ssl_context
        self.max_frame_bytes = max_frame_bytes
        self.idle_timeout_s = idle_timeout_s
        self._metrics = metrics
        self._clock = clock
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._answering: set[asyncio.Task[None]] = set()  # connections with an accepted frame not yet ACKed
        self._stopping = False

    @property
    def port(self) -> int:
        """The bound port (useful when constructed with port 0)."""
        if self._server is None or not self._server.sockets:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> MllpServer:
        self._server = await asyncio.start_server(self._on_connection, self._host, self._port, ssl=self._ssl,
                                                  limit=_READ_CHUNK)
        log.info("mllp listening", extra={"port": self.port, "tls": self._ssl is not None})
        return self

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop accepting; close idle connections at once; let a connection that is answering a frame send
        its ACK first (up to ``grace_s``: the Kafka write in flight), then close it."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for task in list(self._connections - self._answering):
            task.cancel()
        deadline = asyncio.get_running_loop().time() + grace_s
        while self._answering and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> MllpServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        if self._metrics is not None:
            self._metrics.mllp_connections.inc()
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, TimeoutError):
            log.debug("mllp connection dropped")
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # a bug must cost this connection only; the type alone is logged (no PHI)
            log.error("mllp connection failed", extra={"error": type(exc).__name__})
        finally:
            self._connections.discard(task)
            self._answering.discard(task)
            if self._metrics is not None:
                self._metrics.mllp_connections.dec()
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), timeout=1.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = FrameDecoder(self.max_frame_bytes)
        while True:
            try:
                data = await asyncio.wait_for(reader.read(_READ_CHUNK), timeout=self.idle_timeout_s)
            except TimeoutError:
                log.info("mllp connection idle: closing", extra={"idle_timeout_s": self.idle_timeout_s})
                return
            if not data:  # EOF (the sender closed or half-closed): nothing more will arrive
                if decoder.in_frame:
                    log.info("mllp connection closed inside a frame")
                return
            task = asyncio.current_task()
            assert task is not None
            for item in decoder.feed(data):
                self._answering.add(task)
                try:
                    outcome = await self._answer(item)
                    writer.write(frame(outcome.ack))
                    if self._metrics is not None:
                        self._metrics.mllp_acks.labels(code=outcome.code).inc()
                    await asyncio.wait_for(writer.drain(), timeout=self.idle_timeout_s)
                finally:
                    self._answering.discard(task)
                if self._stopping:  # the ACK is out: take no further frame from this connection
                    return
            if decoder.abandoned_frames or decoder.discarded_bytes:
                log.info("mllp framing errors", extra={"abandoned_frames": decoder.abandoned_frames,
                                                        "discarded_bytes": decoder.discarded_bytes})
                decoder.abandoned_frames = decoder.discarded_bytes = 0

    async def _answer(self, item: Frame | OversizedFrame) -> AckOutcome:
        now = self._clock()
        if isinstance(item, OversizedFrame):
            head = decode_text(item.head).replace("\n", "\r").split("\r", 1)[0]
            error = FrameTooLarge("MSH", "frame-too-large",
                                  f"the message is larger than {self.max_frame_bytes} bytes")
            return AckOutcome(ack_message(head, "AE", error, now), "AE")
        text = decode_text(item.payload)
        try:
            return await self._accept(text)
        except Exception as exc:  # an acceptor bug must not kill the connection: reject, the sender retries
            log.error("mllp acceptor failed", extra={"error": type(exc).__name__})  # no traceback: no PHI
            return AckOutcome(ack_message(text, "AR", None, now), "AR", retry=True)


# ---------------------------------------------------------------------------------------------------------
# the real acceptor: Kafka


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
        earlier = self.recent.accepted_as(summary.source, summary.sender_control_id)
        if earlier is not None and earlier != summary.event_id:
            # the same MSH-3 + MSH-10 with other content: another message (it has another event id), written
            self._repeated("conflict", summary)
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = done
        try:
            record = inbound_record(self._topic, summary.key, cloud_event(summary, er7, now), now.isoformat(),
                                    summary.event_id)
            record.headers = {**record.headers, HEADER_HL7V2_CONTROL_ID: summary.sender_control_id}
            try:
                metas = await self._producer.send_all_async([record])
            except BrokerUnavailable as exc:
                if self._metrics is not None:
                    self._metrics.produce_errors.labels(topic=self._topic).inc()
                self._rejected("kafka-unavailable")
                log.warning("hl7v2 message not stored", extra={"event_id": summary.event_id,
                                                               "error": type(exc).__name__})
                return AckOutcome(ack_message(message, "AR", exc, now), "AR", retry=True)
            self.recent.add(summary.source, summary.event_id, summary.sender_control_id)
            if self._metrics is not None:
                header = summary.header
                self._metrics.accepted(f"hl7v2.{header.message_type}.{header.trigger_event}", "mllp",
                                       summary.source)
            meta = metas[0]
            log.info("hl7v2 message accepted", extra={"event_id": summary.event_id, "topic": meta.topic,
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


# ---------------------------------------------------------------------------------------------------------
# composition


def server_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """TLS for the listener when a certificate is configured (TLS 1.2+; client certificates if a CA is
    set)."""
    if settings.mllp_tls_certfile is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(settings.mllp_tls_certfile),
                            str(settings.mllp_tls_keyfile) if settings.mllp_tls_keyfile else None)
    if settings.mllp_tls_client_cafile is not None:
        context.load_verify_locations(str(settings.mllp_tls_client_cafile))
        context.verify_mode = ssl.CERT_REQUIRED
    return context
