"""Helpers for the HL7 v2 tests: samples (copied into tests/samples), message builders, bundle queries."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.mapper.hl7v2 import map_hl7v2_message
from services.mapper.mapping import validate_bundle
from services.mapper.result import MappedEvent, MappingContext

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
HL7_SAMPLES = sorted((SAMPLES / "hl7v2").glob("*.hl7"))
RECEIVED_AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def sample(name: str) -> str:
    """A sample message exactly as stored (line endings kept)."""
    with open(SAMPLES / "hl7v2" / name, encoding="utf-8", newline="") as handle:
        return handle.read()


def context(*part2: str) -> MappingContext:
    return MappingContext(received_at=RECEIVED_AT, part2_sources=frozenset(part2))


def er7(*segments: str, ending: str = "\r") -> str:
    return ending.join(segments) + ending


def msh(message_type: str, control_id: str = "MSG-1", version: str = "2.5.1", facility: str = "CLINIC",
        timestamp: str = "20240501101500-0500") -> str:
    return f"MSH|^~\\&|EHR|{facility}|CAREBUS|CAREBUS|{timestamp}||{message_type}|{control_id}|P|{version}"


PID = ("PID|1||MRN123^^^CLINIC^MR~999-11-2222^^^USSSA^SS||Doe^Jane^Q^^^^L||19800101|F|||"
       "1 Main St^^Springfield^IL^62701^USA^H||(555)555-0100^PRN^PH")


def mapped(text: str, *part2: str) -> MappedEvent:
    """Map, then validate the bundle as the mapper pipeline does (the mapping itself does not validate)."""
    event = map_hl7v2_message(text, context(*part2))
    validate_bundle(event.bundle)
    return event


def resources(event: MappedEvent, resource_type: str | None = None) -> list[dict[str, Any]]:
    found = [entry["resource"] for entry in event.bundle["entry"]]
    return [r for r in found if resource_type is None or r["resourceType"] == resource_type]


def one(event: MappedEvent, resource_type: str) -> dict[str, Any]:
    found = resources(event, resource_type)
    assert len(found) == 1, f"{len(found)} {resource_type} resources"
    return found[0]


def codes(resource_or_concept: dict[str, Any] | None) -> set[str]:
    if not resource_or_concept:
        return set()
    return {c["code"] for c in resource_or_concept.get("coding", []) if "code" in c}


def security(resource: dict[str, Any]) -> set[str]:
    return {c["code"] for c in resource.get("meta", {}).get("security", [])}
