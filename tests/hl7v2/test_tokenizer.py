"""carebus' own ER7 tokenizer (services/common/hl7v2/er7.py) splits exactly as python-hl7 (``hl7.parse``), which
it replaced for speed: every field of every segment, on the published samples and on generated messages with
all the separators, escapes, HL7 nulls, empty fields and repetitions in odd places."""

from __future__ import annotations

from typing import Any

import hl7
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.hl7v2 import Hl7v2Error
from services.common.hl7v2.er7 import Message, Segment, parse_message, unescape
from tests.hl7v2.helpers import HL7_SAMPLES, sample

Reading = list[list[list[str]]]  # repetitions -> components -> sub-components (unescaped, stripped)


def reference_fields(message: Message, segment: Segment) -> list[Any]:
    """The segment as python-hl7 splits it, with the message's (repaired) separators."""
    seps = message.seps
    prefix = f"MSH{seps.field}{seps.component}{seps.repetition}{seps.escape}{seps.subcomponent}{seps.field}"
    line = segment._line
    parsed = hl7.parse(line if segment.position == 0 else f"{prefix}\r{line}")
    return list(parsed[0 if segment.position == 0 else 1])


def clean(raw: str, message: Message) -> str:
    return "" if raw == '""' else unescape(raw, message.seps).strip()


def reference_reading(node: Any, message: Message) -> Reading:
    """A python-hl7 field -> its non-empty repetitions, read as carebus reads them."""
    reps = [node] if isinstance(node, str) else list(node)
    out: Reading = []
    for rep in reps:
        components = [rep] if isinstance(rep, str) else list(rep)
        read = [[clean(str(sub), message) for sub in ([c] if isinstance(c, str) else list(c))]
                for c in components]
        if any(sub for component in read for sub in component):
            out.append(read)
    return out


def reading(segment: Segment, n: int) -> Reading:
    return [[rep.subs(c) for c in range(1, len(rep) + 1)] for rep in segment.reps(n)]


def assert_same_as_python_hl7(text: str) -> int:
    """Compare every field; return how many fields were compared."""
    try:
        message = parse_message(text)
    except Hl7v2Error:
        return 0
    compared = 0
    for segment in message.segments:
        fields = reference_fields(message, segment)
        assert segment.field_count == len(fields) - 1, segment.name
        for n in range(1, len(fields) + 1):
            expected = reference_reading(fields[n], message) if n < len(fields) else []
            assert reading(segment, n) == expected, f"{segment.name}-{n}"
            first = expected[0] if expected else [[""]]
            assert segment.get(n) == first[0][0]
            compared += 1
    return compared


def test_every_field_of_every_sample_splits_as_python_hl7() -> None:
    total = sum(assert_same_as_python_hl7(sample(path.name)) for path in HL7_SAMPLES)
    assert total > 1000


SEPARATORS = list("|^~\\&")
PIECES = [*SEPARATORS, "A", "b", "1", " ", ".", "é", '""', "\\F\\", "\\S\\", "\\T\\", "\\R\\", "\\E\\", "\\X41\\",
          "\\.br\\", "\\H\\"]
VALUE = st.lists(st.sampled_from(PIECES), max_size=12).map("".join)


@st.composite
def messages(draw: st.DrawFn) -> str:
    encoding = draw(st.sampled_from(["^~\\&", "^~\\\\&", "^~", "^", "^~\\&#", "#~\\&", "!~\\&"]))
    msh = f"MSH|{encoding}|EHR|CLINIC^1.2.3^ISO|||20240501||ADT^A01|X1|P|2.5"
    segments = [msh + "|" + "|".join(draw(st.lists(VALUE, max_size=6)))]
    for _ in range(draw(st.integers(0, 6))):
        name = draw(st.sampled_from(["PID", "PV1", "OBX", "NTE", "ZZ1", "NK1"]))
        segments.append("|".join([name, *draw(st.lists(VALUE, max_size=20))]))
    return draw(st.sampled_from(["\r", "\n", "\r\n"])).join(segments)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_generated_messages_split_as_python_hl7(text: str) -> None:
    assert_same_as_python_hl7(text)
