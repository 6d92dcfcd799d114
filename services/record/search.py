"""FHIR search requests as plain queries (pure): parameter parsing and checking, no SQL and no I/O.

Supported (also advertised in the CapabilityStatement, from :data:`indexing.SEARCH_PARAMETERS`):

* token ``system|code``, ``code``, ``|code``, ``system|``; comma = OR;
* string: starts-with by default (case and accent insensitive), ``:exact``, ``:contains``;
* date: prefixes eq ne gt lt ge le sa eb, ranges by precision (``ap`` is refused);
* reference ``patient``: ``id``, ``Patient/id`` or an absolute URL; follows identity links;
* ``_id``, ``_lastUpdated``, ``_count``, ``_offset`` (paging), ``_sort`` = ``date``, ``-date``,
  ``_lastUpdated``, ``-_lastUpdated``, ``_id``, ``-_id``; ``_format=json``, ``_pretty``, ``_total`` are
  accepted.

Unknown parameters are a 400 unless the request says ``Prefer: handling=lenient`` (then they are ignored and
left out of the self link).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from services.common.fhir_text import forbidden_character
from services.record.errors import BadRequest, UnknownParameter
from services.record.fhirdates import date_range
from services.record.indexing import COMMON_PARAMETERS, SEARCH_PARAMETERS, SearchParam, patient_id_of

DatePrefix = Literal["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb"]
StringMode = Literal["starts", "exact", "contains"]
Sort = Literal["date", "-date", "_lastUpdated", "-_lastUpdated", "_id", "-_id"]
SORTS: tuple[str, ...] = ("date", "-date", "_lastUpdated", "-_lastUpdated", "_id", "-_id")
_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb")
_IGNORED = frozenset({"_format", "_pretty", "_total"})


@dataclass(frozen=True)
class TokenCriterion:
    param: str
    values: tuple[tuple[str | None, str | None], ...]  # (system, code); None = any


@dataclass(frozen=True)
class StringCriterion:
    param: str
    mode: StringMode
    values: tuple[str, ...]


@dataclass(frozen=True)
class DateCriterion:
    param: str  # "_lastUpdated" compares with lastUpdated, any other with the type's date range
    clauses: tuple[tuple[DatePrefix, int, int], ...]


@dataclass(frozen=True)
class PatientCriterion:
    patient_refs: tuple[str, ...]  # "Patient/<id>", before identity expansion


@dataclass(frozen=True)
class IdCriterion:
    ids: tuple[str, ...]


Criterion = TokenCriterion | StringCriterion | DateCriterion | PatientCriterion | IdCriterion


@dataclass(frozen=True)
class SearchQuery:
    resource_type: str
    criteria: tuple[Criterion, ...]
    sort: Sort | None
    count: int
    offset: int
    echo: tuple[tuple[str, str], ...]  # the parameters used, for self/next links


@dataclass(frozen=True)
class Paging:
    count: int
    offset: int


def _split(value: str) -> list[str]:
    """Split on commas not escaped with a backslash; unescape ``\\,`` ``\\|`` ``\\$`` ``\\\\``."""
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for ch in value:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def _token(value: str) -> tuple[str | None, str | None]:
    if "|" not in value:
        return None, value
    system, _, code = value.partition("|")
    return system, (code or None)


def parse_date_clause(param: str, value: str) -> tuple[DatePrefix, int, int]:
    prefix: DatePrefix = "eq"
    if len(value) > 2 and value[:2].isalpha():
        candidate = value[:2]
        if candidate == "ap":
            raise UnknownParameter(f"date prefix 'ap' is not supported (parameter {param})")
        if candidate not in _PREFIXES:
            raise BadRequest(f"unknown date prefix in parameter {param}")
        prefix = candidate  # type: ignore[assignment]
        value = value[2:]
    try:
        start, end = date_range(value)
    except ValueError as exc:
        raise BadRequest(f"parameter {param} is not a valid FHIR date") from exc
    return prefix, start, end


MAX_OFFSET = 1_000_000_000  # far beyond any page a client walks to; keeps every value inside 64-bit SQL
_NUMBER = re.compile(r"^[0-9]{1,10}$")


def refuse_forbidden_characters(params: Sequence[tuple[str, str]]) -> None:
    """400 for a parameter name or value holding a character FHIR text may not (U+0000 would match anything in
    a SQLite LIKE, and PostgreSQL cannot take it at all)."""
    for name, value in params:
        in_name = forbidden_character(name)
        if in_name:
            raise BadRequest(f"a parameter name holds {in_name}, which FHIR text may not contain")
        in_value = forbidden_character(value)
        if in_value:
            raise BadRequest(f"parameter {name} holds {in_value}, which FHIR text may not contain")


def parse_paging(params: Sequence[tuple[str, str]], default_count: int, max_count: int) -> Paging:
    count, offset = default_count, 0
    for name, value in params:
        if name in ("_count", "_offset"):
            if not _NUMBER.match(value):
                raise BadRequest(f"{name} must be a non-negative integer of at most 10 digits")
            number = int(value)
            if name == "_offset" and number > MAX_OFFSET:
                raise BadRequest(f"_offset must be at most {MAX_OFFSET}")
            if name == "_count":
                count = min(number, max_count)
            else:
                offset = number
    return Paging(count, offset)


def known_parameters(resource_type: str) -> dict[str, SearchParam]:
    params = {p.name: p for p in COMMON_PARAMETERS}
    params.update({p.name: p for p in SEARCH_PARAMETERS.get(resource_type, ())})
    return params


def parse_search(
    resource_type: str,
    params: Sequence[tuple[str, str]],
    default_count: int,
    max_count: int,
    lenient: bool = False,
) -> SearchQuery:
    """Turn the query string of ``GET [type]?...`` into a query; BadRequest/UnknownParameter on bad input."""
    refuse_forbidden_characters(params)
    known = known_parameters(resource_type)
    criteria: list[Criterion] = []
    echo: list[tuple[str, str]] = []
    sort: Sort | None = None
    paging = parse_paging(params, default_count, max_count)
    for raw_name, value in params:
        name, _, modifier = raw_name.partition(":")
        if name in ("_count", "_offset") or name in _IGNORED:
            continue
        if name == "_sort":
            if value not in SORTS or modifier:
                raise UnknownParameter("_sort supports date, -date, _lastUpdated, -_lastUpdated, _id, -_id")
            sort = value  # type: ignore[assignment]
            echo.append((raw_name, value))
            continue
        spec = known.get(name)
        if spec is None:
            if lenient:
                continue
            raise UnknownParameter(f"unknown search parameter '{name}' for {resource_type}")
        if value == "":
            raise BadRequest(f"parameter {name} has an empty value")
        criteria.append(_criterion(spec, modifier, value))
        echo.append((raw_name, value))
    return SearchQuery(resource_type, tuple(criteria), sort, paging.count, paging.offset, tuple(echo))


def _criterion(spec: SearchParam, modifier: str, value: str) -> Criterion:
    values = _split(value)
    if spec.kind == "string":
        if modifier not in ("", "exact", "contains"):
            raise UnknownParameter(f"modifier :{modifier} is not supported on {spec.name}")
        mode: StringMode = "starts" if not modifier else modifier  # type: ignore[assignment]
        return StringCriterion(spec.name, mode, tuple(values))
    if modifier:
        raise UnknownParameter(f"modifier :{modifier} is not supported on {spec.name}")
    if spec.name == "_id":
        return IdCriterion(tuple(values))
    if spec.kind == "token":
        return TokenCriterion(spec.name, tuple(_token(v) for v in values))
    if spec.kind == "date":
        return DateCriterion(spec.name, tuple(parse_date_clause(spec.name, v) for v in values))
    refs: list[str] = []
    for v in values:
        pid = patient_id_of(v) if "/" in v else v
        if not pid:
            raise BadRequest(f"parameter {spec.name} must reference a Patient")
        refs.append(f"Patient/{pid}")
    return PatientCriterion(tuple(refs))
