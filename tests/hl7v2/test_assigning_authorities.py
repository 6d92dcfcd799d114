"""PID-3 assigning authorities map to Identifier.system by configuration, so a hospital's enterprise id links."""

from __future__ import annotations

from datetime import UTC, datetime

from devstack.hospital_feed import admission_adt_a01
from services.common.settings import Settings
from services.mapper.hl7v2 import map_hl7v2_message
from services.mapper.mapping import validate_bundle
from services.mapper.result import MappingContext

NOW = datetime(2026, 3, 1, 22, 0, tzinfo=UTC)


def patient_identifiers(context: MappingContext) -> list[dict[str, object]]:
    mapped = map_hl7v2_message(admission_adt_a01(NOW, "NGH-1"), context)
    validate_bundle(mapped.bundle)
    (patient,) = [e["resource"] for e in mapped.bundle["entry"] if e["resource"]["resourceType"] == "Patient"]
    return list(patient["identifier"])


def test_configured_authority_becomes_the_identifier_system() -> None:
    context = MappingContext(received_at=NOW, assigning_authorities=Settings().hl7_assigning_authorities)
    empi = [i for i in patient_identifiers(context) if i.get("value") == "EMPI-8842-1170"]
    assert empi == [{"type": empi[0]["type"], "system": "urn:carebus:empi", "value": "EMPI-8842-1170",
                     "assigner": {"display": "EMPI"}}]


def test_unconfigured_authority_is_a_namespace_of_the_sender_only() -> None:
    # not configured: the id is the sender's own namespace's (it links only that sender's records)
    identifiers = patient_identifiers(MappingContext(received_at=NOW, assigning_authorities={}))
    empi = [i for i in identifiers if i.get("value") == "EMPI-8842-1170"]
    assert len(empi) == 1 and empi[0]["system"] == "urn:carebus:hl7v2:NORTHGATE_HOSP/id/EMPI"
    assert empi[0]["assigner"] == {"display": "EMPI"}
