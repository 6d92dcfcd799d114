"""What every mapping (JSON care events, HL7 v2 messages, inbound FHIR) returns: plain data, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from services.common.topics import MapperAlertKind


@dataclass  # hot path: plain, never changed after init (docs/hot-path.md)
class MappingContext:
    """Everything a pure mapping needs from outside: the clock and configuration are passed in."""

    received_at: datetime
    part2_sources: frozenset[str] = frozenset()
    psychiatric_sources: frozenset[str] = frozenset()  # sources whose data is all psychiatric (labels.source_labels)
    # HL7 v2 assigning authority (CX-4.1 namespace id) -> Identifier.system, e.g. {"EMPI": "urn:carebus:empi"}
    assigning_authorities: Mapping[str, str] = field(default_factory=dict)
    # HL7 v2 sender (facility / source URI) -> IANA time zone of its times without an offset, and the zone of
    # any other sender (None: no zone is assumed; see services/mapper/hl7v2/datatypes.py)
    time_zones: Mapping[str, str] = field(default_factory=dict)
    default_time_zone: str | None = None


@dataclass  # hot path: plain, never changed after init (docs/hot-path.md)
class SafetyAlert:
    """A suicide/self-harm risk that needs urgent follow-up. ``detail`` is a fixed phrase, never free text."""

    kind: MapperAlertKind
    patient_reference: str  # "Patient/<id>"
    flag_id: str  # id of the Flag resource in the same bundle
    event_id: str
    detail: str


@dataclass  # hot path: plain, never changed after init (docs/hot-path.md)
class MappedEvent:
    """One inbound event or message as FHIR: a Bundle (type collection) as a plain JSON-ready dict, read-only
    (its resources may share sub-objects; copy it before changing it)."""

    bundle: dict[str, Any]
    security_labels: tuple[str, ...]
    alerts: tuple[SafetyAlert, ...] = ()
    data_quality: tuple[str, ...] = ()  # closed-set codes such as "reported-total-mismatch"
    unmapped_segments: tuple[str, ...] = ()  # HL7 v2 segments present but not mapped (also in the Provenance)
    resource_counts: dict[str, int] = field(default_factory=dict)
