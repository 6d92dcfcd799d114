"""HL7 v2 date/time values (DTM, TS, DT): ``YYYY[MM[DD[HH[MM[SS[.S...]]]]]][+/-ZZZZ]`` read once, as the
precision the sender gave. Used by the codec's checks at the door (services.common.hl7v2.inspection) and by the
mapping's FHIR date conversions (services.mapper.hl7v2.datatypes)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache

_DTM = re.compile(r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,4}))?([+-]\d{4})?")
_MEMO_CHARS = 64  # values up to this length are memoized (docs/hot-path.md); longer ones are not kept


@dataclass(frozen=True)
class Dtm:
    year: int
    month: int | None
    day: int | None
    hour: int | None
    minute: int | None
    second: int | None
    fraction: str | None
    tz: str | None  # "+hh:mm"

    def date(self) -> str:
        out = f"{self.year:04d}"
        if self.month is not None:
            out += f"-{self.month:02d}"
            if self.day is not None:
                out += f"-{self.day:02d}"
        return out

    def date_time(self, tz: str) -> str:
        if self.hour is None or self.day is None or self.month is None:
            return self.date()
        frac = f".{self.fraction}" if self.fraction else ""
        return (f"{self.date()}T{self.hour:02d}:{self.minute or 0:02d}:{self.second or 0:02d}{frac}"
                f"{self.tz or tz}")

    def aware(self, tz: str) -> datetime:
        zone = self.tz or tz
        sign = -1 if zone[0] == "-" else 1
        offset = timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])) * sign
        return datetime(self.year, self.month or 1, self.day or 1, self.hour or 0, self.minute or 0,
                        self.second or 0, tzinfo=timezone(offset))


def parse_dtm(text: str) -> Dtm | None:
    """Parse a v2 DTM/TS/DT value (YYYY[MM[DD[HH[MM[SS[.S...]]]]]][+/-ZZZZ]); None when it is not one.
    Memoized for short values: the result is immutable and timestamps repeat within and across messages."""
    return _memo_dtm(text) if len(text) <= _MEMO_CHARS else _parse_dtm(text)


@lru_cache(maxsize=4096)
def _memo_dtm(text: str) -> Dtm | None:
    return _parse_dtm(text)


def _parse_dtm(text: str) -> Dtm | None:
    match = _DTM.fullmatch(text.strip().replace(" ", ""))
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    if hour is None and (fraction or zone) and day is None:
        return None
    tz = None
    if zone:
        zh, zm = int(zone[1:3]), int(zone[3:5])
        if zh > 14 or zm > 59:
            return None
        tz = f"{zone[0]}{zone[1:3]}:{zone[3:5]}"
    values = [int(v) if v is not None else None for v in (year, month, day, hour, minute, second)]
    y, mo, d, h, mi, s = values
    assert y is not None
    try:
        datetime(y, 1 if mo is None else mo, 1 if d is None else d, h or 0, mi or 0, s or 0)
    except ValueError:
        return None
    if y < 1:
        return None
    return Dtm(y, mo, d, h, mi, s, fraction, tz)


def offset_of(text: str) -> str | None:
    parsed = parse_dtm(text)
    return parsed.tz if parsed is not None else None
