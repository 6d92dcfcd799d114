"""Value maps from HL7 v2 tables to FHIR R4 codes.

Concept maps follow the HL7 v2-to-FHIR IG (http://hl7.org/fhir/uv/v2mappings) where it has one: v2-0001
gender, v2-0004 encounter class, v2-0085 observation status, v2-0123 diagnostic report status, v2-0203
identifier type.
Where the IG leaves a code "unmatched" but FHIR needs a value, carebus picks the closest one and says so here.
Local codes get a code system of their sender (``local_system``): ``<source>/codes/<name>`` for a named local
or unknown coding system (``99zzz``, any name not listed below), ``<source>/codes/<SEG-n>`` for ``L`` or no
coding system (the field is the only scope the code has), ``<source>/codes/v2-<table>`` for a value of a
user-defined table that is not one of HL7's (``V2_TABLE_CODES``). A value with spaces in an IS field is free
text (CodeableConcept.text), not a code.
"""

from __future__ import annotations

import re
from typing import Final

from services.common.fhir.codesystems import (
    BCP47,
    CDCREC,
    CPT,
    CVX,
    ICD9CM,
    ICD10,
    ICD10CM,
    ICD10PCS,
    ISO3166,
    LOINC,
    MVX,
    NCIT,
    NDC,
    NUCC,
    RXNORM,
    SNOMED,
    UCUM,
    AdministrativeGender,
    v2_table,
)

# HL7 table 0396 coding system names -> FHIR system URIs.
_CODE_SYSTEMS = {
    "LN": LOINC, "LOINC": LOINC,
    "SCT": SNOMED, "SNOMED": SNOMED, "SNOMEDCT": SNOMED, "SNOMED-CT": SNOMED, "SNOMED CT": SNOMED,
    "I10C": ICD10CM, "ICD10CM": ICD10CM, "ICD-10-CM": ICD10CM, "I10CM": ICD10CM,
    "I10": ICD10, "ICD10": ICD10, "ICD-10": ICD10,
    "I9": ICD9CM, "I9C": ICD9CM, "I9CM": ICD9CM, "ICD9": ICD9CM, "ICD9CM": ICD9CM, "ICD-9-CM": ICD9CM,
    "RXNORM": RXNORM, "RXN": RXNORM,
    "NDC": NDC,
    "CVX": CVX,
    "MVX": MVX,
    "C4": CPT, "CPT": CPT,
    "UCUM": UCUM,
    "CDCREC": CDCREC,
    "NUCC": NUCC,
    "ISO3166_1": ISO3166,
    "ISO639": BCP47,
    "I10P": ICD10PCS,
    "NCIT": NCIT,
}
_HL7_TABLE = re.compile(r"HL7(\d{3,4})")
# coding system names that say "local" without naming a system: the field scopes the code
GENERIC_LOCAL = frozenset({"L", "LOCAL", "LN-LOCAL", "99ZZZ", "99LOCAL"})
LOCAL_PREFIX = "urn:carebus:"


def local_system(source: str, name: str) -> str:
    """The code system of a sender's local codes: ``<source>/codes/<name>`` (source: urn:carebus:hl7v2:...)."""
    return f"{source}/codes/{name}"


def is_local_system(system: str | None) -> bool:
    """Whether ``system`` is a sender's local code system made by :func:`local_system`."""
    return system is not None and system.startswith(LOCAL_PREFIX) and "/codes/" in system


# Codes of the HL7 v2 tables that carebus codes in terminology.hl7.org's v2 code systems (as published with FHIR
# R4 4.0.1). For user-defined tables (0023, 0069, 0092, 0114) these are HL7's suggested values only: a sender's
# other values go to its local system (local_system(source, "v2-<table>")).
V2_TABLE_CODES: dict[str, frozenset[str]] = {
    "0004": frozenset({"B", "C", "E", "I", "N", "O", "P", "R", "U"}),
    "0007": frozenset({"A", "C", "E", "L", "N", "R", "U"}),
    "0023": frozenset({"1", "2", "3", "4", "5", "6", "7", "8", "9"}),
    "0069": frozenset({"CAR", "MED", "PUL", "SUR", "URO"}),
    "0074": frozenset({
        "AU", "BG", "BLB", "CG", "CH", "CP", "CT", "CTH", "CUS", "EC", "EN", "GE", "HM", "ICU", "IMG", "IMM", "LAB",
        "MB", "MCB", "MYC", "NMR", "NMS", "NRS", "OSL", "OT", "OTH", "OUS", "PAR", "PAT", "PF", "PHR", "PHY", "PT",
        "RAD", "RC", "RT", "RUS", "RX", "SP", "SR", "TX", "URN", "VR", "VUS", "XRC"}),
    "0092": frozenset({"R"}),
    "0114": frozenset(),  # not published as a code system with R4: every value is the sender's
}


def v2_system(table: str) -> str:
    return v2_table(table)


def code_system(name: str) -> str | None:
    """The FHIR system URI of a v2 coding system name, or None for local and unknown systems."""
    key = name.strip().upper()
    if not key:
        return None
    known = _CODE_SYSTEMS.get(key)
    if known is not None:
        return known
    table = _HL7_TABLE.fullmatch(key)
    if table is not None:
        return v2_table(f"{int(table.group(1)):04d}")
    if key.startswith("URN:OID:"):
        return f"urn:oid:{name.strip()[8:]}"
    return None


# v2-0001 administrative sex -> AdministrativeGender
GENDER: Final[dict[str, AdministrativeGender]] = {
    "F": "female", "M": "male", "O": "other", "U": "unknown", "A": "other", "N": "other",
}

# v2-0004 patient class -> v3 ActCode encounter class (unmatched codes keep their v2-0004 coding)
ENCOUNTER_CLASS = {
    "E": ("EMER", "emergency"), "I": ("IMP", "inpatient encounter"), "O": ("AMB", "ambulatory"),
    "P": ("PRENC", "pre-admission"),
}
ENCOUNTER_CLASS_V2_DISPLAY = {
    "R": "Recurring patient", "B": "Obstetrics", "C": "Commercial Account", "N": "Not Applicable",
    "U": "Unknown",
}

# v2-0085 observation result status -> ObservationStatus. IG-unmatched codes: I/O -> registered,
# R -> preliminary, V/U -> final, B -> amended, N/X -> cancelled (carebus choices; FHIR needs a status).
OBSERVATION_STATUS = {
    "A": "amended", "C": "corrected", "D": "entered-in-error", "F": "final", "P": "preliminary",
    "S": "preliminary", "W": "entered-in-error", "I": "registered", "O": "registered", "R": "preliminary",
    "V": "final", "U": "final", "B": "amended", "N": "cancelled", "X": "cancelled",
}

# v2-0123 result status -> DiagnosticReportStatus (Y, Z unmatched -> unknown)
REPORT_STATUS = {
    "O": "registered", "I": "registered", "S": "registered", "A": "partial", "P": "preliminary",
    "C": "corrected", "R": "partial", "F": "final", "X": "cancelled",
}

# v2-0203 identifier type displays (the IG map is the identity)
ID_TYPE_DISPLAY = {
    "ACSN": "Accession ID",
    "AM": "American Express",
    "AMA": "American Medical Association Number",
    "AN": "Account number",
    "ANON": "Anonymous identifier",
    "ANC": "Account number Creditor",
    "AND": "Account number debitor",
    "ANT": "Temporary Account Number",
    "APRN": "Advanced Practice Registered Nurse number",
    "ASID": "Ancestor Specimen ID",
    "BA": "Bank Account Number",
    "BC": "Bank Card Number",
    "BCT": "Birth Certificate",
    "BR": "Birth registry number",
    "BRN": "Breed Registry Number",
    "BSNR": "Primary physician office number",
    "CC": "Cost Center number",
    "CONM": "Change of Name Document",
    "CZ": "Citizenship Card",
    "CY": "County number",
    "DDS": "Dentist license number",
    "DEA": "Drug Enforcement Administration registration number",
    "DI": "Diner's Club card",
    "DFN": "Drug Furnishing or prescriptive authority Number",
    "DL": "Driver's license number",
    "DN": "Doctor number",
    "DO": "Osteopathic License number",
    "DP": "Diplomatic Passport",
    "DPM": "Podiatrist license number",
    "DR": "Donor Registration Number",
    "DS": "Discover Card",
    "EI": "Employee number",
    "EN": "Employer number",
    "ESN": "Staff Enterprise Number",
    "FI": "Facility ID",
    "GI": "Guarantor internal identifier",
    "GL": "General ledger number",
    "GN": "Guarantor external identifier",
    "HC": "Health Card Number",
    "JHN": "Jurisdictional health number (Canada)",
    "IND": "Indigenous/Aboriginal",
    "LACSN": "Laboratory Accession ID",
    "LANR": "Lifelong physician number",
    "LI": "Labor and industries number",
    "LN": "License number",
    "LR": "Local Registry ID",
    "MA": "Patient Medicaid number",
    "MB": "Member Number",
    "MC": "Patient's Medicare number",
    "MCD": "Practitioner Medicaid number",
    "MCN": "Microchip Number",
    "MCR": "Practitioner Medicare number",
    "MCT": "Marriage Certificate",
    "MD": "Medical License number",
    "MI": "Military ID number",
    "MR": "Medical record number",
    "MRT": "Temporary Medical Record Number",
    "MS": "MasterCard",
    "NBSNR": "Secondary physician office number",
    "NCT": "Naturalization Certificate",
    "NE": "National employer identifier",
    "NH": "National Health Plan Identifier",
    "NI": "National unique individual identifier",
    "NII": "National Insurance Organization Identifier",
    "NIIP": "National Insurance Payor Identifier (Payor)",
    "NNxxx": "National Person Identifier where the xxx is the ISO table 3166 3-character (alphabetic) "
             "country code",
    "NP": "Nurse practitioner number",
    "NPI": "National provider identifier",
    "OD": "Optometrist license number",
    "PA": "Physician Assistant number",
    "PC": "Parole Card",
    "PCN": "Penitentiary/correctional institution Number",
    "PE": "Living Subject Enterprise Number",
    "PEN": "Pension Number",
    "PI": "Patient internal identifier",
    "PN": "Person number",
    "PNT": "Temporary Living Subject Number",
    "PPIN": "Medicare/CMS Performing Provider Identification Number",
    "PPN": "Passport number",
    "PRC": "Permanent Resident Card Number",
    "PRN": "Provider number",
    "PT": "Patient external identifier",
    "QA": "QA number",
    "RI": "Resource identifier",
    "RPH": "Pharmacist license number",
    "RN": "Registered Nurse Number",
    "RR": "Railroad Retirement number",
    "RRI": "Regional registry ID",
    "RRP": "Railroad Retirement Provider",
    "SID": "Specimen ID",
    "SL": "State license",
    "SN": "Subscriber Number",
    "SP": "Study Permit",
    "SR": "State registry ID",
    "SS": "Social Security number",
    "TAX": "Tax ID number",
    "TN": "Treaty Number/ (Canada)",
    "TPR": "Temporary Permanent Resident (Canada)",
    "U": "Unspecified identifier",
    "UPIN": "Medicare/CMS (formerly HCFA)'s Universal Physician Identification numbers",
    "USID": "Unique Specimen ID",
    "VN": "Visit number",
    "VP": "Visitor Permit",
    "VS": "VISA",
    "WC": "WIC identifier",
    "WCN": "Workers' Comp Number",
    "WP": "Work Permit",
    "XX": "Organization identifier",
    "PLAC": "Placer Identifier",
    "FILL": "Filler Identifier",
}

# v2-0200 name type -> HumanName.use
NAME_USE = {
    "L": "official", "D": "usual", "M": "maiden", "N": "nickname", "A": "usual", "S": "anonymous",
    "B": "old", "BAD": "old", "C": "official", "TEMP": "temp", "K": "anonymous", "R": "official",
    "U": "usual", "I": "official", "P": "usual",
}

# v2-0190 address type -> (Address.use, Address.type)
ADDRESS_USE = {
    "H": ("home", None), "B": ("work", None), "O": ("work", None), "C": ("temp", None), "BA": ("old", None),
    "M": (None, "postal"), "BR": (None, "physical"), "P": ("home", None), "L": ("home", None),
    "SH": (None, "postal"), "BDL": (None, "physical"), "RH": ("home", None), "V": ("temp", None),
}

# v2-0201 telecommunication use -> ContactPoint.use; v2-0202 equipment -> ContactPoint.system
TELECOM_USE = {
    "PRN": "home", "ORN": "home", "VHN": "home", "WPN": "work", "EMR": "temp", "ASN": "work", "BPN": "work",
    "PRS": "mobile",
}
TELECOM_SYSTEM = {
    "PH": "phone", "CP": "phone", "FX": "fax", "MD": "other", "BP": "pager", "INTERNET": "email",
    "X.400": "email", "TDD": "other", "TTY": "other", "SAT": "phone",
}

# v2-0078 abnormal flags -> v3 ObservationInterpretation (same codes for these)
INTERPRETATION = {
    "L": "Low", "H": "High", "LL": "Critical low", "HH": "Critical high", "N": "Normal", "A": "Abnormal",
    "AA": "Critical abnormal", "U": "Significantly high", "D": "Significantly low", "B": "Better",
    "W": "Worse", "S": "Susceptible", "R": "Resistant", "I": "Intermediate", "NEG": "Negative",
    "POS": "Positive", "IND": "Indeterminate", "DET": "Detected", "ND": "Not detected", "<": "Off scale low",
    ">": "Off scale high", "MS": "moderately susceptible", "VS": "very susceptible", "E": "Equivocal",
    "EX": "outside threshold", "HU": "Significantly high", "LU": "Significantly low",
}

# v2-0112 / UB-04 discharge disposition -> discharge-disposition (65 = psychiatric hospital -> psy; 50 hospice -
# home and 51 hospice - medical facility -> hosp, which is Hospice in FHIR; 43 a federal health care facility and
# 66 a critical access hospital are other facilities, not hospice)
DISCHARGE = {
    "01": "home", "1": "home", "02": "other-hcf", "2": "other-hcf", "03": "snf", "3": "snf", "04": "long",
    "4": "long", "05": "other-hcf", "5": "other-hcf", "06": "alt-home", "6": "alt-home", "07": "aadvice",
    "7": "aadvice", "20": "exp", "40": "exp", "41": "exp", "42": "exp", "43": "other-hcf", "50": "hosp",
    "51": "hosp",
    "61": "snf", "62": "rehab", "63": "long", "64": "snf", "65": "psy", "66": "other-hcf", "70": "other-hcf",
    "HOME": "home", "PSY": "psy", "SNF": "snf", "REHAB": "rehab", "EXP": "exp", "AADVICE": "aadvice",
    "AMA": "aadvice", "HOSP": "hosp", "LONG": "long", "OTH": "oth", "ALT-HOME": "alt-home",
    "OTHER-HCF": "other-hcf",
}
DISCHARGE_DISPLAY = {
    "home": "Home", "alt-home": "Alternative home", "other-hcf": "Other healthcare facility",
    "hosp": "Hospice", "long": "Long-term care", "aadvice": "Left against advice", "exp": "Expired",
    "psy": "Psychiatric hospital", "rehab": "Rehabilitation", "snf": "Skilled nursing facility",
    "oth": "Other",
}

# v2-0052 diagnosis type -> (Encounter.diagnosis.use diagnosis-role, Condition.verificationStatus)
DIAGNOSIS_TYPE = {
    "A": ("AD", "provisional"), "W": (None, "provisional"), "F": ("DD", "confirmed"),
}

# v2-0127 allergen type -> AllergyIntolerance.category
ALLERGY_CATEGORY = {
    "DA": "medication", "DRUG": "medication", "MA": None, "FA": "food", "FOOD": "food", "EA": "environment",
    "AA": "environment", "PA": "environment", "LA": "environment", "MC": "medication",
}
# v2-0128 allergy severity -> AllergyIntolerance.criticality
ALLERGY_CRITICALITY = {"SV": "high", "MO": "low", "MI": "low", "U": "unable-to-assess"}

# v2-0270 document type -> LOINC note type (code, display)
DOCUMENT_TYPE = {
    "PN": ("11506-3", "Progress note"), "CN": ("11488-4", "Consult note"),
    "DS": ("18842-5", "Discharge summary"), "HP": ("34117-2", "History and physical note"),
    "OP": ("11504-8", "Surgical operation note"), "PR": ("28570-0", "Procedure note"),
    "TS": ("18761-7", "Transfer summary note"), "ED": ("34111-5", "Emergency department note"),
    "DI": ("18748-4", "Diagnostic imaging study"), "AR": ("18743-5", "Autopsy report"),
    "SP": ("11526-1", "Pathology study"),
}
# Mental-health note types (US Behavioral Health Profiles IG): labels.MENTAL_HEALTH_NOTE_TYPES
# v2-0271 document completion status -> DocumentReference.docStatus
DOCUMENT_COMPLETION = {
    "DI": "preliminary", "DO": "preliminary", "IP": "preliminary", "IN": "preliminary", "PA": "final",
    "AU": "final", "LA": "final", "CA": "entered-in-error",
}

# v2-0119 order control / v2-0038 order status -> MedicationRequest.status
ORDER_CONTROL_STATUS = {
    "NW": "active", "XO": "active", "RP": "active", "SC": "active", "OK": "active", "SN": "active",
    "CA": "cancelled", "OC": "cancelled", "CR": "cancelled", "DC": "stopped", "OD": "stopped",
    "DR": "stopped", "HD": "on-hold", "OH": "on-hold", "RL": "active", "OR": "active",
}
ORDER_STATUS = {
    "A": "active", "CA": "cancelled", "CM": "completed", "DC": "stopped", "ER": "entered-in-error",
    "HD": "on-hold", "IP": "active", "RP": "active", "SC": "active",
}

# v2-0322 completion status -> Immunization.status
IMMUNIZATION_STATUS = {"CP": "completed", "PA": "completed", "RE": "not-done", "NA": "not-done"}

# SIU trigger -> Appointment.status
APPOINTMENT_STATUS = {"S12": "booked", "S13": "booked", "S14": "booked", "S15": "cancelled", "S26": "noshow"}

# HL7 table 0335 (repeat pattern, RPT.1 / TQ1-3): the literal codes of terminology.hl7.org's v2-0335 code system
# (R4 4.0.1). Its templates (Q<integer>H, xID, PRNxxx ...) are not codes: "Q6H" is the sender's (local) code,
# read into Timing.repeat by datatypes.repeat_pattern.
V2_0335_CODES = {code.upper(): code for code in (
    "A", "BID", "C", "D", "I", "M", "Once", "P", "PRN", "QAM", "QHS", "QID", "QOD", "QPM", "QSHIFT", "TID", "V")}

# RPT.8 event related period (HL7 table 0528) codes that are FHIR EventTiming codes (Timing.repeat.when)
EVENT_TIMING = frozenset({"AC", "ACD", "ACM", "ACV", "HS", "PC", "PCD", "PCM", "PCV"})

# v2 time units (RPT.6, RPT.10, TQ1 CQ units) -> UCUM time units of Timing.repeat.periodUnit
TIME_UNITS = {"S": "s", "SEC": "s", "MIN": "min", "M": "min", "H": "h", "HR": "h", "HRS": "h", "HOUR": "h",
              "D": "d", "DAY": "d", "DAYS": "d", "WK": "wk", "W": "wk", "MO": "mo", "L": "mo", "A": "a", "Y": "a",
              "YR": "a"}

# Give-rate units as senders write them (RXE-24, RXO-22, without a UCUM coding system) -> UCUM, for
# Dosage.doseAndRate.rateQuantity. Keys upper-case; a unit not listed keeps its text without a system.
RATE_UNITS_UCUM = {
    "ML/HR": "mL/h", "ML/H": "mL/h", "ML/MIN": "mL/min", "L/MIN": "L/min", "L/HR": "L/h",
    "MG/HR": "mg/h", "MG/H": "mg/h", "MG/MIN": "mg/min", "MG/KG/HR": "mg/kg/h", "MG/KG/H": "mg/kg/h",
    "MG/KG/MIN": "mg/kg/min", "MCG/HR": "ug/h", "UG/HR": "ug/h", "MCG/H": "ug/h", "MCG/MIN": "ug/min",
    "UG/MIN": "ug/min", "MCG/KG/MIN": "ug/kg/min", "UG/KG/MIN": "ug/kg/min", "MCG/KG/HR": "ug/kg/h",
    "NG/KG/MIN": "ng/kg/min", "UNITS/HR": "[U]/h", "UNIT/HR": "[U]/h", "U/HR": "[U]/h", "U/H": "[U]/h",
    "UNITS/KG/HR": "[U]/kg/h", "U/KG/HR": "[U]/kg/h", "GTT/MIN": "[drp]/min", "DROPS/MIN": "[drp]/min",
    "MEQ/HR": "meq/h", "MMOL/HR": "mmol/h", "G/HR": "g/h",
}
