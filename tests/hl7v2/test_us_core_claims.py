"""Issue 10 item 9: HL7 v2-mapped resources claim the US Core 6.1.0 profile they meet (tests/validation checks
every claim with the HL7 validator); a resource that lacks what a profile needs claims nothing."""

from __future__ import annotations

from typing import Any

from services.mapper.hl7v2.us_core import US_CORE, profile_met
from tests.hl7v2.helpers import PID, er7, mapped, msh, one, resources, sample


def claimed(resource: dict[str, Any]) -> list[str]:
    return [p.removeprefix(US_CORE) for p in resource.get("meta", {}).get("profile", [])]


def test_an_adt_claims_us_core_for_patient_encounter_condition_and_allergies() -> None:
    event = mapped(sample("ADT-A01-01.hl7"))
    assert claimed(one(event, "Patient")) == ["us-core-patient"]
    assert claimed(one(event, "Encounter")) == ["us-core-encounter"]
    assert all(claimed(c) == ["us-core-condition-encounter-diagnosis"] for c in resources(event, "Condition"))
    allergies = resources(event, "AllergyIntolerance")
    assert allergies and all(claimed(a) == ["us-core-allergyintolerance"] for a in allergies)


def test_a_vxu_claims_us_core_immunization() -> None:
    assert claimed(one(mapped(sample("VXU-V04-01.hl7")), "Immunization")) == ["us-core-immunization"]


def test_identifiers_of_the_senders_own_namespaces_get_a_system_of_the_sender() -> None:
    # PID-3 'PATID1234^^^test1^MR' names a namespace but no OID/URI: the id is the sender's namespace's
    patient = one(mapped(sample("ADT-A01-01.hl7")), "Patient")
    systems = {i["value"]: i.get("system") for i in patient["identifier"]}
    assert systems["PATID1234"] == "urn:carebus:hl7v2:GHHSFacility/id/test1"
    assert all(i.get("system") and i.get("value") for i in patient["identifier"])


def test_a_lab_section_makes_the_report_lab_and_its_results_laboratory() -> None:
    event = mapped(er7(msh("ORU^R01^ORU_R01"), PID, "PV1|1|O",
                       "OBR|1|P1|F1|2345-7^Glucose^LN|||20240501090000|||||||||||||||20240501100000||CH|F",
                       "OBX|1|NM|2345-7^Glucose^LN||95|mg/dL^mg/dL^UCUM|70-99||||F|||20240501090000"))
    report, observation = one(event, "DiagnosticReport"), one(event, "Observation")
    assert {c["coding"][0]["code"] for c in report["category"]} == {"CH", "LAB"}
    assert claimed(report) == ["us-core-diagnosticreport-lab"]
    assert observation["category"][0]["coding"][0]["code"] == "laboratory"
    assert claimed(observation) == ["us-core-observation-lab"]


def test_what_lacks_a_required_element_claims_nothing() -> None:
    # no PV1-4 -> no Encounter.type (us-core-encounter needs one); no OBR-24 -> not known to be a lab result
    event = mapped(er7(msh("ORU^R01^ORU_R01"), PID, "PV1|1|O",
                       "OBR|1|P1|F1|2345-7^Glucose^LN|||20240501090000",
                       "OBX|1|NM|2345-7^Glucose^LN||95|mg/dL^mg/dL^UCUM|||||F"))
    assert claimed(one(event, "Encounter")) == []
    assert claimed(one(event, "Observation")) == []
    canadian = {"resourceType": "Patient", "identifier": [{"system": "urn:x", "value": "1"}],
                "name": [{"family": "Doe"}], "gender": "female", "address": [{"state": "ON"}]}
    assert profile_met(canadian) is None
    assert profile_met({**canadian, "address": [{"state": "IL"}]}) == "us-core-patient"
    assert profile_met({**canadian, "identifier": [{"value": "1"}]}) is None


def test_medication_requests_documents_and_instrument_responses_claim_us_core() -> None:
    for request in resources(mapped(sample("RDE-O11-02.hl7")), "MedicationRequest"):
        assert claimed(request) == ["us-core-medicationrequest"]
    assert claimed(one(mapped(sample("MDM-T02-02.hl7")), "DocumentReference")) == ["us-core-documentreference"]
    phq9 = er7(msh("ORU^R01^ORU_R01"), PID, "OBR|1|P9|F9|44249-1^PHQ-9 quick depression assessment panel^LN|||"
               "20240501090000-0500", *(f"OBX|{n}|CWE|{code}^item^LN||LA6568-5^Not at all^LN||||||F"
                                        for n, code in enumerate(("44250-9", "44255-8", "44259-0", "44254-1",
                                                                  "44251-7", "44258-2", "44252-5", "44253-3",
                                                                  "44260-8"), start=1)))
    assert claimed(one(mapped(phq9), "QuestionnaireResponse")) == ["us-core-questionnaireresponse"]


def test_a_document_without_a_loinc_type_or_a_request_without_subject_or_requester_claims_nothing() -> None:
    document = {"resourceType": "DocumentReference", "type": {"coding": [{"system": "urn:x", "code": "DI"}]},
                "category": [{"coding": [{"system": "http://hl7.org/fhir/us/core/CodeSystem/"
                                          "us-core-documentreference-category", "code": "clinical-note"}]}],
                "subject": {"reference": "Patient/1"},
                "content": [{"attachment": {"contentType": "text/plain", "data": "eA=="}}]}
    assert profile_met(document) is None
    loinc = {**document, "type": {"coding": [{"system": "http://loinc.org", "code": "11506-3"}]}}
    assert profile_met(loinc) == "us-core-documentreference"
    assert profile_met({**loinc, "content": [{"attachment": {"contentType": "application/pdf"}}]}) is None
    request = {"resourceType": "MedicationRequest", "status": "active", "intent": "order",
               "medicationCodeableConcept": {"text": "x"}, "requester": {"display": "Dr Ann Smith"}}
    assert profile_met(request) is None
    assert profile_met({**request, "subject": {"reference": "Patient/1"}}) == "us-core-medicationrequest"
    assert profile_met({**request, "subject": {"reference": "Patient/1"}, "intent": "plan"}) is None
    unsigned = {k: v for k, v in request.items() if k != "requester"}  # us-core-21: an order names its requester
    assert profile_met({**unsigned, "subject": {"reference": "Patient/1"}}) is None


def adt_with(*obx: str) -> str:
    return er7(msh("ADT^A01^ADT_A01"), "EVN|A01|20240501101500-0500", PID, "PV1|1|O|||||||||||||||||V7", *obx)


def test_vital_signs_outside_a_lab_section_claim_their_us_core_profile() -> None:
    event = mapped(adt_with("OBX|1|NM|8867-4^Heart rate^LN||72|beats/min^^ISO|||||F|||20240501093000-0500",
                            "OBX|2|NM|29463-7^Body weight^LN||180|lbs|||||F|||20240501093000-0500",
                            "OBX|3|NM|8310-5^Body temperature^LN||37.1|Cel^degree Celsius^UCUM|||||F|||20240501",
                            "OBX|4|NM|9279-1^Respiratory rate^LN||16|per shift|||||F|||20240501093000-0500"))
    by_code = {o["code"]["coding"][0]["code"]: o for o in resources(event, "Observation")}
    assert all(o["category"][0]["coding"][0]["code"] == "vital-signs" for o in by_code.values())
    assert by_code["8867-4"]["valueQuantity"] == {"value": 72, "unit": "beats/min",
                                                  "system": "http://unitsofmeasure.org", "code": "/min"}
    assert claimed(by_code["8867-4"]) == ["us-core-heart-rate"]
    assert by_code["29463-7"]["valueQuantity"]["code"] == "[lb_av]"
    assert claimed(by_code["29463-7"]) == ["us-core-body-weight"]
    assert claimed(by_code["8310-5"]) == ["us-core-body-temperature"]
    # a unit the profile does not take: a vital sign still, but no claim (and no invented UCUM code)
    assert "system" not in by_code["9279-1"]["valueQuantity"] and claimed(by_code["9279-1"]) == []


def test_the_sample_heart_rate_with_two_values_is_a_vital_sign_without_a_claim() -> None:
    heart_rate = one(mapped(sample("ADT-A01-01.hl7")), "Observation")
    assert heart_rate["category"][0]["coding"][0]["code"] == "vital-signs"
    assert claimed(heart_rate) == []  # two values (components), no valueQuantity: not us-core-heart-rate
