"""The FHIR REST interactions through the real broker and both stores: CapabilityStatement, read, vread,
_history (instance and type), versioning from Kafka timestamps, deletion (410), errors as OperationOutcome."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from services.common.kafka import OutboundRecord
from services.common.topics import DEAD_LETTERS, FHIR_BUNDLES, HEADER_EVENT_ID
from services.record.fhirdates import format_instant
from services.record.indexing import SEARCH_PARAMETERS
from tests.record.conftest import RecordHarness
from tests.record.fhir_data import CLINIC, HOSPITAL, Event, body_weight, patient, patient_id, phq9_total, unique

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


def test_capability_statement_tells_the_truth(record: RecordHarness) -> None:
    mrn = unique("cap-")
    pid = patient_id(CLINIC, mrn)
    record.publish(Event(CLINIC, mrn, [patient(CLINIC, mrn), body_weight(CLINIC, pid, mrn, "2024-05-01", 70)]))
    statement = record.fhir("/metadata", token=None)  # public, as FHIR expects
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"] == "4.0.1"
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
    for rtype, params in SEARCH_PARAMETERS.items():
        advertised = {p["name"] for p in resources[rtype]["searchParam"]}
        assert {p.name for p in params} | {"_id", "_lastUpdated"} == advertised
        assert {i["code"] for i in resources[rtype]["interaction"]} == {
            "read", "vread", "history-instance", "history-type", "search-type",
            *(["update"] if rtype == "Task" else [])}
    assert [op["name"] for op in resources["Patient"]["operation"]] == ["everything", "disclosures"]
    # every advertised parameter is accepted; an unadvertised one is refused
    for rtype, entry in resources.items():
        for param in entry["searchParam"]:
            value = {"token": "x", "string": "x", "date": "2024", "reference": "Patient/x",
                     "uri": "https://example.org/x"}[param["type"]]
            record.fhir(f"/{rtype}", params={param["name"]: value},
                        token="privacy" if rtype == "AuditEvent" else "full")
    problem = record.fhir("/Observation", params={"subject:Group": "x"}, status=400)
    assert problem["resourceType"] == "OperationOutcome"


def test_read_vread_history_and_unchanged_content(record: RecordHarness) -> None:
    mrn = unique("ver-")
    pid = patient_id(HOSPITAL, mrn)
    [first] = record.publish(Event(HOSPITAL, mrn, [patient(HOSPITAL, mrn)]))
    [second] = record.publish(Event(HOSPITAL, mrn, [patient(HOSPITAL, mrn, phone="555-0100")]))
    # the same content again, from another event: no new version
    [third] = record.publish(Event(HOSPITAL, mrn, [patient(HOSPITAL, mrn, phone="555-0100")]))

    response = record.get(f"/Patient/{pid}")
    assert response.status_code == 200
    assert response.headers["etag"] == 'W/"2"'
    current = orjson.loads(response.content)
    assert current["meta"]["versionId"] == "2"
    assert current["meta"]["lastUpdated"] == format_instant(max(first.timestamp, second.timestamp))
    assert current["telecom"][0]["value"] == "555-0100"
    assert third.timestamp >= second.timestamp  # ... and yet lastUpdated stayed at the second record's time

    v1 = record.fhir(f"/Patient/{pid}/_history/1")
    assert v1["meta"] == {**v1["meta"], "versionId": "1", "lastUpdated": format_instant(first.timestamp)}
    assert "telecom" not in v1
    record.fhir(f"/Patient/{pid}/_history/3", status=404)

    history = record.fhir(f"/Patient/{pid}/_history")
    assert history["type"] == "history"
    assert history["total"] == 2
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]
    assert [e["request"]["method"] for e in history["entry"]] == ["PUT", "POST"]
    assert history["entry"][0]["response"]["etag"] == 'W/"2"'

    type_history = record.search_all("/Patient/_history", params={"_count": 50,
                                                                  "_since": format_instant(first.timestamp)})
    mine = [r["meta"]["versionId"] for r in type_history if r["id"] == pid]
    assert mine == ["2", "1"]


def test_deleted_resource_is_gone(record: RecordHarness) -> None:
    mrn = unique("del-")
    pid = patient_id(CLINIC, mrn)
    weight = body_weight(CLINIC, pid, mrn, "2024-05-01T10:00:00Z", 80.2)
    record.publish(Event(CLINIC, mrn, [patient(CLINIC, mrn), weight]))
    record.publish(Event(CLINIC, mrn, [], deletions=[f"Observation/{weight['id']}"]))

    gone = record.fhir(f"/Observation/{weight['id']}", status=410)
    assert gone["issue"][0]["code"] == "deleted"
    assert record.fhir(f"/Observation/{weight['id']}/_history/1")["valueQuantity"]["value"] == 80.2
    record.fhir(f"/Observation/{weight['id']}/_history/2", status=410)
    history = record.fhir(f"/Observation/{weight['id']}/_history")
    assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "POST"]
    assert "resource" not in history["entry"][0]
    assert record.fhir("/Observation", params={"patient": pid})["total"] == 0
    # a deletion replayed (or repeated) changes nothing; a re-creation is a new version
    record.publish(Event(CLINIC, mrn, [], deletions=[f"Observation/{weight['id']}"]))
    record.publish(Event(CLINIC, mrn, [weight]))
    assert record.fhir(f"/Observation/{weight['id']}")["meta"]["versionId"] == "3"


def test_errors_are_operation_outcomes(record: RecordHarness) -> None:
    cases = [
        ("/Patient/does-not-exist", "full", 404, "not-found"),
        ("/NotAType/x", "full", 404, "not-found"),
        ("/Observation?bogus=1", "full", 400, "not-supported"),
        ("/Observation?date=2024-13-45", "full", 400, "invalid"),
        ("/Observation?date=ap2024", "full", 400, "not-supported"),
        ("/Observation?_count=many", "full", 400, "invalid"),
        ("/Observation?_sort=code", "full", 400, "not-supported"),
        ("/Observation", None, 401, "login"),
        ("/Observation", "nobody-knows-me", 401, "login"),
        ("/Condition", "obs", 403, "forbidden"),
        ("/Patient/x/$everything", "obs", 403, "forbidden"),
        ("/Observation?_format=xml", "full", 406, "not-supported"),
    ]
    for path, token, status, code in cases:
        response = record.get(path, token=token)
        assert response.status_code == status, (path, response.text)
        assert response.headers["content-type"].startswith("application/fhir+json")
        outcome = orjson.loads(response.content)
        assert outcome["resourceType"] == "OperationOutcome"
        assert outcome["issue"][0]["code"] == code, path
    assert record.get("/Observation", token=None).headers["www-authenticate"].startswith("Bearer")
    # lenient handling ignores what it does not know
    lenient = record.fhir("/Observation", params={"bogus": "1", "_count": "1"},
                          headers={"Prefer": "handling=lenient"})
    assert all("bogus" not in link["url"] for link in lenient["link"])


def test_bad_bundle_is_dead_lettered_and_ingest_carries_on(record: RecordHarness) -> None:
    from services.common.kafka import build_consumer

    topic = FHIR_BUNDLES.name(record.settings.topic_prefix)
    bad = OutboundRecord(topic, "src|bad", b'{"resourceType": "Patient", "id": "not-a-bundle"}',
                         {HEADER_EVENT_ID: "bad-event"})
    mrn = unique("after-bad-")
    good = Event(CLINIC, mrn, [patient(CLINIC, mrn)]).record(record.settings.topic_prefix)
    record.publish_raw([bad, good])
    assert record.get(f"/Patient/{patient_id(CLINIC, mrn)}").status_code == 200

    consumer = build_consumer(record.settings, "test-dlq", f"dlq-{unique()}",
                              [DEAD_LETTERS.name(record.settings.topic_prefix)])
    letters: list[dict[str, Any]] = []
    try:
        for _ in range(40):
            for batch in consumer.poll(timeout_ms=500).values():
                letters.extend(orjson.loads(r.value) for r in batch)
            if any(letter["event_id"] == "bad-event" for letter in letters):
                break
    finally:
        consumer.close()
    letter = next(letter for letter in letters if letter["event_id"] == "bad-event")
    assert letter["reason"] == "bad-bundle"
    assert letter["stage"] == "record"
    assert letter["source"]["topic"] == topic


def test_operational_routes_and_metrics(record: RecordHarness) -> None:
    assert record.client.get("/healthz").status_code == 200
    ready = record.client.get("/readyz")
    assert ready.status_code == 200, ready.text
    mrn = unique("met-")
    pid = patient_id(CLINIC, mrn)
    record.publish(Event(CLINIC, mrn, [patient(CLINIC, mrn), phq9_total(CLINIC, pid, mrn, "2024-06-01", 3)]))
    record.get(f"/Patient/{pid}")
    metrics = record.client.get("/metrics").text
    assert 'carebus_record_api_requests_total{route="/{resource_type}/{resource_id}",status="200"}' in metrics
    assert pid not in metrics  # ids never become label values
    assert "carebus_record_versions_written_total" in metrics
