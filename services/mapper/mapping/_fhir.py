"""Small helpers every family mapping uses to build plain FHIR R4 dicts (no model objects on the hot path).

Ids and references
------------------
* Every resource id is ``services.common.fhir_ids.resource_id(<type>, <event source>, <source ids>...)``: the
  same source record always gives the same id (a replay converges instead of duplicating).
* Encounters share one id space per source: ``session_id`` and ``admission_id`` are the source's encounter
  ids, and ``encounter_id`` in other events points at them.
* ``fullUrl`` is ``urn:uuid:<id>`` (ids are UUIDs); references inside resources are relative
  ``<ResourceType>/<id>`` so that a consumer PUTting each entry to ``<ResourceType>/<id>`` keeps them valid.
  (The same convention as Microsoft's FHIR-Converter output.)
* Practitioners are not emitted as resources: they are logical references (identifier + display), NPI when
  known, otherwise ``{system: "<source>/practitioner", value: <source practitioner id>}``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Final

from services.common.events._types import Practitioner
from services.common.fhir.codesystems import NPI, UCUM
from services.common.fhir_ids import resource_id
from services.mapper.result import SafetyAlert

US_CORE: Final = "http://hl7.org/fhir/us/core/StructureDefinition/"

Resource = dict[str, Any]


def profile(name: str) -> list[str]:
    return [US_CORE + name]


def iso(value: dt.datetime | dt.date) -> str:
    """ISO 8601 text of a date or datetime. An event's few datetimes are written into most of its resources,
    and formatting an aware datetime is slow (its offset is asked of the tzinfo and formatted each time): the
    text of recently formatted objects is remembered by identity (each entry holds its object, so the id is
    not reused while it is kept)."""
    found = _iso_texts.get(id(value))
    if found is not None and found[0] is value:
        return found[1]
    text = value.isoformat()
    if len(_iso_texts) >= _ISO_TEXTS_KEPT:
        _iso_texts.clear()
    _iso_texts[id(value)] = (value, text)
    return text


_ISO_TEXTS_KEPT: Final = 256
_iso_texts: dict[int, tuple[dt.datetime | dt.date, str]] = {}


def coding(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def concept(system: str, code: str, display: str | None = None, text: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"coding": [coding(system, code, display)]}
    if text:
        out["text"] = text
    return out


def concept_of(codings: Any) -> dict[str, Any]:
    """A CodeableConcept from an event Coding (pydantic model with system/code/display)."""
    return {"coding": [coding(codings.system, codings.code, codings.display)]}


def number(value: float) -> float | int:
    """Whole numbers as int (``1`` rather than ``1.0``) so the JSON reads as senders wrote it."""
    return int(value) if float(value).is_integer() else value


def quantity(value: float, unit: str, code: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"value": number(value), "unit": unit}
    if code:
        out["system"] = UCUM
        out["code"] = code
    return out


@dataclass  # hot path: plain, never changed after init (docs/hot-path.md)
class Subject:
    """The event's source and patient: ids and references that every family needs."""

    source: str
    patient_id: str

    def id(self, resource_type: str, *source_ids: str) -> str:
        return resource_id(resource_type, self.source, *source_ids)

    def ref(self, resource_type: str, *source_ids: str) -> dict[str, str]:
        return {"reference": f"{resource_type}/{self.id(resource_type, *source_ids)}"}

    @property
    def patient_resource_id(self) -> str:
        return resource_id("Patient", self.source, self.patient_id)

    @property
    def patient_ref(self) -> dict[str, str]:
        return {"reference": f"Patient/{self.patient_resource_id}"}

    def identifier(self, kind: str, value: str) -> dict[str, str]:
        """The source's own id of a record as a FHIR Identifier (system ``<source>/<kind>``)."""
        return {"system": f"{self.source}/{kind}", "value": value}

    def practitioner(self, who: Practitioner) -> dict[str, Any]:
        ident = {"system": NPI, "value": who.npi} if who.npi else self.identifier("practitioner", who.id)
        out: dict[str, Any] = {"type": "Practitioner", "identifier": ident}
        if who.name:
            out["display"] = who.name
        return out


@dataclass
class Draft:
    """What a family mapping hands back: resources (each with its own labels), alerts, data-quality codes."""

    subject: Subject
    event_id: str
    resources: list[tuple[Resource, tuple[str, ...]]] = field(default_factory=list)
    alerts: list[SafetyAlert] = field(default_factory=list)
    data_quality: list[str] = field(default_factory=list)
    occurred_at: dt.datetime | None = None  # when the change happened, if not at the event's time (Provenance)

    def add(self, resource: Resource, labels: tuple[str, ...] = ()) -> Resource:
        self.resources.append((resource, labels))
        return resource
