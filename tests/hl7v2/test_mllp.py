"""The MLLP listener: framing, many connections, limits, TLS (with an in-memory acceptor), and the Kafka
acceptor against the real broker: AA/AE/AR, MSA-2 echo, split frames, concurrent senders, resends, a stopped
broker never answered AA, and a burst with nothing lost or duplicated."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from devstack.local_broker import LocalKafkaBroker
from services.common.hl7v2 import ack_message, inspect_message
from services.common.kafka import RecordProducer, ensure_topics, read_recent_headers
from services.common.metrics import Metrics
from services.common.settings import REPO_ROOT, Settings
from services.common.topics import (
    HEADER_EVENT_ID,
    HEADER_EVENT_SOURCE,
    HEADER_EVENT_TYPE,
    HL7V2_MESSAGE_EVENT_TYPE,
    INBOUND_EVENTS,
)
from services.intake.hl7v2_acceptor import KafkaHl7Acceptor, RecentMessages
from services.intake.mllp import (
    END_BLOCK,
    START_BLOCK,
    AckOutcome,
    Frame,
    FrameDecoder,
    MllpServer,
    OversizedFrame,
    frame,
)
from services.mapper.hl7v2 import map_hl7v2_message
from tests.hl7v2.helpers import PID, context, er7, msh, sample
from tests.kafka_helpers import header, read_all

BURST = int(os.environ.get("CAREBUS_MLLP_BURST", "10000"))  # the burst: 10,000 messages


def adt(control_id: str, facility: str = "CLINIC", pid: str = PID) -> str:
    return er7(msh("ADT^A01^ADT_A01", control_id=control_id, facility=facility), "EVN|A01|20240501", pid)


def msa(ack: str) -> list[str]:
    line = next(s for s in ack.split("\r") if s.startswith("MSA|"))
    return line.split("|")


# ---------------------------------------------------------------------------------------------------------
# a tiny MLLP client


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = FrameDecoder(10_000_000)
        self.pending: list[str] = []

    @classmethod
    async def open(cls, port: int, ssl_context: ssl.SSLContext | None = None) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ssl_context,
                                                       server_hostname="localhost" if ssl_context else None)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def ack(self, timeout_s: float = 30.0) -> str:
        while not self.pending:
            data = await asyncio.wait_for(self.reader.read(65536), timeout=timeout_s)
            if not data:
                raise ConnectionError("closed by the server")
            for item in self.decoder.feed(data):
                assert isinstance(item, Frame)
                self.pending.append(item.payload.decode())
        return self.pending.pop(0)

    async def call(self, message: str) -> str:
        await self.send(frame(message))
        return await self.ack()

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass


class EchoAcceptor:
    """In-memory acceptor: AA for every parseable message, remembering what it saw."""

    def __init__(self, gate: asyncio.Event | None = None) -> None:
        self.seen: list[str] = []
        self.gate = gate

    async def __call__(self, er7_text: str) -> AckOutcome:
        if self.gate is not None:
            await self.gate.wait()
        self.seen.append(er7_text)
        return AckOutcome(ack_message(er7_text, "AA", None, datetime.now(UTC)), "AA")


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[tuple[MllpServer, EchoAcceptor, Metrics]]:
    """A server with an in-memory acceptor, in the test's own event loop."""
    acceptor = EchoAcceptor()
    metrics = Metrics()
    server = MllpServer(acceptor, port=0, max_frame_bytes=4096, idle_timeout_s=2.0, metrics=metrics)
    async with server:
        yield server, acceptor, metrics


# ---------------------------------------------------------------------------------------------------------
# framing (pure)


def test_decoder_handles_every_split_point() -> None:
    data = frame(adt("A")) + b"\r\n" + frame(adt("B"))
    for cut in range(len(data) + 1):
        decoder = FrameDecoder(100_000)
        frames = decoder.feed(data[:cut]) + decoder.feed(data[cut:])
        assert [f.payload for f in frames if isinstance(f, Frame)] == [adt("A").encode(), adt("B").encode()]


def test_decoder_byte_by_byte_garbage_restarts_and_missing_trailer() -> None:
    decoder = FrameDecoder(100_000)
    data = (b"noise" + bytes([START_BLOCK]) + b"MSH|abandoned" + frame("MSH|one")
            + bytes([START_BLOCK]) + b"MSH|two" + bytes([END_BLOCK]) + frame("MSH|three"))
    frames = [f for byte in data for f in decoder.feed(bytes([byte]))]
    assert [f.payload for f in frames if isinstance(f, Frame)] == [b"MSH|one", b"MSH|two", b"MSH|three"]
    assert decoder.abandoned_frames == 1
    assert decoder.discarded_bytes == len(b"noise")


def test_decoder_never_buffers_an_oversized_frame() -> None:
    decoder = FrameDecoder(1024)
    big = frame("MSH|^~\\&|EHR|CLINIC|||20240501||ADT^A01|BIG-1|P|2.5\r" + "OBX|1|TX|||" + "x" * 100_000)
    (item,) = [f for i in range(0, len(big), 997) for f in decoder.feed(big[i:i + 997])]
    assert isinstance(item, OversizedFrame)
    assert item.head.startswith(b"MSH|") and len(item.head) <= 4096


def test_recent_control_ids_are_bounded_per_sender_and_by_senders() -> None:
    recent = RecentMessages(per_sender=3, max_senders=2)
    for control in ("1", "2", "3", "4"):
        recent.add("a", control)
    assert ("a", "1") not in recent and ("a", "4") in recent
    recent.add("b", "1")
    recent.add("c", "1")
    assert ("a", "4") not in recent and ("c", "1") in recent


# ---------------------------------------------------------------------------------------------------------
# the server with an in-memory acceptor


async def test_many_messages_per_connection_answered_in_order() -> None:
    async with echo_server() as (server, acceptor, _metrics):
        client = await Client.open(server.port)
        controls = [f"C{i}" for i in range(20)]
        await client.send(b"".join(frame(adt(c)) for c in controls))  # pipelined in one write
        acks = [await client.ack() for _ in controls]
        assert [msa(a)[2] for a in acks] == controls
        await client.close()
        assert len(acceptor.seen) == 20


async def test_a_frame_split_across_reads() -> None:
    async with echo_server() as (server, _acceptor, _metrics):
        client = await Client.open(server.port)
        data = frame(adt("SPLIT"))
        for index in range(len(data)):
            await client.send(data[index:index + 1])
            await asyncio.sleep(0)
        assert msa(await client.ack())[1:] == ["AA", "SPLIT"]
        await client.close()


async def test_stuck_and_malformed_connections_do_not_block_others() -> None:
    async with echo_server() as (server, _acceptor, _metrics):
        stuck = await Client.open(server.port)
        await stuck.send(bytes([START_BLOCK]) + b"MSH|^~\\&|half a message")  # never finished
        garbage = await Client.open(server.port)
        await garbage.send(b"\x00\xff not mllp at all \x1c\r")
        healthy = await Client.open(server.port)
        assert msa(await healthy.call(adt("OK-1")))[1] == "AA"
        await garbage.close()
        await stuck.close()
        await healthy.close()


async def test_oversized_frame_is_answered_ae_and_the_connection_goes_on() -> None:
    async with echo_server() as (server, acceptor, _metrics):
        client = await Client.open(server.port)
        big = adt("BIG-1") + "OBX|1|TX|||" + "x" * 10_000 + "\r"
        ack = await client.call(big)
        assert msa(ack)[1:] == ["AE", "BIG-1"]
        assert "frame-too-large" in ack
        assert msa(await client.call(adt("SMALL-1")))[1] == "AA"
        assert [inspect_message(m).control_id for m in acceptor.seen] == ["SMALL-1"]
        await client.close()


async def test_idle_connections_are_closed() -> None:
    async with echo_server() as (server, _acceptor, metrics):
        client = await Client.open(server.port)
        assert await asyncio.wait_for(client.reader.read(), timeout=30) == b""  # server closed it
        await client.close()
        for _ in range(100):
            if metrics.mllp_connections._value.get() == 0:
                break
            await asyncio.sleep(0.05)
        assert metrics.mllp_connections._value.get() == 0


async def test_half_closed_sender_still_gets_its_acks() -> None:
    async with echo_server() as (server, _acceptor, _metrics):
        client = await Client.open(server.port)
        await client.send(frame(adt("H1")) + frame(adt("H2")))
        client.writer.write_eof()
        assert [msa(await client.ack())[2] for _ in range(2)] == ["H1", "H2"]
        await client.close()


async def test_acceptor_failure_is_answered_ar() -> None:
    async def broken(_er7: str) -> AckOutcome:
        raise RuntimeError("bug")

    async with MllpServer(broken, port=0) as server:
        client = await Client.open(server.port)
        assert msa(await client.call(adt("X1")))[1:] == ["AR", "X1"]
        await client.close()


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),  # noqa: S603,S607
                    "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


async def test_tls(tmp_path: Path) -> None:
    from services.intake.mllp import server_ssl_context

    cert, key = _self_signed(tmp_path)
    settings = Settings(mllp_tls_certfile=cert, mllp_tls_keyfile=key)
    server_context = server_ssl_context(settings)
    assert server_context is not None
    client_context = ssl.create_default_context(cafile=str(cert))
    async with MllpServer(EchoAcceptor(), port=0, ssl_context=server_context) as server:
        client = await Client.open(server.port, client_context)
        assert msa(await client.call(adt("TLS-1")))[1:] == ["AA", "TLS-1"]
        await client.close()
        plain = await Client.open(server.port)  # a plain-text sender cannot talk to the TLS port
        await plain.send(frame(adt("PLAIN-1")))
        with pytest.raises((ConnectionError, asyncio.TimeoutError)):
            await plain.ack(timeout_s=5)
        await plain.close()


# ---------------------------------------------------------------------------------------------------------
# the Kafka acceptor against the real broker

async def kafka_server(settings: Settings, metrics: Metrics | None = None
                       ) -> tuple[MllpServer, RecordProducer, str]:
    topic = INBOUND_EVENTS.name(settings.topic_prefix)
    await asyncio.to_thread(ensure_topics, settings, [INBOUND_EVENTS])
    producer = RecordProducer(settings, "test-mllp")
    acceptor = KafkaHl7Acceptor(producer, topic, metrics=metrics)
    server = await MllpServer(acceptor, port=0, metrics=metrics).start()
    return server, producer, topic


async def records(settings: Settings, topic: str, at_least: int) -> list:
    return await asyncio.to_thread(read_all, settings, topic, lambda found: len(found) >= at_least, 60.0)


@pytest.mark.integration
async def test_aa_only_after_the_record_is_on_the_topic(settings: Settings) -> None:
    metrics = Metrics()
    server, producer, topic = await kafka_server(settings, metrics)
    try:
        client = await Client.open(server.port)
        message = sample("ADT-A08-01.hl7")
        ack = await client.call(message)
        assert msa(ack)[1:] == ["AA", "MSG00001"]
        (record,) = await records(settings, topic, 1)
        summary = inspect_message(message)
        assert record.key.decode() == summary.key == "urn:carebus:hl7v2:GHHSFacility|PATID1234"
        assert header(record, HEADER_EVENT_ID) == summary.event_id
        assert header(record, HEADER_EVENT_TYPE) == HL7V2_MESSAGE_EVENT_TYPE
        event = orjson.loads(record.value)
        assert event["type"] == HL7V2_MESSAGE_EVENT_TYPE and event["id"] == summary.event_id
        assert event["source"] == "urn:carebus:hl7v2:GHHSFacility"
        assert event["data"] == message
        assert map_hl7v2_message(event["data"], context()).bundle["entry"]  # the mapper can take it from here
        assert metrics.mllp_acks.labels(code="AA")._value.get() == 1
        await client.close()
    finally:
        await server.stop()
        producer.close()


@pytest.mark.integration
async def test_ae_and_ar_are_not_written(settings: Settings) -> None:
    server, producer, topic = await kafka_server(settings)
    try:
        client = await Client.open(server.port)
        content_error = await client.call(er7(msh("ADT^A01", control_id="BAD-1"), "PID|1||^^^C^MR"))
        assert msa(content_error)[1:] == ["AE", "BAD-1"]
        err = next(s for s in content_error.split("\r") if s.startswith("ERR|")).split("|")
        assert err[2] == "PID^1^3" and err[3].startswith("101^")
        unsupported = await client.call(er7(msh("QRY^A19", control_id="QRY-1"), PID))
        assert msa(unsupported)[1:] == ["AR", "QRY-1"]
        old_version = await client.call(er7(msh("ADT^A01", control_id="OLD-1", version="2.2"), PID))
        assert msa(old_version)[1:3] == ["AR", "OLD-1"]  # (a v2.2 ACK also carries MSA-3 text)
        no_header = await client.call("PID|1||MRN1\r")
        assert msa(no_header)[1:] == ["AE", ""]
        assert msa(await client.call(adt("GOOD-1")))[1] == "AA"
        found = await records(settings, topic, 1)
        assert [orjson.loads(r.value)["data"] for r in found] == [adt("GOOD-1")]
        await client.close()
    finally:
        await server.stop()
        producer.close()


@pytest.mark.integration
async def test_split_at_every_byte_boundary(settings: Settings) -> None:
    server, producer, topic = await kafka_server(settings)
    try:
        client = await Client.open(server.port)
        template = frame(adt("SPLIT-000"))
        for cut in range(1, len(template)):
            data = frame(adt(f"SPLIT-{cut:03d}"))
            await client.send(data[:cut])
            await asyncio.sleep(0.001)  # let the first part arrive on its own
            await client.send(data[cut:])
            assert msa(await client.ack())[1:] == ["AA", f"SPLIT-{cut:03d}"]
        found = await records(settings, topic, len(template) - 1)
        assert len(found) == len(template) - 1
        await client.close()
    finally:
        await server.stop()
        producer.close()


@pytest.mark.integration
async def test_concurrent_senders_and_resends(settings: Settings) -> None:
    server, producer, topic = await kafka_server(settings)
    try:
        async def sender(index: int) -> list[str]:
            client = await Client.open(server.port)
            codes = [msa(await client.call(adt(f"S{index}-{n}", facility=f"SITE{index % 3}")))[1]
                     for n in range(15)]
            codes.append(msa(await client.call(adt(f"S{index}-0", facility=f"SITE{index % 3}")))[1])  # resend
            await client.close()
            return codes

        results = await asyncio.gather(*(sender(i) for i in range(12)))
        assert all(code == "AA" for codes in results for code in codes)
        found = await records(settings, topic, 12 * 15)
        ids = [header(r, HEADER_EVENT_ID) for r in found]
        assert len(ids) == 12 * 15 == len(set(ids))
    finally:
        await server.stop()
        producer.close()


@pytest.mark.integration
async def test_a_restarted_listener_still_knows_the_messages_accepted_before(settings: Settings) -> None:
    server, producer, topic = await kafka_server(settings)
    try:
        client = await Client.open(server.port)
        assert [msa(await client.call(adt(f"R-{n}")))[1] for n in range(5)] == ["AA"] * 5
        await client.close()
    finally:
        await server.stop()
        producer.close()
    await records(settings, topic, 5)
    # a new process: its memory filled from the topic's tail, as services/intake/__main__.py does at start-up
    producer = RecordProducer(settings, "test-mllp-restarted")
    acceptor = KafkaHl7Acceptor(producer, topic)
    headers = await asyncio.to_thread(lambda: list(read_recent_headers(settings, "test-recall", topic, 100)))
    assert acceptor.recall(headers) == 5
    server = await MllpServer(acceptor, port=0).start()
    try:
        client = await Client.open(server.port)
        assert msa(await client.call(adt("R-3")))[1:] == ["AA", "R-3"]  # a resend: answered, not written
        assert msa(await client.call(adt("R-new")))[1:] == ["AA", "R-new"]
        await client.close()
        found = await records(settings, topic, 6)
        assert sorted(orjson.loads(r.value)["data"] for r in found) == sorted(
            adt(c) for c in ["R-0", "R-1", "R-2", "R-3", "R-4", "R-new"])
    finally:
        await server.stop()
        producer.close()


def test_recall_takes_only_hl7_messages_with_a_sender_and_an_id() -> None:
    acceptor = KafkaHl7Acceptor(None, "t")  # type: ignore[arg-type]  # recall never writes
    hl7 = HL7V2_MESSAGE_EVENT_TYPE.encode()
    remembered = acceptor.recall([
        {HEADER_EVENT_TYPE: hl7, HEADER_EVENT_SOURCE: b"urn:carebus:hl7v2:A", HEADER_EVENT_ID: b"e1"},
        {HEADER_EVENT_TYPE: b"org.carebus.patient.registered.v1", HEADER_EVENT_SOURCE: b"s", HEADER_EVENT_ID: b"e2"},
        {HEADER_EVENT_TYPE: hl7, HEADER_EVENT_ID: b"e3"},
        {},
    ])
    assert remembered == 1
    assert ("urn:carebus:hl7v2:A", "e1") in acceptor.recent and len(acceptor.recent) == 1


@pytest.mark.integration
async def test_burst_none_lost_or_duplicated(settings: Settings) -> None:
    server, producer, topic = await kafka_server(settings)
    connections = 10
    per_connection = BURST // connections
    try:
        async def sender(index: int) -> list[str]:
            client = await Client.open(server.port)
            controls = [f"B{index}-{n}" for n in range(per_connection)]
            await client.send(b"".join(frame(adt(c, pid=PID.replace("MRN123", f"MRN{n % 50}")))
                                       for n, c in enumerate(controls)))
            acks = [await client.ack(timeout_s=120) for _ in controls]
            await client.close()
            assert [msa(a)[2] for a in acks] == controls
            return [msa(a)[1] for a in acks]

        results = await asyncio.gather(*(sender(i) for i in range(connections)))
        assert all(code == "AA" for codes in results for code in codes)
        total = connections * per_connection
        found = await asyncio.to_thread(read_all, settings, topic, lambda r: len(r) >= total, 180.0)
        ids = {header(r, HEADER_EVENT_ID) for r in found}
        assert len(found) == total == len(ids)
        assert {r.key.decode() for r in found} == {f"urn:carebus:hl7v2:CLINIC|MRN{n}" for n in range(50)}
    finally:
        await server.stop()
        producer.close()


@pytest.mark.integration
async def test_stopped_broker_is_never_answered_aa(tmp_path: Path) -> None:
    broker = LocalKafkaBroker(REPO_ROOT / ".cache", workdir=tmp_path / "kafka")
    await asyncio.to_thread(broker.start)
    settings = Settings(kafka_bootstrap=broker.bootstrap, topic_prefix="mllpstop", kafka_topic_partitions=1,
                        kafka_request_timeout_s=3.0)
    server, producer, _topic = await kafka_server(settings)
    try:
        client = await Client.open(server.port)
        assert msa(await client.call(adt("UP-1")))[1] == "AA"
        await asyncio.to_thread(broker.stop)
        for n in range(3):
            ack = await asyncio.wait_for(client.call(adt(f"DOWN-{n}")), timeout=60)
            assert msa(ack)[1:] == ["AR", f"DOWN-{n}"]
            assert "207^Application internal error" in ack
        await client.close()
    finally:
        await server.stop()
        await asyncio.to_thread(producer.close, 2.0)
        await asyncio.to_thread(broker.stop)



async def test_stop_lets_a_frame_being_answered_send_its_ack_and_closes_idle_connections() -> None:
    gate = asyncio.Event()
    acceptor = EchoAcceptor(gate)
    server = await MllpServer(acceptor, port=0, idle_timeout_s=30.0).start()
    busy, idle = await Client.open(server.port), await Client.open(server.port)
    await busy.send(frame(adt("DRAIN-1")))
    for _ in range(100):  # until the frame is in the acceptor (the Kafka write, in the real one)
        if server._answering:
            break
        await asyncio.sleep(0.01)
    assert server._answering
    stopping = asyncio.create_task(server.stop(grace_s=5.0))
    await asyncio.sleep(0.1)
    assert not stopping.done()  # waiting for the in-flight answer
    assert await idle.reader.read(1) == b""  # the idle connection was closed at once
    gate.set()
    assert msa(await busy.ack())[1:3] == ["AA", "DRAIN-1"]  # the ACK still went out
    await stopping
    assert await busy.reader.read(1) == b""  # then that connection closed too
    await busy.close()
    await idle.close()
