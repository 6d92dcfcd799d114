"""The headers of bundle and alert records (services/common/event_headers.py): binary-mode CloudEvents the
CloudEvents SDK accepts, and the carebus_security encoding."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.exceptions import CloudEventValidationError

from services.common.event_headers import (
    alert_headers,
    bundle_headers,
    parse_security_header,
    security_header,
)
from services.common.fhir.codesystems import V3_ACT_CODE as ACT_CODE
from services.common.fhir.codesystems import V3_CONFIDENTIALITY as CONFIDENTIALITY

WHEN = datetime(2026, 11, 3, 9, 30, tzinfo=UTC)


def _message(headers: dict[str, str], value: bytes = b'{"resourceType": "Bundle"}') -> ce_kafka.KafkaMessage:
    return ce_kafka.KafkaMessage(headers={k: v.encode() for k, v in headers.items()}, key=b"src|p1", value=value)


def test_a_bundle_record_is_a_cloudevent_of_its_own_type() -> None:
    headers = bundle_headers("b-1", "evt-1", "org.carebus.assessment.completed.v1", "corr-1", ("R", "PSY"), time=WHEN)
    event = ce_kafka.from_binary_event(_message(headers))
    assert event.get_specversion() == "1.0"
    assert (event.get_type(), event.get_id(), event.get_source()) == (
        "org.carebus.fhir.bundle.v1", "b-1", "urn:carebus:mapper")
    assert event.get_time() == WHEN
    assert event.get_datacontenttype() == "application/fhir+json"
    assert event.get_extension("carebuseventid") == "evt-1"
    assert event.get_extension("carebuseventtype") == "org.carebus.assessment.completed.v1"
    assert event.get_data() == {"resourceType": "Bundle"}


def test_an_alert_record_is_a_cloudevent_of_its_own_type() -> None:
    headers = alert_headers("flag-1", "evt-1", "org.carebus.assessment.completed.v1", "corr-1", ("R", "PSY"))
    event = ce_kafka.from_binary_event(_message(headers, b'{"kind": "phq9-item9"}'))
    assert (event.get_type(), event.get_id()) == ("org.carebus.safety.alert.v1", "flag-1")
    assert event.get_datacontenttype() == "application/json"


def test_the_sdk_refuses_the_headers_bundles_had_before() -> None:
    old = {"ce_id": "evt-1", "ce_type": "org.carebus.assessment.completed.v1", "carebus_correlation_id": "c",
           "carebus_security": "R,PSY", "content-type": "application/fhir+json"}
    with pytest.raises(CloudEventValidationError):
        ce_kafka.from_binary_event(_message(old))


def test_security_header_is_a_json_array_of_fhir_tokens() -> None:
    value = security_header(("PSY", "R"))
    assert value == f'["{CONFIDENTIALITY}|R","{ACT_CODE}|PSY"]'  # confidentiality first, like meta.security
    assert parse_security_header(value) == [(CONFIDENTIALITY, "R"), (ACT_CODE, "PSY")]
    assert security_header(()) == "[]"
    assert parse_security_header("[]") == []
    # a sender's own label keeps its code; carebus does not invent its system
    assert parse_security_header(security_header(("R", "HIV"))) == [(CONFIDENTIALITY, "R"), (None, "HIV")]
    for bad in ("R,PSY", "", '["R|"]', "{}", "[1]"):
        with pytest.raises(ValueError):
            parse_security_header(bad)
