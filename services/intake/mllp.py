"""The MLLP listener: HL7 v2 messages over TCP (optionally TLS), framed and answered in order.

Framing (MLLP release 1): ``0x0B <message> 0x1C 0x0D``. The server reads any number of connections, any number
of frames per connection (answered in order), frames split across reads or several in one read. Bytes outside
a frame are discarded; a start block inside an unfinished frame abandons that frame (no ACK: the sender's
timeout makes it resend); a frame larger than ``max_frame_bytes`` is read to its end without being kept and
answered AE; a connection idle for ``idle_timeout_s`` (or not reading our ACKs for as long) is closed. A
malformed or hostile connection only ever costs its own task.

The server knows nothing of Kafka nor of what a message means: it calls an injected ``accept(er7) ->
AckOutcome`` and frames the ACK it returns. The real acceptor, durable on Kafka before the AA, is
services/intake/hl7v2_acceptor.py (the HTTP route ``POST /hl7v2`` uses it too).

The intake composition root (services/intake/__main__.py) builds the acceptor and the server from settings
(``mllp_*``, ``server_ssl_context``) and runs them beside the HTTP API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client import Counter

from services.common.hl7v2 import ack_message
from services.common.hl7v2.errors import HL7_APPLICATION_INTERNAL_ERROR, AckCode, MalformedMessage
from services.common.metrics import Metrics
from services.common.settings import Settings

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


class _IdleTimer:
    """Cancels a connection's task once it has read nothing for ``timeout_s`` (nor been able to send an ACK for as
    long), the time its frame is being answered not counted. One timer per connection, re-armed only when it
    fires: each read just notes the time (a timeout around every read and drain costs a timer per frame)."""

    def __init__(self, task: asyncio.Task[None], timeout_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = task
        self._timeout_s = timeout_s
        self.last = self._loop.time()
        self.answering = False
        self.expired = False
        self._handle = self._loop.call_at(self.last + timeout_s, self._check)

    def touch(self) -> None:
        self.last = self._loop.time()

    def _check(self) -> None:
        now = self._loop.time()
        if self.answering:  # a Kafka write in flight is not idleness
            self._handle = self._loop.call_at(now + self._timeout_s, self._check)
        elif self.last + self._timeout_s > now:
            self._handle = self._loop.call_at(self.last + self._timeout_s, self._check)
        else:
            self.expired = True
            self._task.cancel()

    def cancel(self) -> None:
        self._handle.cancel()


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
        self._ack_counters: dict[str, Counter] = {}
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
        task = asyncio.current_task()
        assert task is not None
        idle = _IdleTimer(task, self.idle_timeout_s)
        try:
            while True:
                data = await reader.read(_READ_CHUNK)
                idle.touch()
                if not data:  # EOF (the sender closed or half-closed): nothing more will arrive
                    if decoder.in_frame:
                        log.info("mllp connection closed inside a frame")
                    return
                for item in decoder.feed(data):
                    self._answering.add(task)
                    idle.answering = True
                    try:
                        outcome = await self._answer(item)
                    finally:
                        idle.answering = False
                        idle.touch()
                    try:
                        writer.write(frame(outcome.ack))
                        if self._metrics is not None:
                            self._ack_counter(outcome.code).inc()
                        if writer.transport.get_write_buffer_size():  # the ACK did not all fit in the socket
                            await writer.drain()  # (a sender not reading its ACKs: the idle timer ends it)
                    finally:
                        self._answering.discard(task)
                    if self._stopping:  # the ACK is out: take no further frame from this connection
                        return
                if decoder.abandoned_frames or decoder.discarded_bytes:
                    log.info("mllp framing errors", extra={"abandoned_frames": decoder.abandoned_frames,
                                                            "discarded_bytes": decoder.discarded_bytes})
                    decoder.abandoned_frames = decoder.discarded_bytes = 0
        except asyncio.CancelledError:
            if not idle.expired:
                raise
            task.uncancel()
            log.info("mllp connection idle: closing", extra={"idle_timeout_s": self.idle_timeout_s})
        finally:
            idle.cancel()

    def _ack_counter(self, code: AckCode) -> Counter:
        """``carebus_mllp_acks_total{code}``'s child for ``code``, looked up once per code."""
        counter = self._ack_counters.get(code)
        if counter is None:
            assert self._metrics is not None
            counter = self._ack_counters[code] = self._metrics.mllp_acks.labels(code=code)
        return counter

    async def _answer(self, item: Frame | OversizedFrame) -> AckOutcome:
        if isinstance(item, OversizedFrame):
            head = decode_text(item.head).replace("\n", "\r").split("\r", 1)[0]
            error = FrameTooLarge("MSH", "frame-too-large",
                                  f"the message is larger than {self.max_frame_bytes} bytes")
            return AckOutcome(ack_message(head, "AE", error, self._clock()), "AE")
        text = decode_text(item.payload)
        try:
            return await self._accept(text)
        except Exception as exc:  # an acceptor bug must not kill the connection: reject, the sender retries
            log.error("mllp acceptor failed", extra={"error": type(exc).__name__})  # no traceback: no PHI
            return AckOutcome(ack_message(text, "AR", None, self._clock()), "AR", retry=True)


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
