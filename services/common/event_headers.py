"""The Kafka headers of what carebus publishes on the bundle and alert topics: each record is a CloudEvent 1.0
in the Kafka protocol binding's binary mode (the value is the event's data, its attributes are ``ce_`` headers,
``content-type`` is its datacontenttype), of carebus's own type:

- a Bundle: ``ce_type`` org.carebus.fhir.bundle.v1, ``ce_id`` the Bundle's id (deterministic: a replay of the
  same inbound event gives the same CloudEvent id), ``ce_source`` the service that wrote it;
- a safety alert: ``ce_type`` org.carebus.safety.alert.v1, ``ce_id`` the id of the alert's Flag.

The inbound event a record came from is named by two extension attributes, ``carebuseventid`` (the inbound
CloudEvent id, also the lineage id) and ``carebuseventtype`` (its type). ``carebus_security`` is not a
CloudEvent attribute: it is the record's security labels, a JSON array of FHIR tokens ``"<system>|<code>"``
(a bare code for a label of a system carebus does not know; ``[]`` when the record carries none), e.g.
``["http://terminology.hl7.org/CodeSystem/v3-Confidentiality|R","http://terminology.hl7.org/CodeSystem/v3-ActCode|PSY"]``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import orjson

from services.common import security_labels
from services.common.topics import (
    HEADER_CONTENT_TYPE,
    HEADER_CORRELATION_ID,
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
MAPPER_SOURCE = "urn:carebus:mapper"
RECORD_SOURCE = "urn:carebus:record"
OUTCOMES_SOURCE = "urn:carebus:outcomes"

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


def _common(event_id: str, event_type: str, source: str, time: datetime | None, inbound_id: str,
            inbound_type: str, correlation_id: str, labels: Iterable[str], content_type: str) -> dict[str, str]:
    headers = {
        HEADER_SPEC_VERSION: SPEC_VERSION,
        HEADER_EVENT_ID: event_id,
        HEADER_EVENT_SOURCE: source,
        HEADER_EVENT_TYPE: event_type,
        HEADER_INBOUND_EVENT_ID: inbound_id,
        HEADER_INBOUND_EVENT_TYPE: inbound_type,
        HEADER_CORRELATION_ID: correlation_id,
        HEADER_SECURITY: security_header(labels),
        HEADER_CONTENT_TYPE: content_type,
    }
    if time is not None:
        headers[HEADER_EVENT_TIME] = time.isoformat()
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
