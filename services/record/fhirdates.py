"""FHIR date, dateTime and instant values as ranges of epoch milliseconds (pure).

A FHIR date is an implicit range set by its precision: ``2024`` is the whole year, ``2024-03-01T10:00:00Z`` is
that second. Search compares ranges (FHIR R4 search, "date"), so every indexed value and every search value
becomes ``(start, end)`` with both ends inclusive. Values without a time zone are read as UTC. Open ends of a
Period use :data:`OPEN_START` / :data:`OPEN_END`.
"""

from __future__ import annotations

import functools
import re
from calendar import timegm
from datetime import UTC, datetime

OPEN_START = -(2**62)
OPEN_END = 2**62

_DATE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?P<f>\.\d+)?)?(?P<tz>Z|[+\- ]\d{2}:\d{2})?)?)?)?$"
)


def _epoch_ms(y: int, m: int, d: int, hh: int = 0, mm: int = 0, ss: int = 0) -> int:
    return timegm((y, m, d, hh, mm, ss, 0, 0, 0)) * 1000


def _check(y: int, m: int, d: int, hh: int, mm: int, ss: int) -> None:
    # datetime() validates month/day/hour ranges (and leap years); the value itself is not used
    datetime(y, m, d, hh, mm, min(ss, 59), tzinfo=UTC)


def date_range(value: str) -> tuple[int, int]:
    """The inclusive millisecond range a FHIR date/dateTime/instant (or a search value) stands for.

    Raises ValueError for anything that is not a FHIR date form. A space in place of the ``+`` of a time-zone
    offset is read as ``+``: clients that put ``...+00:00`` in a query string without escaping the ``+`` (HAPI's
    ``history().since()`` does) send a space once the query is URL-decoded, and FHIR servers accept it.
    """
    match = _DATE.match(value.strip(" \t\n"))
    if match is None:
        raise ValueError("not a FHIR date")
    g = match.groupdict()
    y = int(g["y"])
    m = int(g["m"]) if g["m"] else 1
    d = int(g["d"]) if g["d"] else 1
    hh = int(g["H"]) if g["H"] else 0
    mm = int(g["M"]) if g["M"] else 0
    ss = int(g["S"]) if g["S"] else 0
    _check(y, m, d, hh, mm, ss)
    offset_ms = 0
    tz = g["tz"]
    if tz and tz != "Z":
        sign = -1 if tz[0] == "-" else 1  # "+" or the space an unescaped "+" became
        offset_ms = sign * (int(tz[1:3]) * 3600 + int(tz[4:6]) * 60) * 1000
    if g["m"] is None:
        return _epoch_ms(y, 1, 1), _epoch_ms(y + 1, 1, 1) - 1
    if g["d"] is None:
        ny, nm = (y + 1, 1) if m == 12 else (y, m + 1)
        return _epoch_ms(y, m, 1), _epoch_ms(ny, nm, 1) - 1
    if g["H"] is None:
        start = _epoch_ms(y, m, d)
        return start, start + 86_400_000 - 1
    start = _epoch_ms(y, m, d, hh, mm, ss) - offset_ms
    if g["S"] is None:
        return start, start + 60_000 - 1
    if g["f"]:
        start += int((g["f"][1:] + "000")[:3])
        return start, start
    return start, start + 999


def instant_ms(value: str) -> int:
    """Start of a FHIR date/dateTime/instant in epoch ms."""
    return date_range(value)[0]


def format_instant(ms: int) -> str:
    """A FHIR instant with millisecond precision in UTC, e.g. ``2024-03-01T10:00:00.000Z``."""
    return _second_prefix(ms // 1000) + f"{ms % 1000:03d}Z"


@functools.lru_cache(maxsize=4096)
def _second_prefix(seconds: int) -> str:
    # every stored version and change message formats its lastUpdated: datetime + strftime were ~8% of the
    # record ingestor's time at 100 events/s (py-spy), and one ingest batch shares a handful of seconds
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.")


def period_range(period: dict[str, object]) -> tuple[int, int] | None:
    """A FHIR Period as a range; a missing end means ongoing (open), a missing start means unknown (open)."""
    start = period.get("start")
    end = period.get("end")
    if not isinstance(start, str) and not isinstance(end, str):
        return None
    low = date_range(start)[0] if isinstance(start, str) else OPEN_START
    high = date_range(end)[1] if isinstance(end, str) else OPEN_END
    return low, high
