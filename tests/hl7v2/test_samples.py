"""Every published HL7 v2 sample (tests/samples/hl7v2) maps, validates as FHIR R4 and is reproducible."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from services.common.fhir.codesystems import HL7V2_UNMAPPED_SEGMENT as UNMAPPED_SEGMENT_SYSTEM
from services.mapper.hl7v2 import map_hl7v2_message
from services.mapper.result import MappedEvent
from tests.hl7v2.helpers import HL7_SAMPLES, context, resources

SAMPLE_IDS = [path.name for path in HL7_SAMPLES]


def read(path: Path) -> str:
    with open(path, encoding="utf-8", newline="") as handle:
        return handle.read()


@pytest.fixture(scope="module", params=HL7_SAMPLES, ids=SAMPLE_IDS)
def sample_event(request: pytest.FixtureRequest) -> tuple[str, MappedEvent]:
    text = read(request.param)
    return text, map_hl7v2_message(text, context())


def test_there_are_samples() -> None:
    assert len(HL7_SAMPLES) >= 13


def test_every_resource_validates_against_the_r4_models(sample_event: tuple[str, MappedEvent]) -> None:
    _text, event = sample_event
    bundle = event.bundle
    get_fhir_model_class("Bundle").model_validate({k: v for k, v in bundle.items() if k != "entry"})
    assert bundle["type"] == "collection"
    for entry in bundle["entry"]:
        resource = entry["resource"]
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
        assert entry["fullUrl"] == f"urn:uuid:{resource['id']}"


def test_bundle_shape_ids_and_references(sample_event: tuple[str, MappedEvent]) -> None:
    _text, event = sample_event
    found = resources(event)
    assert found[0]["resourceType"] == "MessageHeader"
    assert found[-1]["resourceType"] == "Provenance"
    keys = [(r["resourceType"], r["id"]) for r in found]
    assert len(keys) == len(set(keys)), "duplicate resource ids"
    present = {f"{kind}/{ident}" for kind, ident in keys}
    for resource in found:
        for reference in _references(resource):
            if reference.split("/")[0] in {"Patient", "Encounter", "Observation", "Condition",
                                           "QuestionnaireResponse", "DiagnosticReport", "Immunization"}:
                assert reference in present, f"{resource['resourceType']} points at a missing {reference}"
    provenance = found[-1]
    assert {t["reference"] for t in provenance["target"]} == present - {f"Provenance/{provenance['id']}"}
    assert event.resource_counts == {kind: sum(1 for k, _ in keys if k == kind) for kind, _ in keys}


def test_unmapped_segments_are_reported_not_dropped(sample_event: tuple[str, MappedEvent]) -> None:
    text, event = sample_event
    present = {line.strip()[:3] for line in text.replace("\r", "\n").split("\n") if line.strip()}
    assert set(event.unmapped_segments) <= present
    provenance = resources(event, "Provenance")[0]
    listed = [e["what"]["identifier"]["value"] for e in provenance["entity"]
              if e["what"].get("identifier", {}).get("system") == UNMAPPED_SEGMENT_SYSTEM]
    assert listed == list(event.unmapped_segments)


def test_a_resent_message_gives_the_same_ids(sample_event: tuple[str, MappedEvent]) -> None:
    text, event = sample_event
    later = dataclasses.replace(context(), received_at=context().received_at + timedelta(days=3))
    again = map_hl7v2_message(text, later)
    assert [(r["resourceType"], r["id"]) for r in resources(again)] == \
        [(r["resourceType"], r["id"]) for r in resources(event)]


@pytest.mark.parametrize("ending", ["\r", "\n", "\r\n"], ids=["CR", "LF", "CRLF"])
def test_line_endings_do_not_change_the_result(sample_event: tuple[str, MappedEvent], ending: str) -> None:
    text, event = sample_event
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    assert map_hl7v2_message(ending.join(lines), context()).bundle == event.bundle


def _references(value: Any) -> list[str]:
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "reference" and isinstance(item, str):
                found.append(item)
            else:
                found.extend(_references(item))
    elif isinstance(value, list):
        for item in value:
            found.extend(_references(item))
    return found
