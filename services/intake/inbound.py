"""The one shape of a record on the inbound topic, whatever the channel (JSON events, HL7 v2, FHIR): the
sender's CloudEvent in the Kafka binding's structured mode (the value is its JSON, as sent), with its
attributes repeated as ``ce_`` headers (services/common/event_headers.py), so it is one valid CloudEvent however
a consumer reads it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from services.common.event_headers import cloudevent_headers
from services.common.kafka import OutboundRecord
from services.common.topics import HEADER_CORRELATION_ID

STRUCTURED_JSON = "application/cloudevents+json"


def inbound_record(topic: str, key: str, envelope: Mapping[str, Any], time: str,
                   correlation_id: str) -> OutboundRecord:
    """One accepted CloudEvent as its JSON, keyed by source patient, with the catalogue's headers (ids, type,
    source, time: never PHI). ``time`` is the event's own time (RFC 3339)."""
    headers = cloudevent_headers(str(envelope["id"]), str(envelope["type"]), str(envelope["source"]),
                                 STRUCTURED_JSON, time)
    headers[HEADER_CORRELATION_ID] = correlation_id
    return OutboundRecord(topic=topic, key=key, value=orjson.dumps(envelope), headers=headers)
