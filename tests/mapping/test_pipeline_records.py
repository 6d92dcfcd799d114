"""Pipeline.process on raw inbound records: a care event whose ce_type header names it is parsed straight from
its JSON bytes; every other record is decoded first and dispatched on the envelope's type. Both give the same
Bundle, and a broken record is dead-lettered with the same reason either way."""

from __future__ import annotations

import orjson
import pytest

from services.common.events.examples import EXAMPLES
from services.common.topics import HL7V2_MESSAGE_EVENT_TYPE
from services.mapper.pipeline import InboundRecord, Outcome, Pipeline, TopicNames

PIPELINE = Pipeline(TopicNames.for_prefix("t"))


def process(value: bytes, ce_type: str | None) -> Outcome:
    headers = ((("ce_type", ce_type.encode()),) if ce_type else ()) + (("ce_id", b"evt-1"),)
    return PIPELINE.process(InboundRecord("t.events.inbound.v1", 0, 42, 1_767_600_000_000, b"src|p1", value,
                                          headers))


@pytest.mark.parametrize("event_type", sorted(EXAMPLES))
def test_with_or_without_the_type_header_an_event_maps_to_the_same_bundle(event_type: str) -> None:
    value = orjson.dumps(EXAMPLES[event_type])
    by_header, by_envelope = process(value, event_type), process(value, None)
    assert by_header.dead_letter_reason is None, by_header.dead_letter_reason
    assert [r.value for r in by_header.records] == [r.value for r in by_envelope.records]
    assert by_header.event_type == by_envelope.event_type == event_type
    assert by_header.event_id == by_envelope.event_id == EXAMPLES[event_type]["id"]


@pytest.mark.parametrize("ce_type", ["org.carebus.session.completed.v1", None])
def test_bytes_that_are_not_json_are_a_malformed_json_dead_letter(ce_type: str | None) -> None:
    outcome = process(b"\xff\xfe{not json", ce_type)
    assert outcome.dead_letter_reason == "malformed-json"
    assert orjson.loads(outcome.records[0].value)["source"]["offset"] == 42


def test_a_schema_break_under_a_care_event_header_names_the_field() -> None:
    event = dict(EXAMPLES["org.carebus.session.completed.v1"])
    event["data"] = {k: v for k, v in event["data"].items() if k != "patient_id"}
    outcome = process(orjson.dumps(event), "org.carebus.session.completed.v1")
    assert outcome.dead_letter_reason == "schema-violation"
    letter = orjson.loads(outcome.records[0].value)
    assert any(p["location"].endswith("patient_id") and p["rule"] == "missing" for p in letter["problems"])


def test_a_body_that_is_not_the_care_event_its_header_names_is_a_schema_violation() -> None:
    # a producer bug (intake writes the header from the body): the body is not mapped as something else
    hl7 = {"specversion": "1.0", "id": "m1", "source": "urn:x", "type": HL7V2_MESSAGE_EVENT_TYPE,
           "time": "2024-05-01T12:00:00+00:00", "data": "MSH|^~\\&|..."}
    outcome = process(orjson.dumps(hl7), "org.carebus.session.completed.v1")
    assert outcome.dead_letter_reason == "schema-violation"


def raised_at(outcome: Outcome) -> str:
    alert = next(r for r in outcome.records if r.topic == "t.alerts.safety.v1")
    return str(orjson.loads(alert.value)["raised_at"])


def test_the_clock_is_each_record_s_own_timestamp() -> None:
    value = orjson.dumps(EXAMPLES["org.carebus.risk.flagged.v1"])
    pipeline = Pipeline(TopicNames.for_prefix("t"))

    def at(timestamp_ms: int) -> str:
        return raised_at(pipeline.process(InboundRecord("t", 0, 1, timestamp_ms, b"k", value, ())))

    assert at(1_767_600_000_000) == "2026-01-05T08:00:00+00:00"
    assert at(1_767_600_000_000) == "2026-01-05T08:00:00+00:00"
    assert at(1_767_600_000_250) == "2026-01-05T08:00:00.250000+00:00"
    assert at(1_767_600_000_000) == "2026-01-05T08:00:00+00:00"
