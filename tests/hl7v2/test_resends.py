"""The resend memory (issue 10, item 1): a message is named by sender + sending application + MSH-10 and
compared by its content. The project's own samples share MSH-4 GHHSFacility and MSH-10 MSG00001 across six
different messages of two applications: sent in sequence to one running intake (MLLP, then HTTP), every one is
written; an exact resend is acknowledged without a second record; both are counted."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest

from services.common.hl7v2 import inspect_message
from services.common.kafka import RecordProducer, ensure_topics, read_recent_headers
from services.common.metrics import Metrics
from services.common.settings import Settings
from services.common.topics import (
    HEADER_EVENT_ID,
    HEADER_EVENT_SOURCE,
    HEADER_EVENT_TYPE,
    HEADER_HL7V2_CONTROL_ID,
    HL7V2_MESSAGE_EVENT_TYPE,
    INBOUND_EVENTS,
)
from services.intake.app import create_app
from services.intake.hl7v2_acceptor import KafkaHl7Acceptor
from services.intake.mllp import MllpServer
from services.mapper.hl7v2 import map_hl7v2_message
from tests.hl7v2.helpers import context, sample
from tests.hl7v2.test_mllp import Client, msa, records
from tests.kafka_helpers import header, read_all
from tests.senders import TEST_INTAKE_HEADERS

SHARED_CONTROL_ID = ["ADT-A01-01.hl7", "ADT-A03-01.hl7", "ADT-A04-01.hl7", "ADT-A08-01.hl7", "RDE-O11-02.hl7",
                     "VXU-V04-01.hl7"]


def repeated(metrics: Metrics, outcome: str) -> float:
    return float(metrics.hl7v2_repeated_control_ids.labels(outcome=outcome)._value.get())


def test_the_samples_share_facility_and_control_id_but_are_six_messages() -> None:
    summaries = [inspect_message(sample(name)) for name in SHARED_CONTROL_ID]
    assert {s.source for s in summaries} == {"urn:carebus:hl7v2:GHHSFacility"}
    assert {s.control_id for s in summaries} == {"MSG00001"}
    assert len({s.event_id for s in summaries}) == 6
    assert {s.header.sending_application.name for s in summaries} == {"ADTApp", "IMMAPP"}
    # their message-level resources differ too (the record would otherwise keep one MessageHeader of six)
    message_level: dict[str, set[str]] = {"Bundle": set(), "MessageHeader": set(), "Provenance": set()}
    for name in SHARED_CONTROL_ID:
        bundle = map_hl7v2_message(sample(name), context()).bundle
        message_level["Bundle"].add(bundle["id"])
        for entry in bundle["entry"]:
            if entry["resource"]["resourceType"] in message_level:
                message_level[entry["resource"]["resourceType"]].add(entry["resource"]["id"])
    assert {kind: len(ids) for kind, ids in message_level.items()} == {"Bundle": 6, "MessageHeader": 6,
                                                                        "Provenance": 6}


def test_event_id_follows_application_and_content_not_the_build_time() -> None:
    message = sample("ADT-A08-01.hl7")
    base = inspect_message(message)
    msh = message.split("\n", 1)[0]
    fields = msh.split("|")
    rebuilt = "|".join([*fields[:6], "20991231235959", *fields[7:]])  # MSH-7 renewed by the sender's engine
    assert inspect_message(message.replace(msh, rebuilt)).event_id == base.event_id
    other_application = "|".join([fields[0], fields[1], "OtherApp", *fields[3:]])
    assert inspect_message(message.replace(msh, other_application)).event_id != base.event_id
    changed = message + "\nNTE|1||a later comment"
    assert inspect_message(changed).event_id != base.event_id
    assert inspect_message(message.replace("\n", "\r")).event_id == base.event_id  # line ends do not matter


@pytest.mark.integration
async def test_six_messages_sharing_msh10_are_all_written_and_a_resend_is_not(settings: Settings) -> None:
    topic = INBOUND_EVENTS.name(settings.topic_prefix)
    await asyncio.to_thread(ensure_topics, settings, [INBOUND_EVENTS])
    producer = RecordProducer(settings, "test-resends")
    metrics = Metrics()
    acceptor = KafkaHl7Acceptor(producer, topic, metrics=metrics)
    server = await MllpServer(acceptor, port=0, metrics=metrics).start()
    try:
        client = await Client.open(server.port)
        for name in SHARED_CONTROL_ID:
            assert msa(await client.call(sample(name)))[1:3] == ["AA", "MSG00001"], name
        found = await records(settings, topic, 6)
        assert sorted(orjson.loads(r.value)["data"] for r in found) == sorted(sample(n) for n in SHARED_CONTROL_ID)
        assert len({header(r, HEADER_EVENT_ID) for r in found}) == 6
        # three ADTApp messages and one IMMAPP message reused a control id their application had used
        assert repeated(metrics, "conflict") == 4 and repeated(metrics, "resend") == 0

        # an exact resend (after the sender missed our ACK): acknowledged, not written again
        assert msa(await client.call(sample("ADT-A03-01.hl7")))[1:3] == ["AA", "MSG00001"]
        await client.close()
        assert repeated(metrics, "resend") == 1

        # the same intake's HTTP path shares the memory
        app = create_app(settings, producer, metrics, lambda: (True, "ok"), acceptor)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://intake",
                                     headers=TEST_INTAKE_HEADERS) as http:
            resent = await http.post("/hl7v2", content=sample("RDE-O11-02.hl7").encode(),
                                     headers={"content-type": "x-application/hl7-v2+er7"})
            assert resent.status_code == 200 and "MSA|AA|MSG00001" in resent.text
            assert repeated(metrics, "resend") == 2
            new = sample("ORU-R01-01.hl7")
            assert (await http.post("/hl7v2", content=new.encode(),
                                    headers={"content-type": "text/plain"})).status_code == 200
        # the ORU is the 7th record, and nothing else was written: read until it is there, then count
        everything = await asyncio.to_thread(
            read_all, settings, topic,
            lambda rs: any(orjson.loads(r.value)["data"] == new for r in rs), 60.0)
        assert len(everything) == 7
    finally:
        await server.stop()
        producer.close()


@pytest.mark.integration
async def test_after_a_restart_a_reused_control_id_is_a_conflict_and_a_resend_still_a_resend(
        settings: Settings) -> None:
    topic = INBOUND_EVENTS.name(settings.topic_prefix)
    await asyncio.to_thread(ensure_topics, settings, [INBOUND_EVENTS])
    producer = RecordProducer(settings, "test-resends-before")
    try:
        before = KafkaHl7Acceptor(producer, topic)
        assert (await before("\r".join(sample("ADT-A01-01.hl7").splitlines()))).code == "AA"
    finally:
        producer.close()
    await records(settings, topic, 1)
    # a new intake process: its memory filled from the topic's tail (services/intake/__main__.py)
    producer = RecordProducer(settings, "test-resends-after")
    metrics = Metrics()
    after = KafkaHl7Acceptor(producer, topic, metrics=metrics)
    try:
        headers = await asyncio.to_thread(lambda: list(read_recent_headers(settings, "test-recall", topic, 100)))
        assert after.recall(headers) == 1
        assert (await after(sample("ADT-A01-01.hl7"))).code == "AA"  # the same message again
        assert repeated(metrics, "resend") == 1 and repeated(metrics, "conflict") == 0
        assert (await after(sample("ADT-A03-01.hl7"))).code == "AA"  # ADTApp's MSG00001 again, other content
        assert repeated(metrics, "conflict") == 1
        found = await records(settings, topic, 2)
        assert sorted(orjson.loads(r.value)["data"].replace("\r", "\n").strip() for r in found) == sorted(
            sample(n).strip() for n in ("ADT-A01-01.hl7", "ADT-A03-01.hl7"))
    finally:
        producer.close()


def test_recall_reads_the_control_id_a_message_was_accepted_under() -> None:
    acceptor = KafkaHl7Acceptor(None, "t")  # type: ignore[arg-type]  # recall never writes
    summary = inspect_message(sample("ADT-A01-01.hl7"))
    acceptor.recall([{HEADER_EVENT_TYPE: HL7V2_MESSAGE_EVENT_TYPE.encode(),
                      HEADER_EVENT_SOURCE: summary.source.encode(), HEADER_EVENT_ID: summary.event_id.encode(),
                      HEADER_HL7V2_CONTROL_ID: summary.sender_control_id.encode()}])
    assert acceptor.recent.accepted_as(summary.source, summary.sender_control_id) == summary.event_id
