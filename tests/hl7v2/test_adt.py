"""ADT events: admit, transfer, discharge, update, merge; labels; deterministic ids."""

from __future__ import annotations

import pytest

from services.common.security_labels import PART2, PSYCHIATRIC
from tests.hl7v2.helpers import PID, codes, er7, mapped, msh, one, resources, security


def pv1(admit: str = "20240501100000-0500", discharge: str = "", disposition: str = "",
        service: str = "MED") -> str:
    fields = [""] * 46
    fields[1:4] = ["1", "I", "WARD^101^A^GEN"]
    fields[7], fields[8], fields[10] = "1234^Smith^Ann^^^Dr", "5678^Jones^Bob", service
    fields[19], fields[36], fields[44], fields[45] = "V100^^^GEN^VN", disposition, admit, discharge
    return "PV1|" + "|".join(fields[1:])


def adt(trigger: str, *extra: str, control: str = "MSG-1", pv: str | None = None) -> str:
    return er7(msh(f"ADT^{trigger}^ADT_A01", control_id=control), f"EVN|{trigger}|20240501101500-0500",
               PID, pv if pv is not None else pv1(), *extra)


def test_a01_admission() -> None:
    event = mapped(adt("A01", "NK1|1|Doe^John|SPO^Spouse^HL70063|||(555)555-0101^PRN^PH",
                       "AL1|1|DA|70618^Penicillin^RXNORM|SV|Hives|20200101"))
    encounter = one(event, "Encounter")
    assert encounter["status"] == "in-progress"
    assert encounter["class"]["code"] == "IMP"
    assert encounter["period"] == {"start": "2024-05-01T10:00:00-05:00"}
    assert encounter["identifier"][0] == {"system": "urn:carebus:hl7v2:CLINIC/encounter", "value": "V100"}
    assert [p["type"][0]["coding"][0]["code"] for p in encounter["participant"]] == ["ATND", "REF"]
    assert encounter["subject"] == {"reference": f"Patient/{one(event, 'Patient')['id']}"}
    person = one(event, "RelatedPerson")
    assert person["name"][0]["family"] == "Doe" and codes(person["relationship"][0]) == {"SPO"}
    allergy = one(event, "AllergyIntolerance")
    assert allergy["category"] == ["medication"] and allergy["criticality"] == "high"
    assert allergy["reaction"][0]["manifestation"][0]["text"] == "Hives"


@pytest.mark.parametrize(("v2", "fhir"), [("E", "EMER"), ("I", "IMP"), ("O", "AMB"), ("P", "PRENC")])
def test_encounter_class_concept_map(v2: str, fhir: str) -> None:
    event = mapped(adt("A04", pv=f"PV1|1|{v2}"))
    assert one(event, "Encounter")["class"]["code"] == fhir


def test_unmatched_patient_class_keeps_its_v2_coding() -> None:
    klass = one(mapped(adt("A04", pv="PV1|1|R")), "Encounter")["class"]
    assert klass == {"system": "http://terminology.hl7.org/CodeSystem/v2-0004", "code": "R",
                     "display": "Recurring patient"}


@pytest.mark.parametrize(("v2", "fhir"), [("F", "female"), ("M", "male"), ("O", "other"), ("U", "unknown"),
                                          ("A", "other"), ("N", "other")])
def test_gender_concept_map(v2: str, fhir: str) -> None:
    text = er7(msh("ADT^A08"), f"PID|1||M1^^^C^MR||Doe^Pat||19800101|{v2}")
    assert one(mapped(text), "Patient")["gender"] == fhir


def test_a02_transfer_moves_the_location() -> None:
    text = er7(msh("ADT^A02^ADT_A02"), "EVN|A02|20240502080000-0500||||20240502075500-0500", PID,
               "PV1|1|I|WARD^202^B|||WARD^101^A||||||||||||V100")
    encounter = one(mapped(text), "Encounter")
    assert encounter["status"] == "in-progress"
    current, prior = encounter["location"]
    assert current == {"location": {"display": "WARD 202 B"}, "status": "active",
                       "period": {"start": "2024-05-02T07:55:00-05:00"}}
    assert prior == {"location": {"display": "WARD 101 A"}, "status": "completed",
                     "period": {"end": "2024-05-02T07:55:00-05:00"}}


def test_a03_discharge_to_a_psychiatric_hospital() -> None:
    event = mapped(adt("A03", pv=pv1(discharge="20240505120000-0500", disposition="65")))
    encounter = one(event, "Encounter")
    assert encounter["status"] == "finished"
    assert encounter["period"]["end"] == "2024-05-05T12:00:00-05:00"
    assert codes(encounter["hospitalization"]["dischargeDisposition"]) == {"psy"}
    assert security(encounter) >= set(PSYCHIATRIC)


def test_admission_and_discharge_share_the_encounter_id() -> None:
    admitted = one(mapped(adt("A01", control="A")), "Encounter")
    discharged = one(mapped(adt("A03", control="B", pv=pv1(discharge="20240505120000-0500"))), "Encounter")
    assert admitted["id"] == discharged["id"]


def test_psychiatric_diagnosis_labels_condition_encounter_and_bundle_not_patient() -> None:
    event = mapped(adt("A08", "DG1|1|I10|F32.9^Major depressive disorder, single episode^I10|||A"))
    condition, encounter = one(event, "Condition"), one(event, "Encounter")
    assert security(condition) == set(PSYCHIATRIC)
    assert security(encounter) == set(PSYCHIATRIC)
    assert not security(one(event, "Patient"))
    assert set(event.security_labels) == set(PSYCHIATRIC)
    assert {c["code"] for c in event.bundle["meta"]["security"]} == set(PSYCHIATRIC)
    assert encounter["diagnosis"] == [{"condition": {"reference": f"Condition/{condition['id']}"},
                                       "use": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                                                     "diagnosis-role", "code": "AD"}]}}]
    assert condition["category"][0]["coding"][0]["code"] == "encounter-diagnosis"


@pytest.mark.parametrize("diagnosis", ["F11.20^Opioid dependence, uncomplicated^I10C",
                                       "F10.20^Alcohol dependence^I10", "304.00^Opioid dependence^I9C"])
def test_substance_use_diagnosis_is_part2(diagnosis: str) -> None:
    event = mapped(adt("A08", f"DG1|1||{diagnosis}"))
    assert security(one(event, "Condition")) == set(PART2)


def test_psychiatric_hospital_service_labels_the_encounter() -> None:
    event = mapped(adt("A01", pv=pv1(service="PSY")))
    assert security(one(event, "Encounter")) == set(PSYCHIATRIC)
    assert not security(one(event, "Patient"))


def test_nicotine_is_not_part2() -> None:
    event = mapped(adt("A08", "DG1|1||F17.210^Nicotine dependence, cigarettes^I10C"))
    assert not security(one(event, "Condition"))


def test_part2_sending_facility_labels_every_resource() -> None:
    event = mapped(adt("A01"), "CLINIC")
    for resource in resources(event):
        assert security(resource) >= set(PART2), resource["resourceType"]
    assert set(event.security_labels) == set(PART2)


def test_a40_merge_links_survivor_and_retired_patients() -> None:
    text = er7(msh("ADT^A40^ADT_A39"), "EVN|A40|20240501", PID, "MRG|OLD-77^^^CLINIC^MR")
    event = mapped(text)
    survivor, retired = resources(event, "Patient")
    assert retired["active"] is False
    assert retired["link"] == [{"other": {"reference": f"Patient/{survivor['id']}"}, "type": "replaced-by"}]
    assert survivor["active"] is True
    assert survivor["link"] == [{"other": {"reference": f"Patient/{retired['id']}"}, "type": "replaces"}]
    earlier = er7(msh("ADT^A01"), "PID|1||OLD-77^^^CLINIC^MR||Doe^Jane")
    assert one(mapped(earlier), "Patient")["id"] == retired["id"]


def test_observations_in_adt_belong_to_the_encounter() -> None:
    event = mapped(adt("A01", "OBX|1|NM|8867-4^Heart rate^LN||72|/min^per minute^UCUM|60-100|N|||F"))
    observation = one(event, "Observation")
    assert observation["encounter"] == {"reference": f"Encounter/{one(event, 'Encounter')['id']}"}
    assert observation["valueQuantity"] == {"value": 72, "unit": "per minute",
                                            "system": "http://unitsofmeasure.org", "code": "/min"}
    assert observation["referenceRange"][0]["low"]["value"] == 60
    assert codes(observation["interpretation"][0]) == {"N"}
