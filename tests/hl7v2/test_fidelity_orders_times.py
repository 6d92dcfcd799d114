"""Issue 10 item 8: RDE O11 keeps RXO and the give rate, TQ1-3 is read as RPT, times without an offset are not
given an invented zone, SIU notes are all kept, and an MDM document part without content is refused by name."""

from __future__ import annotations

import dataclasses

import pytest
from pydantic import ValidationError

from services.common.hl7v2.errors import InvalidValue, MissingRequired
from services.common.settings import Settings
from services.mapper.hl7v2 import map_hl7v2_message
from services.mapper.hl7v2.terminology import UCUM
from tests.hl7v2.helpers import PID, context, er7, mapped, msh, one, resources, sample

V2_0335 = "http://terminology.hl7.org/CodeSystem/v2-0335"
ORC = "ORC|NW|ORD-9|||||||20240501090000-0500|||1234^Smith^Ann"


def rde(*order: str) -> str:
    return er7(msh("RDE^O11^RDE_O11", control_id="RDE-9"), PID, ORC, *order)


def segment(name: str, **fields: str) -> str:
    """A segment from its fields by number (f3="..." is field 3)."""
    numbered = {int(key[1:]): value for key, value in fields.items()}
    return "|".join([name, *(numbered.get(n, "") for n in range(1, max(numbered) + 1))])


def dosage(text: str) -> dict:
    return one(mapped(text), "MedicationRequest")["dosageInstruction"][0]


# --- RXE-23/24 give rate ----------------------------------------------------------------------------------

def test_give_rate_becomes_a_ucum_rate_quantity() -> None:
    rxe = segment("RXE", f2="0143963401^NICARDIPINE 40 MG/200 ML^NDC", f3="5", f5="mg/hr^mg/hr", f23="23",
                  f24="mL/hr^mL/hr")
    rate = dosage(rde(rxe))["doseAndRate"][0]["rateQuantity"]
    assert rate == {"value": 23, "unit": "mL/hr", "system": UCUM, "code": "mL/h"}


def test_a_rate_unit_carebus_does_not_know_keeps_its_text_only() -> None:
    rxe = segment("RXE", f2="0143963401^NICARDIPINE^NDC", f3="5", f5="mg", f23="7", f24="puffs/shift")
    assert dosage(rde(rxe))["doseAndRate"][0]["rateQuantity"] == {"value": 7, "unit": "puffs/shift"}


def test_sample_rde_keeps_the_rate_of_each_encoded_order() -> None:
    requests = mapped(sample("RDE-O11-02.hl7")).bundle["entry"]
    rates = [e["resource"]["dosageInstruction"][0]["doseAndRate"][0]["rateQuantity"] for e in requests
             if e["resource"]["resourceType"] == "MedicationRequest"]
    assert rates == [{"value": 23, "unit": "mL/hr", "system": UCUM, "code": "mL/h"}] * 2


# --- RXO, the requested order -----------------------------------------------------------------------------

RXO = segment("RXO", f1="36437^Sertraline 50 MG^RXNORM", f2="50", f4="mg^milligram^UCUM",
              f6="^Dispense in blister pack", f7="^Take one tablet each morning", f9="N", f11="30", f12="TAB^Tablet",
              f13="2", f20="F32.9^Major depressive disorder^I10")


def test_rxo_fills_what_rxe_leaves_empty() -> None:
    request = one(mapped(rde(RXO, "RXE||36437^Sertraline 50 MG^RXNORM")), "MedicationRequest")
    dose = request["dosageInstruction"][0]
    assert dose["doseAndRate"][0]["doseQuantity"] == {"value": 50, "unit": "milligram", "system": UCUM, "code": "mg"}
    assert dose["text"] == "Take one tablet each morning"
    assert request["dispenseRequest"] == {"quantity": {"value": 30, "unit": "Tablet"}, "numberOfRepeatsAllowed": 2}
    assert request["substitution"] == {"allowedBoolean": False}
    assert request["reasonCode"][0]["coding"][0]["code"] == "F32.9"
    assert {"text": "Pharmacy instructions (RXO-6): Dispense in blister pack"} in request["note"]


def test_rxe_wins_over_rxo_and_a_different_requested_drug_is_noted() -> None:
    rxe = "RXE||312940^sertraline 50 MG Oral Tablet^RXNORM|100||mg^milligram^UCUM"
    request = one(mapped(rde(RXO.replace("36437^Sertraline 50 MG", "1234^Other drug"), rxe)), "MedicationRequest")
    assert request["medicationCodeableConcept"]["coding"][0]["code"] == "312940"
    assert request["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] == 100
    assert {"text": "Requested as (RXO-1): Other drug (1234)"} in request["note"]


def test_an_order_with_rxo_and_no_rxe_is_mapped_from_rxo() -> None:
    # an RDE needs one RXE (check_shape refuses it otherwise); another order of the message may have RXO alone
    event = mapped(rde("RXE||1819^Buprenorphine^RXNORM|8||mg", "ORC|NW|ORD-10", RXO))
    requested = [r for r in resources(event, "MedicationRequest") if r["identifier"][0]["value"] == "ORD-10"]
    assert requested[0]["medicationCodeableConcept"]["coding"][0]["code"] == "36437"
    assert requested[0]["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] == 50
    assert "RXO" not in event.unmapped_segments


# --- TQ1-3 repeat pattern (RPT) ---------------------------------------------------------------------------

RXE = "RXE||36437^Sertraline^RXNORM|50||mg"


@pytest.mark.parametrize(("tq1_3", "code", "system", "repeat"), [
    ("TID", "TID", V2_0335, {"frequency": 3, "period": 1, "periodUnit": "d"}),
    ("BID^^^^^^^^^", "BID", V2_0335, {"frequency": 2, "period": 1, "periodUnit": "d"}),
    ("Q6H", "Q6H", "urn:carebus:hl7v2:CLINIC/codes/v2-0335", {"frequency": 1, "period": 6, "periodUnit": "h"}),
    ("P&Post (after)&HL70335^^^^180^min^^PCM^360^s", "P", V2_0335,
     {"frequency": 1, "period": 180, "periodUnit": "min", "when": ["PCM"], "offset": 6}),
])
def test_tq1_3_is_read_as_a_repeat_pattern(tq1_3: str, code: str, system: str, repeat: dict) -> None:
    timing = dosage(rde(f"TQ1|1||{tq1_3}||||20240501|20240601", RXE))["timing"]
    assert timing["code"]["coding"] == [{"system": system, "code": code}]
    assert {k: v for k, v in timing["repeat"].items() if k != "boundsPeriod"} == repeat
    assert timing["repeat"]["boundsPeriod"] == {"start": "2024-05-01", "end": "2024-06-01"}


def test_the_sample_repeat_pattern_is_one_code_not_p_and_s() -> None:
    timing = one(mapped(sample("RDE-O11-01.hl7")), "MedicationRequest")["dosageInstruction"][0]["timing"]
    assert timing["code"] == {"coding": [{"system": V2_0335, "code": "P"}], "text": "Post (after)"}
    assert timing["repeat"]["when"] == ["PCM"] and timing["repeat"]["offset"] == 6


# --- time zones -------------------------------------------------------------------------------------------

def adt(timestamp: str, admit: str) -> str:
    return er7(msh("ADT^A01^ADT_A01", timestamp=timestamp), "EVN|A01|" + timestamp, PID,
               f"PV1|1|O|||||||||||||||||V42|||||||||||||||||||||||||{admit}")


def period_start(text: str, **zones: object) -> tuple[str, tuple[str, ...]]:
    event = map_hl7v2_message(text, dataclasses.replace(context(), **zones))
    return one(event, "Encounter")["period"]["start"], event.data_quality


def test_a_time_without_any_known_zone_keeps_its_date_only_and_says_so() -> None:
    start, issues = period_start(adt("20240501101500", "20240501093000"))
    assert start == "2024-05-01"
    assert "timezone-unknown@PV1-44" in issues


def test_msh_7_offset_is_the_senders_zone() -> None:
    assert period_start(adt("20240501101500-0500", "20240501093000"))[0] == "2024-05-01T09:30:00-05:00"


def test_the_senders_configured_zone_wins_and_knows_daylight_saving() -> None:
    zones = {"time_zones": {"CLINIC": "America/Chicago"}}
    assert period_start(adt("20240101101500-0500", "20240501093000"), **zones)[0] == "2024-05-01T09:30:00-05:00"
    assert period_start(adt("20240501101500", "20240115093000"), **zones)[0] == "2024-01-15T09:30:00-06:00"
    assert period_start(adt("20240501101500", "20240115093000+0100"), **zones)[0] == "2024-01-15T09:30:00+01:00"


def test_the_default_zone_applies_when_nothing_else_is_known() -> None:
    start, issues = period_start(adt("20240501101500", "20240501093000"), default_time_zone="Europe/Amsterdam")
    assert start == "2024-05-01T09:30:00+02:00" and not issues


def test_a_booked_appointment_without_a_zone_is_refused_naming_the_rule() -> None:
    text = er7(msh("SIU^S12^SIU_S12", timestamp="20240501101500"), "SCH|PL-1|FI-1",
               "TQ1|||||||20240510140000|20240510145000", PID, "RGS|1")
    with pytest.raises(MissingRequired) as refused:
        map_hl7v2_message(text, context())
    assert (refused.value.location, refused.value.rule) == ("TQ1-7", "timezone-required")
    configured = dataclasses.replace(context(), time_zones={"CLINIC": "America/New_York"})
    assert one(map_hl7v2_message(text, configured), "Appointment")["start"] == "2024-05-10T14:00:00-04:00"


def test_time_zone_settings_must_name_iana_zones() -> None:
    assert Settings(hl7_sender_time_zones={"GHH": "America/Chicago"}).hl7_sender_time_zones == {
        "GHH": "America/Chicago"}
    with pytest.raises(ValidationError):
        Settings(hl7_sender_time_zones={"GHH": "Central"})
    with pytest.raises(ValidationError):
        Settings(hl7_default_time_zone="+02:00")


# --- SIU notes --------------------------------------------------------------------------------------------

def test_s14_sample_keeps_its_first_note_sent_in_nte_2() -> None:
    appointment = one(mapped(sample("SIU-S14-01.hl7")), "Appointment")
    assert appointment["comment"].split("\n")[0] == (
        "Appointment modified by filler application for change of location from Room01 to Room02.")
    assert len(appointment["comment"].split("\n")) == 5


# --- MDM document parts without content -------------------------------------------------------------------

def test_mdm_sample_with_an_empty_ed_part_is_refused_at_that_obx() -> None:
    with pytest.raises(MissingRequired) as refused:
        mapped(sample("refused/MDM-T02-01.hl7"))
    assert (refused.value.location, refused.value.rule) == ("OBX-5", "attachment-data-missing")
    assert refused.value.segment_occurrence == 2 and refused.value.ack_code == "AE"


def test_mdm_with_an_unreadable_ed_part_is_refused() -> None:
    text = er7(msh("MDM^T02^MDM_T02"), "EVN|T02|20240501", PID, "TXA|1|PN|TX|20240501093000-0500|||||||||DOC-1",
               "OBX|1|TX|||Seen today.||||||F", "OBX|2|ED|||^application^pdf^Base64^not base64 at all!||||||F")
    with pytest.raises(InvalidValue) as refused:
        mapped(text)
    assert (refused.value.location, refused.value.rule) == ("OBX-5", "attachment-unreadable")
