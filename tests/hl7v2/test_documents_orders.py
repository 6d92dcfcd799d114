"""MDM T02 -> DocumentReference; RDE O11 -> MedicationRequest; VXU V04 -> Immunization."""

from __future__ import annotations

import base64

import pytest

from services.common.errors import RefusedContent
from services.common.hl7v2 import MissingRequired, PsychotherapyNoteRefused
from services.common.security_labels import PART2, PSYCHIATRIC
from tests.hl7v2.helpers import PID, codes, er7, mapped, msh, one, resources, sample, security


def mdm(txa2: str, *body: str, confidentiality: str = "") -> str:
    txa = (f"TXA|1|{txa2}|TX|20240501093000-0500|1234^Smith^Ann||20240501090000-0500|||||DOC-77|||||AU|"
           f"{confidentiality}|AV")
    return er7(msh("MDM^T02^MDM_T02", control_id="MDM-1"), "EVN|T02|20240501", PID, "PV1|1|O|||||||||||||||||V9",
               txa, *body)


def body_text(document: dict) -> str:
    return base64.b64decode(document["content"][0]["attachment"]["data"]).decode()


def test_sample_document_body_is_the_obx_text() -> None:
    text = sample("MDM-T02-02.hl7")
    lines = [line.split("|")[5] for line in text.splitlines() if line.startswith("OBX|")]
    document = one(mapped(text), "DocumentReference")
    assert body_text(document) == "\n".join(lines)
    assert document["content"][0]["attachment"]["contentType"] == "text/plain; charset=utf-8"


def test_progress_note_gets_its_loinc_type() -> None:
    event = mapped(mdm("PN^Progress note^HL70270", "OBX|1|TX|||Patient seen today.||||||F"))
    document = one(event, "DocumentReference")
    assert "11506-3" in codes(document["type"])
    assert document["docStatus"] == "final" and document["status"] == "current"
    assert document["date"] == "2024-05-01T09:30:00-05:00"
    assert document["masterIdentifier"]["value"] == "DOC-77"
    assert document["context"]["encounter"][0]["reference"].startswith("Encounter/")
    assert not security(document)


def test_mental_health_note_is_labelled_psy() -> None:
    event = mapped(mdm("34904-3^Mental health Progress note^LN", "OBX|1|TX|||Mood improving.||||||F"))
    document = one(event, "DocumentReference")
    assert security(document) == set(PSYCHIATRIC)
    assert set(event.security_labels) == set(PSYCHIATRIC)
    assert body_text(document) == "Mood improving."


def test_sender_confidentiality_is_kept() -> None:
    event = mapped(mdm("PN", "OBX|1|TX|||Text||||||F", confidentiality="V"))
    assert security(one(event, "DocumentReference")) == {"V"}


@pytest.mark.parametrize("txa2", ["PSYTHPN^Psychotherapy note^L", "PTN^Psychotherapy Note^99LOCAL"])
def test_psychotherapy_notes_are_refused(txa2: str) -> None:
    with pytest.raises(PsychotherapyNoteRefused) as caught:
        mapped(mdm(txa2, "OBX|1|TX|||Session content||||||F"))
    assert isinstance(caught.value, RefusedContent)
    assert caught.value.ack_code == "AE" and caught.value.location == "TXA-2"


def test_document_without_body_is_refused() -> None:
    with pytest.raises(MissingRequired) as caught:
        mapped(mdm("PN"))
    assert caught.value.location == "OBX-5"


def test_rde_sample_medication_requests() -> None:
    text = sample("RDE-O11-02.hl7")
    rxe_codes = {line.split("|")[2].split("^")[0] for line in text.splitlines() if line.startswith("RXE|")}
    requests = resources(mapped(text), "MedicationRequest")
    assert {next(iter(codes(r["medicationCodeableConcept"]))) for r in requests} == rxe_codes
    assert all(r["intent"] == "order" and r["status"] == "active" for r in requests)


def rde(give_code: str, *extra: str) -> str:
    return er7(msh("RDE^O11^RDE_O11"), PID, "ORC|NW|ORD-1|||||||20240501090000-0500|||1234^Smith^Ann",
               "TQ1|1||BID^Twice a day^HL70335||||20240501|20240601",
               f"RXE||{give_code}|8||mg^milligram^UCUM|TAB^Tablet^HL70292|Take with food|||30|TAB^Tablet|2",
               "RXR|PO^Oral^HL70162", *extra)


def test_buprenorphine_order_is_part2() -> None:
    event = mapped(rde("1819^Buprenorphine^RXNORM"))
    request = one(event, "MedicationRequest")
    assert security(request) == set(PART2)
    dosage = request["dosageInstruction"][0]
    assert dosage["doseAndRate"][0]["doseQuantity"]["value"] == 8
    assert codes(dosage["route"]) == {"PO"}
    assert dosage["timing"]["repeat"]["boundsPeriod"] == {"start": "2024-05-01", "end": "2024-06-01"}
    assert request["dispenseRequest"]["numberOfRepeatsAllowed"] == 2
    assert request["requester"]["display"] == "Ann Smith"
    assert request["identifier"][0]["value"] == "ORD-1"


@pytest.mark.parametrize("give_code", ["36437^Sertraline 50 MG^RXNORM", "00093-7198-56^sertraline 50 mg tab^NDC"])
def test_psychotropic_order_is_psy(give_code: str) -> None:
    assert security(one(mapped(rde(give_code)), "MedicationRequest")) == set(PSYCHIATRIC)


def test_cancelled_order() -> None:
    text = rde("36437^Sertraline^RXNORM").replace("ORC|NW|", "ORC|CA|")
    assert one(mapped(text), "MedicationRequest")["status"] == "cancelled"


def test_vxu_sample_immunization() -> None:
    event = mapped(sample("VXU-V04-01.hl7"))
    immunization = one(event, "Immunization")
    assert codes(immunization["vaccineCode"]) == {"49281021588"}
    assert immunization["occurrenceDateTime"] == "2021-08-18"
    part_of = [o for o in resources(event, "Observation") if o.get("partOf")]
    assert part_of and all(o["partOf"] == [{"reference": f"Immunization/{immunization['id']}"}] for o in part_of)
