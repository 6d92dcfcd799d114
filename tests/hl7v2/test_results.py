"""ORU R01: OBR -> DiagnosticReport, OBX value types -> Observation values, and scored instruments."""

from __future__ import annotations

import base64

import pytest

from services.common.hl7v2 import InvalidValue
from services.common.security_labels import PSYCHIATRIC
from tests.hl7v2.helpers import PID, codes, er7, mapped, msh, one, resources, sample, security

PHQ9_ITEMS = ["44250-9", "44255-8", "44259-0", "44254-1", "44251-7", "44258-2", "44252-5", "44253-3", "44260-8"]
ANSWER = {0: "LA6568-5^Not at all^LN", 1: "LA6569-3^Several days^LN", 2: "LA6570-1^More than half the days^LN",
          3: "LA6571-9^Nearly every day^LN"}
OBR_PHQ9 = "OBR|1|PL-1|FI-1|44249-1^PHQ-9 quick depression assessment panel^LN|||20240501100000-0500"


def phq9(weights: list[int], total: str | None = None, coded: bool = True) -> str:
    obx = [f"OBX|{i}|{'CWE' if coded else 'NM'}|{code}^item^LN||{ANSWER[w] if coded else w}||||||F"
           for i, (code, w) in enumerate(zip(PHQ9_ITEMS, weights, strict=True), 1)]
    if total is not None:
        obx.append(f"OBX|10|NM|44261-6^PHQ-9 total^LN||{total}|{{score}}|||||F")
    return er7(msh("ORU^R01^ORU_R01", control_id="PHQ-1"), PID, "PV1|1|O|||||||||||||||||V55", OBR_PHQ9, *obx)


def by_code(event: object, code: str) -> dict:
    found = [o for o in resources(event, "Observation") if code in codes(o["code"])]  # type: ignore[arg-type]
    assert len(found) == 1
    return found[0]


def test_phq9_item9_positive_raises_flag_and_safety_alert() -> None:
    event = mapped(phq9([1, 2, 0, 1, 0, 1, 0, 0, 1]))
    flag = one(event, "Flag")
    patient = one(event, "Patient")
    assert codes(flag["code"]) == {"225444004"} and flag["status"] == "active"
    assert flag["subject"] == {"reference": f"Patient/{patient['id']}"}
    assert security(flag) == set(PSYCHIATRIC)
    (alert,) = event.alerts
    assert alert.kind == "phq9-item9"
    assert alert.flag_id == flag["id"]
    assert alert.patient_reference == f"Patient/{patient['id']}"
    total = by_code(event, "44261-6")
    assert total["valueQuantity"]["value"] == 6
    assert total["interpretation"] == [{"text": "Mild depression"}]
    panel = by_code(event, "44249-1")
    assert len(panel["hasMember"]) == 10
    response = one(event, "QuestionnaireResponse")
    assert response["questionnaire"] == "http://loinc.org/q/44249-1"
    assert [item["linkId"] for item in response["item"]] == [f"/{code}" for code in PHQ9_ITEMS]
    for resource in [*resources(event, "Observation"), response, one(event, "DiagnosticReport")]:
        assert security(resource) == set(PSYCHIATRIC)
    assert not security(patient)
    report = one(event, "DiagnosticReport")
    assert {r["reference"] for r in report["result"]} == \
        {f"Observation/{o['id']}" for o in resources(event, "Observation")}


def test_phq9_numeric_answers_and_no_risk() -> None:
    event = mapped(phq9([3, 3, 2, 2, 1, 1, 0, 0, 0], total="12", coded=False))
    assert not resources(event, "Flag") and event.alerts == ()
    assert by_code(event, "44261-6")["valueQuantity"]["value"] == 12
    assert by_code(event, "44250-9")["valueCodeableConcept"]["coding"][0]["code"] == "LA6571-9"
    assert "reported-total-mismatch" not in event.data_quality


def test_reported_total_that_disagrees_is_kept_and_flagged() -> None:
    event = mapped(phq9([1, 1, 1, 1, 1, 1, 1, 1, 0], total="20"))
    assert "reported-total-mismatch" in event.data_quality
    total = by_code(event, "44261-6")
    assert total["valueQuantity"]["value"] == 8
    assert "reported 20" in total["note"][0]["text"]
    reported = one(event, "QuestionnaireResponse")["item"][-1]
    assert reported == {"linkId": "/44261-6", "text": reported["text"], "answer": [{"valueInteger": 20}]}


def test_instrument_found_by_item_codes_without_a_panel_code() -> None:
    gad7 = ["69725-0", "68509-9", "69733-4", "69734-2", "69735-9", "69689-8", "69736-7"]
    obx = [f"OBX|{i}|NM|{code}^item^LN||2||||||F" for i, code in enumerate(gad7, 1)]
    event = mapped(er7(msh("ORU^R01"), PID, "OBR|1||F2|SCREEN^Screening^L|||20240501", *obx))
    assert by_code(event, "70274-6")["valueQuantity"]["value"] == 14


def test_cssrs_high_risk_alert() -> None:
    items = {"93246-7": "Y", "93247-5": "Y", "93248-3": "Y", "93249-1": "Y", "93250-9": "N", "93267-3": "N"}
    yes_no = {"Y": "LA33-6^Yes^LN", "N": "LA32-8^No^LN"}
    obx = [f"OBX|{i}|CWE|{code}^item^LN||{yes_no[a]}||||||F" for i, (code, a) in enumerate(items.items(), 1)]
    event = mapped(er7(msh("ORU^R01"), PID, "OBR|1||F3|93373-9^C-SSRS screener^LN|||20240501", *obx))
    assert [a.kind for a in event.alerts] == ["cssrs-high-risk"]


def test_audit_c_is_labelled_alcohol_not_part2() -> None:
    obx = [f"OBX|{i}|NM|{code}^item^LN||1||||||F" for i, code in enumerate(["68518-0", "68519-8", "68520-6"], 1)]
    event = mapped(er7(msh("ORU^R01"), PID, "OBR|1||F4|72109-2^AUDIT-C^LN|||20240501", *obx))
    assert security(by_code(event, "75626-2")) == {"R", "ETHUD"}


def test_answer_outside_the_list_is_a_content_error_at_its_obx() -> None:
    text = phq9([0, 0, 0, 0, 0, 0, 0, 0, 0]).replace("44252-5^item^LN||LA6568-5^Not at all^LN",
                                                     "44252-5^item^LN||LA9999-9^Sometimes^LN")
    with pytest.raises(InvalidValue) as caught:
        mapped(text)
    assert (caught.value.location, caught.value.segment_occurrence) == ("OBX-5", 7)
    assert "Sometimes" not in str(caught.value)


def test_value_types() -> None:
    obx = [
        "OBX|1|NM|2160-0^Creatinine^LN||1.25|mg/dL^mg/dL^UCUM|0.6-1.3|N|||F",
        "OBX|2|NM|33914-3^eGFR^LN||>60|mL/min^mL/min^UCUM||||F",
        "OBX|3|SN|5048-4^ANA titer^LN||^1^:^160||||||F",
        "OBX|4|SN|2345-7^Glucose range^LN||^70^-^99|mg/dL^mg/dL^UCUM|||||C",
        "OBX|5|ST|1234-5^Comment^LN||free text||||||P",
        "OBX|6|TX|1234-6^Narrative^LN||line one~line two||||||F",
        "OBX|7|CWE|600-7^Culture^LN||3092008^Staphylococcus aureus^SCT||||||F",
        "OBX|8|DT|1234-7^Date^LN||20240430||||||F",
        "OBX|9|TM|1234-8^Time^LN||0930||||||F",
        "OBX|10|NM|1234-9^Bad number^LN||five||||||X",
    ]
    event = mapped(er7(msh("ORU^R01"), PID, "OBR|1||F5|24323-8^Panel^LN|||20240501||||||||||||||||||F",
                       *obx, "NTE|1||Reviewed by lab"))
    values = {next(iter(codes(o["code"]))): o for o in resources(event, "Observation")}
    assert values["2160-0"]["valueQuantity"] == {"value": 1.25, "unit": "mg/dL",
                                                 "system": "http://unitsofmeasure.org", "code": "mg/dL"}
    assert values["2160-0"]["referenceRange"][0]["high"]["value"] == 1.3
    assert values["33914-3"]["valueQuantity"]["comparator"] == ">"
    assert values["5048-4"]["valueRatio"] == {"numerator": {"value": 1}, "denominator": {"value": 160}}
    assert values["2345-7"]["valueRange"]["low"]["value"] == 70
    assert values["2345-7"]["status"] == "corrected"
    assert values["1234-5"]["valueString"] == "free text" and values["1234-5"]["status"] == "preliminary"
    assert values["1234-6"]["valueString"] == "line one\nline two"
    assert codes(values["600-7"]["valueCodeableConcept"]) == {"3092008"}
    assert values["1234-7"]["valueDateTime"] == "2024-04-30"
    assert values["1234-8"]["valueTime"] == "09:30:00"
    assert values["1234-9"]["valueString"] == "five" and values["1234-9"]["status"] == "cancelled"
    assert values["1234-9"]["note"] == [{"text": "Reviewed by lab"}]
    assert "non-numeric-value@OBX-5" in event.data_quality
    assert one(event, "DiagnosticReport")["status"] == "final"


def test_report_text_lines_become_the_presented_form() -> None:
    event = mapped(sample("lfh-ORU-multiline.hl7"))
    report = one(event, "DiagnosticReport")
    text = base64.b64decode(report["presentedForm"][0]["data"]).decode()
    assert "CHIEF COMPLAINT" in text and "Psychiatric: Negative for depression" in text


def test_resent_corrected_result_keeps_its_ids() -> None:
    first = mapped(phq9([0, 0, 0, 0, 0, 0, 0, 0, 0]))
    second = mapped(phq9([0, 0, 0, 0, 0, 0, 0, 0, 1]).replace("PHQ-1", "PHQ-2"))
    assert {o["id"] for o in resources(first, "Observation")} == {o["id"] for o in resources(second, "Observation")}
