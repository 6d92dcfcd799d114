"""The one shape of a record on the inbound topic, whatever the channel (JSON events, HL7 v2, FHIR)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from services.common.kafka import OutboundRecord
from services.common.topics import (
    HEADER_CONTENT_TYPE,
    HEADER_CORRELATION_ID,
    HEADER_EVENT_ID,
    HEADER_EVENT_SOURCE,
    HEADER_EVENT_TIME,
    HEADER_EVENT_TYPE,
)


def inbound_record(topic: str, key: str, envelope: Mapping[str, Any], time: str,
                   correlation_id: str) -> OutboundRecord:
    """One accepted CloudEvent as its JSON, keyed by source patient, with the catalogue's headers (ids, type,
    source, time: never PHI)."""
    return OutboundRecord(
        topic=topic,
        key=key,
        value=orjson.dumps(envelope),
        headers={
            HEADER_EVENT_ID: str(envelope["id"]),
            HEADER_EVENT_TYPE: str(envelope["type"]),
            HEADER_EVENT_SOURCE: str(envelope["source"]),
            HEADER_EVENT_TIME: time,
            HEADER_CORRELATION_ID: correlation_id,
            HEADER_CONTENT_TYPE: "application/cloudevents+json",
        },
    )
