"""One inbound Kafka record in, the Kafka records it implies out: a FHIR bundle and safety alerts, or one
dead letter with the reason. No I/O here: the mapper service does the consuming, producing and committing.

Dispatch by CloudEvent type: JSON care events (services/common/events) go through services/mapper/mapping;
HL7 v2 messages through services/mapper/hl7v2; FHIR resources and Bundles through services/mapper/fhir_in.py.
The clock is the inbound record's timestamp, so a replay maps every record exactly as the first time.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from services.common.errors import CarebusError, InvalidInput, MappingError
from services.common.event_headers import (
    MAPPER_SOURCE,
    alert_headers,
    bundle_headers,
    dead_letter_headers,
    record_time,
)
from services.common.events import EVENT_TYPES, parse_event
from services.common.kafka import OutboundRecord
from services.common.topics import (
    DEAD_LETTERS,
    FHIR_BUNDLES,
    FHIR_RESOURCE_EVENT_TYPE,
    HEADER_CORRELATION_ID,
    HEADER_EVENT_ID,
    HEADER_EVENT_TYPE,
    HL7V2_MESSAGE_EVENT_TYPE,
    SAFETY_ALERTS,
)
from services.mapper.fhir_in import map_fhir_payload
from services.mapper.hl7v2 import map_hl7v2_message
from services.mapper.mapping import map_event, serialize, validate_bundle
from services.mapper.result import MappedEvent, MappingContext, SafetyAlert

log = logging.getLogger(__name__)


@dataclass  # hot path: plain, never changed after init (docs/hot-path.md)
class InboundRecord:
    """The parts of a consumed Kafka record the pipeline needs (decoupled from kafka-python's type)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value.decode(errors="replace")
        return None


@dataclass  # hot path: plain, never changed after init (docs/hot-path.md)
class MappedSummary:
    """What the mapper keeps of a mapped event once its Bundle is serialized (the Bundle itself is let go at
    once: a batch of them alive at the same time is a lot of work for the garbage collector)."""

    resources: tuple[str, ...]  # "<resourceType>/<id>" in Bundle order, for the lineage log
    alerts: tuple[SafetyAlert, ...]
    data_quality: tuple[str, ...]
    resource_counts: Mapping[str, int]

    @classmethod
    def of(cls, mapped: MappedEvent) -> MappedSummary:
        resources = tuple(f"{e['resource']['resourceType']}/{e['resource']['id']}"
                          for e in mapped.bundle.get("entry", ()))
        return cls(resources, mapped.alerts, mapped.data_quality, mapped.resource_counts)


@dataclass  # hot path: plain, never changed after init (docs/hot-path.md)
class Outcome:
    """What one inbound record became. ``records`` are written together, before the offset is committed."""

    records: list[OutboundRecord]
    event_type: str
    event_id: str
    correlation_id: str
    mapped: MappedSummary | None = None
    dead_letter_reason: str | None = None


@dataclass(frozen=True)
class TopicNames:
    bundles: str
    alerts: str
    dead_letters: str

    @classmethod
    def for_prefix(cls, prefix: str) -> TopicNames:
        return cls(FHIR_BUNDLES.name(prefix), SAFETY_ALERTS.name(prefix), DEAD_LETTERS.name(prefix))


Mapper = Callable[[dict[str, Any], MappingContext], MappedEvent]


def _map_care_event(envelope: dict[str, Any], context: MappingContext) -> MappedEvent:
    return map_event(parse_event(envelope), context)


def _map_hl7v2(envelope: dict[str, Any], context: MappingContext) -> MappedEvent:
    data = envelope.get("data")
    if not isinstance(data, str):
        raise MappingError("HL7 v2 event carries no ER7 text in data")
    return map_hl7v2_message(data, context)


# The mappers of inbound types that are not care events (care events: map_event, by their class)
MAPPERS_BY_TYPE: Final[Mapping[str, Mapper]] = {
    HL7V2_MESSAGE_EVENT_TYPE: _map_hl7v2,
    FHIR_RESOURCE_EVENT_TYPE: map_fhir_payload,
}


class Pipeline:
    def __init__(self, topics: TopicNames, part2_sources: frozenset[str] = frozenset(),
                 assigning_authorities: Mapping[str, str] | None = None,
                 psychiatric_sources: frozenset[str] = frozenset(),
                 mappers: Mapping[str, Mapper] = MAPPERS_BY_TYPE,
                 time_zones: Mapping[str, str] | None = None, default_time_zone: str | None = None) -> None:
        self.topics = topics
        self.mappers = dict(mappers)  # inbound event type -> its mapper; any other type is a care event
        self.time_zones = dict(time_zones or {})
        self.default_time_zone = default_time_zone
        self.part2_sources = part2_sources
        self.psychiatric_sources = psychiatric_sources
        self.assigning_authorities = dict(assigning_authorities or {})
        self._context_ms = 0
        self._context = self._context_at(0)

    def _context_at(self, timestamp_ms: int) -> MappingContext:
        return MappingContext(
            received_at=datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC),
            part2_sources=self.part2_sources,
            psychiatric_sources=self.psychiatric_sources,
            assigning_authorities=self.assigning_authorities,
            time_zones=self.time_zones,
            default_time_zone=self.default_time_zone,
        )

    def context_for(self, record: InboundRecord) -> MappingContext:
        """The mapping context of a record: its clock is the record's timestamp. Records of a batch often share
        one millisecond: they share one context (and one received_at, formatted once)."""
        if record.timestamp_ms != self._context_ms:
            self._context_ms = record.timestamp_ms
            self._context = self._context_at(record.timestamp_ms)
        return self._context

    def process(self, record: InboundRecord) -> Outcome:
        key = (record.key or b"").decode(errors="replace")
        event_id = record.header(HEADER_EVENT_ID) or ""
        event_type = record.header(HEADER_EVENT_TYPE) or "unknown"
        correlation_id = record.header(HEADER_CORRELATION_ID) or event_id
        context = self.context_for(record)
        try:
            if event_type in EVENT_TYPES:
                # the usual case (intake's ce_type header names a care event): the JSON bytes are parsed and
                # checked against the event's schema in one pass, without building a dict first
                event = parse_event(record.value)
                event_type, event_id = event.type, event.id
                mapped = map_event(event, context)
            else:
                envelope = orjson.loads(record.value)
                if not isinstance(envelope, dict):
                    raise MappingError("inbound record is not a CloudEvent object")
                event_type = str(envelope.get("type", event_type))
                event_id = str(envelope.get("id", event_id))
                mapped = self.mappers.get(event_type, _map_care_event)(envelope, context)
            validate_bundle(mapped.bundle)
            payload = serialize(mapped.bundle)
        except (InvalidInput, orjson.JSONDecodeError) as exc:
            reason = exc.reason if isinstance(exc, InvalidInput) else "malformed-json"
            return self._dead_letter(record, key, event_id, event_type, correlation_id, reason, exc)
        except CarebusError as exc:  # pragma: no cover - defensive: every mapping error is InvalidInput
            return self._dead_letter(record, key, event_id, event_type, correlation_id, "mapping-failed", exc)
        except Exception as exc:
            log.exception("unexpected mapping failure", extra={"event_id": event_id, "event_type": event_type})
            return self._dead_letter(record, key, event_id, event_type, correlation_id, "unexpected-error", exc)

        labels = mapped.security_labels
        records = [OutboundRecord(
            topic=self.topics.bundles, key=key, value=payload,
            headers=bundle_headers(str(mapped.bundle["id"]), event_id, event_type, correlation_id, labels,
                                   time=context.received_at),
        )]
        for alert in mapped.alerts:
            records.append(OutboundRecord(
                topic=self.topics.alerts, key=key,
                value=orjson.dumps({
                    "kind": alert.kind, "patient": alert.patient_reference, "flag": f"Flag/{alert.flag_id}",
                    "event_id": alert.event_id, "detail": alert.detail,
                    "raised_at": context.received_at.isoformat(),
                }),
                headers=alert_headers(alert.flag_id, event_id, event_type, correlation_id, labels,
                                      time=context.received_at),
            ))
        return Outcome(records=records, event_type=event_type, event_id=event_id,
                       correlation_id=correlation_id, mapped=MappedSummary.of(mapped))

    def _dead_letter(self, record: InboundRecord, key: str, event_id: str, event_type: str,
                     correlation_id: str, reason: str, exc: BaseException) -> Outcome:
        problems: list[dict[str, str]] = []
        if isinstance(exc, InvalidInput):
            message = exc.message
            problems = [{"location": p.location, "rule": p.rule, "message": p.message} for p in exc.problems]
        else:
            message = f"{type(exc).__name__} while mapping"
        try:
            original: dict[str, str] = {"encoding": "utf-8", "value": record.value.decode()}
        except UnicodeDecodeError:
            original = {"encoding": "base64", "value": base64.b64encode(record.value).decode()}
        letter = {
            "reason": reason,
            "message": message,
            "problems": problems,
            "stage": "mapper",
            "event_id": event_id,
            "event_type": event_type,
            "source": {"topic": record.topic, "partition": record.partition, "offset": record.offset,
                       "key": key, "timestamp_ms": record.timestamp_ms},
            "headers": {k: v.decode(errors="replace") for k, v in record.headers},
            "original": original,
        }
        log.warning("dead-lettered", extra={"event_id": event_id, "event_type": event_type, "reason": reason,
                                            "partition": record.partition, "offset": record.offset})
        return Outcome(
            records=[OutboundRecord(
                topic=self.topics.dead_letters, key=key, value=orjson.dumps(letter),
                headers=dead_letter_headers(f"{record.topic}/{record.partition}/{record.offset}", MAPPER_SOURCE,
                                            record_time(record.timestamp_ms), event_id,
                                            "" if event_type == "unknown" else event_type, correlation_id, reason),
            )],
            event_type=event_type,
            event_id=event_id,
            correlation_id=correlation_id,
            dead_letter_reason=reason,
        )
