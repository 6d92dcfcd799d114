"""Security labels of HL7 v2-derived resources: the JSON pipeline's rules (services/mapper/mapping/labels.py)
applied to v2 codings, plus what only v2 feeds send.

From labels.py, unchanged: ICD-10-CM F-codes (F10-F16, F18, F19 -> PART2; F17 none; other F, R45.851, Z91.5
-> PSY), the SNOMED CT and RxNorm tables, lithium level, AUDIT-C -> R+ETHUD, other instruments -> PSY,
Part 2 sources -> PART2 on every resource, Patient none of its own.

Added for v2: ICD-10 (WHO, ``I10``) codes and local codes shaped like ICD-10 F-codes are read like ICD-10-CM;
ICD-9-CM 290-319 (291, 292, 303, 304 and 305 except 305.1 tobacco -> PART2); medications named in the coding
display or text (NDC products, local codes) matched by ingredient name; mental-health note types (LOINC, US
Behavioral Health Profiles IG) -> PSY. When in doubt carebus over-labels.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from services.mapper.hl7v2.terminology import ICD9CM, ICD10, ICD10CM, LOINC, RXNORM, SNOMED, is_local_system
from services.mapper.mapping import labels

Labels = tuple[str, ...]
PSY: Labels = labels.PSY
PART2: Labels = labels.PART2
ETHUD: Labels = labels.ETHUD
NONE: Labels = ()

_ICD10_SHAPE = re.compile(r"[A-TV-Z]\d{2}(?:\.?[0-9A-Z]{0,4})")
_ICD9 = re.compile(r"(\d{3})(?:\.(\d{1,2}))?")

OUD_AUD_NAMES = (
    "buprenorphine", "methadone", "naltrexone", "disulfiram", "acamprosate", "suboxone", "subutex",
    "sublocade", "vivitrol", "zubsolv",
)
PSYCHOTROPIC_NAMES = (
    "sertraline", "escitalopram", "citalopram", "fluoxetine", "paroxetine", "fluvoxamine", "venlafaxine",
    "desvenlafaxine", "duloxetine", "bupropion", "mirtazapine", "trazodone", "vortioxetine", "vilazodone",
    "amitriptyline", "nortriptyline", "imipramine", "clomipramine", "quetiapine", "olanzapine", "risperidone",
    "aripiprazole", "ziprasidone", "lurasidone", "haloperidol", "clozapine", "paliperidone", "chlorpromazine",
    "lithium", "buspirone", "lamotrigine", "lorazepam", "clonazepam", "alprazolam", "methylphenidate",
    "atomoxetine", "lisdexamfetamine",
)
_OUD_NAMES = re.compile(r"\b(" + "|".join(OUD_AUD_NAMES) + r")\b", re.IGNORECASE)
_PSY_NAMES = re.compile(r"\b(" + "|".join(PSYCHOTROPIC_NAMES) + r")\b", re.IGNORECASE)

# LOINC codes of behavioural-health instruments (panels, totals, items) scored in instruments.py, plus PCL-5
# and EPDS which are labelled though not scored.
_EXTRA_INSTRUMENT_LOINC = frozenset({"101697-1", "101698-9", "71354-5", "99046-5"})
AUDIT_C_LOINC = frozenset({"72109-2", "75626-2", "68518-0", "68517-2", "68519-8", "68520-6"})
MENTAL_HEALTH_NOTE_LOINC = frozenset({"34904-3", "34785-6", "78263-1", "78306-8", "78472-8", "11510-5"})


def combine(*label_sets: Iterable[str]) -> Labels:
    return labels.combine(*label_sets)


def _instrument_codes() -> frozenset[str]:
    from services.mapper.mapping.instruments import INSTRUMENTS

    codes: set[str] = set(_EXTRA_INSTRUMENT_LOINC)
    for spec in INSTRUMENTS.values():
        codes.update({spec.panel_loinc, spec.total_loinc, *(item.loinc for item in spec.items)})
    return frozenset(codes)


INSTRUMENT_LOINC = _instrument_codes()


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
    found: list[Labels] = []
    for system, code, display in _codings(concept):
        if system == RXNORM and code:
            found.append(labels.medication_labels(code))
        if _OUD_NAMES.search(display):
            found.append(PART2)
        elif _PSY_NAMES.search(display):
            found.append(PSY)
    return combine(*found)


def observation(concept: dict[str, Any] | None) -> Labels:
    found: list[Labels] = []
    for system, code, _display in _codings(concept):
        if system != LOINC:
            continue
        if code in AUDIT_C_LOINC:
            found.append(ETHUD)
        elif code in INSTRUMENT_LOINC:
            found.append(PSY)
        else:
            found.append(labels.lab_labels(code))
    return combine(*found)


def document(concepts: Iterable[dict[str, Any] | None]) -> Labels:
    for concept in concepts:
        for system, code, _display in _codings(concept):
            if system == LOINC and code in MENTAL_HEALTH_NOTE_LOINC:
                return PSY
    return NONE
