"""Golden facts of the third-party HL7 v2 samples added for issue 10 part C (sources: tests/samples/SOURCES.md).

Each test reads the facts off the message by hand (identifiers, codes, times, counts) and checks the bundle
carries them; every sample also runs through the HL7 validator in tests/validation (0 errors)."""

from __future__ import annotations

import orjson

from services.mapper.hl7v2.terminology import CVX, LOINC, UCUM
from services.mapper.pipeline import Pipeline, TopicNames
from tests.hl7v2.helpers import codes, mapped, one, resources, sample
from tests.hl7v2.test_validation_once import inbound

V2_0335 = "http://terminology.hl7.org/CodeSystem/v2-0335"


def test_nist_immunization_child_max() -> None:
    event = mapped(sample("IZ_1_1.1_Admin_Child_Max_Message.hl7"))
    assert event.resource_counts == {"MessageHeader": 1, "Patient": 1, "RelatedPerson": 1, "Immunization": 1,
                                     "Observation": 4, "Provenance": 1}
    patient = one(event, "Patient")
    assert {i["value"] for i in patient["identifier"]} == {"D26376273"}
    assert patient["name"][0] == {"use": "official", "family": "Snow", "given": ["Madelynn", "Ainsley"]}
    assert patient["birthDate"] == "2007-07-06" and patient["gender"] == "female"
    shot = one(event, "Immunization")
    assert shot["vaccineCode"]["coding"][0] == {"system": CVX, "code": "140",
                                                "display": "Influenza, seasonal, injectable, preservative free"}
    assert shot["occurrenceDateTime"] == "2012-08-14" and shot["primarySource"] is True
    assert shot["lotNumber"] == "Z0860BB" and shot["expirationDate"] == "2012-11-04"
    assert shot["doseQuantity"] == {"value": 0.5, "unit": "MilliLiter [SI Volume Units]", "system": UCUM,
                                    "code": "mL"}
    assert shot["manufacturer"] == {"identifier": {"system": "http://terminology.hl7.org/CodeSystem/MVX",
                                                   "value": "CSL"}, "display": "CSL Behring"}
    observed = {next(iter(codes(o["code"]))) for o in resources(event, "Observation")}
    assert observed == {"64994-7", "30956-7", "29768-9", "29769-7"}
    assert all(o["partOf"] == [{"reference": f"Immunization/{shot['id']}"}] for o in resources(event, "Observation"))
    assert codes(one(event, "RelatedPerson")["relationship"][0]) == {"MTH"}


def test_nist_lri_cbc_report() -> None:
    event = mapped(sample("LRI_2.0-NG_CBC_Typ_Message.hl7"))
    report = one(event, "DiagnosticReport")
    assert report["code"]["coding"][0] == {"system": LOINC, "code": "57021-8",
                                           "display": "CBC W Auto Differential panel in Blood"}
    assert report["status"] == "final"
    assert report["effectiveDateTime"] == "2011-01-03T14:34:28-08:00"
    assert report["issued"] == "2011-01-04T17:00:28-08:00"
    observations = resources(event, "Observation")
    assert len(observations) == 28 and len(report["result"]) == 28
    assert {i["value"] for i in one(event, "Patient")["identifier"]} == {"PATID1234"}
    by_code = {next(c["code"] for c in o["code"]["coding"] if c["system"] == LOINC): o for o in observations}
    assert by_code["718-7"]["valueQuantity"] == {"value": 12.5, "unit": "grams per milliliter", "system": UCUM,
                                                 "code": "g/mL"}
    assert codes(by_code["26464-8"]["interpretation"][0]) == {"HH"}
    assert by_code["26464-8"]["valueQuantity"]["value"] == 105600
    assert codes(by_code["38892-6"]["valueCodeableConcept"]) == {"260348001"}
    assert by_code["6742-1"]["valueString"] == "Many spherocytes present."
    assert event.unmapped_segments == ("SPM",)


def test_fhir_converter_rde_with_rxo_rate_and_repeat_pattern() -> None:
    event = mapped(sample("RDE-O11-01.hl7"))
    request = one(event, "MedicationRequest")
    assert request["identifier"][0]["value"] == "1163422591"
    assert codes(request["medicationCodeableConcept"]) == {"0143963401"}
    dosage = request["dosageInstruction"][0]
    assert dosage["doseAndRate"][0] == {"doseQuantity": {"value": 5, "unit": "mg/hr"},
                                        "rateQuantity": {"value": 23, "unit": "mL/hr", "system": UCUM,
                                                         "code": "mL/h"}}
    assert dosage["timing"]["code"]["coding"] == [{"system": V2_0335, "code": "P"}]
    assert dosage["timing"]["repeat"]["boundsPeriod"] == {"start": "2019-11-04T10:30:00+02:15",
                                                          "end": "2019-11-04T11:30:00+02:15"}
    assert request["authoredOn"] == "2019-11-04T06:27:26+02:15"
    assert {"text": "Requested as (RXO-1): Ampicillin 250 mg caps (00047040230)"} in request["note"]
    assert "RXO" not in event.unmapped_segments


def test_fhir_converter_siu_s14_modification() -> None:
    event = mapped(sample("SIU-S14-01.hl7"))
    appointment = one(event, "Appointment")
    assert appointment["status"] == "booked"
    assert (appointment["start"], appointment["end"]) == ("2021-09-24T09:30:00+02:15", "2021-09-24T10:20:00+02:15")
    assert appointment["minutesDuration"] == 50
    assert [i["value"] for i in appointment["identifier"]] == ["12345", "36996"]
    assert codes(appointment["serviceType"][0]) == {"76164006", "1212"}
    notes = appointment["comment"].split("\n")
    assert notes[0].startswith("Appointment modified by filler application") and len(notes) == 5
    assert len(appointment["participant"]) == 4  # the patient, AIG, AIL, AIP
    assert event.unmapped_segments == ()


def test_aidbox_oru_with_notes_and_no_time_zone() -> None:
    event = mapped(sample("aidbox-ORU-R01-with-notes.hl7"))
    result = one(event, "Observation")
    assert {(c.get("system"), c["code"]) for c in result["code"]["coding"]} == {
        ("urn:carebus:hl7v2:HOSPITAL/codes/OBX-3", "56117"), (LOINC, "98979-8")}
    assert result["valueQuantity"] == {"value": 90, "comparator": ">", "unit": "mL/min/1.73 sq.m."}
    assert [n["text"] for n in result["note"]] == ["eGFR calculation based on CKD-EPI equation.",
                                                   "This test is not validated for acute illness."]
    # no offset in the message and no zone configured: the date is kept, the time is not invented
    assert result["effectiveDateTime"] == "2026-01-06"
    assert "timezone-unknown@OBX-14" in event.data_quality
    assert {i["value"] for i in one(event, "Patient")["identifier"]} == {"TEST-0004"}
    assert one(event, "DiagnosticReport")["status"] == "final"


def test_aidbox_vxu_historical_dose() -> None:
    event = mapped(sample("aidbox-VXU-V04-base.hl7"))
    shot = one(event, "Immunization")
    assert codes(shot["vaccineCode"]) == {"08"} and shot["vaccineCode"]["coding"][0]["system"] == CVX
    assert shot["primarySource"] is False  # RXA-9 01: historical
    assert shot["occurrenceDateTime"] == "2016-07-01" and shot["lotNumber"] == "MSD456789"
    assert "doseQuantity" not in shot  # RXA-6 999: amount unknown
    assert shot["identifier"][0]["value"] == "65930"
    assert len(resources(event, "Observation")) == 5
    assert {i["value"] for i in one(event, "Patient")["identifier"]} == {"PA123456"}


def test_fhir_converter_mdm_with_an_empty_pdf_part_is_dead_lettered_naming_obx_5() -> None:
    outcome = Pipeline(TopicNames.for_prefix("t")).process(inbound(sample("refused/MDM-T02-01.hl7")))
    assert outcome.mapped is None and outcome.dead_letter_reason == "hl7v2-missing-required"
    letter = orjson.loads(outcome.records[0].value)
    assert [(p["location"], p["rule"]) for p in letter["problems"]] == [("OBX-5", "attachment-data-missing")]
