"""The label rules (services/common/fhir/labels.py, table in docs/security-labels.md) applied to HL7 v2
codings: which rule reads which coding of a v2 CodeableConcept.

ICD-10 (WHO, ``I10``) codes and local codes shaped like ICD-10 F-codes are read like ICD-10-CM
(labels.icd10_labels); ICD-9-CM by labels.icd9_labels; every coding's display and the text by the medication
name rule; LOINC result codes by labels.lab_labels; LOINC note types by labels.note_type_labels.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from services.common.fhir import labels
from services.common.fhir.codesystems import ICD9CM, ICD10, ICD10CM, LOINC, RXNORM, SNOMED
from services.mapper.hl7v2.terminology import is_local_system

Labels = tuple[str, ...]

_ICD10_SHAPE = re.compile(r"[A-TV-Z]\d{2}(?:\.?[0-9A-Z]{0,4})")


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
            found.append(labels.icd9_labels(code))
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
            if system == LOINC and labels.note_type_labels(code):
                return labels.note_type_labels(code)
    return labels.NONE
