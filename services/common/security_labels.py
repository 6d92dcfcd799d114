"""Security labels (meta.security codings) carebus decides at conversion time.

Sets (HL7 v3 Confidentiality and ActCode; docs/security-labels.md has every rule that picks them): psychiatric
data R+PSY; substance-use (42 CFR Part 2) data R+SUD+42CFRPart2+NORDSCLCD; psychotherapy notes V+PSYTHPN
(refused on every path, intake first: never carried).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Final

from services.common.fhir.codesystems import V3_ACT_CODE, V3_CONFIDENTIALITY

_LABELS: dict[str, tuple[str, str]] = {
    "N": (V3_CONFIDENTIALITY, "normal"),
    "R": (V3_CONFIDENTIALITY, "restricted"),
    "V": (V3_CONFIDENTIALITY, "very restricted"),
    "PSY": (V3_ACT_CODE, "psychiatry disorder information sensitivity"),
    "MH": (V3_ACT_CODE, "mental health information sensitivity"),
    "BH": (V3_ACT_CODE, "behavioral health information sensitivity"),
    "SUD": (V3_ACT_CODE, "substance use disorder information sensitivity"),
    "ETHUD": (V3_ACT_CODE, "alcohol use disorder information sensitivity"),
    "OPIOIDUD": (V3_ACT_CODE, "opioid use disorder information sensitivity"),
    "PSYTHPN": (V3_ACT_CODE, "psychotherapy note information sensitivity"),
    "42CFRPart2": (V3_ACT_CODE, "42 CFR Part2"),
    "NORDSCLCD": (V3_ACT_CODE, "no redisclosure without consent directive"),
}

PSYCHIATRIC = ("R", "PSY")
PART2 = ("R", "SUD", "42CFRPart2", "NORDSCLCD")
PSYCHOTHERAPY_NOTE: Final = ("V", "PSYTHPN")  # refused wherever it is found: never carried, never labelled
_PSYCHOTHERAPY_NOTE_TEXT: Final = re.compile(r"psycho\s*therapy\s*note|PSYTHPN", re.IGNORECASE)


def is_psychotherapy_note(sent_codes: Iterable[str], text: str = "") -> bool:
    """A psychotherapy note (HIPAA 45 CFR 164.501): a sender's PSYTHPN label, or a document type / text naming
    one. The one test of the refusal: intake's FHIR check (services/common/fhir_payload.py) and the mapping's
    rule (services/mapper/mapping/labels.refused_labels) both ask it."""
    return "PSYTHPN" in sent_codes or _PSYCHOTHERAPY_NOTE_TEXT.search(text) is not None

_CONFIDENTIALITY_RANK = {"N": 0, "R": 1, "V": 2}


def system_of(code: str) -> str:
    return _LABELS[code][0]


def coding(code: str) -> dict[str, Any]:
    system, display = _LABELS[code]
    return {"system": system, "code": code, "display": display}


def combine(*label_sets: Iterable[str]) -> tuple[str, ...]:
    """Union of label sets, keeping one confidentiality code (the most restrictive) first."""
    cacheable = all(type(labels) is tuple for labels in label_sets)
    if cacheable:
        found = _combined.get(label_sets)
        if found is not None:
            return found
    codes: set[str] = set()
    for labels in label_sets:
        codes.update(labels)
    confidentiality = [c for c in codes if c in _CONFIDENTIALITY_RANK]
    others = sorted(c for c in codes if c not in _CONFIDENTIALITY_RANK)
    combined = tuple(others)
    if confidentiality:
        combined = (max(confidentiality, key=_CONFIDENTIALITY_RANK.__getitem__), *others)
    if cacheable and len(_combined) < _COMBINATIONS_KEPT:
        _combined[label_sets] = combined
    return combined


def meta_security(codes: Iterable[str]) -> list[dict[str, Any]]:
    return [coding(code) for code in combine(tuple(codes))]


# A mapping combines the same few label sets again and again (five or so per event): remember the answers.
_COMBINATIONS_KEPT: Final = 1024
_combined: dict[tuple[Iterable[str], ...], tuple[str, ...]] = {}  # keys: tuples of tuples only

KNOWN: frozenset[str] = frozenset(_LABELS)
