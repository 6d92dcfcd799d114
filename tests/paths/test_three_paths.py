"""The same patient's answers through the three input paths (a JSON care event, an HL7 v2 ORU, a FHIR
QuestionnaireResponse) give the same scored resources (one builder: services/mapper/instrument_resources.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from services.common.events import parse_event
from services.common.fhir.codesystems import LOINC
from services.mapper.fhir_in import map_fhir_payload
from services.mapper.hl7v2 import map_hl7v2_message
from services.mapper.mapping import map_event, validate_bundle
from services.mapper.result import MappedEvent, MappingContext

CONTEXT = MappingContext(received_at=dt.datetime(2024, 5, 1, 17, 0, tzinfo=dt.UTC))
AUTHORED = "2024-05-01T10:00:00-05:00"
PHQ9 = ["44250-9", "44255-8", "44259-0", "44254-1", "44251-7", "44258-2", "44252-5", "44253-3", "44260-8"]
ANSWERS = {0: ("LA6568-5", "Not at all"), 1: ("LA6569-3", "Several days"), 2: ("LA6570-1", "More than half the days"),
           3: ("LA6571-9", "Nearly every day")}
WEIGHTS = [1, 2, 0, 1, 0, 0, 1, 0, 2]  # item 9 above "Not at all": a safety Flag and alert on every path
REPORTED = 3  # the sender's total disagrees with the items (7): kept and flagged on every path


def json_event(context: MappingContext = CONTEXT) -> MappedEvent:
    event = {
        "specversion": "1.0", "id": "evt-phq9-1", "source": "urn:carebus:source:riverside-primary-care",
        "type": "org.carebus.assessment.completed.v1", "time": AUTHORED,
        "data": {"patient_id": "RPC-1", "assessment_id": "PHQ9-1", "instrument": "phq-9", "authored": AUTHORED,
                 "items": [{"code": code, "answer": ANSWERS[w][0]} for code, w in zip(PHQ9, WEIGHTS, strict=True)],
                 "reported_total": REPORTED},
    }
    return map_event(parse_event(event), context)


def hl7v2_message(context: MappingContext = CONTEXT) -> MappedEvent:
    segments = [
        "MSH|^~\\&|EHR|RIVERSIDE|CAREBUS|CAREBUS|20240501100500-0500||ORU^R01^ORU_R01|PHQ-1|P|2.5.1",
        "PID|1||RPC-1^^^RIVERSIDE^MR||Doe^Jane||19800101|F",
        "OBR|1|PL-1|FI-1|44249-1^PHQ-9 quick depression assessment panel^LN|||20240501100000-0500",
        *(f"OBX|{i}|CWE|{code}^item^LN||{ANSWERS[w][0]}^{ANSWERS[w][1]}^LN||||||F"
          for i, (code, w) in enumerate(zip(PHQ9, WEIGHTS, strict=True), 1)),
        f"OBX|10|NM|44261-6^PHQ-9 total^LN||{REPORTED}|{{score}}|||||F",
    ]
    return map_hl7v2_message("\r".join(segments) + "\r", context)


def fhir_response(context: MappingContext = CONTEXT) -> MappedEvent:
    patient = {"resourceType": "Patient", "id": "p1", "identifier": [{"system": "urn:x:mrn", "value": "RPC-1"}],
               "name": [{"family": "Doe", "given": ["Jane"]}], "gender": "female", "birthDate": "1980-01-01"}
    items = [{"linkId": f"/{code}", "answer": [{"valueCoding": {"system": LOINC, "code": ANSWERS[w][0],
                                                               "display": ANSWERS[w][1]}}]}
             for code, w in zip(PHQ9, WEIGHTS, strict=True)]
    items.append({"linkId": "/44261-6", "answer": [{"valueInteger": REPORTED}]})
    response = {"resourceType": "QuestionnaireResponse", "id": "qr1", "questionnaire": "http://loinc.org/q/44249-1",
                "status": "completed", "subject": {"reference": "Patient/p1"}, "authored": AUTHORED, "item": items}
    bundle = {"resourceType": "Bundle", "type": "transaction", "timestamp": AUTHORED, "entry": [
        {"fullUrl": "urn:uuid:9d3c6a70-0000-4000-8000-000000000001", "resource": patient,
         "request": {"method": "PUT", "url": "Patient/p1"}},
        {"fullUrl": "urn:uuid:9d3c6a70-0000-4000-8000-000000000002", "resource": response,
         "request": {"method": "PUT", "url": "QuestionnaireResponse/qr1"}}]}
    envelope = {"specversion": "1.0", "id": "fhir-phq9-1", "source": "urn:carebus:source:riverside-fhir",
                "type": "org.carebus.fhir.resource.v1", "time": AUTHORED, "data": bundle}
    return map_fhir_payload(envelope, context)


PATHS = {"json": json_event, "hl7v2": hl7v2_message, "fhir": fhir_response}


def _codes(concept: dict[str, Any] | None) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((c.get("system", ""), c.get("code", "")) for c in (concept or {}).get("coding", [])))


def clinical_view(resource: dict[str, Any]) -> tuple[Any, ...]:
    """What a clinician reads in a scored resource: ids, references and profiles left out."""
    value = resource.get("valueQuantity", {}).get("value")
    return (
        resource["resourceType"], resource.get("status"), _codes(resource.get("code")), value,
        _codes(resource.get("valueCodeableConcept")), _codes(resource.get("dataAbsentReason")),
        tuple(i.get("text", "") for i in resource.get("interpretation", [])),
        tuple(n["text"] for n in resource.get("note", [])), len(resource.get("hasMember", [])),
        tuple(sorted(c["code"] for c in resource.get("meta", {}).get("security", []))),
    )


def scored(event: MappedEvent) -> list[tuple[Any, ...]]:
    return sorted(clinical_view(e["resource"]) for e in event.bundle["entry"]
                  if e["resource"]["resourceType"] in ("Observation", "Flag"))


@pytest.fixture(scope="module")
def mapped() -> dict[str, MappedEvent]:
    found = {name: path() for name, path in PATHS.items()}
    for event in found.values():
        validate_bundle(event.bundle)
    return found


def test_the_three_paths_give_the_same_observations_and_flag(mapped: dict[str, MappedEvent]) -> None:
    json_view = scored(mapped["json"])
    assert len(json_view) == 9 + 2 + 1  # items, total and panel, the item-9 Flag
    assert scored(mapped["hl7v2"]) == json_view
    assert scored(mapped["fhir"]) == json_view


def test_the_three_paths_raise_the_same_alert_and_data_quality(mapped: dict[str, MappedEvent]) -> None:
    for event in mapped.values():
        assert [a.kind for a in event.alerts] == ["phq9-item9"]
        assert "reported-total-mismatch" in event.data_quality


def test_json_and_hl7v2_build_the_same_questionnaire_response(mapped: dict[str, MappedEvent]) -> None:
    """(The FHIR path keeps the sender's response as sent: carebus adds its resources beside it.)"""
    def response(event: MappedEvent) -> dict[str, Any]:
        found = [e["resource"] for e in event.bundle["entry"]
                 if e["resource"]["resourceType"] == "QuestionnaireResponse"]
        assert len(found) == 1
        return {k: found[0][k] for k in ("questionnaire", "status", "item", "authored")}
    assert response(mapped["hl7v2"]) == response(mapped["json"])


# --- the envelope: one Bundle + Provenance shape whatever the path (services/mapper/assembly.py) ------------

def envelope_view(event: MappedEvent) -> dict[str, Any]:
    """The envelope with what legitimately differs between paths (ids, the source, path-specific agents and
    entities) replaced by what it must be."""
    bundle = event.bundle
    entries = [entry["resource"] for entry in bundle["entry"]]
    provenance = entries[-1]
    others = entries[:-1]
    union = {c["code"] for c in bundle.get("meta", {}).get("security", [])}
    agents = [a["type"]["coding"][0]["code"] for a in provenance["agent"]]
    source_entity = provenance["entity"][0]
    return {
        "bundle keys": sorted(bundle),
        "type": bundle["type"],
        "identifier is the inbound event": source_entity["what"]["identifier"] == bundle["identifier"],
        "timestamp is Provenance.recorded": bundle["timestamp"] == provenance["recorded"],
        "full urls": all(e["fullUrl"] == f"urn:uuid:{e['resource']['id']}" for e in bundle["entry"]),
        "provenance last": provenance["resourceType"] == "Provenance",
        "provenance profile": provenance["meta"]["profile"],
        "targets every other entry": [t["reference"] for t in provenance["target"]]
        == [f"{r['resourceType']}/{r['id']}" for r in others],
        "first agent": agents[0], "last agent": agents[-1],
        "author named by identifier": "identifier" in provenance["agent"][0]["who"],
        "provenance labels = bundle labels": {c["code"] for c in provenance["meta"].get("security", [])} == union,
        "bundle labels = union of entries'": union == {c["code"] for r in others
                                                      for c in r.get("meta", {}).get("security", [])},
        "labels": sorted(event.security_labels) == sorted(union),
        "counts": event.resource_counts == {t: sum(r["resourceType"] == t for r in entries)
                                           for t in {r["resourceType"] for r in entries}},
    }


def test_the_three_paths_assemble_the_same_envelope(mapped: dict[str, MappedEvent]) -> None:
    views = {name: envelope_view(event) for name, event in mapped.items()}
    assert views["json"] == {
        "bundle keys": ["entry", "id", "identifier", "meta", "resourceType", "timestamp", "type"],
        "type": "collection",
        "identifier is the inbound event": True, "timestamp is Provenance.recorded": True, "full urls": True,
        "provenance last": True,
        "provenance profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-provenance"],
        "targets every other entry": True, "first agent": "author", "last agent": "assembler",
        "author named by identifier": True, "provenance labels = bundle labels": True,
        "bundle labels = union of entries'": True, "labels": True, "counts": True,
    }
    assert views["hl7v2"] == views["json"]
    assert views["fhir"] == views["json"]


def test_bundle_timestamp_means_when_the_source_recorded_it_on_every_path(mapped: dict[str, MappedEvent]) -> None:
    """Not carebus's receipt (CONTEXT.received_at is 17:00Z): the CloudEvent time, MSH-7, the FHIR Bundle's."""
    stamps = {name: dt.datetime.fromisoformat(event.bundle["timestamp"]) for name, event in mapped.items()}
    assert stamps["json"] == stamps["fhir"] == dt.datetime.fromisoformat(AUTHORED)
    assert stamps["hl7v2"] == dt.datetime.fromisoformat("2024-05-01T10:05:00-05:00")  # MSH-7


def test_a_part2_source_labels_every_envelope_part2() -> None:
    sources = frozenset({"urn:carebus:source:riverside-primary-care", "RIVERSIDE",
                         "urn:carebus:source:riverside-fhir"})
    context = MappingContext(received_at=CONTEXT.received_at, part2_sources=sources)
    for path in PATHS.values():
        event = path(context)
        assert {"42CFRPart2", "NORDSCLCD"} <= set(event.security_labels)
        for entry in event.bundle["entry"]:  # the Patient too: being a Part 2 program's patient is SUD information
            assert "42CFRPart2" in {c["code"] for c in entry["resource"]["meta"]["security"]}
