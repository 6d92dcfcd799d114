"""HL7 v2 ER7 text -> an immutable, version-tolerant view of segments, fields, repetitions and components.

What real feeds send is normalised first: segments ending in ``\\r``, ``\\n`` or ``\\r\\n`` (a line that does
not start a segment continues the previous one), MLLP framing bytes and control characters, a doubled escape
character in MSH-2 (``^~\\\\&``) and short or missing encoding characters. Values are unescaped (``\\F\\ \\S\\
\\T\\ \\R\\ \\E\\ \\Xhh..\\ \\.br\\`` ...) only when read, and the HL7 null ``""`` reads as empty. Nothing here
logs a value.

The tokenizer is our own, on purpose (carebus issue 4). It splits exactly as python-hl7 (``hl7.parse``) did:
segments on CR/LF, fields on MSH-1 (MSH-1 and MSH-2 themselves being fields 1 and 2 of MSH), repetitions,
components and sub-components on the MSH-2 characters, escape sequences resolved after splitting. But it is
lazy: a segment is split into fields the first time one is read, and a field into repetitions, components
and sub-components (unescaped and stripped once) the first time it is read; fields the mapping never reads
are never split. A split field is immutable and memoized by its text (bounded), since codes, units, names
and facilities recur from message to message. python-hl7 builds a container object for every field,
repetition and component of the whole message up front: about 4 ms for a typical 6 kB ADT message, six times
the whole per-message budget of the HL7 path (0.67 ms); hl7apy's tolerant parser was slower still (about
100 ms). Neither has a lazy or plain-string mode. tests/hl7v2/test_tokenizer.py holds the tokenizer to
python-hl7's splitting on the samples and on generated messages.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import quote

from services.common.hl7v2.errors import (
    HL7_UNSUPPORTED_EVENT_CODE,
    MalformedMessage,
    MissingRequired,
    UnsupportedMessageType,
    UnsupportedVersion,
)

Component = tuple[str, ...]  # sub-components, unescaped and stripped
Components = tuple[Component, ...]  # one repetition

_SEGMENT_START = re.compile(r"[A-Z][A-Z0-9]{2}")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")  # not encodable: only reachable through str inputs
_CONTROL_DELETE = dict.fromkeys([*range(0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])  # _CONTROL, for translate
_VERSION = re.compile(r"v?(\d+)\.(\d+)(?:\.(\d+))?")
_DEFAULT_ENCODING = ("^", "~", "\\", "&")  # component, repetition, escape, sub-component
_FALLBACK_SEPARATORS = ("\x1c", "\x1d", "\x1e", "\x1f")  # never in the (control-stripped) text
_BATCH_SEGMENTS = frozenset({"MSH", "BHS", "BTS", "FHS", "FTS"})

MIN_VERSION = (2, 3)
MAX_VERSION = (2, 8)

# Message type -> trigger events carebus maps.
SUPPORTED_EVENTS: dict[str, frozenset[str]] = {
    "ADT": frozenset({"A01", "A02", "A03", "A04", "A08", "A40"}),
    "SIU": frozenset({"S12", "S13", "S14", "S15", "S26"}),
    "ORU": frozenset({"R01"}),
    "MDM": frozenset({"T02"}),
    "RDE": frozenset({"O11"}),
    "VXU": frozenset({"V04"}),
}
# Segments a supported message cannot be mapped without (beyond MSH).
_REQUIRED_SEGMENTS: dict[tuple[str, str], tuple[str, ...]] = {
    ("ADT", "A40"): ("PID", "MRG"),
    ("SIU", "*"): ("PID", "SCH"),
    ("MDM", "*"): ("PID", "TXA"),
    ("RDE", "*"): ("PID", "RXE"),
}


@dataclass(frozen=True)
class Separators:
    field: str
    component: str
    repetition: str
    escape: str
    subcomponent: str


def unescape(text: str, seps: Separators) -> str:
    """Resolve HL7 escape sequences. Unknown, highlighting and character-set sequences are dropped; an
    unterminated sequence is kept as literal text."""
    esc = seps.escape
    if esc not in text:
        return text
    out: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        start = text.find(esc, i)
        if start == -1:
            out.append(text[i:])
            break
        if start > i:
            out.append(text[i:start])
        end = text.find(esc, start + 1)
        if end == -1:
            out.append(text[start:])
            break
        out.append(_escape_value(text[start + 1:end], seps))
        i = end + 1
    return "".join(out)


def _escape_value(seq: str, seps: Separators) -> str:
    if seq == "F":
        return seps.field
    if seq == "S":
        return seps.component
    if seq == "T":
        return seps.subcomponent
    if seq == "R":
        return seps.repetition
    if seq == "E":
        return seps.escape
    if seq in {".br", ".sp", ".ce"}:
        return "\n"
    if seq.startswith(".sp") and seq[3:].strip().isdigit():
        return "\n" * min(int(seq[3:].strip()), 100)
    if seq.startswith(("X", "x")) and len(seq) > 1:
        hexdigits = seq[1:]
        if len(hexdigits) % 2 == 0 and all(c in "0123456789abcdefABCDEF" for c in hexdigits):
            raw = bytes.fromhex(hexdigits)
            try:
                decoded = raw.decode("utf-8")
            except UnicodeDecodeError:
                decoded = raw.decode("latin-1")
            return _CONTROL.sub("", decoded)
        return ""
    # \H\ \N\ (highlighting), \Cxxyy\ \Mxxyyzz\ (character sets), \Zxx\ (locally defined), .fi .nf .in .ti .sk
    return ""


def _clean(raw: str, seps: Separators) -> str:
    if raw == '""':
        return ""
    return unescape(raw, seps).strip()


class Rep:
    """One repetition of a field: components of sub-components, already unescaped and stripped."""

    __slots__ = ("_comps", "_seps")

    def __init__(self, comps: Components, seps: Separators) -> None:
        self._comps = comps
        self._seps = seps

    def c(self, component: int, sub: int = 1) -> str:
        """Component ``component`` (1-based), sub-component ``sub``; empty string when absent or ``""``."""
        comps = self._comps
        if 0 < component <= len(comps):
            subs = comps[component - 1]
            if 0 < sub <= len(subs):
                return subs[sub - 1]
        return ""

    def subs(self, component: int) -> list[str]:
        if component < 1 or component > len(self._comps):
            return []
        return list(self._comps[component - 1])

    def component_text(self, component: int) -> str:
        """A component with its sub-components joined by a space (for display)."""
        return " ".join(s for s in self.subs(component) if s)

    def text(self) -> str:
        """The whole repetition as text: components joined by a space (for ST-like reading of any type)."""
        parts = [" ".join(s for s in subs if s) for subs in self._comps]
        return " ".join(p for p in parts if p)

    def joined(self) -> str:
        """The whole repetition as text, components re-joined with the component separator (for ST/TX/FT
        values whose sender did not escape a literal separator)."""
        sub = self._seps.subcomponent
        parts = [sub.join(subs).strip(sub) for subs in self._comps]
        while parts and not parts[-1]:
            parts.pop()
        return self._seps.component.join(parts)

    def is_empty(self) -> bool:
        return not any(s for comp in self._comps for s in comp)

    def __len__(self) -> int:
        return len(self._comps)


def _split_field(raw: str, seps: Separators) -> tuple[Rep, ...]:
    """A field's text -> its non-empty repetitions (split, then unescaped and stripped)."""
    component, subcomponent, repetition = seps.component, seps.subcomponent, seps.repetition
    plain = seps.escape not in raw and '""' not in raw  # nothing to unescape: stripping is all
    if plain and component not in raw and repetition not in raw and subcomponent not in raw:
        value = raw.strip()  # one value (the usual field)
        return (Rep(((value,),), seps),) if value else _NO_REPS
    reps: list[Rep] = []
    for rep_text in raw.split(repetition) if repetition in raw else (raw,):
        if plain and subcomponent not in rep_text:
            comps: Components = tuple([(part.strip(),) for part in rep_text.split(component)])
            if any(value for (value,) in comps):
                reps.append(Rep(comps, seps))
            continue
        parts: list[Component] = []
        filled = False
        for comp_text in rep_text.split(component):
            if subcomponent in comp_text:
                subs = tuple([s.strip() if plain else _clean(s, seps) for s in comp_text.split(subcomponent)])
                filled = filled or any(subs)
            else:
                value = comp_text.strip() if plain else _clean(comp_text, seps)
                subs = (value,)
                filled = filled or bool(value)
            parts.append(subs)
        if filled:
            reps.append(Rep(tuple(parts), seps))
    return tuple(reps)


_NO_REPS: tuple[Rep, ...] = ()

# Split fields by their text, per set of separators: codes, units, names, facilities ... recur from message to
# message, and a split field is immutable. Bounded: short fields only, cleared when full.
_FieldMemo = dict[str, tuple[Rep, ...]]
_FIELD_MEMOS: dict[Separators, _FieldMemo] = {}
_FIELD_MEMO_SIZE = 4096
_FIELD_MEMO_CHARS = 256


def _field_memo(seps: Separators) -> _FieldMemo:
    memo = _FIELD_MEMOS.get(seps)
    if memo is None:
        if len(_FIELD_MEMOS) >= 4:
            _FIELD_MEMOS.clear()
        memo = _FIELD_MEMOS[seps] = {}
    return memo


class Segment:
    """One segment. Fields follow HL7 numbering, MSH included (MSH-1 is the field separator).

    Lazy: the segment is split into fields the first time one is read, and a field into repetitions,
    components and sub-components (unescaped) the first time it is read; segments carebus does not map are
    never split.
    """

    __slots__ = ("_fields", "_line", "_memo", "_reps", "name", "occurrence", "position", "seps")

    def __init__(self, name: str, line: str, position: int, occurrence: int, seps: Separators,
                 memo: _FieldMemo | None = None) -> None:
        self.name = name
        self._line = line
        self._fields: list[str] | None = None
        self._reps: dict[int, tuple[Rep, ...]] = {}
        self._memo = _field_memo(seps) if memo is None else memo
        self.position = position  # 0-based index in the message
        self.occurrence = occurrence  # 1-based count of this segment id so far
        self.seps = seps

    @property
    def line(self) -> str:
        """The segment's text as parsed (encoding characters normalised, line ends removed)."""
        return self._line

    def _split(self) -> list[str]:
        fields = self._fields
        if fields is None:
            line, separator = self._line, self.seps.field
            if self.name == "MSH":  # MSH-1 is the separator itself, MSH-2 the encoding characters
                end = line.find(separator, 4)
                rest = line[end + 1:]
                fields = ["MSH", separator, line[4:end], *(rest.split(separator) if rest else ())]
            else:
                fields = line.split(separator)
            self._fields = fields
        return fields

    def _field_reps(self, n: int) -> tuple[Rep, ...]:
        reps = self._reps.get(n)
        if reps is None:
            fields = self._split()
            if not 0 < n < len(fields) or not fields[n]:
                reps = _NO_REPS
            elif n <= 2 and self.name == "MSH":  # the separators themselves: one value, not split
                value = _clean(fields[n], self.seps)
                reps = (Rep(((value,),), self.seps),) if value else _NO_REPS
            else:
                raw = fields[n]
                memo = self._memo
                found = memo.get(raw)
                if found is None:
                    found = _split_field(raw, self.seps)
                    if len(raw) <= _FIELD_MEMO_CHARS:
                        if len(memo) >= _FIELD_MEMO_SIZE:
                            memo.clear()
                        memo[raw] = found
                reps = found
            self._reps[n] = reps
        return reps

    def reps(self, n: int) -> list[Rep]:
        """The non-empty repetitions of field ``n``."""
        return list(self._field_reps(n))

    def rep(self, n: int) -> Rep | None:
        reps = self._field_reps(n)
        return reps[0] if reps else None

    def get(self, n: int, component: int = 1, sub: int = 1) -> str:
        """Field ``n`` first repetition, component, sub-component: unescaped, stripped, '' if absent."""
        reps = self._field_reps(n)
        return reps[0].c(component, sub) if reps else ""

    def has(self, n: int) -> bool:
        return bool(self._field_reps(n))

    def loc(self, n: int) -> str:
        return f"{self.name}-{n}"

    @property
    def field_count(self) -> int:
        return len(self._split()) - 1


@dataclass(frozen=True)
class Hd:
    """Hierarchic designator (HD): namespace ^ universal id ^ universal id type."""

    namespace: str
    universal_id: str
    universal_id_type: str

    @property
    def name(self) -> str:
        return self.namespace or self.universal_id

    @classmethod
    def from_rep(cls, rep: Rep | None, first: int = 1) -> Hd:
        if rep is None:
            return cls("", "", "")
        return cls(rep.c(first), rep.c(first + 1), rep.c(first + 2))


@dataclass(frozen=True)
class Header:
    """What MSH says about the message (no PHI)."""

    sending_application: Hd
    sending_facility: Hd
    receiving_application: Hd
    receiving_facility: Hd
    timestamp: str
    message_type: str
    trigger_event: str
    structure: str
    control_id: str
    processing_id: str
    version: str
    # Computed once by parse_message (a cached_property is recomputed on every read once mypyc compiles this):
    sender: str  # the sending system's name: sending facility, else sending application
    source: str  # the source URI of this sender (also the CloudEvent source and the id namespace)

    @property
    def version_tuple(self) -> tuple[int, ...] | None:
        return parse_version(self.version)


def source_uri(sender: str) -> str:
    return f"urn:carebus:hl7v2:{quote(sender, safe='-._~')}"


def parse_version(text: str) -> tuple[int, ...] | None:
    match = _VERSION.fullmatch(text.strip())
    if match is None:
        return None
    return tuple(int(part) for part in match.groups() if part is not None)


class Message:
    """A parsed HL7 v2 message: segments in order, the separators and the header."""

    def __init__(self, segments: list[Segment], seps: Separators, names: Sequence[str]) -> None:
        self.segments = segments
        self.seps = seps
        self.names = tuple(names)  # every segment id in order
        self.msh = segments[0]
        self._by_name: dict[str, list[Segment]] = {}
        for segment in segments:
            self._by_name.setdefault(segment.name, []).append(segment)
        self.header = _header(self.msh)

    def has(self, name: str) -> bool:
        return name in self._by_name

    def first(self, name: str) -> Segment | None:
        found = self._by_name.get(name)
        return found[0] if found else None

    def all(self, name: str) -> list[Segment]:
        return list(self._by_name.get(name, ()))

    def __iter__(self) -> Iterator[Segment]:
        return iter(self.segments)


def _header(msh: Segment) -> Header:
    sending_application, sending_facility = Hd.from_rep(msh.rep(3)), Hd.from_rep(msh.rep(4))
    sender = sending_facility.name or sending_application.name
    return Header(
        sending_application=sending_application,
        sending_facility=sending_facility,
        receiving_application=Hd.from_rep(msh.rep(5)),
        receiving_facility=Hd.from_rep(msh.rep(6)),
        timestamp=msh.get(7),
        message_type=msh.get(9, 1).upper(),
        trigger_event=msh.get(9, 2).upper(),
        structure=msh.get(9, 3).upper(),
        control_id=msh.get(10),
        processing_id=msh.get(11),
        version=msh.get(12),
        sender=sender,
        source=source_uri(sender),
    )


# ---------------------------------------------------------------------------------------------------------
# normalisation and parsing


def _split_segments(text: str) -> list[str]:
    text = text.translate(_CONTROL_DELETE)  # as _CONTROL.sub("", ...), several times faster
    if not text.isascii():
        text = _SURROGATE.sub("\ufffd", text.replace("\ufeff", ""))
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")  # split on \r\n, \r or \n
    segments: list[str] = []
    field_sep = ""
    for raw_line in lines:
        line = raw_line.strip()
        if not line:
            continue
        if not segments:
            if not line.startswith("MSH"):
                if line[:3] in {"BHS", "FHS"}:
                    raise UnsupportedMessageType("BHS", "batch-not-supported",
                                                 "HL7 batches and files are not accepted")
                raise MalformedMessage("MSH", "msh-missing", "the message does not start with an MSH segment")
            if len(line) < 5:
                raise MalformedMessage("MSH-2", "invalid-encoding-characters",
                                       "MSH has no encoding characters")
            field_sep = line[3]
            segments.append(line)
            continue
        if _SEGMENT_START.match(line) and (len(line) == 3 or line[3] == field_sep):
            segments.append(line)
        else:
            segments[-1] = f"{segments[-1]}\n{line}"  # a line break inside a value: keep it as one
    if not segments:
        raise MalformedMessage("MSH", "msh-missing", "the message is empty")
    return segments


def _encoding(msh_line: str) -> tuple[Separators, str]:
    """The separators, and the MSH line rewritten with four clean encoding characters."""
    field_sep = msh_line[3]
    if field_sep.isalnum() or field_sep.isspace():
        raise MalformedMessage("MSH-1", "invalid-field-separator", "MSH-1 is not a usable field separator")
    end = msh_line.find(field_sep, 4)
    raw = msh_line[4:] if end == -1 else msh_line[4:end]
    chars: list[str] = []
    for ch in raw:
        if ch.isalnum() or ch.isspace() or ch == field_sep:
            raise MalformedMessage("MSH-2", "invalid-encoding-characters",
                                   "MSH-2 holds characters that cannot be separators")
        if ch not in chars:
            chars.append(ch)
    if not chars:
        raise MalformedMessage("MSH-2", "invalid-encoding-characters", "MSH-2 is empty")
    chars = chars[:4]
    for role in range(len(chars), 4):
        for candidate in (_DEFAULT_ENCODING[role], *_FALLBACK_SEPARATORS):
            if candidate not in chars and candidate != field_sep:
                chars.append(candidate)
                break
    component, repetition, escape, subcomponent = chars
    seps = Separators(field_sep, component, repetition, escape, subcomponent)
    rest = field_sep if end == -1 else msh_line[end:]
    return seps, f"MSH{field_sep}{''.join(chars)}{rest}"


def parse_message(er7: str) -> Message:
    """Parse ER7 text. Raises :class:`MalformedMessage` (AE), or :class:`UnsupportedMessageType` (AR) for
    batches. Cheap: segments are split into fields when first read (see :class:`Segment`)."""
    if not isinstance(er7, str):
        raise MalformedMessage("MSH", "not-text", "the message is not text")
    lines = _split_segments(er7)
    seps, lines[0] = _encoding(lines[0])
    names = [line[:3] for line in lines]
    for name in names[1:]:
        if name in _BATCH_SEGMENTS:
            raise UnsupportedMessageType(name, "batch-not-supported",
                                         "one message per frame: batches are not accepted")
    counts: dict[str, int] = {}
    segments: list[Segment] = []
    memo = _field_memo(seps)
    for position, (name, line) in enumerate(zip(names, lines, strict=True)):
        occurrence = counts[name] = counts.get(name, 0) + 1
        segments.append(Segment(name, line, position, occurrence, seps, memo))
    return Message(segments, seps, names)


# ---------------------------------------------------------------------------------------------------------
# shape: what the listener checks cheaply and the mapper relies on


@dataclass(frozen=True)
class PatientId:
    """The PID-3 identifier carebus keys a patient by (first MR-typed repetition, else the first)."""

    value: str
    location: str


def select_patient_id(reps: Sequence[Rep]) -> Rep | None:
    usable = [rep for rep in reps if rep.c(1)]
    for wanted in ("MR", "PI", "PT", "MRT"):
        for rep in usable:
            if rep.c(5).upper() == wanted:
                return rep
    return usable[0] if usable else None


def patient_id(pid: Segment) -> PatientId:
    for n in (3, 2, 4):
        rep = select_patient_id(pid.reps(n))
        if rep is not None:
            return PatientId(rep.c(1), pid.loc(n))
    raise MissingRequired("PID-3", "required", "no patient identifier in PID-3")


def check_header(header: Header) -> None:
    """Raise when MSH lacks what every message needs, or names a type or version carebus does not take."""
    if not header.message_type:
        raise MissingRequired("MSH-9", "required", "MSH-9 message type is empty")
    if not header.trigger_event:
        raise MissingRequired("MSH-9", "required", "MSH-9 trigger event is empty")
    events = SUPPORTED_EVENTS.get(header.message_type)
    if events is None:
        raise UnsupportedMessageType("MSH-9", "unsupported-message-type", "message type not supported")
    if header.trigger_event not in events:
        raise UnsupportedMessageType("MSH-9", "unsupported-event", "trigger event not supported",
                                     hl7_code=HL7_UNSUPPORTED_EVENT_CODE)
    if not header.control_id:
        raise MissingRequired("MSH-10", "required", "MSH-10 message control id is empty")
    if not header.version:
        raise MissingRequired("MSH-12", "required", "MSH-12 version id is empty")
    version = header.version_tuple
    if version is None or not (MIN_VERSION <= version[:2] <= MAX_VERSION):
        raise UnsupportedVersion("MSH-12", "unsupported-version", "HL7 version not supported (2.3 to 2.8)")
    if not header.sender:
        raise MissingRequired("MSH-4", "required", "neither MSH-4 nor MSH-3 names the sender")


def check_shape(message: Message) -> PatientId:
    """Header checks plus the segments the message type needs; returns the patient id used for keys."""
    header = message.header
    check_header(header)
    required = _REQUIRED_SEGMENTS.get((header.message_type, header.trigger_event)) \
        or _REQUIRED_SEGMENTS.get((header.message_type, "*")) or ("PID",)
    for name in required:
        if not message.has(name):
            raise MissingRequired(name, "segment-required", f"{name} segment is required for this message")
    pid = message.first("PID")
    assert pid is not None  # PID is in every required list
    if header.message_type == "ADT" and header.trigger_event == "A40":
        mrg = message.first("MRG")
        if mrg is None or select_patient_id(mrg.reps(1)) is None:
            raise MissingRequired("MRG-1", "required", "MRG-1 prior patient identifier is empty")
    return patient_id(pid)
