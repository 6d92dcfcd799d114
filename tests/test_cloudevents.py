"""Every record carebus writes with ``ce_`` headers is a valid CloudEvent of its own type, read by the CloudEvents
SDK (PyPI ``cloudevents``) the way a consumer reads it: the inbound topic (each channel, through intake's real
app), dead letters (mapper and record), the replay ledger, audit and outcome changes; bundles and alerts are in
tests/test_event_headers.py. The topic catalogue and the AsyncAPI list the headers that make them so."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
import yaml
from cloudevents.core.bindings import kafka as ce_kafka

from services.common import audit
from services.common.asyncapi import ASYNCAPI_PATH
from services.common.event_headers import OPERATOR_SOURCE, REPLAYED_DEAD_LETTER_EVENT_TYPE, cloudevent_headers
from services.common.kafka import OutboundRecord
from services.common.topics import CATALOGUE, CE_HEADERS, HEADER_DEAD_LETTER_REASON
from services.mapper.pipeline import InboundRecord, Pipeline, TopicNames
from services.record.consumer import StoreRefused, dead_letter
from services.record.ingest import InboundBundle
from tests.intake.helpers import PSYCHIATRY, SAMPLES, Intake, example, hl7_sample

RECEIVED_MS = 1_767_600_000_000  # 2026-01-05T08:00:00Z


def message(record: OutboundRecord) -> ce_kafka.KafkaMessage:
    return ce_kafka.KafkaMessage(headers={k: v.encode() for k, v in record.headers.items()},
                                 key=record.key.encode(), value=record.value)


def read(record: OutboundRecord) -> Any:
    """The CloudEvent a consumer gets: the SDK's own detection (binary whenever a ce_ header is present). The SDK
    takes a missing ce_specversion for 1.0 and makes up a missing ce_id: the headers must carry them anyway."""
    assert record.headers.get("ce_specversion") == "1.0" and set(CE_HEADERS) <= set(record.headers)
    event = ce_kafka.from_kafka_event(message(record))
    assert event.get_id() == record.headers["ce_id"]
    return event


def attributes(event: Any) -> tuple[str, str, str, str, datetime]:
    return (event.get_specversion(), event.get_id(), event.get_source(), event.get_type(), event.get_time())


def test_every_topic_with_ce_headers_declares_a_whole_cloudevent_and_the_asyncapi_says_so() -> None:
    document = yaml.safe_load(ASYNCAPI_PATH.read_text())
    with_ce = [spec for spec in CATALOGUE if any(h.startswith("ce_") for h in spec.headers)]
    assert len(with_ce) >= 8
    for spec in with_ce:
        assert set(CE_HEADERS) <= set(spec.headers), spec.suffix
        documented = next(m for m in document["components"]["messages"].values() if m["summary"] == spec.summary)
        assert set(CE_HEADERS) <= set(documented["headers"]["properties"]), spec.suffix


async def test_every_inbound_channel_writes_one_cloudevent_however_it_is_read() -> None:
    fhir = orjson.loads((SAMPLES / "fhir" / "Condition-depression-condition-example-1.json").read_bytes())
    async with Intake() as intake:
        assert (await intake.events(example("assessment.completed"))).status_code == 202
        assert (await intake.fhir(fhir, source=PSYCHIATRY)).status_code == 202
        assert "MSA|AA" in (await intake.hl7(hl7_sample())).text
        records = list(intake.producer.sent)
    assert len(records) == 3
    for record in records:
        structured = ce_kafka.from_structured_event(message(record))  # the value: the CloudEvent as sent
        assert structured.get_data() is not None
        by_headers = read(record)  # the SDK goes by the ce_ headers: the same event
        assert attributes(by_headers) == attributes(structured)
        assert orjson.loads(record.value)["id"] == structured.get_id()
    assert [read(r).get_type() for r in records] == [
        "org.carebus.assessment.completed.v1", "org.carebus.fhir.resource.v1", "org.carebus.hl7v2.message.v1"]


def test_a_mapper_dead_letter_is_a_cloudevent_of_its_own_type() -> None:
    pipeline = Pipeline(TopicNames.for_prefix("carebus"))
    bad = InboundRecord(topic="carebus.events.inbound.v1", partition=2, offset=41, timestamp_ms=RECEIVED_MS,
                        key=b"src|p1", value=b"\xff not json",
                        headers=(("ce_id", b"evt-9"), ("ce_type", b"org.carebus.assessment.completed.v1")))
    outcome = pipeline.process(bad)
    (letter,) = outcome.records
    event = read(letter)
    assert attributes(event) == ("1.0", "carebus.events.inbound.v1/2/41", "urn:carebus:mapper",
                                 "org.carebus.deadletter.v1", datetime(2026, 1, 5, 8, tzinfo=UTC))
    assert event.get_extension("carebuseventid") == "evt-9"
    assert event.get_extension("carebuseventtype") == "org.carebus.assessment.completed.v1"
    assert event.get_datacontenttype() == "application/json"
    assert event.get_data()["reason"] == letter.headers[HEADER_DEAD_LETTER_REASON] == outcome.dead_letter_reason
    # the same record refused again (a restart re-reads it) repeats the id: consumers can de-duplicate
    assert read(pipeline.process(bad).records[0]).get_id() == event.get_id()


def test_a_record_dead_letter_is_a_cloudevent_of_its_own_type() -> None:
    bundle = InboundBundle("carebus.fhir.bundles.v1", 0, 7, RECEIVED_MS, "src|p1", b'{"resourceType": "Bundle"}',
                           {"ce_carebuseventid": "evt-3", "ce_carebuseventtype": "org.carebus.fhir.resource.v1"})
    letter = dead_letter("carebus.deadletter.v1", bundle, StoreRefused("the store refused a value"))
    event = read(letter)
    assert attributes(event) == ("1.0", "carebus.fhir.bundles.v1/0/7", "urn:carebus:record",
                                 "org.carebus.deadletter.v1", datetime(2026, 1, 5, 8, tzinfo=UTC))
    assert event.get_extension("carebuseventid") == "evt-3"
    assert event.get_data()["reason"] == "store-refused"


def test_audit_and_ledger_records_are_cloudevents_of_their_own_types() -> None:
    requester = audit.Requester("a1b2c3", "partner clinic", None, "TREAT")
    event = audit.api_access_event(audit.disclosure_id("t", "1"), "2026-05-01T10:00:00.000Z", "read", requester,
                                   "https://record.example.org/fhir", "Patient/p1", ["Condition/c1"])
    found = read(audit.audit_record(event, "carebus"))
    assert attributes(found) == ("1.0", event["id"], "urn:carebus:record", "org.carebus.audit.event.v1",
                                 datetime(2026, 5, 1, 10, tzinfo=UTC))
    assert found.get_data()["resourceType"] == "AuditEvent"
    # the replay ledger's entry (services/operator/deadletters.py builds it with these arguments)
    ledger = OutboundRecord("carebus.deadletter.replayed.v1", "0:12", b'{"replayed_at": "2026-01-05T08:00:00Z"}',
                            cloudevent_headers("0:12", REPLAYED_DEAD_LETTER_EVENT_TYPE, OPERATOR_SOURCE,
                                               "application/json", "2026-01-05T08:00:00+00:00", "evt-1"))
    entry = read(ledger)
    assert (entry.get_type(), entry.get_id(), entry.get_extension("carebuseventid")) == (
        "org.carebus.deadletter.replayed.v1", "0:12", "evt-1")


@pytest.mark.parametrize("missing", ["ce_source", "ce_type"])
def test_the_sdk_refuses_a_record_without_a_required_attribute(missing: str) -> None:
    headers = cloudevent_headers("x-1", "org.carebus.deadletter.v1", "urn:carebus:mapper", "application/json",
                                 "2026-01-05T08:00:00+00:00")
    del headers[missing]
    with pytest.raises(Exception, match=r"(?i)missing required"):
        ce_kafka.from_kafka_event(message(OutboundRecord("t", "k", b"{}", headers)))
