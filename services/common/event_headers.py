"""The Kafka headers of what carebus publishes: every record that carries a ``ce_`` header is a CloudEvent 1.0
of its own type that the CloudEvents SDK reads (tests/test_cloudevents.py). ``ce_specversion``, ``ce_id``,
``ce_source``, ``ce_type`` and ``ce_time`` are always set.

Binary mode (the Kafka protocol binding: the value is the event's data, its attributes are ``ce_`` headers,
``content-type`` is its datacontenttype), of carebus's own types:

- a Bundle: ``ce_type`` org.carebus.fhir.bundle.v1, ``ce_id`` the Bundle's id (deterministic: a replay of the
  same inbound event gives the same CloudEvent id), ``ce_source`` the service that wrote it;
- a safety alert: ``ce_type`` org.carebus.safety.alert.v1, ``ce_id`` the id of the alert's Flag (an escalation:
  its own event id);
- a dead letter: ``ce_type`` org.carebus.deadletter.v1, ``ce_id`` the position of the record that could not be
  processed (``<topic>/<partition>/<offset>``: the same record dead-lettered again repeats the id), ``ce_source``
  the stage that refused it, ``ce_time`` that record's timestamp;
- a replayed dead letter's ledger entry: org.carebus.deadletter.replayed.v1, ``ce_id`` the ledger key;
- an AuditEvent (org.carebus.audit.event.v1) and an outcome change (org.carebus.outcome.changed.v1).

Structured mode on the inbound topic: the value is the sender's CloudEvent as JSON, kept as sent
(``content-type: application/cloudevents+json``), and the headers repeat its attributes (the binding allows
it, section 3.3.3), so a reader that goes by the headers (the Python SDK does when any ``ce_`` header is present)
gets the same id, source, type and time as one that parses the value.

The inbound event a record came from is named by two extension attributes, ``carebuseventid`` (the inbound
CloudEvent id, also the lineage id) and ``carebuseventtype`` (its type). ``carebus_security`` is not a
CloudEvent attribute: it is the record's security labels, a JSON array of FHIR tokens ``"<system>|<code>"``
(a bare code for a label of a system carebus does not know; ``[]`` when the record carries none), e.g.
``["http://terminology.hl7.org/CodeSystem/v3-Confidentiality|R","http://terminology.hl7.org/CodeSystem/v3-ActCode|PSY"]``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

import orjson

from services.common import security_labels
from services.common.topics import (
    HEADER_CONTENT_TYPE,
    HEADER_CORRELATION_ID,
    HEADER_DEAD_LETTER_REASON,
    HEADER_EVENT_ID,
    HEADER_EVENT_SOURCE,
    HEADER_EVENT_TIME,
    HEADER_EVENT_TYPE,
    HEADER_INBOUND_EVENT_ID,
    HEADER_INBOUND_EVENT_TYPE,
    HEADER_SECURITY,
    HEADER_SPEC_VERSION,
)

SPEC_VERSION = "1.0"
BUNDLE_EVENT_TYPE = "org.carebus.fhir.bundle.v1"
SAFETY_ALERT_EVENT_TYPE = "org.carebus.safety.alert.v1"
DEAD_LETTER_EVENT_TYPE = "org.carebus.deadletter.v1"
REPLAYED_DEAD_LETTER_EVENT_TYPE = "org.carebus.deadletter.replayed.v1"
MAPPER_SOURCE = "urn:carebus:mapper"
RECORD_SOURCE = "urn:carebus:record"
OUTCOMES_SOURCE = "urn:carebus:outcomes"
OPERATOR_SOURCE = "urn:carebus:operator"

_security_headers: dict[tuple[str, ...], str] = {}


def security_header(codes: Iterable[str]) -> str:
    """The ``carebus_security`` value of a set of label codes: a JSON array of FHIR tokens, ``system|code`` for
    carebus's label codes (most restrictive confidentiality first), the bare code for any other a sender used."""
    key = tuple(codes)
    found = _security_headers.get(key)
    if found is None:
        tokens = [f"{security_labels.system_of(code)}|{code}" if code in security_labels.KNOWN else code
                  for code in security_labels.combine(key)]
        found = orjson.dumps(tokens).decode()
        if len(_security_headers) < 256:
            _security_headers[key] = found
    return found


def parse_security_header(value: str) -> list[tuple[str | None, str]]:
    """(system, code) of each label of a ``carebus_security`` value (system None for a bare code). Raises
    ValueError on anything else."""
    tokens = orjson.loads(value)
    if not isinstance(tokens, list) or not all(isinstance(t, str) and t and not t.endswith("|") for t in tokens):
        raise ValueError("carebus_security is a JSON array of FHIR tokens ('system|code' or 'code')")
    return [(system, code) if sep else (None, system)
            for system, sep, code in (t.partition("|") for t in tokens)]


def security_codes(value: str) -> list[str]:
    """The label codes of a ``carebus_security`` value; an older record's comma-separated codes are read too."""
    try:
        return [code for _, code in parse_security_header(value)]
    except ValueError:
        return [code for code in value.split(",") if code]


def cloudevent_headers(event_id: str, event_type: str, source: str, content_type: str,
                       time: datetime | str, inbound_id: str = "", inbound_type: str = "") -> dict[str, str]:
    """The CloudEvent attributes of one record as headers: the required ones, ``time`` (a datetime, or an
    RFC 3339 string already formatted), ``content-type`` (the datacontenttype in binary mode) and the lineage
    extensions when known."""
    headers = {
        HEADER_SPEC_VERSION: SPEC_VERSION,
        HEADER_EVENT_ID: event_id,
        HEADER_EVENT_SOURCE: source,
        HEADER_EVENT_TYPE: event_type,
        HEADER_EVENT_TIME: time if isinstance(time, str) else time.isoformat(),
        HEADER_CONTENT_TYPE: content_type,
    }
    if inbound_id:
        headers[HEADER_INBOUND_EVENT_ID] = inbound_id
    if inbound_type:
        headers[HEADER_INBOUND_EVENT_TYPE] = inbound_type
    return headers


def _common(event_id: str, event_type: str, source: str, time: datetime | None, inbound_id: str,
            inbound_type: str, correlation_id: str, labels: Iterable[str], content_type: str) -> dict[str, str]:
    headers = cloudevent_headers(event_id, event_type, source, content_type,
                                 time if time is not None else datetime.now(UTC), inbound_id, inbound_type)
    headers[HEADER_CORRELATION_ID] = correlation_id
    headers[HEADER_SECURITY] = security_header(labels)
    return headers


def bundle_headers(bundle_id: str, inbound_id: str, inbound_type: str, correlation_id: str,
                   labels: Iterable[str], source: str = MAPPER_SOURCE,
                   time: datetime | None = None) -> dict[str, str]:
    """Headers of one Bundle record on the bundle topic."""
    return _common(bundle_id, BUNDLE_EVENT_TYPE, source, time, inbound_id, inbound_type, correlation_id, labels,
                   "application/fhir+json")


def alert_headers(alert_id: str, inbound_id: str, inbound_type: str, correlation_id: str,
                  labels: Iterable[str], source: str = MAPPER_SOURCE, time: datetime | None = None) -> dict[str, str]:
    """Headers of one safety alert record on the alert topic (the mapper's: ``alert_id`` is its Flag's id)."""
    return _common(alert_id, SAFETY_ALERT_EVENT_TYPE, source, time, inbound_id, inbound_type,
                   correlation_id, labels, "application/json")


def dead_letter_headers(position: str, source: str, time: datetime, inbound_id: str, inbound_type: str,
                        correlation_id: str, reason: str) -> dict[str, str]:
    """Headers of one dead letter: ``position`` is ``<topic>/<partition>/<offset>`` of the refused record,
    ``source`` the stage that refused it, ``time`` that record's timestamp."""
    headers = cloudevent_headers(position, DEAD_LETTER_EVENT_TYPE, source, "application/json", time,
                                 inbound_id, inbound_type)
    headers[HEADER_CORRELATION_ID] = correlation_id or inbound_id or position
    headers[HEADER_DEAD_LETTER_REASON] = reason
    return headers


def record_time(timestamp_ms: int) -> datetime:
    """A Kafka record's timestamp as an aware datetime."""
    return datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC)
