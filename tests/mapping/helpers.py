"""Shared helpers for the mapping tests (plain functions, no fixtures with side effects)."""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path
from typing import Any

from services.common.events import parse_event
from services.common.events.examples import EXAMPLES
from services.mapper.mapping import map_event, validate_bundle
from services.mapper.result import MappedEvent, MappingContext

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "fhir"
RECEIVED = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.UTC)
CONTEXT = MappingContext(received_at=RECEIVED)


def sample(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SAMPLES / name).read_text(encoding="utf-8"))
    return loaded


def example(event_type: str, **data_changes: Any) -> dict[str, Any]:
    """A deep copy of the published example of ``event_type`` (short name, e.g. "note.signed")."""
    event = copy.deepcopy(EXAMPLES[f"org.carebus.{event_type}.v1"])
    event["data"].update(data_changes)
    return event


def mapped(event: dict[str, Any], context: MappingContext = CONTEXT) -> MappedEvent:
    """parse -> map -> validate with the R4B models; every mapping test goes through validation."""
    result = map_event(parse_event(event), context)
    validate_bundle(result.bundle)
    return result


def resources(result: MappedEvent, resource_type: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in result.bundle["entry"] if e["resource"]["resourceType"] == resource_type]


def one(result: MappedEvent, resource_type: str) -> dict[str, Any]:
    found = resources(result, resource_type)
    assert len(found) == 1, f"expected one {resource_type}, found {len(found)}"
    return found[0]


def codes(resource: dict[str, Any], path: str) -> list[str]:
    """The codes of a CodeableConcept (or list of them) at a top-level key."""
    value = resource[path]
    concepts = value if isinstance(value, list) else [value]
    return [c["code"] for concept in concepts for c in concept.get("coding", [])]


def security_codes(resource: dict[str, Any]) -> list[str]:
    return [c["code"] for c in resource.get("meta", {}).get("security", [])]
