"""Which characters FHIR text may hold, in one place.

FHIR R4 strings may not contain code points below U+0020 except tab, CR and LF (datatypes: string). carebus also
refuses the Unicode non-characters (U+FDD0-U+FDEF and the last two code points of every plane), which are not
for interchange; PostgreSQL cannot store U+0000 in text at all. Messages name the code point, never the text.
"""

from __future__ import annotations

import re

_NONCHARACTERS = "\ufdd0-\ufdef\ufffe\uffff" + "".join(
    f"{chr(plane * 0x10000 + 0xFFFE)}{chr(plane * 0x10000 + 0xFFFF)}" for plane in range(1, 17)
)
FORBIDDEN = re.compile(f"[\x00-\x08\x0b\x0c\x0e-\x1f{_NONCHARACTERS}]")


def forbidden_character(text: str) -> str | None:
    """The first character of ``text`` FHIR text may not hold, as ``U+XXXX``; None when there is none."""
    found = FORBIDDEN.search(text)
    return f"U+{ord(found.group()):04X}" if found else None

