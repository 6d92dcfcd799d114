"""The one Bundle + Provenance assembler: every path maps its input to resources, then assembles them here.

A path (JSON care events: mapping/dispatch.py; HL7 v2: hl7v2/mapper.py; FHIR in: fhir_in.py) hands over its
resources, each with the labels its own rules gave it (services/common/fhir/labels.py), and an :class:`Origin`
saying where the data comes from. The Bundle every subscriber gets is then, whatever the path:

* type ``collection``; id ``resource_id("Bundle", source, event id)``; ``identifier`` {system: the event's source,
  value: the event id} (the id carebus gave the inbound record: the CloudEvent id, or for HL7 v2 a digest of the
  message);
* ``timestamp`` = ``Provenance.recorded`` = when the source recorded what the Bundle carries: the CloudEvent
  ``time`` (JSON events), MSH-7 (HL7 v2; carebus's receipt only when MSH-7 has no usable time), the FHIR
  Bundle.timestamp, else the newest meta.lastUpdated, else the CloudEvent time (FHIR in). Never carebus's clock:
  a resend or replay of the same event gives the same Bundle;
* entries in the path's order (an HL7 v2 MessageHeader first), each with fullUrl ``urn:uuid:<id>``, then ALWAYS
  a Provenance last (us-core-provenance): target = every other entry; recorded as above; occurredDateTime when
  the path knows when it happened; agent = the source (author: ``who`` names the source system by identifier),
  any agents the path adds (an HL7 v2 EVN-5 enterer), and carebus (assembler); entity (role source) = the
  inbound event {system: source, value: event id, display: its type}, then any the path adds;
* ``meta.security`` on each resource = its own labels + what the source's configured kind adds
  (labels.source_labels: a 42 CFR Part 2 program PART2 on every resource, the Patient included; a psychiatric
  source PSY on every resource but the Patient), with any other security codings a sender put there kept as
  sent; on the Bundle, the Provenance (and an HL7 v2 MessageHeader) the union of all of them and the source's
  kind, so an envelope never tells less than its contents. The same tuple is MappedEvent.security_labels;
* MappedEvent.resource_counts counts the entries by type.
Pure: same input, same Bundle (ids from fhir_ids, no clock, no randomness).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from services.common import security_labels
from services.common.fhir import labels
from services.common.fhir.codesystems import CAREBUS_MAPPER, PROVENANCE_PARTICIPANT_TYPE, RFC3986
from services.common.fhir_ids import resource_id
from services.mapper.result import MappedEvent, MappingContext, SafetyAlert

Json = dict[str, Any]
Labels = tuple[str, ...]

US_CORE_PROVENANCE: Final = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-provenance"
_AUTHOR_TYPE: Final = {"coding": [{"system": PROVENANCE_PARTICIPANT_TYPE, "code": "author", "display": "Author"}]}
_ASSEMBLER: Final = {
    "type": {"coding": [{"system": PROVENANCE_PARTICIPANT_TYPE, "code": "assembler", "display": "Assembler"}]},
    "who": {"identifier": {"system": RFC3986, "value": CAREBUS_MAPPER}},
}


@dataclass  # made per event: not frozen (a frozen __init__ takes ~3x as long); never changed after
class Origin:
    """Where a Bundle's data comes from, as its path knows it."""

    source: str  # the source URI: Identifier.system of the event id, and of every id carebus derives
    event_id: str
    event_type: str  # the inbound event's type, e.g. org.carebus.hl7v2.message.v1 (Provenance entity display)
    recorded: str  # when the source recorded it (FHIR instant text): Bundle.timestamp and Provenance.recorded
    names: tuple[str, ...] = ()  # what CAREBUS_PART2_SOURCES / _PSYCHIATRIC_SOURCES may name it by; () = source
    occurred: str | None = None
    author: Json | None = None  # the author agent's who (+ onBehalfOf); default: the source URI as identifier
    activity: Json | None = None
    reason: list[Json] = field(default_factory=list)
    agents: list[Json] = field(default_factory=list)  # between the author and the assembler
    entities: list[Json] = field(default_factory=list)  # after the inbound event's


def _with_security(resource: Json, security: list[Json]) -> None:
    """Set meta.security (a new meta: a resource may share its meta with what the sender sent), keeping any
    security coding already there that is not one of carebus's labels (a sender's, kept as sent)."""
    meta = resource.get("meta")
    if meta is None:
        resource["meta"] = {"security": security}
        return
    sent = meta.get("security")
    if sent:
        known = {(c["system"], c["code"]) for c in security}
        kept = [c for c in sent if isinstance(c, dict) and (c.get("system"), c.get("code")) not in known
                and c.get("code") not in security_labels.KNOWN]
        security = [*security, *kept]
    resource["meta"] = {**meta, "security": security}


def _provenance(origin: Origin, targets: Iterable[Json], union: Labels) -> Json:
    meta: Json = {"profile": [US_CORE_PROVENANCE]}
    if union:
        meta["security"] = security_labels.meta_security(union)
    provenance: Json = {
        "resourceType": "Provenance",
        "id": resource_id("Provenance", origin.source, origin.event_id),
        "meta": meta,
        "target": [{"reference": f"{r['resourceType']}/{r['id']}"} for r in targets],
    }
    if origin.occurred is not None:
        provenance["occurredDateTime"] = origin.occurred
    provenance["recorded"] = origin.recorded
    if origin.activity is not None:
        provenance["activity"] = origin.activity
    if origin.reason:
        provenance["reason"] = origin.reason
    author = origin.author if origin.author is not None else {"who": {"identifier": {"system": RFC3986,
                                                                                      "value": origin.source}}}
    provenance["agent"] = [{"type": _AUTHOR_TYPE, **author}, *origin.agents, _ASSEMBLER]
    provenance["entity"] = [
        {"role": "source", "what": {"identifier": {"system": origin.source, "value": origin.event_id},
                                    "display": origin.event_type}},
        *origin.entities,
    ]
    return provenance


def assemble(origin: Origin, resources: Sequence[tuple[Json, Labels]], context: MappingContext, *,
             header: Json | None = None, alerts: Iterable[SafetyAlert] = (), data_quality: Iterable[str] = (),
             unmapped_segments: Iterable[str] = ()) -> MappedEvent:
    """The labelled Bundle of a path's resources (and an HL7 v2 MessageHeader, labelled like the envelope)."""
    names = origin.names or (origin.source,)
    part2, psychiatric = context.part2_sources, context.psychiatric_sources
    entries: list[Json] = [{}] if header is not None else []  # the header's entry is filled in once labelled
    targets: list[Json] = [header] if header is not None else []
    label_sets: list[Labels] = [labels.source_labels(names, "Bundle", part2, psychiatric)]
    security_lists: dict[Labels, list[Json]] = {}  # one list per label set, shared (Bundles are read-only)
    for resource, own in resources:
        kind = labels.source_labels(names, resource["resourceType"], part2, psychiatric)
        resource_labels = labels.combine(own, kind) if kind else own
        if resource_labels:
            security = security_lists.get(resource_labels)
            if security is None:
                security = security_lists[resource_labels] = security_labels.meta_security(resource_labels)
            _with_security(resource, security)
        label_sets.append(resource_labels)
        targets.append(resource)
        entries.append({"fullUrl": f"urn:uuid:{resource['id']}", "resource": resource})
    union = labels.combine(*label_sets)
    if header is not None:
        if union:
            _with_security(header, security_labels.meta_security(union))
        entries[0] = {"fullUrl": f"urn:uuid:{header['id']}", "resource": header}
    provenance = _provenance(origin, targets, union)
    entries.append({"fullUrl": f"urn:uuid:{provenance['id']}", "resource": provenance})
    bundle: Json = {
        "resourceType": "Bundle",
        "id": resource_id("Bundle", origin.source, origin.event_id),
        "identifier": {"system": origin.source, "value": origin.event_id},
        "type": "collection",
        "timestamp": origin.recorded,
        "entry": entries,
    }
    if union:
        bundle["meta"] = {"security": security_labels.meta_security(union)}
    counts: dict[str, int] = {}
    for entry in entries:
        resource_type = entry["resource"]["resourceType"]
        counts[resource_type] = counts.get(resource_type, 0) + 1
    return MappedEvent(
        bundle=bundle,
        security_labels=union,
        alerts=tuple(alerts),
        data_quality=tuple(dict.fromkeys(data_quality)),
        unmapped_segments=tuple(unmapped_segments),
        resource_counts=counts,
    )
