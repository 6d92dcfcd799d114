"""What real feeds send: line endings, framing leftovers, escapes, repetitions, sub-components, Z-segments,
missing optional segments, local code systems, versions 2.3-2.8; and clear, PHI-free refusals."""

from __future__ import annotations

import base64

import pytest

from services.common.errors import InvalidInput, MappingError
from services.common.hl7v2 import (
    Hl7v2Error,
    MalformedMessage,
    MissingRequired,
    UnsupportedMessage,
    UnsupportedMessageType,
    UnsupportedVersion,
)
from services.common.hl7v2.er7 import parse_message, unescape
from services.mapper.hl7v2 import map_hl7v2_message
from tests.hl7v2.helpers import PID, codes, context, er7, mapped, msh, one, resources, sample

ADT = [msh("ADT^A01^ADT_A01"), "EVN|A01|20240501101500-0500", PID,
       "PV1|1|I|WARD^101^A||||1234^Smith^Ann|||PSY||||||||||V100|||||||||||||||||||||||||20240501100000-0500"]


@pytest.mark.parametrize("ending", ["\r", "\n", "\r\n", "\n\r"])
def test_segment_endings(ending: str) -> None:
    reference = mapped(er7(*ADT))
    assert mapped(er7(*ADT, ending=ending)).bundle == reference.bundle


def test_mixed_endings_blank_lines_framing_bytes_and_bom() -> None:
    reference = mapped(er7(*ADT))
    noisy = "\ufeff\x0b" + ADT[0] + "\r\n" + ADT[1] + "\n\n" + ADT[2] + "\r" + ADT[3] + "\r\n\x1c\r"
    assert mapped(noisy).bundle == reference.bundle


def test_doubled_escape_character_in_msh2_is_repaired() -> None:
    message = parse_message(sample("lfh-sample_win.hl7"))
    assert message.seps.subcomponent == "&"
    assert message.seps.escape == "\\"
    text = er7("MSH|^~\\\\&|EHR|CLINIC|||20240501||ADT^A01|X1|P|2.5",
               "PID|1||MRN1^^^AUTH&1.2.3.4&ISO^MR||Doe^John")
    identifier = [i for i in one(mapped(text), "Patient")["identifier"] if i.get("system") == "urn:oid:1.2.3.4"]
    assert identifier and identifier[0]["value"] == "MRN1"


def test_escape_sequences_are_resolved() -> None:
    value_text = "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f \\X4869\\ x\\.br\\y \\H\\bold\\N\\"
    text = er7(*ADT[:3], f"OBX|1|TX|1234-5^Note^LN||{value_text}||||||F")
    value = one(mapped(text), "Observation")["valueString"]
    assert value == "a|b^c&d~e\\f Hi x\ny bold"


def test_unterminated_and_unknown_escapes_do_not_fail() -> None:
    message = parse_message(er7(*ADT))
    assert unescape("end \\r", message.seps) == "end \\r"
    assert unescape("a\\Zlocal\\b\\Cxx\\c", message.seps) == "abc"
    assert unescape("\\XZZ\\", message.seps) == ""


def test_repetitions_components_and_subcomponents() -> None:
    patient = one(mapped(er7(*ADT)), "Patient")
    values = {i["value"]: i for i in patient["identifier"]}
    assert codes(values["MRN123"]["type"]) == {"MR"}
    assert values["999-11-2222"]["system"] == "http://hl7.org/fhir/sid/us-ssn"
    assert patient["name"][0] == {"use": "official", "family": "Doe", "given": ["Jane", "Q"]}


def test_z_segments_are_kept_reported_and_not_fatal() -> None:
    event = mapped(er7(*ADT, "ZPI|1|custom^stuff|more", "GT1|1||Guarantor^Gary"))
    assert event.unmapped_segments == ("ZPI", "GT1")
    provenance = one(event, "Provenance")
    listed = {e["what"]["identifier"]["value"]: e["what"]["display"] for e in provenance["entity"]
              if e["what"]["identifier"]["system"] == "urn:carebus:hl7v2:unmapped-segment"}
    assert set(listed) == {"ZPI", "GT1"}
    assert one(event, "Patient")


def test_missing_optional_segments() -> None:
    event = mapped(er7(msh("ADT^A08^ADT_A01"), "PID|1||MRN9^^^CLINIC^MR"))
    assert {r["resourceType"] for r in resources(event)} == {"MessageHeader", "Patient", "Provenance"}


def test_local_code_systems_get_the_senders_local_system() -> None:
    event = mapped(er7(*ADT, "DG1|1||X123^Local worry^99LOC"))
    condition = one(event, "Condition")
    assert condition["code"] == {"coding": [{"system": "urn:carebus:hl7v2:CLINIC/codes/99LOC", "code": "X123",
                                             "display": "Local worry"}], "text": "Local worry"}


@pytest.mark.parametrize("version", ["2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8", "2.8.2"])
def test_versions_2_3_to_2_8_are_accepted(version: str) -> None:
    event = mapped(er7(msh("ADT^A01", version=version), *ADT[1:]))
    assert one(event, "Patient")["birthDate"] == "1980-01-01"


@pytest.mark.parametrize("version", ["2.1", "2.2", "2.9", "3.0", "abc"])
def test_other_versions_are_unsupported(version: str) -> None:
    with pytest.raises(UnsupportedVersion) as caught:
        mapped(er7(msh("ADT^A01", version=version), *ADT[1:]))
    assert caught.value.ack_code == "AR"
    assert caught.value.location == "MSH-12"


def test_no_msh_is_a_content_error() -> None:
    with pytest.raises(MalformedMessage) as caught:
        mapped(er7(*ADT[1:]))
    assert (caught.value.location, caught.value.rule, caught.value.ack_code) == ("MSH", "msh-missing", "AE")


@pytest.mark.parametrize(("message_type", "rule"), [("QRY^A19", "unsupported-message-type"),
                                                    ("ADT^A99", "unsupported-event"),
                                                    ("ORU^R30", "unsupported-event")])
def test_unsupported_message_types_are_rejections_not_content_errors(message_type: str, rule: str) -> None:
    with pytest.raises(UnsupportedMessageType) as caught:
        mapped(er7(msh(message_type), *ADT[1:]))
    assert (caught.value.location, caught.value.rule, caught.value.ack_code) == ("MSH-9", rule, "AR")


def test_batches_are_unsupported() -> None:
    with pytest.raises(UnsupportedMessage):
        mapped(er7(*ADT, *ADT))
    with pytest.raises(UnsupportedMessage):
        mapped(er7("BHS|^~\\&|EHR", *ADT, "BTS|1"))


@pytest.mark.parametrize(("segments", "location"), [
    ([msh("ADT^A01"), "EVN|A01"], "PID"),
    ([msh("ADT^A01"), "PID|1||^^^CLINIC^MR||Doe^Jane"], "PID-3"),
    (["MSH|^~\\&|EHR|CLINIC|||20240501||ADT^A01||P|2.5", "PID|1||M1"], "MSH-10"),
    (["MSH|^~\\&|EHR|CLINIC|||20240501|||X|P|2.5", "PID|1||M1"], "MSH-9"),
    (["MSH|^~\\&|EHR|CLINIC|||20240501||ADT^A01|X||", "PID|1||M1"], "MSH-12"),
    ([msh("ADT^A40^ADT_A39"), "PID|1||M1"], "MRG"),
    ([msh("SIU^S12"), "PID|1||M1"], "SCH"),
    ([msh("MDM^T02"), "PID|1||M1"], "TXA"),
    ([msh("RDE^O11"), "PID|1||M1"], "RXE"),
])
def test_missing_required_parts_name_their_location(segments: list[str], location: str) -> None:
    with pytest.raises(MissingRequired) as caught:
        mapped(er7(*segments))
    assert caught.value.location == location
    assert caught.value.ack_code == "AE"


def test_error_tree_and_no_values_in_messages() -> None:
    assert issubclass(Hl7v2Error, MappingError) and issubclass(Hl7v2Error, InvalidInput)
    name = "Zebedee"
    with pytest.raises(Hl7v2Error) as caught:
        mapped(er7(msh("ADT^A01", version="9.9"), f"PID|1||SECRET-MRN||{name}^Jane"))
    assert name not in str(caught.value) and "SECRET-MRN" not in str(caught.value)
    assert all(name not in p.message for p in caught.value.problems)


def test_invalid_values_are_left_out_and_reported() -> None:
    text = er7(msh("ADT^A01"), "PID|1||MRN1^^^C^MR||Doe^Jane||19801341|F")
    event = mapped(text)
    assert "birthDate" not in one(event, "Patient")
    assert "invalid-datetime@PID-7" in event.data_quality


@pytest.mark.parametrize("value", ["122200", "19800001", "1980010012"])
def test_a_zero_month_or_day_is_an_invalid_datetime_not_an_invalid_resource(value: str) -> None:
    # found by fuzzing: month 00 used to pass as January and gave "1222-00", which R4 rejects
    text = er7(msh("ADT^A01"), "PID|1||MRN1^^^C^MR",
               f"PV1|1|O|||||||||||||||||V1|||||||||||||||||||||||||20240501|{value}")
    event = mapped(text)  # validates the bundle
    assert "end" not in one(event, "Encounter")["period"]
    assert "invalid-datetime@PV1-45" in event.data_quality


def test_times_without_zone_take_the_msh7_zone() -> None:
    text = er7(msh("ADT^A01", timestamp="20240501101500+0130"), "PID|1||MRN1^^^C^MR",
               "PV1|1|O|||||||||||||||||V1|||||||||||||||||||||||||202405010930")
    assert one(mapped(text), "Encounter")["period"]["start"] == "2024-05-01T09:30:00+01:30"


def test_a_line_break_inside_a_value_continues_the_segment() -> None:
    text = "\n".join([*ADT[:3], "OBX|1|TX|1234-5^Note^LN||first line", "second line||||||F"])
    observation = one(mapped(text), "Observation")
    assert observation["valueString"] == "first line\nsecond line"
    assert observation["status"] == "final"


def test_ed_attachment_in_an_order_becomes_presented_form() -> None:
    data = base64.b64encode(b"%PDF-1.4 report").decode()
    text = er7(msh("ORU^R01"), PID, "OBR|1|P1|F1|11502-2^Lab report^LN|||20240501",
               f"OBX|1|ED|11502-2^Lab report^LN||LAB^application^pdf^Base64^{data}||||||F")
    report = one(mapped(text), "DiagnosticReport")
    assert report["presentedForm"] == [{"contentType": "application/pdf", "data": data}]


def test_mapping_is_pure_for_the_same_context() -> None:
    text = er7(*ADT)
    assert map_hl7v2_message(text, context()).bundle == map_hl7v2_message(text, context()).bundle


def test_a_resource_that_breaks_r4_is_an_invalid_resource_error() -> None:
    from services.common.hl7v2 import InvalidResource
    from services.mapper.hl7v2 import validate_mapped

    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:6f1c1f2e-3b0a-4c55-9a57-0c4a1e5b2d10",
         "resource": {"resourceType": "Observation", "id": "x", "status": "final", "code": {"text": "t"},
                      "valueQuantity": {"value": "twelve"}}}]}
    with pytest.raises(InvalidResource) as caught:
        validate_mapped(bundle)
    assert caught.value.location == "OBX"
    assert "valueQuantity" in caught.value.message and "twelve" not in caught.value.message
