"""What the disclosure side emits validates: the AuditEvents (API access, refused attempt, push disclosure) and
the 42 CFR 2.32 notice Provenance, with the R4B models and with the HL7 validator (tests/validation/hapi.py,
R4 core + US Core 6.1.0): 0 errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from fhir.resources.R4B import get_fhir_model_class

from services.common import audit, part2
from services.common.settings import REPO_ROOT
from tests.validation.hapi import validate_folder

BASE = "https://record.example.org/fhir"
REQUESTER = audit.Requester("a1b2c3d4e5f6", "partner clinic", "http://hl7.org/fhir/sid/us-npi|1999999984", "TREAT")


def emitted() -> dict[str, dict[str, Any]]:
    recorded = "2026-05-01T10:00:00.000Z"
    return {
        "audit-read": audit.api_access_event(
            audit.disclosure_id("t", "1"), recorded, "read", REQUESTER, BASE, "Patient/p1",
            ["Condition/c1"], ["Consent/k1"]),
        "audit-search": audit.api_access_event(
            audit.disclosure_id("t", "2"), recorded, "search-type", REQUESTER, BASE, "Patient/p1",
            ["Condition/c1", "Condition/c2"], query="patient=p1&_count=10"),
        "audit-denied": audit.api_access_event(
            audit.disclosure_id("t", "3"), recorded, "read", REQUESTER, BASE, "Patient/p1", ["Condition/c3"],
            denied=True),
        "audit-push": audit.push_disclosure_event(
            audit.disclosure_id("sub-1", "7"), recorded, REQUESTER, BASE, "Patient/p1", ["Condition/c1"],
            ["Consent/k1"]),
        "part2-notice": part2.disclosure_notice(
            part2.notice_id("t", "4"), recorded, ["Condition/c1", "MedicationRequest/m1"], ["Consent/k1"], BASE,
            "TREAT", REQUESTER.organization),
    }


@pytest.mark.parametrize("name", sorted(emitted()))
def test_r4_models_accept_them(name: str) -> None:
    resource = emitted()[name]
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)


@pytest.mark.integration
def test_hl7_validator_finds_no_errors(tmp_path: Path) -> None:
    folder = tmp_path / "disclosure"
    folder.mkdir()
    for name, resource in emitted().items():
        (folder / f"{name}.json").write_bytes(orjson.dumps(resource))
    results = validate_folder(folder, REPO_ROOT / ".cache")
    assert len(results) == len(emitted())
    errors = {r.file: [f"{f.location}: {f.message}" for f in r.errors] for r in results if r.errors}
    assert errors == {}
