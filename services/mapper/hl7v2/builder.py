"""The state of one message's mapping: resources with their labels, the segments used, alerts, findings.

Ids: ``resource_id(<type>, <source>, <keys>...)`` where ``source`` is ``urn:carebus:hl7v2:<sending facility>``
(the CloudEvent source of the message) and the keys are the v2 identifiers of the record (PID-3, PV1-19,
placer/filler numbers, SCH-1/2, TXA-12, MSH-3 + MSH-10 ...), so a resent message gives the same ids; the
message's own resources (MessageHeader, Provenance, the Bundle) are keyed by its event id.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from services.common.fhir_ids import resource_id
from services.common.hl7v2.er7 import Header, Message, Segment
from services.common.hl7v2.ids import message_digest, message_event_id, sender_control_id
from services.common.security_labels import combine
from services.mapper.hl7v2.datatypes import Conversion, prune
from services.mapper.result import MappingContext, SafetyAlert

Json = dict[str, Any]
Labels = tuple[str, ...]


@dataclass
class Build:
    message: Message
    context: MappingContext
    conv: Conversion
    patient_key: str  # the selected PID-3 value
    resources: list[tuple[Json, Labels]] = field(default_factory=list)
    used: set[int] = field(default_factory=set)  # positions of segments that were mapped
    alerts: list[SafetyAlert] = field(default_factory=list)
    patient_ref: Json | None = None
    encounter_ref: Json | None = None
    encounter_key: str | None = None
    focus: list[Json] = field(default_factory=list)  # MessageHeader.focus

    @property
    def header(self) -> Header:
        return self.message.header

    @property
    def source(self) -> str:
        return self.header.source

    @property
    def message_key(self) -> str:
        """The key of a record that has no identifier of its own: sending application + MSH-10."""
        return sender_control_id(self.header)

    @cached_property
    def event_id(self) -> str:
        return message_event_id(self.header, message_digest(self.message))

    def id(self, resource_type: str, *keys: str) -> str:
        return resource_id(resource_type, self.source, *keys)

    def local(self, loc: str) -> tuple[str, str]:
        """What codeable/coding need to give a local code of field ``loc`` the sender's local system."""
        return (self.source, loc)

    def source_identifier(self, kind: str, value: str) -> Json:
        """The sender's own id of a record as an Identifier (system ``<source>/<kind>``), as the JSON path."""
        return {"system": f"{self.source}/{kind}", "value": value}

    def use(self, *segments: Segment | None) -> None:
        for segment in segments:
            if segment is not None:
                self.used.add(segment.position)

    def add(self, resource: Json, labels: Labels = (), *, focus: bool = False) -> Json:
        """Add a resource (pruned). A second resource with the same type and id (a repeated key in the
        message, e.g. two DG1 with one code) gets an id derived from the first and a data-quality note."""
        resource = prune(resource)
        taken = {(r["resourceType"], r["id"]) for r, _labels in self.resources}
        duplicate = 0
        original_id = resource["id"]
        while (resource["resourceType"], resource["id"]) in taken:
            duplicate += 1
            resource["id"] = resource_id(resource["resourceType"], self.source, original_id, "repeat",
                                         str(duplicate))
        if duplicate:
            self.issue(f"repeated-key@{resource['resourceType']}")
        self.resources.append((resource, labels))
        if focus:
            self.focus.append(ref(resource))
        return resource

    def relabel(self, resource_id_: str, labels: Iterable[str]) -> None:
        for index, (resource, current) in enumerate(self.resources):
            if resource.get("id") == resource_id_:
                self.resources[index] = (resource, combine(current, labels))

    def subject(self, resource: Json, *, encounter: bool = True, key: str = "subject") -> Json:
        if self.patient_ref is not None:
            resource[key] = self.patient_ref
        if encounter and self.encounter_ref is not None:
            resource["encounter"] = self.encounter_ref
        return resource

    def issue(self, code: str) -> None:
        self.conv.issue(code)

    def notes_after(self, segment: Segment) -> list[Segment]:
        """The NTE segments that directly follow ``segment`` (marked as used by the caller)."""
        notes: list[Segment] = []
        for following in self.message.segments[segment.position + 1:]:
            if following.name != "NTE":
                break
            notes.append(following)
        return notes


def ref(resource: Json) -> Json:
    return {"reference": f"{resource['resourceType']}/{resource['id']}"}


def note_texts(notes: Iterable[Segment]) -> list[str]:
    """NTE-3 comments (all repetitions, joined by line breaks). A note whose NTE-3 is empty but whose NTE-2
    (source of comment, a table 0105 code such as L, O or P) holds free text is read as the comment the sender
    put one field early (seen from real schedulers: ``NTE||Appointment modified ...``), not dropped."""
    out: list[str] = []
    for note in notes:
        text = "\n".join(rep.text() for rep in note.reps(3))
        if not text and " " in (misplaced := note.get(2)):
            text = misplaced
        if text:
            out.append(text)
    return out
