"""FHIR in: resources and Bundles from FHIR-speaking systems become labelled carebus bundles."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from services.common.errors import MappingError, RefusedContent
from services.common.fhir_ids import resource_id
from services.common.kafka import RecordProducer
from services.common.metrics import Metrics
from services.common.runtime import prepare_topics
from services.common.settings import Settings
from services.common.topics import FHIR_BUNDLES
from services.intake.app import create_app
from services.mapper.fhir_in import map_fhir_payload
from services.mapper.mapping import validate_bundle
from services.mapper.result import MappingContext
from tests.integration.test_pipeline import mapper, run_until
from tests.kafka_helpers import header, read_all
from tests.senders import TEST_INTAKE_HEADERS

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "fhir"
SOURCE = "urn:carebus:source:lakeside-therapy-fhir"
CONTEXT = MappingContext(received_at=datetime(2026, 1, 5, 12, 0, tzinfo=UTC))


def envelope(data: dict[str, Any], event_id: str = "fhir-evt-1", source: str = SOURCE) -> dict[str, Any]:
    return {"specversion": "1.0", "id": event_id, "source": source, "type": "org.carebus.fhir.resource.v1",
            "time": "2026-01-05T12:00:00Z", "data": copy.deepcopy(data)}


def by_type(bundle: dict[str, Any], resource_type: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == resource_type]


def sample(name: str) -> dict[str, Any]:
    return json.loads((SAMPLES / name).read_text())


def substance_use_transaction() -> dict[str, Any]:
    return {
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:5b0c3b3e-0000-4000-8000-000000000001",
             "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:lakeside:client", "value": "C-77"}],
                          "name": [{"family": "Testperson", "given": ["Alex"]}], "birthDate": "1990-04-02"},
             "request": {"method": "POST", "url": "Patient"}},
            {"fullUrl": "urn:uuid:5b0c3b3e-0000-4000-8000-000000000002",
             "resource": {"resourceType": "Condition",
                          "clinicalStatus": {"coding": [{
                              "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                              "code": "active"}]},
                          "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "F11.20",
                                               "display": "Opioid dependence, uncomplicated"}]},
                          "subject": {"reference": "urn:uuid:5b0c3b3e-0000-4000-8000-000000000001"}},
             "request": {"method": "POST", "url": "Condition"}},
            {"fullUrl": "urn:uuid:5b0c3b3e-0000-4000-8000-000000000003",
             "resource": {"resourceType": "Condition",
                          "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "F41.1"}]},
                          "subject": {"reference": "urn:uuid:5b0c3b3e-0000-4000-8000-000000000001"}},
             "request": {"method": "POST", "url": "Condition"}},
        ],
    }


def test_transaction_bundle_gets_source_keyed_ids_rewritten_references_and_labels() -> None:
    mapped = map_fhir_payload(envelope(substance_use_transaction()), CONTEXT)
    validate_bundle(mapped.bundle)
    bundle = mapped.bundle
    assert bundle["type"] == "collection"
    (patient,) = by_type(bundle, "Patient")
    oud, anxiety = by_type(bundle, "Condition")
    assert patient["id"] == resource_id("Patient", SOURCE, "urn:uuid:5b0c3b3e-0000-4000-8000-000000000001")
    assert oud["subject"]["reference"] == anxiety["subject"]["reference"] == f"Patient/{patient['id']}"
    assert "meta" not in patient or not patient["meta"].get("security")  # demographics: ordinary PHI
    assert [c["code"] for c in oud["meta"]["security"]] == ["R", "42CFRPart2", "NORDSCLCD", "SUD"]
    assert [c["code"] for c in anxiety["meta"]["security"]] == ["R", "PSY"]
    assert set(mapped.security_labels) == {"R", "42CFRPart2", "NORDSCLCD", "SUD", "PSY"}
    (provenance,) = by_type(bundle, "Provenance")
    assert {t["reference"] for t in provenance["target"]} == {
        f"{r['resourceType']}/{r['id']}" for r in (patient, oud, anxiety)}
    # the same payload again (a resend) converges on the same resources
    assert map_fhir_payload(envelope(substance_use_transaction()), CONTEXT).bundle == bundle


def test_part2_source_labels_everything_including_the_patient() -> None:
    context = MappingContext(received_at=CONTEXT.received_at, part2_sources=frozenset({SOURCE}))
    mapped = map_fhir_payload(envelope(substance_use_transaction()), context)
    for entry in mapped.bundle["entry"]:
        assert "42CFRPart2" in {c["code"] for c in entry["resource"]["meta"]["security"]}


def test_us_core_phq9_questionnaire_response_is_scored_like_an_assessment_event() -> None:
    response = sample("QuestionnaireResponse-phq-9-example.json")
    mapped = map_fhir_payload(envelope(response, "fhir-phq9"), CONTEXT)
    validate_bundle(mapped.bundle)
    observations = by_type(mapped.bundle, "Observation")
    total = [o for o in observations if o["code"]["coding"][0]["code"] == "44261-6"]
    assert len(total) == 1
    published = next(i for i in response["item"] if i["linkId"].endswith("44261-6"))
    published_total = published["answer"][0]
    reported = published_total.get("valueDecimal", published_total.get("valueInteger"))
    assert total[0]["valueQuantity"]["value"] == reported
    assert mapped.security_labels == ("R", "PSY")
    # the subject keeps the sender's patient, under carebus's id for (source, patient id)
    assert total[0]["subject"]["reference"] == f"Patient/{resource_id('Patient', SOURCE, 'example')}"


def test_phq9_response_with_positive_item_9_raises_a_flag_and_an_alert() -> None:
    response = sample("QuestionnaireResponse-phq-9-example.json")
    item9 = next(i for i in response["item"] if i["linkId"].endswith("44260-8"))
    item9["answer"] = [{"valueCoding": {"system": "http://loinc.org", "code": "LA6569-3",
                                        "display": "Several days"}}]
    mapped = map_fhir_payload(envelope(response, "fhir-item9"), CONTEXT)
    validate_bundle(mapped.bundle)
    assert [a.kind for a in mapped.alerts] == ["phq9-item9"]
    assert mapped.alerts[0].event_id == "fhir-item9"  # the event received, not one made up for the response
    assert len(by_type(mapped.bundle, "Flag")) == 1
    assert "reported-total-mismatch" in mapped.data_quality  # the published total no longer adds up


def test_sdc_example_is_not_r4_and_is_refused_with_the_element_named() -> None:
    # The SDC IG's PHQ-9 response carries QuestionnaireResponse.url, which R4 does not have.
    with pytest.raises(MappingError) as invalid:
        map_fhir_payload(envelope(sample("questionnaireresponse-sdc-example-PHQ9.json")), CONTEXT)
    assert [p.location for p in invalid.value.problems] == ["resource.url"]


def test_psychotherapy_notes_are_refused_and_invalid_resources_name_the_element() -> None:
    note = sample("DocumentReference-mental-health-progress-example-1.json")
    note["meta"] = {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                  "code": "PSYTHPN"}]}
    with pytest.raises(RefusedContent) as refused:
        map_fhir_payload(envelope(note), CONTEXT)
    assert refused.value.problems[0].rule == "psychotherapy-note-refused"

    broken = {"resourceType": "Condition", "subject": {"reference": "Patient/1"}, "onsetDateTime": "yesterday"}
    with pytest.raises(MappingError) as invalid:
        map_fhir_payload(envelope(broken), CONTEXT)
    assert any("onsetDateTime" in p.location for p in invalid.value.problems)
    assert all("yesterday" not in p.message for p in invalid.value.problems)  # no input values echoed


@pytest.mark.integration
async def test_fhir_endpoint_through_the_broker(settings: Settings) -> None:
    prepare_topics(settings)
    producer = RecordProducer(settings, "test-fhir-intake")
    app = create_app(settings, producer, Metrics(), lambda: (True, "ok"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://intake",
                                 headers=TEST_INTAKE_HEADERS) as client:
        body = orjson.dumps(substance_use_transaction())
        headers = {"content-type": "application/fhir+json", "x-carebus-source": SOURCE}
        accepted = await client.post("/fhir", content=body, headers=headers)
        assert accepted.status_code == 202, accepted.text
        assert accepted.json()["resourceType"] == "OperationOutcome"

        missing_source = await client.post("/fhir", content=body, headers={"content-type": "application/fhir+json"})
        assert missing_source.status_code == 400
        bad = await client.post("/fhir", content=b'{"resourceType": "Condition", "onsetDateTime": "yesterday"}',
                                headers=headers)
        assert bad.status_code == 422
        outcome = bad.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert any("onsetDateTime" in e for issue in outcome["issue"] for e in issue.get("expression", []))
    producer.close()

    service = mapper(settings)
    run_until(service, 1)
    service.close()
    bundles = read_all(settings, FHIR_BUNDLES.name(settings.topic_prefix), until=lambda rs: len(rs) >= 1)
    assert len(bundles) == 1
    assert "42CFRPart2" in (header(bundles[0], "carebus_security") or "")
    assert len(by_type(orjson.loads(bundles[0].value), "Condition")) == 2
