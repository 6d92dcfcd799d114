# ruff: noqa: S106 -- token= names a test fixture's token label, not a secret
"""FHIR-in references through the record (issue 10, item 5): two posts of one X-Carebus-Source naming the
patient in four ways (fullUrl, ``Patient/p1``, an absolute URL, a versioned reference, and in the later post
without the Patient) all end under one patient, so ``$everything`` finds every resource."""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from services.common.fhir_ids import resource_id
from services.common.topics import FHIR_RESOURCE_EVENT_TYPE, HEADER_EVENT_ID, HEADER_EVENT_TYPE
from services.mapper.pipeline import InboundRecord, Pipeline, TopicNames
from tests.fhir_in.test_fidelity import mixed_post
from tests.record.conftest import RecordHarness


def mapped_records(record: RecordHarness, source: str, event_id: str, payload: dict[str, Any]) -> list[Any]:
    envelope = {"specversion": "1.0", "id": event_id, "source": source, "type": FHIR_RESOURCE_EVENT_TYPE,
                "time": "2026-01-05T12:00:00Z", "datacontenttype": "application/fhir+json", "data": payload}
    inbound = InboundRecord(topic="inbound", partition=0, offset=0, timestamp_ms=1_767_614_400_000,
                            key=f"{source}|p1".encode(), value=orjson.dumps(envelope),
                            headers=((HEADER_EVENT_ID, event_id.encode()),
                                     (HEADER_EVENT_TYPE, FHIR_RESOURCE_EVENT_TYPE.encode())))
    outcome = Pipeline(TopicNames.for_prefix(record.settings.topic_prefix)).process(inbound)
    assert outcome.dead_letter_reason is None
    return [r for r in outcome.records if r.topic == TopicNames.for_prefix(record.settings.topic_prefix).bundles]


def test_everything_finds_every_resource_of_both_posts(record: RecordHarness) -> None:
    source = f"urn:carebus:source:fhir-{uuid.uuid4().hex[:8]}"
    first = mapped_records(record, source, "post-1", mixed_post())
    later = {"resourceType": "MedicationRequest", "id": "mr-9", "status": "active", "intent": "order",
             "medicationCodeableConcept": {"text": "sertraline 50 mg tablet"},
             "subject": {"reference": "https://ehr.example.org/fhir/Patient/p1"}}
    second = mapped_records(record, source, "post-2", later)
    record.publish_raw([*first, *second])

    posted = [e["resource"] for r in (*first, *second) for e in orjson.loads(r.value)["entry"]
              if e["resource"]["resourceType"] != "Provenance"]
    patient = resource_id("Patient", source, "p1")
    everything = record.search_all(f"/Patient/{patient}/$everything", token="full", params={"_count": 200})
    found = {(r["resourceType"], r["id"]) for r in everything}
    missing = {(r["resourceType"], r["id"]) for r in posted} - found
    assert not missing, missing
    assert ("MedicationRequest", resource_id("MedicationRequest", source, "mr-9")) in found
