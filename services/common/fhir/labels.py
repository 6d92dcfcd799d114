"""Security labels decided at conversion time: every rule that decides a resource's ``meta.security``, on every
path (JSON care events, HL7 v2, FHIR in), is a named function here; family modules only call them.

Label sets (services/common/security_labels.py): PSY = R + PSY (psychiatric data); PART2 = R + SUD +
42CFRPart2 + NORDSCLCD (substance-use-disorder data under 42 CFR Part 2); ETHUD = R + ETHUD (alcohol-use
information that is not Part 2 data). Psychotherapy notes (V + PSYTHPN) are refused, never labelled. The Bundle
and the Provenance carry the union of all resources' labels.

The table of rules is generated from ``RULES`` below (``python -m services.common.fhir`` writes
docs/security-labels.md; tests/mapping/test_label_rules.py fails when the file and the code disagree, when a rule
function is missing from ``RULES``, or when a rule's example does not give the labels the table states).
When in doubt carebus over-labels. Code tables carry their provenance: (v) HL7 / government artifact,
(t) third-party, (?) unverified.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Final

from services.common import security_labels
from services.common.fhir.codesystems import ICD10CM, SNOMED
from services.common.fhir.instruments import INSTRUMENTS
from services.common.fhir.rxnorm_products import PRODUCTS_BY_INGREDIENT

PSY: Final = security_labels.PSYCHIATRIC
PART2: Final = security_labels.PART2
ETHUD: Final = ("R", "ETHUD")
NONE: Final[tuple[str, ...]] = ()
PSYCHOTHERAPY_NOTE: Final = security_labels.PSYCHOTHERAPY_NOTE  # refused wherever it is found
Labels = tuple[str, ...]


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

PART2_COVERED: Final = frozenset({"SUD", "ETHUD", "OPIOIDUD", "42CFRPart2"})
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
    return combine(PART2 if wanted & PART2_COVERED else NONE, PSY if wanted & _PSY_COVERED else NONE)


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


def icd9_labels(code: str) -> tuple[str, ...]:
    """ICD-9-CM mental disorders 290-319: alcohol / drug psychoses, dependence and abuse (291, 292, 303, 304,
    305 except 305.1 tobacco) -> PART2; the others -> PSY (old HL7 v2 feeds still send ICD-9-CM)."""
    match = _ICD9.fullmatch(code)
    if match is None or not 290 <= int(match.group(1)) <= 319:
        return NONE
    block, detail = int(match.group(1)), match.group(2) or ""
    if block in {291, 292, 303, 304} or (block == 305 and not detail.startswith("1")):
        return PART2
    return PSY


_ICD9: Final = re.compile(r"(\d{3})(?:\.(\d{1,2}))?")


def instrument_labels(instrument_key: str) -> tuple[str, ...]:
    """A scored instrument's resources (QuestionnaireResponse, item / total Observations, panel), on every path:
    AUDIT-C is alcohol screening, R + ETHUD (not Part 2 unless from a Part 2 source); the others PSY."""
    return ETHUD if instrument_key == "audit-c" else PSY


def safety_flag_labels() -> tuple[str, ...]:
    """A risk Flag (any risk level) and a safety Flag raised from an instrument's answers: PSY."""
    return PSY


def care_service_labels(service: str) -> tuple[str, ...]:
    """An appointment or a session (Encounter): primary care none; therapy / psychiatry PSY."""
    return NONE if service == "primary-care" else PSY


def therapy_modality_labels() -> tuple[str, ...]:
    """The Procedure of a session's therapy modality (CBT, DBT ...): PSY whatever the session's service."""
    return PSY


def referral_labels(reason_labels: Iterable[tuple[str, ...]] = ()) -> tuple[str, ...]:
    """A referral (to therapy / psychiatry): PSY, plus its reason codes' labels."""
    return combine(PSY, *reason_labels)


ADMISSION_SERVICE_LABELS: Final[dict[str, tuple[str, ...]]] = {
    "inpatient-psychiatry": PSY,
    "inpatient-detox": PART2,
    "inpatient-medical": NONE,
}


def admission_labels(service: str, reason_labels: Iterable[tuple[str, ...]] = ()) -> tuple[str, ...]:
    """An admission's Encounter: inpatient psychiatry PSY, inpatient detox PART2, inpatient medical none; plus
    its reason codes' labels."""
    return combine(ADMISSION_SERVICE_LABELS[service], *reason_labels)


PSYCHIATRIC_HOSPITAL_SERVICES: Final[frozenset[str]] = frozenset({"PSY", "PSYCH", "PSI", "BH", "MH", "BHS"})


def hospital_service_labels(code: str, text: str) -> tuple[str, ...]:
    """An HL7 v2 visit's hospital service (PV1-10 code, and its text): a psychiatric / behavioural / mental
    health service -> PSY."""
    lowered = text.lower()
    if (code.upper() in PSYCHIATRIC_HOSPITAL_SERVICES or "psych" in lowered or "behavioral" in lowered
            or "mental" in lowered):
        return PSY
    return NONE


def discharge_labels(disposition: str | None, text: str = "") -> tuple[str, ...]:
    """A discharge disposition: to a psychiatric hospital (``psy``; or, not mapped, a text naming psych) -> PSY."""
    if disposition is not None:
        return PSY if disposition == "psy" else NONE
    return PSY if "psych" in text.lower() else NONE


_SCHEDULED_SUD: Final = re.compile(r"substance|addiction|detox|opioid treatment|methadone|buprenorphine",
                                   re.IGNORECASE)
_SCHEDULED_PSY: Final = re.compile(r"psych|behaviou?ral health|mental health|counsel|therapy session",
                                   re.IGNORECASE)


def scheduled_service_labels(text: str) -> tuple[str, ...]:
    """An HL7 v2 appointment's service, type and reason texts: substance-use treatment -> PART2, psychiatric /
    behavioural health / counselling -> PSY."""
    if _SCHEDULED_SUD.search(text):
        return PART2
    if _SCHEDULED_PSY.search(text):
        return PSY
    return NONE


def note_labels(mental_health: bool) -> tuple[str, ...]:
    """A clinical note (DocumentReference) the sender marks as mental health: PSY; other notes none."""
    return PSY if mental_health else NONE


# LOINC mental-health note types (US Behavioral Health Profiles IG) and the psychology progress note
MENTAL_HEALTH_NOTE_TYPES: Final[dict[str, str]] = {
    "34904-3": "Mental health Progress note", "34785-6": "Mental health Consult note",
    "78263-1": "Mental health Discharge summary", "78306-8": "Mental health History and physical note",
    "78472-8": "Mental health Procedure note", "11510-5": "Psychology Progress note",
}


def note_type_labels(loinc_code: str) -> tuple[str, ...]:
    """A note typed with a mental-health LOINC note type (US Behavioral Health Profiles) -> PSY."""
    return PSY if loinc_code in MENTAL_HEALTH_NOTE_TYPES else NONE


def care_plan_labels(therapy_or_diagnoses: bool) -> tuple[str, ...]:
    """A care plan with therapy modalities or linked diagnoses -> PSY (its goals follow the plan); else none."""
    return PSY if therapy_or_diagnoses else NONE


def refused_labels(sent_codes: Iterable[str], text: str = "") -> tuple[str, ...]:
    """Psychotherapy notes (HIPAA 45 CFR 164.501) are refused on every path: a sender's PSYTHPN label, or a
    document type / text naming a psychotherapy note -> V + PSYTHPN, and the caller refuses the content."""
    if security_labels.is_psychotherapy_note(sent_codes, text):
        return PSYCHOTHERAPY_NOTE
    return NONE


# --- the table of rules -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LabelRule:
    """One row of the documented table: the rule, what data it labels, an example and the labels it gives."""

    rule: Callable[..., tuple[str, ...]]
    data: str
    example: tuple[object, ...]
    labels: tuple[str, ...]


RULES: Final[tuple[LabelRule, ...]] = (
    LabelRule(source_labels, "any resource from a source in CAREBUS_PART2_SOURCES (a 42 CFR Part 2 program: being "
              "its patient is itself SUD information, 42 CFR 2.11), the Patient included",
              (("urn:x:p2",), "Patient", ("urn:x:p2",), ()), PART2),
    LabelRule(source_labels, "any resource but the Patient from a source in CAREBUS_PSYCHIATRIC_SOURCES (a "
              "psychiatric practice, a routine-outcome-monitoring system)",
              (("urn:x:psy",), "Observation", (), ("urn:x:psy",)), PSY),
    LabelRule(source_labels, "a Patient from any other source (demographics are ordinary PHI)",
              (("urn:x:gp",), "Patient", ("urn:x:p2",), ("urn:x:psy",)), NONE),
    LabelRule(icd10_labels, "ICD-10-CM / ICD-10 F10-F16, F18, F19 (alcohol / drug use disorders)", ("F10.20",), PART2),
    LabelRule(icd10_labels, "ICD-10-CM F17 (nicotine): Part 2 excludes tobacco", ("F17.210",), NONE),
    LabelRule(icd10_labels, "other ICD-10-CM F01-F99, R45.851 (suicidal ideation), Z91.5x (history of self-harm)",
              ("F32.1",), PSY),
    LabelRule(icd9_labels, "ICD-9-CM 291, 292, 303, 304, 305 (not 305.1 tobacco)", ("303.90",), PART2),
    LabelRule(icd9_labels, "other ICD-9-CM 290-319", ("296.20",), PSY),
    LabelRule(diagnosis_labels, "SNOMED CT substance-use disorders (SNOMED_SUBSTANCE_USE), or the sender's "
              "`sensitivity: substance-use` hint", (SNOMED, "1297194009"), PART2),
    LabelRule(diagnosis_labels, "SNOMED CT psychiatric disorders (SNOMED_PSYCHIATRIC), or the sender's "
              "`sensitivity: psychiatric` hint", (SNOMED, "310496002"), PSY),
    LabelRule(medication_labels, "RxNorm buprenorphine, methadone, naltrexone, disulfiram, acamprosate (OUD / AUD "
              "treatment; over-labelling is the safe direction: methadone for pain is labelled too), by "
              "ingredient whatever the term type (IN, SCD, SBD, packs: rxnorm_products.py)", ("1819",), PART2),
    LabelRule(medication_labels, "RxNorm psychiatric ingredients (antidepressants, antipsychotics, mood "
              "stabilisers, anxiolytics, ADHD), by ingredient whatever the term type", ("36437",), PSY),
    LabelRule(medication_name_labels, "a medication named in text (a coding's display, an NDC or local code's "
              "name): OUD / AUD treatment by ingredient or brand (whole words)", ("Suboxone 8 mg film",), PART2),
    LabelRule(medication_name_labels, "a psychotropic named in text, by ingredient or brand (whole words)",
              ("Zoloft 50 mg",), PSY),
    LabelRule(lab_labels, "LOINC lithium level 14334-7 (psychiatric drug monitoring); behavioural-health surveys "
              "(every code of the scored instruments but AUDIT-C, PCL-5, EPDS) in any result", ("14334-7",), PSY),
    LabelRule(lab_labels, "LOINC AUDIT-C codes in any result", ("75626-2",), ETHUD),
    LabelRule(lab_labels, "any other LOINC result", ("2345-7",), NONE),
    LabelRule(instrument_labels, "a scored PHQ-9, PHQ-2, GAD-7 or C-SSRS (QuestionnaireResponse, Observations)",
              ("phq-9",), PSY),
    LabelRule(instrument_labels, "a scored AUDIT-C (alcohol screening is sensitive but not Part 2 unless from a "
              "Part 2 source)", ("audit-c",), ETHUD),
    LabelRule(safety_flag_labels, "a risk Flag (any risk level) and a safety Flag from an instrument's answers",
              (), PSY),
    LabelRule(care_service_labels, "an appointment or session with therapy / psychiatry", ("therapy",), PSY),
    LabelRule(care_service_labels, "a primary-care appointment or session", ("primary-care",), NONE),
    LabelRule(therapy_modality_labels, "a session's therapy-modality Procedure", (), PSY),
    LabelRule(referral_labels, "a referral (+ its reason codes' labels)", (), PSY),
    LabelRule(admission_labels, "an inpatient psychiatry admission (+ its reason codes' labels)",
              ("inpatient-psychiatry",), PSY),
    LabelRule(admission_labels, "an inpatient detox admission", ("inpatient-detox",), PART2),
    LabelRule(admission_labels, "an inpatient medical admission: its reason codes' labels only",
              ("inpatient-medical",), NONE),
    LabelRule(hospital_service_labels, "an HL7 v2 visit to a psychiatric / behavioural / mental-health hospital "
              "service (PV1-10)", ("PSY", ""), PSY),
    LabelRule(discharge_labels, "a discharge to a psychiatric hospital", ("psy",), PSY),
    LabelRule(scheduled_service_labels, "an HL7 v2 appointment whose service / type / reason names substance-use "
              "treatment", ("Opioid treatment program intake",), PART2),
    LabelRule(scheduled_service_labels, "an HL7 v2 appointment whose service / type / reason names psychiatry, "
              "behavioural health or counselling", ("Psychiatry follow-up",), PSY),
    LabelRule(note_labels, "a note with `mental_health: true`; other notes none", (True,), PSY),
    LabelRule(note_type_labels, "a note of a mental-health LOINC note type (US Behavioral Health Profiles)",
              ("34904-3",), PSY),
    LabelRule(care_plan_labels, "a care plan with therapy modalities or linked diagnoses (goals follow the plan)",
              (True,), PSY),
    LabelRule(covered_labels, "a consent: the labels of the data it covers (SUD / 42CFRPart2 / ETHUD / OPIOIDUD "
              "-> PART2; PSY / MH / BH -> PSY)", (("42CFRPart2",),), PART2),
    LabelRule(refused_labels, "a psychotherapy note (a sender's PSYTHPN label, or a document naming one): "
              "REFUSED, never carried", (("PSYTHPN",),), PSYCHOTHERAPY_NOTE),
)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _example(rule: LabelRule) -> str:
    return f"`{rule.rule.__name__}({', '.join(repr(arg) for arg in rule.example)})`"


_SET_NAMES: Final[dict[tuple[str, ...], str]] = {PSY: "PSY", PART2: "PART2", ETHUD: "ETHUD",
                                                 PSYCHOTHERAPY_NOTE: "V + PSYTHPN: refused", NONE: "none"}


def rules_table() -> str:
    """docs/security-labels.md: the table of RULES."""
    lines = [
        "# Security labels carebus decides (generated from services/common/fhir/labels.py: RULES)",
        "",
        "Regenerate with `python -m services.common.fhir`. Every path (JSON care events, HL7 v2, FHIR in)",
        "calls these rules; a resource carries the union of the rules that apply to it, the Bundle and the",
        "Provenance the union of all its resources' labels. PSY = R + PSY; PART2 = R + SUD + 42CFRPart2 +",
        "NORDSCLCD; ETHUD = R + ETHUD.",
        "",
        "| data | labels | rule (an example that gives them) |",
        "|---|---|---|",
    ]
    for rule in RULES:
        labels = _SET_NAMES.get(rule.labels) or " + ".join(rule.labels)
        lines.append(f"| {_cell(rule.data)} | {labels} | {_cell(_example(rule))} |")
    return "\n".join(lines) + "\n"
