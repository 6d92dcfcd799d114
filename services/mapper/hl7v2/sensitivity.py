"""Security labels of HL7 v2-derived resources: the JSON pipeline's rules (services/mapper/mapping/labels.py)
applied to v2 codings, plus what only v2 feeds send.

From labels.py, unchanged: the medication rule (RxNorm by ingredient whatever the term type; the ingredient
or brand named in any coding's display or the text: NDC products, local codes), ICD-10-CM F-codes (F10-F16,
F18, F19 -> PART2; F17 none; other F, R45.851, Z91.5 -> PSY), the SNOMED CT tables, the LOINC rule for results
(behavioural-health surveys and lithium levels -> PSY, AUDIT-C -> R+ETHUD), the source's configured kind
(labels.source_labels, applied in mapper.py: Part 2 programs -> PART2 on every resource; psychiatric sources
such as a routine-outcome-monitoring system -> PSY on every resource but the Patient), Patient none of its own.

Added for v2: ICD-10 (WHO, ``I10``) codes and local codes shaped like ICD-10 F-codes are read like ICD-10-CM;
ICD-9-CM 290-319 (291, 292, 303, 304 and 305 except 305.1 tobacco -> PART2); mental-health note types (LOINC, US
Behavioral Health Profiles IG) -> PSY. When in doubt carebus over-labels.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from services.common.fhir.codesystems import ICD9CM, ICD10, ICD10CM, LOINC, RXNORM, SNOMED
from services.mapper.hl7v2.terminology import is_local_system
from services.mapper.mapping import labels

Labels = tuple[str, ...]
PSY: Labels = labels.PSY
PART2: Labels = labels.PART2
ETHUD: Labels = labels.ETHUD
NONE: Labels = ()

_ICD10_SHAPE = re.compile(r"[A-TV-Z]\d{2}(?:\.?[0-9A-Z]{0,4})")
_ICD9 = re.compile(r"(\d{3})(?:\.(\d{1,2}))?")

MENTAL_HEALTH_NOTE_LOINC = frozenset({"34904-3", "34785-6", "78263-1", "78306-8", "78472-8", "11510-5"})


def combine(*label_sets: Iterable[str]) -> Labels:
    return labels.combine(*label_sets)


def _codings(concept: dict[str, Any] | None) -> list[tuple[str | None, str, str]]:
    if not concept:
        return []
    out = [(c.get("system"), str(c.get("code", "")), str(c.get("display", "")))
           for c in concept.get("coding", [])]
    if concept.get("text"):
        out.append((None, "", str(concept["text"])))
    return out


def _icd9(code: str) -> Labels:
    match = _ICD9.fullmatch(code)
    if match is None or not 290 <= int(match.group(1)) <= 319:
        return NONE
    block, detail = int(match.group(1)), match.group(2) or ""
    if block in {291, 292, 303, 304} or (block == 305 and not detail.startswith("1")):
        return PART2
    return PSY


def diagnosis(concept: dict[str, Any] | None) -> Labels:
    found: list[Labels] = []
    for system, code, _display in _codings(concept):
        if not code:
            continue
        if system in {ICD10CM, SNOMED}:
            found.append(labels.diagnosis_labels(system, code))
        elif system == ICD10 or ((system is None or is_local_system(system)) and _ICD10_SHAPE.fullmatch(code.upper())):
            found.append(labels.icd10_labels(code))
        elif system == ICD9CM:
            found.append(_icd9(code))
    return combine(*found)


def medication(concept: dict[str, Any] | None) -> Labels:
    """labels.medication_labels for each coding (an RxNorm code by its ingredients, whatever its term type; the
    ingredient named in the display of any coding: NDC, local codes) and for the text."""
    found: list[Labels] = []
    for system, code, display in _codings(concept):
        found.append(labels.medication_labels(code if system == RXNORM else None, None, display))
    return combine(*found)


def observation(concept: dict[str, Any] | None) -> Labels:
    """labels.lab_labels for each LOINC coding: behavioural-health surveys (the instruments' panels, totals and
    items, PCL-5, EPDS) -> PSY, AUDIT-C -> R+ETHUD, lithium levels -> PSY."""
    found: list[Labels] = []
    for system, code, _display in _codings(concept):
        if system == LOINC:
            found.append(labels.lab_labels(code))
    return combine(*found)


def document(concepts: Iterable[dict[str, Any] | None]) -> Labels:
    for concept in concepts:
        for system, code, _display in _codings(concept):
            if system == LOINC and code in MENTAL_HEALTH_NOTE_LOINC:
                return PSY
    return NONE
