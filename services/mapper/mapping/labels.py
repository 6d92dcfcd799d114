"""Security labels decided at conversion time: which ``meta.security`` each resource carries.

Label sets (services/common/security_labels.py): PSY = R + PSY (psychiatric data); PART2 = R + SUD +
42CFRPart2 + NORDSCLCD (substance-use-disorder data under 42 CFR Part 2); ETHUD = R + ETHUD (alcohol-use
information that is not Part 2 data). Psychotherapy notes (V + PSYTHPN) are refused at intake, never labelled.

Rules, per resource (the Bundle and the Provenance carry the union of all resources' labels):

| data                                                     | labels                                         |
|----------------------------------------------------------|------------------------------------------------|
| any event whose ``source`` is in context.part2_sources   | PART2 added to every resource, Patient included |
|   (source_labels, every path)                              |                                                |
|   (a Part 2 program: being its patient is itself SUD information, 42 CFR 2.11)                            |
| Patient (registered / updated) from any other source     | none: demographics are ordinary PHI            |
| ICD-10-CM F10-F16, F18, F19 (alcohol / drug use disorders)| PART2                                          |
| ICD-10-CM F17 (nicotine): Part 2 excludes tobacco         | none                                           |
| other ICD-10-CM F01-F99, R45.851 (suicidal ideation),    | PSY                                            |
|   Z91.5x (history of self-harm)                          |                                                |
| SNOMED CT codes in the tables below; or the sender's     | PSY / PART2 as listed or hinted                |
|   ``sensitivity`` hint (psychiatric / substance-use)      |                                                |
| RxNorm buprenorphine, methadone, naltrexone, disulfiram, | PART2 (over-labelling is the safe direction:   |
|   acamprosate (OUD / AUD treatment)                      |   methadone for pain is labelled too)          |
| RxNorm psychiatric ingredients (antidepressants,         | PSY                                            |
|   antipsychotics, mood stabilisers, anxiolytics, ADHD)   |                                                |
|   - by ingredient whatever the term type: IN codes below,|                                                |
|   SCD / SBD / pack codes in rxnorm_products.py (VSAC),   |                                                |
|   and the ingredient or brand named in the display (an   |                                                |
|   unknown product code, NDC or local code)               |                                                |
| medication reason codes                                  | as diagnoses                                   |
| referral to therapy / psychiatry; appointment or session | PSY (+ the reason codes' labels)               |
|   with therapy / psychiatry; psychiatric admissions      |                                                |
| primary-care appointment / session                       | none                                           |
| admission to inpatient detox                             | PART2; inpatient-medical: reason codes only    |
| PHQ-9, PHQ-2, GAD-7, C-SSRS (QR, Observations, Flag)     | PSY                                            |
| AUDIT-C                                                  | R + ETHUD (alcohol screening is sensitive but  |
|                                                          |   not Part 2 unless from a Part 2 source)      |
| note with mental_health true                             | PSY; other notes none                          |
| care plan with therapy modalities or linked diagnoses    | PSY                                            |
| consent                                                  | labels of the data it covers (SUD / 42CFRPart2 |
|                                                          |   / ETHUD / OPIOIDUD -> PART2; PSY/MH/BH -> PSY)|
| lab: lithium level 14334-7 (psychiatric drug monitoring)  | PSY; other labs none                           |
| LOINC behavioural-health surveys (instrument codes, PCL-5,| PSY (AUDIT-C codes R + ETHUD)                  |
|   EPDS) in any result, on every path                      |                                                |
| any resource but the Patient from a source listed in     | PSY (e.g. a routine-outcome-monitoring system's |
|   CAREBUS_PSYCHIATRIC_SOURCES (source_labels)             |   ORU results with local codes)                |
| risk flag (any risk) and safety Flags                    | PSY                                            |

Code tables carry their provenance: (v) HL7 / government artifact, (t) third-party, (?) unverified.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from typing import Final

from services.common import security_labels
from services.common.fhir.codesystems import ICD10CM, SNOMED
from services.mapper.mapping.instruments import INSTRUMENTS
from services.mapper.mapping.rxnorm_products import PRODUCTS_BY_INGREDIENT

PSY: Final = security_labels.PSYCHIATRIC
PART2: Final = security_labels.PART2
ETHUD: Final = ("R", "ETHUD")
NONE: Final[tuple[str, ...]] = ()


SNOMED_PSYCHIATRIC: Final[frozenset[str]] = frozenset(
    {
        "35489007",  # Depressive disorder (t)
        "310495003",  # Mild depression (t)
        "310496002",  # Moderate depression (v, US BHP example)
        "310497006",  # Severe depression (t)
        "370143000",  # Major depressive disorder (t)
        "36923009",  # Major depression, recurrent (t)
        "21897009",  # Generalized anxiety disorder (t)
        "47505003",  # Posttraumatic stress disorder (t)
        "13746004",  # Bipolar disorder (t)
        "58214004",  # Schizophrenia (t)
        "6471006",  # Suicidal thoughts (t)
        "225444004",  # At risk for suicide (t)
    }
)
SNOMED_SUBSTANCE_USE: Final[frozenset[str]] = frozenset(
    {
        "1297194009",  # History of substance use disorder (v, US BHP example)
        "66590003",  # Alcohol dependence (?)
        "7200002",  # Alcoholism (?)
        "5602001",  # Opioid abuse (?)
        "75544000",  # Opioid dependence (?)
    }
)
# RxNorm ingredient (IN) codes -> ingredient name; products (SCD, SBD, packs) are in rxnorm_products.py
RXNORM_SUD_TREATMENT_INGREDIENTS: Final[dict[str, str]] = {
    "1819": "buprenorphine",  # (? per domain.md)
    "6813": "methadone",  # (v)
    "7243": "naltrexone",  # (v)
}
RXNORM_PSYCHIATRIC_INGREDIENTS: Final[dict[str, str]] = {
    "36437": "sertraline",  # (v)
    "321988": "escitalopram",  # (v)
    "42347": "bupropion",  # (v)
    "51272": "quetiapine",  # (t)
    "42351": "lithium",  # lithium carbonate (?)
    "6448": "lithium",  # (?)
    "4493": "fluoxetine",  # (?)
    "2556": "citalopram",  # (?)
    "32937": "paroxetine",  # (?)
    "39786": "venlafaxine",  # (?)
    "72625": "duloxetine",  # (?)
    "15996": "mirtazapine",  # (?)
    "10737": "trazodone",  # (?)
    "89013": "aripiprazole",  # (?)
    "61381": "olanzapine",  # (?)
    "35636": "risperidone",  # (?)
    "2626": "clozapine",  # (?)
    "28439": "lamotrigine",  # (?)
    "6470": "lorazepam",  # (?)
}
RXNORM_OUD_TREATMENT: Final[frozenset[str]] = frozenset(RXNORM_SUD_TREATMENT_INGREDIENTS)
RXNORM_PSYCHIATRIC: Final[frozenset[str]] = frozenset(RXNORM_PSYCHIATRIC_INGREDIENTS)

# Ingredients (and a few brand names) recognised in a coding's display or a free-text medication name, and the
# product table's keys. Opioid- and alcohol-use-disorder treatment -> PART2 (over-labelling is the safe
# direction: methadone for pain is labelled too); psychotropics -> PSY.
SUD_TREATMENT_INGREDIENTS: Final[tuple[str, ...]] = (
    "buprenorphine", "methadone", "naltrexone", "disulfiram", "acamprosate", "lofexidine",
)
SUD_TREATMENT_BRANDS: Final[tuple[str, ...]] = (
    "suboxone", "subutex", "sublocade", "brixadi", "vivitrol", "zubsolv", "bunavail", "antabuse", "campral",
    "lucemyra", "methadose", "dolophine",
)
PSYCHIATRIC_INGREDIENTS: Final[tuple[str, ...]] = (
    "sertraline", "escitalopram", "citalopram", "fluoxetine", "paroxetine", "fluvoxamine", "venlafaxine",
    "desvenlafaxine", "duloxetine", "levomilnacipran", "bupropion", "mirtazapine", "trazodone", "nefazodone",
    "vortioxetine", "vilazodone", "amitriptyline", "nortriptyline", "imipramine", "desipramine", "clomipramine",
    "doxepin", "protriptyline", "trimipramine", "amoxapine", "maprotiline", "phenelzine", "tranylcypromine",
    "isocarboxazid", "selegiline", "quetiapine", "olanzapine", "risperidone", "aripiprazole", "brexpiprazole",
    "cariprazine", "ziprasidone", "lurasidone", "asenapine", "iloperidone", "haloperidol", "clozapine",
    "paliperidone", "chlorpromazine", "fluphenazine", "perphenazine", "thioridazine", "thiothixene", "loxapine",
    "pimozide", "trifluoperazine", "molindone", "lumateperone", "pimavanserin", "lithium", "buspirone",
    "lamotrigine", "lorazepam", "clonazepam", "alprazolam", "diazepam", "chlordiazepoxide", "oxazepam",
    "temazepam", "clorazepate", "methylphenidate", "dexmethylphenidate", "atomoxetine", "viloxazine",
    "lisdexamfetamine", "dextroamphetamine", "amphetamine", "esketamine", "brexanolone", "zuranolone",
)
PSYCHIATRIC_BRANDS: Final[tuple[str, ...]] = (
    "zoloft", "lexapro", "celexa", "prozac", "paxil", "effexor", "pristiq", "cymbalta", "wellbutrin", "remeron",
    "trintellix", "viibryd", "seroquel", "zyprexa", "risperdal", "abilify", "rexulti", "vraylar", "geodon",
    "latuda", "invega", "clozaril", "haldol", "lamictal", "ativan", "klonopin", "xanax", "valium", "ritalin",
    "concerta", "adderall", "vyvanse", "strattera", "qelbree", "spravato", "zurzuvae", "lithobid", "buspar",
)
_SUD_WORDS: Final = re.compile(r"\b(" + "|".join(SUD_TREATMENT_INGREDIENTS + SUD_TREATMENT_BRANDS) + r")\b",
                               re.IGNORECASE)
_PSY_WORDS: Final = re.compile(r"\b(" + "|".join(PSYCHIATRIC_INGREDIENTS + PSYCHIATRIC_BRANDS) + r")\b",
                               re.IGNORECASE)
_INGREDIENT_LABELS: Final[dict[str, tuple[str, ...]]] = {
    **{name: PSY for name in PSYCHIATRIC_INGREDIENTS},
    **{name: PART2 for name in SUD_TREATMENT_INGREDIENTS},
}


def _product_ingredients() -> dict[str, tuple[str, ...]]:
    found: dict[str, list[str]] = {}
    for ingredient, codes in PRODUCTS_BY_INGREDIENT.items():
        for code in codes.split():
            found.setdefault(code, []).append(ingredient)
    return {code: tuple(names) for code, names in found.items()}


RXNORM_PRODUCT_INGREDIENTS: Final[dict[str, tuple[str, ...]]] = _product_ingredients()
LOINC_PSYCHIATRIC_LABS: Final[frozenset[str]] = frozenset({"14334-7"})  # lithium [Moles/volume] (v)
# Behavioural-health surveys (the LOINC classes of psychiatric instruments): every code (panel, total, items) of
# the instruments carebus scores (instruments.py), plus PCL-5 101697-1 / 101698-9 and EPDS 71354-5 / 99046-5
# (?), labelled though not scored. AUDIT-C's codes are alcohol screening: R + ETHUD, not PSY.
AUDIT_C_LOINC: Final[frozenset[str]] = frozenset({"72109-2", "75626-2", "68518-0", "68517-2", "68519-8", "68520-6"})
LOINC_PSYCHIATRIC_SURVEYS: Final[frozenset[str]] = frozenset(
    {"101697-1", "101698-9", "71354-5", "99046-5"}
    | {code for spec in INSTRUMENTS.values() if spec.key != "audit-c"
       for code in (spec.panel_loinc, spec.total_loinc, *(item.loinc for item in spec.items))}
)

_PART2_COVERED: Final = frozenset({"SUD", "ETHUD", "OPIOIDUD", "42CFRPart2"})
_PSY_COVERED: Final = frozenset({"PSY", "MH", "BH"})


def combine(*label_sets: Iterable[str]) -> tuple[str, ...]:
    return security_labels.combine(*label_sets)


def icd10_labels(code: str) -> tuple[str, ...]:
    normalised = code.replace(".", "").upper()
    if normalised.startswith("R45851") or normalised.startswith("Z915"):
        return PSY
    if len(normalised) < 3 or normalised[0] != "F" or not normalised[1:3].isdigit():
        return NONE
    block = int(normalised[1:3])
    if block == 17:
        return NONE
    if 10 <= block <= 19:
        return PART2
    return PSY


def diagnosis_labels(system: str, code: str, sensitivity: str | None = None) -> tuple[str, ...]:
    """Labels for one diagnosis code (ICD-10-CM or SNOMED CT) plus the sender's optional hint."""
    found: tuple[str, ...] = NONE
    if system == ICD10CM:
        found = icd10_labels(code)
    elif system == SNOMED:
        if code in SNOMED_SUBSTANCE_USE:
            found = PART2
        elif code in SNOMED_PSYCHIATRIC:
            found = PSY
    hinted = PART2 if sensitivity == "substance-use" else PSY if sensitivity == "psychiatric" else NONE
    return combine(found, hinted)


def ingredients_of(rxnorm_code: str) -> tuple[str, ...]:
    """The labelled ingredients of an RxNorm code, whatever its term type (IN, SCD, SBD, pack); () if none."""
    ingredient = RXNORM_SUD_TREATMENT_INGREDIENTS.get(rxnorm_code) or RXNORM_PSYCHIATRIC_INGREDIENTS.get(rxnorm_code)
    if ingredient is not None:
        return (ingredient,)
    return RXNORM_PRODUCT_INGREDIENTS.get(rxnorm_code, ())


def medication_name_labels(text: str | None) -> tuple[str, ...]:
    """Labels of a medication named in text (a coding's display, CodeableConcept.text, an NDC or local code's
    name): PART2 for OUD/AUD treatment, else PSY for a psychotropic, by ingredient or brand (whole words)."""
    if not text:
        return NONE
    if _SUD_WORDS.search(text):
        return PART2
    if _PSY_WORDS.search(text):
        return PSY
    return NONE


def medication_labels(rxnorm_code: str | None, sensitivity: str | None = None,
                      display: str | None = None) -> tuple[str, ...]:
    """THE medication rule, for every path (JSON events, HL7 v2, FHIR in): an RxNorm code labelled by its
    ingredients (any term type), the name in its display, and the sender's optional hint."""
    found = [_INGREDIENT_LABELS[name] for name in ingredients_of(rxnorm_code)] if rxnorm_code else []
    hinted = PART2 if sensitivity == "substance-use" else PSY if sensitivity == "psychiatric" else NONE
    return combine(*found, medication_name_labels(display), hinted)


def covered_labels(covered: Iterable[str]) -> tuple[str, ...]:
    """A consent reveals the kind of data it covers: label it like that data."""
    wanted = set(covered)
    return combine(PART2 if wanted & _PART2_COVERED else NONE, PSY if wanted & _PSY_COVERED else NONE)


def lab_labels(loinc_code: str) -> tuple[str, ...]:
    """THE rule for a LOINC-coded result on every path (lab events, HL7 v2 OBX/OBR, FHIR Observations):
    psychiatric drug monitoring and behavioural-health surveys -> PSY; AUDIT-C -> R + ETHUD; others none."""
    if loinc_code in AUDIT_C_LOINC:
        return ETHUD
    if loinc_code in LOINC_PSYCHIATRIC_LABS or loinc_code in LOINC_PSYCHIATRIC_SURVEYS:
        return PSY
    return NONE


def source_labels(names: Iterable[str], resource_type: str, part2_sources: Collection[str],
                  psychiatric_sources: Collection[str]) -> tuple[str, ...]:
    """THE rule for what a source's configured kind adds to each resource it sends, on every path (``names``:
    the CloudEvent / X-Carebus-Source source, or an HL7 sender's URI and facility names):
    a 42 CFR Part 2 program (CAREBUS_PART2_SOURCES) -> PART2 on every resource, the Patient included (being its
    patient is itself SUD information, 42 CFR 2.11); a psychiatric source (CAREBUS_PSYCHIATRIC_SOURCES: a
    psychiatric practice, a routine-outcome-monitoring system sending questionnaire results) -> PSY on every
    resource but the Patient (demographics are ordinary PHI)."""
    if not part2_sources and not psychiatric_sources:
        return NONE
    part2 = any(name in part2_sources for name in names)
    psychiatric = resource_type != "Patient" and any(name in psychiatric_sources for name in names)
    if part2 and psychiatric:
        return combine(PART2, PSY)
    return PART2 if part2 else PSY if psychiatric else NONE
