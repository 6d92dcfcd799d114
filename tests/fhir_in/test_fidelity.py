"""FHIR in keeps what the sender said and scores what it recognises (issue 10, items 3-5).

* item 3: a scored instrument is recognised from its item codes, its linkIds or its questionnaire canonical
  (the SDC PHQ-9 with the form's own linkIds Q1..Q9, the US Core PHQ-9 with codes in item.code); scored, PSY,
  item 9 > 0 raises the Flag and the alert; known but unscoreable -> a dead letter with the rule.
* item 4: the sender's QuestionnaireResponse is kept as sent (only id and references re-keyed); carebus's
  results are its own Observations / Flag, derivedFrom the sender's response.
* item 5: every reference of a post is re-keyed by one rule, and so are references to what the same source
  sent before."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from services.common.errors import UnscoreableResponse
from services.common.fhir_ids import resource_id
from services.common.fhir_payload import Rekeying
from services.mapper.fhir_in import map_fhir_payload
from services.mapper.mapping import validate_bundle
from services.mapper.result import MappedEvent
from tests.fhir_in.test_fhir_in import CONTEXT, SOURCE, by_type, envelope, sample

LOINC = "http://loinc.org"
PHQ9_ITEMS = ["44250-9", "44255-8", "44259-0", "44254-1", "44251-7", "44258-2", "44252-5", "44253-3", "44260-8"]


def sdc_phq9() -> dict[str, Any]:
    """The SDC IG's PHQ-9 response made R4: it carries QuestionnaireResponse.url (an R5 element), and its
    questionnaire canonical is relative (``Questionnaire/sdc-profile-example-PHQ9``; R4 canonicals are
    absolute): dropped / made absolute under the SDC IG's base, nothing else changed. The form's own linkIds
    (H1/T1/Q1..Q9, total H1/TS), answers coded by their text, no LOINC."""
    response = sample("questionnaireresponse-sdc-example-PHQ9.json")
    del response["url"]
    response["questionnaire"] = "http://hl7.org/fhir/uv/sdc/" + response["questionnaire"]
    return response


def mapped(resource: dict[str, Any], event_id: str = "fhir-evt") -> MappedEvent:
    result = map_fhir_payload(envelope(resource, event_id), CONTEXT)
    validate_bundle(result.bundle)
    return result


def codes(resource: dict[str, Any]) -> list[str]:
    return [c["code"] for c in (resource.get("meta") or {}).get("security") or []]


def total_of(result: MappedEvent, total_code: str = "44261-6") -> dict[str, Any]:
    (total,) = [o for o in by_type(result.bundle, "Observation") if o["code"]["coding"][0]["code"] == total_code]
    return total


def references(value: Any) -> list[str]:
    if isinstance(value, dict):
        found = [value["reference"]] if isinstance(value.get("reference"), str) else []
        return found + [r for k, v in value.items() if k != "reference" for r in references(v)]
    if isinstance(value, list):
        return [r for item in value for r in references(item)]
    return []


# --- item 3 ----------------------------------------------------------------------------------------------


def test_sdc_phq9_with_the_forms_own_link_ids_is_scored_flagged_and_labelled() -> None:
    result = mapped(sdc_phq9())
    total = total_of(result)
    assert total["valueQuantity"]["value"] == 11  # 1+0+0+1+2+1+3+2+1, from the items
    assert "reported-total-mismatch" in result.data_quality  # the sender's H1/TS says 13: surfaced, kept
    assert [a.kind for a in result.alerts] == ["phq9-item9"]  # item 9 "Several days"
    (flag,) = by_type(result.bundle, "Flag")
    assert flag["code"]["coding"][0]["code"] == "225444004"
    (response,) = by_type(result.bundle, "QuestionnaireResponse")
    assert codes(response) == ["R", "PSY"]
    assert set(result.security_labels) >= {"R", "PSY"}
    # the sender's absolute subject names patient "proband" of this source
    patient = f"Patient/{resource_id('Patient', SOURCE, 'proband')}"
    assert response["subject"]["reference"] == total["subject"]["reference"] == patient


def gad7_response(*answers: str) -> dict[str, Any]:
    """A response to the MII GAD-7 Questionnaire (tests/samples/fhir): the form's own linkIds phq-gad7-q0N."""
    return {"resourceType": "QuestionnaireResponse", "id": "gad7-1", "status": "completed",
            "questionnaire": "https://www.medizininformatik-initiative.de/fhir/ext/modul-pro/Questionnaire/"
                             "mii-qst-pro-gad-7",
            "subject": {"reference": "Patient/p-1"}, "authored": "2026-01-04T10:00:00Z",
            "item": [*({"linkId": f"phq-gad7-q0{n}", "answer": [{"valueCoding": {"system": LOINC, "code": code}}]}
                       for n, code in enumerate(answers, start=1)),
                     {"linkId": "phq-gad7-score-total", "answer": [{"valueDecimal": 9}]},
                     {"linkId": "phq-gad7-promis-tscore", "answer": [{"valueDecimal": 55.1}]}]}


def test_item_codes_of_the_questionnaire_sent_with_the_response_are_used() -> None:
    answers = ("LA6569-3", "LA6570-1", "LA6571-9", "LA6568-5", "LA6569-3", "LA6570-1", "LA6568-5")  # 9
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": sample("Questionnaire-mii-qst-pro-gad-7.json")}, {"resource": gad7_response(*answers)}]}
    result = mapped(bundle)
    total = total_of(result, "70274-6")
    assert total["valueQuantity"]["value"] == 9
    assert "reported-total-mismatch" not in result.data_quality
    assert {o["code"]["coding"][0]["code"] for o in by_type(result.bundle, "Observation")} >= {"69725-0", "69736-7"}
    (response,) = by_type(result.bundle, "QuestionnaireResponse")
    assert codes(response) == ["R", "PSY"]
    # without the Questionnaire, the canonical names GAD-7 and the linkIds number its items: the same score
    alone = mapped(gad7_response(*answers))
    assert total_of(alone, "70274-6")["valueQuantity"]["value"] == 9


def test_loinc_item_definitions_with_the_forms_own_link_ids_are_recognised() -> None:
    response = sample("QuestionnaireResponse-phq-9-example.json")
    del response["questionnaire"]
    for number, item in enumerate(response["item"], start=1):
        item["definition"] = f"http://loinc.org/{item['linkId'].lstrip('/')}"
        item["linkId"] = f"question-{chr(96 + number)}"
    nine = next(i for i in response["item"] if i["definition"].endswith("44260-8"))
    nine["answer"] = [{"valueCoding": {"system": LOINC, "code": "LA6569-3", "display": "Several days"}}]
    result = mapped(response)
    assert total_of(result)["valueQuantity"]["value"] == 13
    assert [a.kind for a in result.alerts] == ["phq9-item9"]
    assert len(by_type(result.bundle, "Flag")) == 1
    assert "reported-total-mismatch" in result.data_quality  # the published 12 no longer adds up


def test_the_questionnaire_canonical_alone_names_the_instrument() -> None:
    response = sample("QuestionnaireResponse-phq-9-example.json")
    for number, item in enumerate(response["item"], start=1):  # items 1-9, the total, the difficulty item
        item["linkId"] = {"/44261-6": "total", "/69722-7": "q10"}.get(item["linkId"], f"q{number}")
    result = mapped(response)
    assert total_of(result)["valueQuantity"]["value"] == 12
    assert "reported-total-mismatch" not in result.data_quality


def test_a_known_instrument_that_cannot_be_scored_is_dead_lettered_with_the_rule() -> None:
    response = sample("QuestionnaireResponse-phq-9-example.json")
    for item in response["item"]:
        item["linkId"] = f"mood-{item['linkId'].strip('/').replace('-', '')}x"  # opaque ids, no numbers at the end
    with pytest.raises(UnscoreableResponse) as unscoreable:
        map_fhir_payload(envelope(response), CONTEXT)
    assert unscoreable.value.reason == "instrument-response-unscoreable"
    assert unscoreable.value.problems[0].rule == "no-scorable-items"

    response = sdc_phq9()
    response["item"][8]["answer"] = [{"valueCoding": {"code": "often"}}]  # H1/T1/Q9
    with pytest.raises(UnscoreableResponse) as bad_answer:
        map_fhir_payload(envelope(response), CONTEXT)
    assert bad_answer.value.problems[0].rule == "answer-not-in-list"
    assert "often" not in bad_answer.value.problems[0].message  # no answer values echoed

    response = sdc_phq9()
    response["subject"] = {"display": "someone"}
    with pytest.raises(UnscoreableResponse):
        map_fhir_payload(envelope(response), CONTEXT)


def test_a_questionnaire_response_of_no_instrument_passes_through_unscored() -> None:
    response = {"resourceType": "QuestionnaireResponse", "id": "intake-form", "status": "completed",
                "questionnaire": "http://example.org/Questionnaire/new-client-intake",
                "subject": {"reference": "Patient/p-1"},
                "item": [{"linkId": "1", "text": "Preferred name", "answer": [{"valueString": "Al"}]}]}
    result = mapped(response)
    assert [r["resourceType"] for r in (e["resource"] for e in result.bundle["entry"])] == [
        "QuestionnaireResponse", "Provenance"]
    assert not result.alerts


# --- item 4 ----------------------------------------------------------------------------------------------


def test_the_senders_response_is_kept_as_sent_with_ids_and_references_re_keyed() -> None:
    original = sample("QuestionnaireResponse-phq-9-example.json")
    result = mapped(copy.deepcopy(original))
    (response,) = by_type(result.bundle, "QuestionnaireResponse")
    new_id = resource_id("QuestionnaireResponse", SOURCE, original["id"])
    expected = copy.deepcopy(original)
    expected["id"] = new_id
    expected["subject"] = {"reference": f"Patient/{resource_id('Patient', SOURCE, 'example')}"}
    expected["author"] = {"reference": f"Practitioner/{resource_id('Practitioner', SOURCE, 'practitioner-1')}"}
    expected["meta"]["security"] = response["meta"]["security"]
    assert response == expected  # valueCoding, valueDecimal, questionnaire canonical, author: as sent
    assert codes(response) == ["R", "PSY"]
    # carebus's results are its own resources, derived from the sender's response
    observations = by_type(result.bundle, "Observation")
    assert len(observations) == 12  # 10 items, the total, the panel
    assert {o["derivedFrom"][0]["reference"] for o in observations} == {f"QuestionnaireResponse/{new_id}"}


def cssrs(risk: dict[str, Any]) -> dict[str, Any]:
    items = [("93246-7", "LA33-6"), ("93247-5", "LA33-6"), ("93248-3", "LA32-8"), ("93249-1", "LA32-8"),
             ("93250-9", "LA32-8"), ("93267-3", "LA32-8")]
    return {"resourceType": "QuestionnaireResponse", "id": "cssrs-1", "status": "completed",
            "questionnaire": "http://loinc.org/q/93373-9", "subject": {"reference": "Patient/p-1"},
            "authored": "2026-01-04T10:00:00Z",
            "item": [*({"linkId": f"/{code}", "answer": [{"valueCoding": {"system": LOINC, "code": answer}}]}
                       for code, answer in items),
                     {"linkId": "/93374-7", "answer": [risk]}]}


def test_a_reported_cssrs_risk_level_is_not_called_an_unreadable_total() -> None:
    result = mapped(cssrs({"valueCoding": {"system": "urn:oid:1.2.3", "code": "R2", "display": "Moderate"}}))
    total = total_of(result, "93374-7")
    assert total["valueCodeableConcept"]["coding"][0]["code"] == "low"
    notes = " ".join(n["text"] for n in total.get("note", []))
    assert "could not be read as a score" not in notes
    assert "reported-total-unparseable" not in result.data_quality
    assert "reported-total-mismatch" in result.data_quality  # the sender said moderate, the items say low
    (response,) = by_type(result.bundle, "QuestionnaireResponse")
    assert response["item"][-1]["answer"][0]["valueCoding"]["code"] == "R2"  # kept as sent

    unreadable = mapped(cssrs({"valueString": "see clinician note"}))
    assert not {"reported-total-unparseable", "reported-total-mismatch"} & set(unreadable.data_quality)


# --- item 5 ----------------------------------------------------------------------------------------------


def mixed_post() -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "https://ehr.example.org/fhir/Patient/p1",
         "resource": {"resourceType": "Patient", "name": [{"family": "Testperson"}]}},
        {"fullUrl": "urn:uuid:0d3b1c44-0000-4000-8000-00000000e001",
         "resource": {"resourceType": "Encounter", "status": "finished",
                      "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                      "subject": {"reference": "Patient/p1"}}},
        {"fullUrl": "urn:uuid:0d3b1c44-0000-4000-8000-00000000c001",
         "resource": {"resourceType": "Condition", "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm",
                                                                        "code": "F32.1"}]},
                      "subject": {"reference": "https://ehr.example.org/fhir/Patient/p1"},
                      "encounter": {"reference": "urn:uuid:0d3b1c44-0000-4000-8000-00000000e001"}}},
        {"resource": {**sample("QuestionnaireResponse-phq-9-example.json"),
                      "subject": {"reference": "Patient/p1/_history/2"},
                      "encounter": {"reference": "urn:uuid:0d3b1c44-0000-4000-8000-00000000e001"}}},
    ]}


def test_every_reference_of_a_post_resolves_to_a_re_keyed_resource_of_the_post() -> None:
    result = mapped(mixed_post())
    held = {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in result.bundle["entry"]}
    found = references(result.bundle)
    author = f"Practitioner/{resource_id('Practitioner', SOURCE, 'practitioner-1')}"  # not in this post
    assert found and set(found) <= held | {author}, set(found) - held
    patient = f"Patient/{resource_id('Patient', SOURCE, 'p1')}"
    subjects = {r.get("subject", {}).get("reference") for r in (e["resource"] for e in result.bundle["entry"])}
    assert subjects - {None} == {patient}  # one patient: carebus's id of the sender's p1, whichever way named


def test_a_later_post_names_what_the_source_sent_before_by_the_same_ids() -> None:
    first = mapped(mixed_post(), "post-1")
    later = {"resourceType": "MedicationRequest", "id": "mr-9", "status": "active", "intent": "order",
             "medicationCodeableConcept": {"text": "sertraline 50 mg tablet"},
             "subject": {"reference": "Patient/p1"},
             "encounter": {"reference": f"Encounter/{'urn:uuid:0d3b1c44-0000-4000-8000-00000000e001'}"}}
    second = mapped(later, "post-2")
    (request,) = by_type(second.bundle, "MedicationRequest")
    (patient,) = by_type(first.bundle, "Patient")
    assert request["subject"]["reference"] == f"Patient/{patient['id']}"
    assert codes(request) == ["R", "PSY"]  # labelled by the medication named in the text


def test_the_rule_in_one_place() -> None:
    rekeying = Rekeying(SOURCE, [("urn:uuid:1", {"resourceType": "Patient"}), (None, {"resourceType": "Patient",
                                                                                      "id": "p2"})])
    assert rekeying.source_ids == ["urn:uuid:1", "p2"]
    same = f"Patient/{resource_id('Patient', SOURCE, 'p2')}"
    for reference in ("Patient/p2", "https://x.example/fhir/Patient/p2", "Patient/p2/_history/7"):
        assert rekeying.reference(reference) == same
    assert rekeying.reference("urn:uuid:1") == f"Patient/{resource_id('Patient', SOURCE, 'urn:uuid:1')}"
    assert rekeying.reference("#contained-1") == "#contained-1"


def test_intake_keys_both_posts_by_the_same_source_patient() -> None:
    from services.common.fhir_payload import check_resources
    from services.intake.app import fhir_patient_key

    later = {"resourceType": "MedicationRequest", "id": "mr-9", "status": "active", "intent": "order",
             "medicationCodeableConcept": {"text": "sertraline"},
             "subject": {"reference": "https://ehr.example.org/fhir/Patient/p1"}}
    keys = {fhir_patient_key(SOURCE, check_resources(payload)) for payload in (mixed_post(), later)}
    assert keys == {f"{SOURCE}|p1"}  # one partition: the later post stays behind the earlier one


def pipeline_outcome(payload: dict[str, Any]) -> Any:
    import orjson

    from services.common.topics import FHIR_RESOURCE_EVENT_TYPE, HEADER_EVENT_TYPE
    from services.mapper.pipeline import InboundRecord, Pipeline, TopicNames

    record = InboundRecord(topic="in", partition=0, offset=7, timestamp_ms=1_767_614_400_000, key=b"k",
                           value=orjson.dumps(envelope(payload)),
                           headers=((HEADER_EVENT_TYPE, FHIR_RESOURCE_EVENT_TYPE.encode()),))
    return Pipeline(TopicNames.for_prefix("t")).process(record)


def test_through_the_pipeline_item_9_reaches_the_alert_topic_and_unscoreable_the_dead_letters() -> None:
    import orjson

    outcome = pipeline_outcome(sdc_phq9())
    alerts = [orjson.loads(r.value) for r in outcome.records if r.topic == "t.alerts.safety.v1"]
    assert [a["kind"] for a in alerts] == ["phq9-item9"]

    response = sdc_phq9()
    for item in response["item"]:
        item["linkId"] = "question"
    dead = pipeline_outcome(response)
    assert dead.dead_letter_reason == "instrument-response-unscoreable"
    letter = orjson.loads(dead.records[0].value)
    assert letter["problems"][0]["rule"] == "no-scorable-items"
