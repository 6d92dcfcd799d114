"""HL7 v2 data types (DTM/TS, CWE/CE, CX, XPN, XCN, XAD, XTN, EI, PL, NM, SN, RPT) -> FHIR R4 types as dicts.

Every converter returns ``None`` (or leaves a key out) rather than emitting an empty or invalid element.
Values that break their type are not guessed at: they are left out and reported as a data-quality code
``invalid-<type>@<SEG-n>`` on the :class:`Conversion`.

Time zones. A v2 DTM without an offset is in "the local time zone of the sender" (v2.5 2.A.22); FHIR needs an
offset on every dateTime that has a time and on every instant, and carebus never invents one. The zone of such
a value is, in this order: the sender's configured IANA zone (``CAREBUS_HL7_SENDER_TIME_ZONES``, DST-correct for
the value's own date), the offset of MSH-7 (the sender's zone when it built the message), the configured
default zone (``CAREBUS_HL7_DEFAULT_TIME_ZONE``, unset by default). With none of them known, a dateTime keeps the
precision FHIR allows without an offset — the date — and an instant is left out; both are reported as
``timezone-unknown@<SEG-n>`` (and a booked appointment without a start it can state is refused, scheduling.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache
from typing import Any

import langcodes

from services.common.fhir.codesystems import BCP47, NPI, SSN, UCUM, V2_0203
from services.common.hl7v2.dtm import Dtm, parse_dtm
from services.common.hl7v2.er7 import Rep
from services.mapper.hl7v2.terminology import (
    ADDRESS_USE,
    EVENT_TIMING,
    GENERIC_LOCAL,
    ID_TYPE_DISPLAY,
    NAME_USE,
    RATE_UNITS_UCUM,
    TELECOM_SYSTEM,
    TELECOM_USE,
    TIME_UNITS,
    V2_0335_CODES,
    V2_TABLE_CODES,
    code_system,
    local_system,
    v2_system,
)

Json = dict[str, Any]

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_OID = re.compile(r"[0-2](?:\.(?:0|[1-9]\d*))+")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:\S+")
_SPACES = re.compile(r"\s+")
_URI_UNSAFE = re.compile(r"[^A-Za-z0-9._~-]")
_LANGUAGE_TAG = re.compile(r"[A-Za-z]{2,8}(?:-[A-Za-z0-9]{1,8})*")
_MAX_NUMBER_CHARS = 30
_MEMO_CHARS = 64  # values up to this length are memoized (codes, timestamps); longer ones are not kept


@dataclass
class Conversion:
    """Per-message conversion state: the sender's time zone and data-quality findings.

    ``sender_zone``: the sender's configured zone; ``default_tz``: MSH-7's offset; ``fallback_zone``: the
    configured default zone (see the module docstring for the order)."""

    default_tz: str | None = None
    sender_zone: tzinfo | None = None
    fallback_zone: tzinfo | None = None
    issues: list[str] = field(default_factory=list)
    authority_systems: Mapping[str, str] = field(default_factory=dict)  # CX-4 namespace -> Identifier.system
    source: str = ""  # the sender (urn:carebus:hl7v2:<facility>): scope of its own identifier namespaces

    def issue(self, code: str) -> None:
        if code not in self.issues:
            self.issues.append(code)


def prune(value: Any) -> Any:
    """Drop None, empty strings, lists and dicts, recursively (False and 0 stay)."""
    if isinstance(value, dict):
        return _prune_dict(value)
    if isinstance(value, list):
        return _prune_list(value)
    return value


# The hot path of every mapping (each resource is pruned once it is complete): the usual items (str, dict, list,
# None) are judged in place, without a call per item. Same result as prune's rule applied item by item.
_DROP: Any = object()


def _prune_other(item: Any) -> Any:
    """An item that is not a plain str, dict, list or None: pruned, or _DROP."""
    if type(item) in (int, float, bool):
        return item
    if isinstance(item, dict):
        item = _prune_dict(item)
    elif isinstance(item, list):
        item = _prune_list(item)
    if item == "" or item == [] or item == {}:
        return _DROP
    return item


def _prune_dict(value: dict[Any, Any]) -> dict[Any, Any]:
    out = {}
    for key, item in value.items():
        kind = type(item)
        if kind is str:
            if item:
                out[key] = item
        elif kind is dict:
            item = _prune_dict(item)
            if item:
                out[key] = item
        elif kind is list:
            item = _prune_list(item)
            if item:
                out[key] = item
        elif item is not None:
            item = _prune_other(item)
            if item is not _DROP:
                out[key] = item
    return out


def _prune_list(value: list[Any]) -> list[Any]:
    out = []
    for item in value:
        kind = type(item)
        if kind is str:
            if item:
                out.append(item)
        elif kind is dict:
            item = _prune_dict(item)
            if item:
                out.append(item)
        elif kind is list:
            item = _prune_list(item)
            if item:
                out.append(item)
        elif item is not None:
            item = _prune_other(item)
            if item is not _DROP:
                out.append(item)
    return out


def prune_dict(value: Json) -> Json:
    """:func:`prune` for a dict (typed)."""
    pruned: Json = prune(value)
    return pruned


def fhir_code(text: str) -> str:
    """A FHIR ``code``: no leading/trailing whitespace, single inner spaces."""
    return _fhir_code(text) if len(text) <= _MEMO_CHARS else _SPACES.sub(" ", text).strip()


@lru_cache(maxsize=4096)
def _fhir_code(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


# ---------------------------------------------------------------------------------------------------------
# date and time (DTM values are read by services.common.hl7v2.dtm)


def _dtm(text: str, loc: str, conv: Conversion) -> Dtm | None:
    if not text:
        return None
    parsed = parse_dtm(text)
    if parsed is None:
        conv.issue(f"invalid-datetime@{loc}")
    return parsed


def _offset_in(zone: tzinfo, parsed: Dtm) -> str:
    """The UTC offset ("+hh:mm") of ``zone`` at the value's own local date and time."""
    local = datetime(parsed.year, parsed.month or 1, parsed.day or 1, parsed.hour or 0, parsed.minute or 0,
                     parsed.second or 0)
    offset = zone.utcoffset(local) or timedelta(0)
    minutes = int(offset.total_seconds() // 60)
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def _zone(parsed: Dtm, conv: Conversion) -> str | None:
    """The offset of a value (see the module docstring), or None when no zone is known."""
    if parsed.tz:
        return parsed.tz
    if conv.sender_zone is not None:
        return _offset_in(conv.sender_zone, parsed)
    if conv.default_tz:
        return conv.default_tz
    if conv.fallback_zone is not None:
        return _offset_in(conv.fallback_zone, parsed)
    return None


def fhir_date(text: str, loc: str, conv: Conversion) -> str | None:
    parsed = _dtm(text, loc, conv)
    return parsed.date() if parsed is not None else None


def fhir_datetime(text: str, loc: str, conv: Conversion) -> str | None:
    """A FHIR dateTime: with its time and offset when the zone is known, else at date precision (reported)."""
    parsed = _dtm(text, loc, conv)
    if parsed is None:
        return None
    if parsed.hour is None or parsed.day is None:
        return parsed.date()
    zone = _zone(parsed, conv)
    if zone is None:
        conv.issue(f"timezone-unknown@{loc}")
        return parsed.date()
    return parsed.date_time(zone)


def fhir_instant(text: str, loc: str, conv: Conversion) -> str | None:
    """An instant needs a full date: a time of day missing from the value reads as midnight. None (reported)
    when the value's zone is not known."""
    parsed = _dtm(text, loc, conv)
    if parsed is None:
        return None
    if parsed.day is None:
        conv.issue(f"imprecise-instant@{loc}")
        return None
    full = Dtm(parsed.year, parsed.month, parsed.day, parsed.hour or 0, parsed.minute, parsed.second,
               parsed.fraction, parsed.tz)
    zone = _zone(full, conv)
    if zone is None:
        conv.issue(f"timezone-unknown@{loc}")
        return None
    return full.date_time(zone)


def aware_datetime(text: str, conv: Conversion) -> datetime | None:
    """A value as an aware datetime; None when it is not a day-precise DTM or its zone is not known."""
    parsed = parse_dtm(text) if text else None
    if parsed is None or parsed.day is None:
        return None
    zone = _zone(parsed, conv)
    return parsed.aware(zone) if zone is not None else None


def instant_from(moment: datetime) -> str:
    """A FHIR instant from an aware datetime (naive ones are taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat(timespec="milliseconds" if moment.microsecond else "seconds")


# ---------------------------------------------------------------------------------------------------------
# codes


def coding(code: str, display: str = "", system_name: str = "", version: str = "",
           local: tuple[str, str] | None = None) -> Json | None:
    """One v2 code as a Coding. ``local`` = (sender source, field location): a code of a local or unknown
    coding system gets the sender's local system (terminology.local_system); without it, no system."""
    code = fhir_code(code)
    if not code:
        return None
    made: Json = {}
    system = code_system(system_name) if system_name else None
    if system is None and local is not None:
        name = system_name.strip()
        scope = local[1] if not name or name.upper() in GENERIC_LOCAL else name
        system = local_system(local[0], _URI_UNSAFE.sub("_", scope))
    if system:
        made["system"] = system
    if version:
        made["version"] = version
    made["code"] = code
    if display:
        made["display"] = display
    return made


def codeable(rep: Rep | None, first: int = 1, local: tuple[str, str] | None = None) -> Json | None:
    """CWE/CE/CNE -> CodeableConcept: up to three codings; text from original text (CWE.9) or a display.
    ``local`` (sender source, field location) gives local codes the sender's local system (see coding)."""
    if rep is None:
        return None
    codings: list[Json] = []
    displays: list[str] = []
    present = len(rep)
    for code_i, text_i, system_i, version_i in (_TRIPLETS if first == 1 else _triplets_from(first)):
        if code_i > present and text_i > present:
            break  # this triplet and the ones after it are absent
        display = rep.c(text_i)
        made = coding(rep.c(code_i), display, rep.c(system_i), rep.c(version_i), local)
        if made is not None and made not in codings:
            codings.append(made)
        if display:
            displays.append(display)
    original = rep.c(first + 8) if first == 1 else ""
    text = original or (displays[0] if displays else "")
    if not codings and not text:
        return None
    concept: Json = {}
    if codings:
        concept["coding"] = codings
    if text:
        concept["text"] = text
    return concept


# CWE/CE: (code, text, coding system, coding system version) of the primary, alternate and second alternate
_TRIPLETS = ((1, 2, 3, 7), (4, 5, 6, 8), (10, 11, 12, 13))


def _triplets_from(first: int) -> tuple[tuple[int, int, int, int], ...]:
    return ((first, first + 1, first + 2, first + 6),)


def simple_code(code: str, system: str | None, display: str | None = None) -> Json | None:
    """An ID/IS value from a known table as a CodeableConcept (unknown codes keep no system)."""
    code = fhir_code(code)
    if not code:
        return None
    made: Json = {"system": system} if system else {}
    made["code"] = code
    if display:
        made["display"] = display
    return {"coding": [made]}


def table_code(code: str, table: str, source: str, display: str | None = None) -> Json | None:
    """An IS/ID value of HL7 table ``table`` as a CodeableConcept: in HL7's v2 code system when it is one of
    the table's codes (V2_TABLE_CODES), else in the sender's local system for that table; a value with spaces
    is free text, not a code (CodeableConcept.text)."""
    value = fhir_code(code)
    if not value:
        return None
    if " " in value:
        return {"text": value}
    known = V2_TABLE_CODES.get(table)
    system = v2_system(table) if known is not None and value.upper() in known else local_system(
        source, f"v2-{table}")
    made: Json = {"system": system, "code": value.upper() if system.startswith("http") else value}
    if display:
        made["display"] = display
    return {"coding": [made]}


def language(rep: Rep | None) -> Json | None:
    """PID-15 / CWE language -> a CodeableConcept in BCP-47 (urn:ietf:bcp:47, the required binding of
    Patient.communication.language): the first triplet whose code is an ISO 639 / BCP-47 tag (ISO 639-2 'ara'
    -> 'ar'); text from CWE.9 or a display. None of them a language tag: text only (None without any text)."""
    if rep is None:
        return None
    tag = ""
    displays: list[str] = []
    for code_i, text_i, _system_i, _version_i in _TRIPLETS:
        if not tag:
            tag = bcp47(rep.c(code_i))
        if rep.c(text_i):
            displays.append(rep.c(text_i))
    text = rep.c(9) or (displays[0] if displays else "") or ("" if tag else rep.c(1))
    concept: Json = {}
    if tag:
        concept["coding"] = [{"system": BCP47, "code": tag}]
    if text:
        concept["text"] = text
    return concept or None


@lru_cache(maxsize=1024)
def bcp47(code: str) -> str:
    """A language code (ISO 639-1/2/3 or a BCP-47 tag) as its standard BCP-47 tag; '' when it is not one."""
    value = code.strip()
    if not value or not _LANGUAGE_TAG.fullmatch(value):
        return ""
    try:
        if not langcodes.tag_is_valid(value):
            return ""
        return str(langcodes.standardize_tag(value))
    except ValueError:  # langcodes.LanguageTagError is one
        return ""


# ---------------------------------------------------------------------------------------------------------
# identifiers, names, addresses, telecom


def _authority_system(universal_id: str, universal_type: str) -> str | None:
    if not universal_id:
        return None
    kind = universal_type.upper()
    # an OID as short as '2.8' is syntactically one, but no assigning authority: FHIR validators refuse it
    if _OID.fullmatch(universal_id) and universal_id.rfind(".") >= 5 and kind in {"ISO", ""}:
        return f"urn:oid:{universal_id}"
    if kind == "UUID":
        return f"urn:uuid:{universal_id.lower()}"
    if kind in {"URI", "URL"} and _URI.fullmatch(universal_id):
        return universal_id
    return None


def identifier_type(code: str) -> Json | None:
    code = fhir_code(code)
    if not code:
        return None
    display = ID_TYPE_DISPLAY.get(code.upper())
    if display is not None:
        return {"coding": [{"system": V2_0203, "code": code.upper(), "display": display}]}
    return {"text": code}


def identifier_cx(rep: Rep | None, loc: str, conv: Conversion) -> Json | None:
    """CX -> Identifier: value, type (v2-0203), system from the assigning authority, assigner, period."""
    if rep is None or not rep.c(1):
        return None
    namespace, universal_id, universal_type = rep.c(4, 1), rep.c(4, 2), rep.c(4, 3)
    type_code = rep.c(5).upper()
    system = _authority_system(universal_id, universal_type) or conv.authority_systems.get(namespace)
    if type_code == "SS" or namespace.upper() == "USSSA":
        system = SSN
    elif type_code == "NPI":
        system = NPI
    elif system is None and conv.source:
        # no OID/URI and no configured system: an id of the sender's own namespace (CX-4.1), or of the field
        system = f"{conv.source}/id/{_URI_UNSAFE.sub('_', namespace or universal_id or loc)}"
    assigner = namespace or (universal_id if system is None else "")
    made: Json = {}
    kind = identifier_type(type_code)
    if kind is not None:
        made["type"] = kind
    if system:
        made["system"] = system
    made["value"] = rep.c(1)
    period = _period(fhir_date(rep.c(7), loc, conv), fhir_date(rep.c(8), loc, conv))
    if period is not None:
        made["period"] = period
    if assigner:
        made["assigner"] = {"display": assigner}
    return made


def identifier_ei(rep: Rep | None, type_code: str = "", first: int = 1) -> Json | None:
    """EI -> Identifier (entity id ^ namespace ^ universal id ^ type)."""
    if rep is None or not rep.c(first):
        return None
    system = _authority_system(rep.c(first + 2), rep.c(first + 3))
    namespace = rep.c(first + 1)
    made: Json = {}
    kind = identifier_type(type_code) if type_code else None
    if kind is not None:
        made["type"] = kind
    if system:
        made["system"] = system
    made["value"] = rep.c(first)
    if namespace and system is None:
        made["assigner"] = {"display": namespace}
    return made


def _period(start: str | None, end: str | None) -> Json | None:
    """A Period of what is known, or None."""
    if start:
        return {"start": start, "end": end} if end else {"start": start}
    return {"end": end} if end else None


def _date_range(rep: Rep, component: int, loc: str, conv: Conversion) -> Json:
    return {"start": fhir_date(rep.c(component, 1), loc, conv),
            "end": fhir_date(rep.c(component, 2), loc, conv)}


def human_name(rep: Rep | None, loc: str, conv: Conversion) -> Json | None:
    """XPN -> HumanName (family from FN.1; given, further given; suffix, degree, professional suffix)."""
    if rep is None:
        return None
    family = rep.c(1, 1)
    given = [g for g in (rep.c(2), *rep.c(3).split()) if g]
    if not family and not given:
        return None
    period = _date_range(rep, 10, loc, conv)
    effective, expires = fhir_date(rep.c(12), loc, conv), fhir_date(rep.c(13), loc, conv)
    if effective or expires:
        period = {"start": effective, "end": expires}
    made: Json = {}
    use = NAME_USE.get(rep.c(7).upper())
    if use:
        made["use"] = use
    if family:
        made["family"] = family
    if given:
        made["given"] = given
    prefix = rep.c(5)
    if prefix:
        made["prefix"] = [prefix]
    suffix = [s for s in (rep.c(4), rep.c(6), rep.c(14)) if s]
    if suffix:
        made["suffix"] = suffix
    known = _period(period["start"], period["end"])
    if known is not None:
        made["period"] = known
    return made


def person_reference(rep: Rep | None) -> Json | None:
    """XCN -> a logical Reference (identifier + display) to a clinician; no resource is created for them."""
    if rep is None:
        return None
    ident = rep.c(1)
    family, given = rep.c(2, 1), " ".join(p for p in (rep.c(3), rep.c(4)) if p)
    prefix = rep.c(6)
    display = " ".join(p for p in (prefix, given, family) if p)
    if not ident and not display:
        return None
    system = _authority_system(rep.c(9, 2), rep.c(9, 3))
    if rep.c(13).upper() == "NPI":
        system = NPI
    made: Json = {}
    if ident:
        made["identifier"] = {"system": system, "value": ident} if system else {"value": ident}
    if display:
        made["display"] = display
    return made


def organization_reference(rep: Rep | None) -> Json | None:
    """XON (or HD) -> a logical Reference to an organisation."""
    if rep is None:
        return None
    name = rep.c(1)
    ident = rep.c(10) or rep.c(3)
    if not name and not ident:
        return None
    made: Json = {"identifier": {"value": ident}} if ident else {}
    if name:
        made["display"] = name
    return made


def address(rep: Rep | None, loc: str, conv: Conversion) -> Json | None:
    """XAD -> Address."""
    if rep is None:
        return None
    street, street_name, dwelling = rep.c(1, 1), rep.c(1, 2), rep.c(1, 3)
    if street and street_name and street_name not in street:
        street = f"{street} {street_name}"
    street = street or " ".join(p for p in (dwelling, street_name) if p)
    line = [p for p in (street, rep.c(2)) if p]
    use, kind = ADDRESS_USE.get(rep.c(7).upper(), (None, None))
    period = _date_range(rep, 12, loc, conv)
    effective, expires = fhir_date(rep.c(13), loc, conv), fhir_date(rep.c(14), loc, conv)
    if effective or expires:
        period = {"start": effective, "end": expires}
    made = prune({
        "use": use, "type": kind, "line": line, "city": rep.c(3), "state": rep.c(4), "postalCode": rep.c(5),
        "country": rep.c(6), "district": rep.c(9), "period": period,
    })
    return made if set(made) - {"use", "type", "period"} else None


def contact_point(rep: Rep | None, default_use: str | None, loc: str, conv: Conversion) -> Json | None:
    """XTN -> ContactPoint."""
    if rep is None:
        return None
    use_code, equipment = rep.c(2).upper(), rep.c(3).upper()
    email = rep.c(4)
    composed = ""
    if rep.c(7):
        composed = " ".join(p for p in (
            f"+{rep.c(5)}" if rep.c(5) else "", f"({rep.c(6)})" if rep.c(6) else "", rep.c(7),
            f"x{rep.c(8)}" if rep.c(8) else "") if p)
    system = TELECOM_SYSTEM.get(equipment)
    if use_code == "NET" or (email and not rep.c(1) and not composed):
        system = "email"
    value = (email or rep.c(1)) if system == "email" else (rep.c(1) or composed or rep.c(12) or email)
    if not value:
        return None
    rank = rep.c(18)
    made: Json = {"system": system or "phone", "value": value}
    use = "mobile" if equipment == "CP" else TELECOM_USE.get(use_code, default_use)
    if use:
        made["use"] = use
    if rank.isdigit() and 0 < int(rank) < 1_000_000:
        made["rank"] = int(rank)
    period = _period(fhir_datetime(rep.c(13), loc, conv), fhir_datetime(rep.c(14), loc, conv))
    if period is not None:
        made["period"] = period
    return made


def location_display(rep: Rep | None) -> str:
    """PL -> a readable location (point of care, room, bed, facility, building, floor) or its description."""
    if rep is None:
        return ""
    description = rep.c(9)
    if description:
        return description
    parts = [rep.c(1, 1), rep.c(2), rep.c(3), rep.c(4, 1), rep.c(7), rep.c(8)]
    return " ".join(p for p in parts if p)


# ---------------------------------------------------------------------------------------------------------
# numbers and quantities


def number(text: str) -> int | float | None:
    text = text.strip()
    if len(text) > _MAX_NUMBER_CHARS or not _NUMBER.fullmatch(text):
        return None
    if "." in text:
        return float(text)
    return int(text)


def quantity(value: int | float, units: Rep | None, comparator: str | None = None) -> Json:
    out: Json = {"value": value}
    if comparator:
        out["comparator"] = comparator
    if units is not None:
        code, text, system = units.c(1), units.c(2), units.c(3).upper()
        out["unit"] = text or code
        if system == "UCUM" and code:
            out["system"] = UCUM
            out["code"] = fhir_code(code)
    return prune_dict(out)


def rate_quantity(amount: str, units: Rep | None) -> Json | None:
    """A give rate (RXE-23/24, RXO-21/22) as a Quantity: UCUM when the units are coded in UCUM or are a rate
    unit carebus knows (RATE_UNITS_UCUM, e.g. mL/hr -> mL/h); otherwise the sender's unit text only."""
    value = number(amount)
    if value is None:
        return None
    made: Json = {"value": value}
    if units is None:
        return made
    code, text, system = units.c(1), units.c(2), units.c(3).upper()
    made["unit"] = text or code
    ucum = fhir_code(code) if system == "UCUM" and code else RATE_UNITS_UCUM.get(fhir_code(code or text).upper())
    if ucum:
        made["system"] = UCUM
        made["code"] = ucum
    return prune_dict(made)


# Q<n>S/M/H/D/W/L and <n>ID (xID): repeat patterns of HL7 table 0335 that carry a number
_EVERY = re.compile(r"Q(\d{1,4})([SMHDWL])")
_TIMES_A_DAY = re.compile(r"(\d{1,2})ID")
_EVERY_UNIT = {"S": "s", "M": "min", "H": "h", "D": "d", "W": "wk", "L": "mo"}
_DAILY = {"BID": 2, "TID": 3, "QID": 4}
_WHEN = {"QAM": "MORN", "QPM": "EVE", "QHS": "HS"}


def repeat_pattern(rep: Rep | None, source: str, loc: str) -> tuple[Json | None, Json]:
    """RPT (TQ1-3) -> (Timing.code, Timing.repeat items). RPT.1 is the repeat pattern code (a CWE whose parts
    are sub-components): in HL7's v2-0335 system when it is one of the table's codes, else in the sender's
    local system (``<source>/codes/v2-0335``, or the coding system it names); its text is kept. Frequency and
    period come from the code (BID, Q6H, 5ID, QOD ...) or from RPT.5/6 (period quantity and units); RPT.8/9/10
    (event and offset) give ``when`` and ``offset`` (minutes) where the event is a FHIR EventTiming code."""
    if rep is None:
        return None, {}
    code, text, system_name = fhir_code(rep.c(1, 1)), rep.c(1, 2), rep.c(1, 3).strip()
    concept: Json | None = None
    if code:
        canonical = V2_0335_CODES.get(code.upper())
        v2_named = system_name.upper() in {"", "HL70335"}
        if canonical is not None and v2_named:
            made: Json = {"system": v2_system("0335"), "code": canonical}
        elif not v2_named:  # another coding system named in RPT.1.3
            made = coding(code, "", system_name, local=(source, loc)) or {"code": code}
        else:
            made = {"system": local_system(source, "v2-0335"), "code": code}
        if text and canonical is None:  # HL7's own codes keep HL7's display: the sender's text is the text
            made["display"] = text
        concept = {"coding": [made], "text": text or code}
    repeat: Json = {}
    upper = code.upper()
    if upper in _DAILY:
        repeat.update(frequency=_DAILY[upper], period=1, periodUnit="d")
    elif upper == "QOD":
        repeat.update(frequency=1, period=2, periodUnit="d")
    elif upper in _WHEN:
        repeat.update(frequency=1, period=1, periodUnit="d", when=[_WHEN[upper]])
    elif upper == "ONCE":
        repeat["count"] = 1
    elif (every := _EVERY.fullmatch(upper)) is not None and int(every.group(1)) > 0:
        repeat.update(frequency=1, period=int(every.group(1)), periodUnit=_EVERY_UNIT[every.group(2)])
    elif (daily := _TIMES_A_DAY.fullmatch(upper)) is not None and int(daily.group(1)) > 0:
        repeat.update(frequency=int(daily.group(1)), period=1, periodUnit="d")
    period, period_unit = number(rep.c(5)), TIME_UNITS.get(rep.c(6).strip().upper())
    if "period" not in repeat and period is not None and period > 0 and period_unit:
        repeat.update(frequency=1, period=period, periodUnit=period_unit)
    event = rep.c(8).strip().upper()
    if event in EVENT_TIMING and "when" not in repeat:
        repeat["when"] = [event]
        offset, offset_unit = number(rep.c(9)), TIME_UNITS.get(rep.c(10).strip().upper())
        minutes = {"s": 1 / 60, "min": 1, "h": 60, "d": 1440}.get(offset_unit or "")
        if offset is not None and offset >= 0 and minutes is not None and int(offset * minutes) < 1_000_000:
            repeat["offset"] = int(offset * minutes)
    return concept, repeat
