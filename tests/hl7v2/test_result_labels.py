"""Results are labelled by the source's configured kind and by LOINC class, on every path (issue 10, item 7's
second half): a routine-outcome-monitoring sender's ORU of a questionnaire with local codes gets PSY when the
sender is configured psychiatric (CAREBUS_PSYCHIATRIC_SOURCES); a behavioural-health survey code (PCL-5, EPDS,
the scored instruments' items) gets PSY whoever sends it. One rule (labels.source_labels, labels.lab_labels)."""

from __future__ import annotations

from typing import Any

from services.common.events import parse_event
from services.mapper.fhir_in import map_fhir_payload
from services.mapper.hl7v2 import map_hl7v2_message
from services.mapper.mapping import map_event, validate_bundle
from services.mapper.result import MappedEvent, MappingContext
from tests.fhir_in.test_fhir_in import SOURCE as FHIR_SOURCE
from tests.fhir_in.test_fhir_in import envelope
from tests.hl7v2.helpers import PID, RECEIVED_AT, er7, msh
from tests.mapping.helpers import example

ROM = "urn:carebus:hl7v2:ROMSYS"
PSY = {"R", "PSY"}


def oru_of_local_codes() -> str:
    """An outcome-monitoring system's ORU: ORS/SRS session scores, local codes only (^L)."""
    return er7(msh("ORU^R01^ORU_R01", control_id="ROM-1", facility="ROMSYS"), PID,
               "OBR|1||ROM-778|ORS^Outcome Rating Scale^L|||20240501",
               "OBX|1|NM|ORS-TOTAL^ORS total^L||27.4||||||F",
               "OBX|2|NM|SRS-TOTAL^SRS total^L||36||||||F")


def security(resource: dict[str, Any]) -> set[str]:
    return {c["code"] for c in (resource.get("meta") or {}).get("security") or []}


def by_type(event: MappedEvent) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for entry in event.bundle["entry"]:
        out.setdefault(entry["resource"]["resourceType"], []).append(entry["resource"])
    return out


def v2(text: str, **context: Any) -> MappedEvent:
    event = map_hl7v2_message(text, MappingContext(received_at=RECEIVED_AT, **context))
    validate_bundle(event.bundle)
    return event


def test_an_outcome_monitoring_orus_results_are_psy_when_the_sender_is_configured_psychiatric() -> None:
    unconfigured = by_type(v2(oru_of_local_codes()))
    assert not any(security(r) for r in (*unconfigured["Observation"], *unconfigured["DiagnosticReport"]))

    for name in (ROM, "ROMSYS"):  # the source URI or the facility, as for CAREBUS_PART2_SOURCES
        event = v2(oru_of_local_codes(), psychiatric_sources=frozenset({name}))
        resources = by_type(event)
        assert len(resources["Observation"]) == 2
        for resource in (*resources["Observation"], *resources["DiagnosticReport"], *resources["Provenance"]):
            assert security(resource) == PSY, resource["resourceType"]
        assert not security(resources["Patient"][0])  # demographics stay ordinary PHI
        assert set(event.security_labels) == PSY


def test_behavioural_health_survey_codes_are_psy_whoever_sends_them() -> None:
    text = er7(msh("ORU^R01^ORU_R01", control_id="PCL-1"), PID,
               "OBR|1||PCL-9|101697-1^PCL-5 panel^LN|||20240501",
               "OBX|1|NM|101698-9^PCL-5 total score^LN||44||||||F",
               "OBX|2|NM|2345-7^Glucose^LN||95|mg/dL|||||F")
    resources = by_type(v2(text))
    pcl, glucose = resources["Observation"]
    assert security(pcl) == PSY and not security(glucose)
    assert security(resources["DiagnosticReport"][0]) == PSY


def test_the_json_and_fhir_paths_apply_the_same_rules() -> None:
    event = example("lab.resulted")
    event["data"]["code"] = {"system": "http://loinc.org", "code": "99046-5", "display": "EPDS total"}
    lab = map_event(parse_event(event), MappingContext(received_at=RECEIVED_AT))
    assert security(next(r for r in by_type(lab)["Observation"])) == PSY

    glucose = example("lab.resulted")
    glucose["data"]["code"] = {"system": "http://loinc.org", "code": "2345-7", "display": "Glucose"}
    plain = map_event(parse_event(glucose), MappingContext(received_at=RECEIVED_AT))
    assert not security(by_type(plain)["Observation"][0])
    configured = map_event(parse_event(glucose), MappingContext(
        received_at=RECEIVED_AT, psychiatric_sources=frozenset({glucose["source"]})))
    assert security(by_type(configured)["Observation"][0]) == PSY

    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Patient", "id": "p-1"}},
        {"resource": {"resourceType": "Observation", "id": "o-1", "status": "final",
                      "code": {"coding": [{"system": "urn:rom:local", "code": "ORS"}]},
                      "subject": {"reference": "Patient/p-1"}, "valueInteger": 27}}]}
    fhir = by_type(map_fhir_payload(envelope(bundle), MappingContext(
        received_at=RECEIVED_AT, psychiatric_sources=frozenset({FHIR_SOURCE}))))
    assert security(fhir["Observation"][0]) == PSY and not security(fhir["Patient"][0])
