"""ACK building, message key and control id."""

from __future__ import annotations

from datetime import UTC, datetime

import hl7
import pytest

from services.common.errors import BrokerUnavailable
from services.common.hl7v2 import (
    Hl7v2Error,
    MalformedMessage,
    MissingRequired,
    ack_message,
    inspect_message,
    message_control_id,
    message_event_id,
    message_key,
)
from services.common.hl7v2.er7 import parse_message
from services.mapper.hl7v2 import map_hl7v2_message
from tests.hl7v2.helpers import PID, context, er7, msh, sample

NOW = datetime(2024, 5, 1, 17, 30, 5, tzinfo=UTC)
MESSAGE = er7("MSH|^~\\&|EHR|CLINIC^1.2.3^ISO|CAREBUS|HUB|20240501101500-0500||ADT^A01^ADT_A01|CTRL-42|P|2.5.1",
              PID)


def fields(ack: str, segment: str) -> list[str]:
    line = next(s for s in ack.split("\r") if s.startswith(segment + "|"))
    return line.split("|")


def test_aa_swaps_sender_and_receiver_and_echoes_msh10() -> None:
    ack = ack_message(MESSAGE, "AA", None, NOW)
    assert ack.endswith("\r") and "\n" not in ack
    header = fields(ack, "MSH")
    assert header[1] == "^~\\&"
    assert header[2:6] == ["CAREBUS", "HUB", "EHR", "CLINIC^1.2.3^ISO"]
    assert header[6] == "20240501173005+0000"
    assert header[8] == "ACK^A01^ACK"
    assert header[9] and header[9] != "CTRL-42"
    assert header[10:12] == ["P", "2.5.1"]
    assert fields(ack, "MSA") == ["MSA", "AA", "CTRL-42"]
    assert "ERR|" not in ack
    assert "Doe" not in ack and "MRN123" not in ack
    parsed = hl7.parse(ack)
    assert str(parsed.segment("MSA")[2]) == "CTRL-42"


def test_ae_names_segment_field_and_hl7_error_code() -> None:
    error = MissingRequired("PID-3", "required", "no patient identifier in PID-3")
    ack = ack_message(MESSAGE, "AE", error, NOW)
    assert fields(ack, "MSA") == ["MSA", "AE", "CTRL-42"]
    err = fields(ack, "ERR")
    assert err[2] == "PID^1^3"
    assert err[3] == "101^Required field missing^HL70357"
    assert err[4] == "E"
    assert err[5] == "required^^99CAREBUS"
    assert err[8] == "no patient identifier in PID-3"


def test_ar_for_an_unsupported_type_from_the_mapping_error() -> None:
    text = MESSAGE.replace("ADT^A01^ADT_A01", "QRY^Q01")
    with pytest.raises(Hl7v2Error) as caught:
        map_hl7v2_message(text, context())
    ack = ack_message(text, caught.value.ack_code, caught.value, NOW)
    assert fields(ack, "MSA")[1:] == ["AR", "CTRL-42"]
    assert fields(ack, "ERR")[2:4] == ["MSH^1^9", "200^Unsupported message type^HL70357"]


def test_ar_when_kafka_did_not_acknowledge() -> None:
    ack = ack_message(MESSAGE, "AR", BrokerUnavailable("write not acknowledged"), NOW)
    err = fields(ack, "ERR")
    assert err[3] == "207^Application internal error^HL70357"
    assert err[2] == ""


def test_version_23_uses_err1_and_msa3() -> None:
    text = MESSAGE.replace("|2.5.1", "|2.3")
    error = MissingRequired("PID-3", "required", "no patient identifier in PID-3")
    ack = ack_message(text, "AE", error, NOW)
    assert fields(ack, "MSH")[8] == "ACK^A01"
    assert fields(ack, "MSA") == ["MSA", "AE", "CTRL-42", "no patient identifier in PID-3"]
    assert fields(ack, "ERR") == ["ERR", "PID^1^3^101&Required field missing&HL70357"]


def test_unreadable_message_still_gets_an_ack() -> None:
    with pytest.raises(MalformedMessage) as caught:
        map_hl7v2_message("garbage without a header", context())
    ack = ack_message("garbage without a header", "AE", caught.value, NOW)
    header = fields(ack, "MSH")
    assert header[2] == "CAREBUS" and header[11] == "2.5.1"
    assert fields(ack, "MSA") == ["MSA", "AE", ""]
    assert fields(ack, "ERR")[2:4] == ["MSH^1", "100^Segment sequence error^HL70357"]


def test_header_values_are_escaped_in_the_ack() -> None:
    text = MESSAGE.replace("CTRL-42", "A\\F\\B")  # an escaped field separator inside MSH-10
    ack = ack_message(text, "AA", None, NOW)
    assert fields(ack, "MSA") == ["MSA", "AA", "A\\F\\B"]
    assert parse_message(ack).segments[1].get(2) == "A|B"


def test_ack_accepts_a_parsed_message_and_is_deterministic() -> None:
    parsed = parse_message(MESSAGE)
    assert ack_message(parsed, "AA", None, NOW) == ack_message(MESSAGE, "AA", None, NOW)


def test_message_key_control_id_and_event_id() -> None:
    assert message_key(MESSAGE) == "urn:carebus:hl7v2:CLINIC|MRN123"
    assert message_control_id(MESSAGE) == "CTRL-42"
    summary = inspect_message(MESSAGE)
    assert summary.event_id == message_event_id(summary.header, summary.digest)
    resent = MESSAGE.replace("20240501101500-0500", "20240502101500-0500")
    assert inspect_message(resent).event_id == summary.event_id
    other = MESSAGE.replace("CTRL-42", "CTRL-43")
    assert inspect_message(other).event_id != summary.event_id


def test_message_key_uses_the_sending_application_without_a_facility() -> None:
    assert message_key(sample("LAB-ORU-1.hl7")) == "urn:carebus:hl7v2:SomeSystem|10006579"


def test_message_key_needs_pid3() -> None:
    with pytest.raises(MissingRequired):
        message_key(er7(msh("ADT^A01"), "PID|1"))
