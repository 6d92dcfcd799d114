"""Random and mutated HL7 v2 never raises anything but the declared Hl7v2Error types, mapping and validating
its bundle (an invalid resource is InvalidResource, AE), and the ACK builder always answers."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.hl7v2 import Hl7v2Error, ack_message, inspect_message
from services.mapper.hl7v2 import map_hl7v2_message, validate_mapped
from tests.hl7v2.helpers import HL7_SAMPLES, context

SAMPLE_TEXTS = [path.read_text(encoding="utf-8") for path in HL7_SAMPLES]
NOW = datetime(2024, 5, 1, tzinfo=UTC)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SEGMENT_IDS = ["MSH", "EVN", "PID", "PD1", "NK1", "PV1", "PV2", "DG1", "AL1", "OBR", "OBX", "NTE", "ORC", "RXE",
               "RXR", "TQ1", "SCH", "AIS", "AIL", "AIP", "AIG", "RGS", "TXA", "MRG", "RXA", "ZZZ", "SPM"]
ALPHABET = st.sampled_from(list("|^~\\&#ABCXYZ0129.-+: \r\n\x0b\x1c\"")) | st.characters()


def attempt(text: str) -> None:
    try:
        validate_mapped(map_hl7v2_message(text, context()).bundle)  # the pipeline validates every bundle
    except Hl7v2Error as exc:
        assert exc.ack_code in {"AE", "AR"}
        ack = ack_message(text, exc.ack_code, exc, NOW)
        assert ack.startswith("MSH|")
    try:
        inspect_message(text)
    except Hl7v2Error:
        pass


@FUZZ
@given(st.text(ALPHABET, max_size=400))
def test_random_text(text: str) -> None:
    attempt(text)


@FUZZ
@given(st.text(ALPHABET, max_size=300))
def test_random_text_after_a_valid_header(text: str) -> None:
    attempt("MSH|^~\\&|EHR|CLINIC|||20240501||ADT^A01|X1|P|2.5\rPID|1||MRN1\r" + text)


@st.composite
def structured(draw: st.DrawFn) -> str:
    message_type = draw(st.sampled_from(["ADT^A01", "ADT^A02", "ADT^A03", "ADT^A08", "ADT^A40", "SIU^S12",
                                         "SIU^S15", "ORU^R01", "MDM^T02", "RDE^O11", "VXU^V04", "ACK^A01"]))
    version = draw(st.sampled_from(["2.3", "2.4", "2.5.1", "2.6", "2.8", "2.9", ""]))
    segments = [f"MSH|^~\\&|EHR|CLINIC|||20240501||{message_type}|X1|P|{version}"]
    field = st.text(st.sampled_from(list("^~&\\AZ09.-+<>:/ F")), max_size=12)
    for _ in range(draw(st.integers(0, 12))):
        name = draw(st.sampled_from(SEGMENT_IDS))
        segments.append("|".join([name, *draw(st.lists(field, max_size=46))]))
    return "\r".join(segments)


@FUZZ
@given(structured())
def test_structured_random_messages(text: str) -> None:
    attempt(text)


@FUZZ
@given(st.sampled_from(SAMPLE_TEXTS), st.lists(st.tuples(st.integers(0, 40_000), st.sampled_from(
    ["", "|", "^", "~", "&", "\\", "\r", "\n", "X", "9", "\x0b", "\\X41\\", "\\.br\\", '""', "\x00"])),
    min_size=1, max_size=8))
def test_mutated_samples(text: str, edits: list[tuple[int, str]]) -> None:
    mutated = text
    for position, replacement in edits:
        at = position % max(len(mutated), 1)
        mutated = mutated[:at] + replacement + mutated[at + 1:]
    attempt(mutated)
