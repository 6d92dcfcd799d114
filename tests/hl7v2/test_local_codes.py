"""Issue 10 items 6 and 7: values of user-defined tables and local codes are coded in the sender's own code
system (or kept as text), never in HL7's fixed v2 code systems; PID-15 becomes a BCP-47 language."""

from __future__ import annotations

from typing import Any

from services.mapper.hl7v2.terminology import is_local_system
from tests.hl7v2.helpers import PID, er7, mapped, msh, one, sample
from tests.hl7v2.helpers import resources as resources_of

SOURCE = "urn:carebus:hl7v2:CLINIC"


def pv1(**fields: str) -> str:
    """A PV1 segment with the given fields (f2="FF", f10="PSY" ...)."""
    values = [""] * 45
    values[0] = "1"
    for name, value in fields.items():
        values[int(name[1:]) - 1] = value
    return "PV1|" + "|".join(values).rstrip("|")


def adt(pv1: str, pid: str = PID) -> Any:
    return mapped(er7(msh("ADT^A01^ADT_A01"), "EVN|A01|20240501101500", pid, pv1))


def test_pv1_values_outside_hl7s_tables_get_the_senders_local_system() -> None:
    # PV1-2 'FF', PV1-4 'EL', PV1-10 'PSY', PV1-14 free text: none of them are codes of v2-0004/0007/0069/0023
    event = adt(pv1(f2="FF", f3="4W^12", f4="EL", f10="PSY", f14="NHS Provider-General (inc.A\\T\\E)", f19="V100"))
    encounter = one(event, "Encounter")
    assert encounter["class"] == {"system": f"{SOURCE}/codes/v2-0004", "code": "FF"}
    assert encounter["type"] == [{"coding": [{"system": f"{SOURCE}/codes/v2-0007", "code": "EL"}]}]
    assert encounter["serviceType"] == {"coding": [{"system": f"{SOURCE}/codes/v2-0069", "code": "PSY"}]}
    assert encounter["hospitalization"]["admitSource"] == {"text": "NHS Provider-General (inc.A&E)"}
    assert "local-code@PV1-2" in event.data_quality
    assert "PSY" in {c["code"] for c in encounter["meta"]["security"]}  # still labelled psychiatric


def test_pv1_values_that_are_in_hl7s_tables_keep_hl7s_code_systems() -> None:
    encounter = one(adt(pv1(f2="R", f4="E", f10="SUR", f14="7", f19="V100")), "Encounter")
    assert encounter["class"]["system"] == "http://terminology.hl7.org/CodeSystem/v2-0004"
    assert encounter["type"][0]["coding"][0]["system"] == "http://terminology.hl7.org/CodeSystem/v2-0007"
    assert encounter["serviceType"]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/v2-0069", "code": "SUR"}
    assert encounter["hospitalization"]["admitSource"]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/v2-0023", "code": "7"}


def test_the_local_system_is_the_senders_own() -> None:
    other = mapped(er7(msh("ADT^A01^ADT_A01", facility="OTHER_HOSP"), "EVN|A01|20240501101500", PID,
                       "PV1|1|FF"))
    assert one(other, "Encounter")["class"]["system"] == "urn:carebus:hl7v2:OTHER_HOSP/codes/v2-0004"


def test_pid_15_is_a_bcp47_language() -> None:
    # the FHIR-Converter samples send ISO 639-2 'ara' in HL70296; LAB-ORU-1 sends '1' (not a language)
    patient = one(mapped(sample("ADT-A01-01.hl7")), "Patient")
    language = patient["communication"][0]["language"]
    assert language["coding"] == [{"system": "urn:ietf:bcp:47", "code": "ar"}]
    assert language["text"] == "TextInEnglish"  # CWE.9 original text
    event = mapped(sample("LAB-ORU-1.hl7"))
    assert one(event, "Patient")["communication"][0]["language"] == {"text": "1"}
    assert "not-a-language-tag@PID-15" in event.data_quality
    spanish = one(adt("PV1|1|O", PID + "||SPA^Spanish^ISO639"), "Patient")  # PID-15 follows PID-13
    assert spanish["communication"][0]["language"] == {
        "coding": [{"system": "urn:ietf:bcp:47", "code": "es"}], "text": "Spanish"}


def test_a_too_short_oid_is_no_identifier_system() -> None:
    # ADT-A01-01 PV1-9: C008^Condoc^leen^^^Dr^^^&2.8&ISO -- '2.8' is no assigning authority
    encounter = one(mapped(sample("ADT-A01-01.hl7")), "Encounter")
    consultant = encounter["participant"][2]["individual"]
    assert "system" not in consultant.get("identifier", {})
    assert consultant["identifier"]["value"] == "C008"


def test_is_local_system() -> None:
    assert is_local_system(f"{SOURCE}/codes/OBX-3")
    assert not is_local_system("http://loinc.org")
    assert not is_local_system(None)


def test_local_codes_get_a_system_of_the_sender_scoped_by_name_or_field() -> None:
    event = mapped(er7(msh("ORU^R01^ORU_R01"), PID, "OBR|1|P1|F1|MOOD^Mood check^L",
                       "OBX|1|CE|WB1^Wellbeing^L||GOOD^Good^99MOOD||||||F",
                       "OBX|2|NM|STEPS^Steps today||4200|||||F"))
    report = one(event, "DiagnosticReport")
    assert report["code"]["coding"][0]["system"] == f"{SOURCE}/codes/OBR-4"
    observations = {o["code"]["coding"][0]["code"]: o for o in resources_of(event, "Observation")}
    assert observations["WB1"]["code"]["coding"][0]["system"] == f"{SOURCE}/codes/OBX-3"
    assert observations["WB1"]["valueCodeableConcept"]["coding"][0]["system"] == f"{SOURCE}/codes/99MOOD"
    assert observations["STEPS"]["code"]["coding"][0]["system"] == f"{SOURCE}/codes/OBX-3"  # no system named


def test_a_local_code_shaped_like_an_icd10_f_code_is_still_labelled() -> None:
    event = mapped(er7(*_ADT, "DG1|1||F32.1^Depression^L"))
    condition = one(event, "Condition")
    assert condition["code"]["coding"][0]["system"] == f"{SOURCE}/codes/DG1-3"
    assert "PSY" in {c["code"] for c in condition["meta"]["security"]}


_ADT = (msh("ADT^A01^ADT_A01"), "EVN|A01|20240501101500", PID, "PV1|1|O")
