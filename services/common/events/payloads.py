"""The ``data`` of each care event type, grouped by family.

Conventions
-----------
* Every payload names the source patient id (``patient_id``): with the CloudEvent ``source`` it forms the
  Kafka key ``<source>|<patient_id>`` that keeps one patient's events in order.
* Every record carries the source's own id of that record (``referral_id``, ``session_id`` ...): the FHIR ids
  are derived from ``source`` + these ids, so a replayed event yields the same resources.
* Event-carried state: a status-change event (referral closed, appointment cancelled / no-show, diagnosis
  resolved, medication changed / discontinued, admission ended, consent revoked) repeats the record's current
  fields, so the FHIR resource it produces is complete and can replace the previous version.
* Free text is only where clinically needed (names, note text, goal descriptions); it is PHI and never
  appears in logs or errors.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Literal

from pydantic import AwareDatetime, Field, PlainValidator, StringConstraints, WithJsonSchema, model_validator
from pydantic_core import PydanticCustomError

from services.common.events._types import (
    Code,
    Coding,
    Contract,
    FiniteNumber,
    Gender,
    Identifier,
    LoincCode,
    NonEmptyText,
    Practitioner,
    Quantity,
    SourceId,
)
from services.common.fhir.codesystems import (
    ICD10CM,
    LOINC,
    RXNORM,
    SNOMED,
    Icd10CmSystem,
    LoincSystem,
    RxNormSystem,
    SnomedSystem,
)
from services.common.fhir.instruments import InstrumentKey

# --- patient --------------------------------------------------------------------------------------


class PersonName(Contract):
    family: NonEmptyText
    given: list[NonEmptyText] = Field(default_factory=list, max_length=5)
    prefix: NonEmptyText | None = None
    suffix: NonEmptyText | None = None


class Address(Contract):
    line: list[NonEmptyText] = Field(default_factory=list, max_length=4)
    city: NonEmptyText | None = None
    state: Annotated[str, StringConstraints(min_length=2, max_length=32)] | None = None
    postal_code: Annotated[str, StringConstraints(min_length=3, max_length=16)] | None = None
    country: Annotated[str, StringConstraints(min_length=2, max_length=3)] | None = None


class ContactDetails(Contract):
    """How to reach the patient (Patient.telecom and Patient.address)."""

    phone: Annotated[str, StringConstraints(min_length=3, max_length=32)] | None = None
    email: Annotated[str, StringConstraints(pattern=r"^[^@\s]+@[^@\s]+$", max_length=254)] | None = None
    address: Address | None = None


class PatientData(Contract):
    """patient.registered / patient.updated. ``updated`` carries the full current demographics (a snapshot,
    not a delta), because the Patient resource it produces replaces the previous one."""

    patient_id: SourceId
    identifiers: list[Identifier] = Field(
        default_factory=list,
        max_length=10,
        description="MRN, enterprise id (e.g. system urn:carebus:empi) and other business identifiers.",
    )
    name: PersonName
    birth_date: dt.date
    gender: Gender
    contact: ContactDetails | None = None


# --- referral -------------------------------------------------------------------------------------

ReferralSpecialty = Literal["therapy", "psychiatry"]
ReferralPriority = Literal["routine", "urgent", "asap", "stat"]


class ReferralData(Contract):
    """referral.created: primary care refers the patient to therapy or psychiatry."""

    patient_id: SourceId
    referral_id: SourceId
    specialty: ReferralSpecialty
    reason_codes: list[Coding] = Field(min_length=1, max_length=10, description="ICD-10-CM or SNOMED CT.")
    priority: ReferralPriority = "routine"
    authored_on: AwareDatetime
    requester: Practitioner
    encounter_id: SourceId | None = Field(None, description="The primary-care visit the referral came from.")
    performer_organization: NonEmptyText | None = None


class ReferralClosedData(ReferralData):
    """referral.closed: the referral is done (patient seen), declined or cancelled."""

    closed_at: AwareDatetime
    outcome: Literal["completed", "declined", "cancelled", "entered-in-error"]


# --- appointment ----------------------------------------------------------------------------------

ServiceLine = Literal["primary-care", "therapy", "psychiatry"]


class AppointmentData(Contract):
    """appointment.booked."""

    patient_id: SourceId
    appointment_id: SourceId
    service: ServiceLine
    start: AwareDatetime
    end: AwareDatetime
    practitioner: Practitioner
    telehealth: bool = False
    referral_id: SourceId | None = Field(None, description="The referral this appointment follows up.")
    booked_at: AwareDatetime | None = None

    @model_validator(mode="after")
    def _ends_after_start(self) -> AppointmentData:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class AppointmentCancelledData(AppointmentData):
    """appointment.cancelled."""

    cancelled_at: AwareDatetime
    cancelled_by: Literal["patient", "provider", "other"]


class AppointmentNoShowData(AppointmentData):
    """appointment.noshow: the patient did not attend."""

    recorded_at: AwareDatetime


# --- session --------------------------------------------------------------------------------------

SessionKind = Literal["primary-care", "therapy", "psychiatric-evaluation", "medication-management"]
TherapyModality = Literal[
    "cbt", "dbt", "psychodynamic", "ipt", "emdr", "act", "solution-focused", "supportive", "family", "group"
]
CptCode = Annotated[str, StringConstraints(pattern=r"^\d{4}[0-9FTU]$")]


class SessionData(Contract):
    """session.completed: a visit that took place (therapy session, psychiatric evaluation, medication
    management, or the primary-care visit where a screening happened)."""

    patient_id: SourceId
    session_id: SourceId
    kind: SessionKind
    modality: TherapyModality | None = Field(None, description="Required for therapy sessions.")
    start: AwareDatetime
    duration_minutes: int = Field(ge=1, le=1440)
    cpt_code: CptCode = Field(description="E.g. 90834 psychotherapy 45 min, 90791 psychiatric evaluation.")
    add_on_cpt_codes: list[CptCode] = Field(default_factory=list, max_length=5)
    telehealth: bool = False
    practitioner: Practitioner
    appointment_id: SourceId | None = None
    referral_id: SourceId | None = None

    @model_validator(mode="after")
    def _therapy_has_modality(self) -> SessionData:
        if self.kind == "therapy" and self.modality is None:
            raise ValueError("a therapy session needs a modality")
        return self


# --- assessment -----------------------------------------------------------------------------------

InstrumentName = InstrumentKey  # the instrument table: services/common/fhir/instruments.py
LinkId = Annotated[str, StringConstraints(pattern=r"^/?\d{1,8}-\d$")]


class ScoreQuantity(Contract):
    """A total sent as a Quantity, e.g. {"value": 12, "unit": "{score}"}."""

    value: FiniteNumber
    unit: Literal["{score}"] = "{score}"


_LOINC_ANSWER = re.compile(r"^LA\d{1,8}-\d$")
ANSWER_MAX_WEIGHT = 4


def _assessment_answer(value: object) -> int | str:
    """An item weight 0-4 or a LOINC answer code; one clear error either way (no per-branch noise)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value <= ANSWER_MAX_WEIGHT:
            return value
        raise PydanticCustomError("answer_out_of_range", "an answer weight must be between 0 and 4")
    if isinstance(value, str) and _LOINC_ANSWER.match(value):
        return value
    raise PydanticCustomError(
        "answer_type", "an answer must be an integer weight (0-4) or a LOINC answer code (LA...)"
    )


AssessmentAnswer = Annotated[
    int | str,
    PlainValidator(_assessment_answer),
    WithJsonSchema(
        {
            "description": "The item weight (0-4; C-SSRS 0 no / 1 yes) or a LOINC answer code "
            "(LA6568-5 ... LA6571-9, LA32-8 no / LA33-6 yes, AUDIT-C answer lists).",
            "oneOf": [
                {"type": "integer", "minimum": 0, "maximum": ANSWER_MAX_WEIGHT},
                {"type": "string", "pattern": _LOINC_ANSWER.pattern},
            ],
        }
    ),
]


class AssessmentItem(Contract):
    """One answered item, named by its LOINC item code (``code``) or questionnaire linkId (``link_id``)."""

    code: LoincCode | None = None
    link_id: LinkId | None = None
    answer: AssessmentAnswer

    @model_validator(mode="after")
    def _one_name(self) -> AssessmentItem:
        if (self.code is None) == (self.link_id is None):
            raise ValueError("give exactly one of code or link_id")
        return self

    @property
    def item_code(self) -> str:
        name = self.code if self.code is not None else self.link_id
        assert name is not None
        return name.lstrip("/")


class AssessmentData(Contract):
    """assessment.completed: one administration of a standard instrument, with the item answers.

    ``reported_total`` is the total the sender computed (string, int or Quantity {score}); carebus scores the
    items itself and surfaces a disagreement, it never overwrites one with the other."""

    patient_id: SourceId
    assessment_id: SourceId
    instrument: InstrumentName
    authored: AwareDatetime
    items: list[AssessmentItem] = Field(min_length=1, max_length=40)
    reported_total: (
        Annotated[str, StringConstraints(min_length=1, max_length=16)] | Annotated[int, Field(ge=-1000, le=1000)]
        | ScoreQuantity | None
    ) = Field(None, union_mode="left_to_right")
    patient_gender: Gender | None = Field(None, description="Needed for AUDIT-C's sex-specific cut-off.")
    performer: Practitioner | None = None
    encounter_id: SourceId | None = None


# --- diagnosis ------------------------------------------------------------------------------------

DiagnosisSystem = Literal[Icd10CmSystem, SnomedSystem]
Sensitivity = Literal["psychiatric", "substance-use"]
DiagnosisCategory = Literal["problem-list-item", "encounter-diagnosis"]


class DiagnosisCoding(Contract):
    system: DiagnosisSystem
    code: Code
    display: NonEmptyText | None = None


class DiagnosisData(Contract):
    """diagnosis.recorded."""

    patient_id: SourceId
    diagnosis_id: SourceId
    code: DiagnosisCoding
    category: DiagnosisCategory = "problem-list-item"
    verification: Literal["provisional", "differential", "confirmed"] = "confirmed"
    onset_date: dt.date | None = None
    recorded_at: AwareDatetime
    encounter_id: SourceId | None = None
    practitioner: Practitioner | None = None
    sensitivity: Sensitivity | None = Field(
        None, description="Sender's hint for codes carebus's label tables do not know (e.g. SNOMED SUD)."
    )


class DiagnosisResolvedData(DiagnosisData):
    """diagnosis.resolved: the condition is in remission / resolved."""

    resolved_at: AwareDatetime


# --- medication -----------------------------------------------------------------------------------


class MedicationCoding(Contract):
    system: RxNormSystem = RXNORM
    code: Annotated[str, StringConstraints(pattern=r"^\d{1,10}$")]
    display: NonEmptyText | None = None


class Frequency(Contract):
    """``times`` per ``period`` ``period_unit``, e.g. once a day = {times: 1, period: 1, period_unit: "d"}."""

    times: int = Field(ge=1, le=48)
    period: FiniteNumber = Field(gt=0)
    period_unit: Literal["h", "d", "wk", "mo"]


class MedicationOrderData(Contract):
    """medication.prescribed."""

    patient_id: SourceId
    prescription_id: SourceId
    medication: MedicationCoding
    dose: Quantity
    frequency: Frequency
    as_needed: bool = False
    route: Coding | None = Field(None, description="SNOMED CT route, e.g. 26643006 oral route.")
    authored_on: AwareDatetime
    prescriber: Practitioner
    reason_codes: list[Coding] = Field(default_factory=list, max_length=5)
    encounter_id: SourceId | None = None
    sensitivity: Sensitivity | None = None


class MedicationChangedData(MedicationOrderData):
    """medication.changed: a new dose / frequency. When the source issues a new order for the change, the old
    one is named in ``replaces_prescription_id`` (FHIR priorPrescription); otherwise the order is updated."""

    changed_at: AwareDatetime
    replaces_prescription_id: SourceId | None = None


class MedicationDiscontinuedData(MedicationOrderData):
    """medication.discontinued."""

    discontinued_at: AwareDatetime
    reason: Coding | None = None


# --- admission ------------------------------------------------------------------------------------

AdmissionService = Literal["inpatient-psychiatry", "inpatient-detox", "inpatient-medical"]
DischargeDisposition = Literal[
    "home", "alt-home", "other-hcf", "hosp", "long", "aadvice", "exp", "psy", "rehab", "snf", "oth"
]


class AdmissionData(Contract):
    """admission.started: an inpatient stay begins (by default on an inpatient psychiatric unit)."""

    patient_id: SourceId
    admission_id: SourceId
    service: AdmissionService = "inpatient-psychiatry"
    admitted_at: AwareDatetime
    involuntary: bool = False
    reason_codes: list[Coding] = Field(default_factory=list, max_length=5)
    attending: Practitioner | None = None
    facility: NonEmptyText | None = None


class AdmissionEndedData(AdmissionData):
    """admission.ended: discharge, with the HL7 discharge-disposition code (``psy`` = to a psychiatric
    hospital)."""

    discharged_at: AwareDatetime
    discharge_disposition: DischargeDisposition

    @model_validator(mode="after")
    def _discharge_after_admission(self) -> AdmissionEndedData:
        if self.discharged_at < self.admitted_at:
            raise ValueError("discharged_at must not be before admitted_at")
        return self


# --- note -----------------------------------------------------------------------------------------

NoteType = Literal[
    "progress_note",
    "consult_note",
    "discharge_summary",
    "history_and_physical",
    "procedure_note",
    "psychotherapy_note",  # accepted by the shape, REFUSED by policy (HIPAA 45 CFR 164.501)
    "sud_counseling_note",  # accepted by the shape, REFUSED by policy (42 CFR Part 2, 2024 rule)
]
REFUSED_NOTE_TYPES: frozenset[str] = frozenset({"psychotherapy_note", "sud_counseling_note"})


class NoteData(Contract):
    """note.signed: a signed clinical note. ``mental_health`` selects the mental-health LOINC note types and
    the psychiatric labels. Psychotherapy notes and SUD counseling notes are refused (see parsing.py)."""

    patient_id: SourceId
    note_id: SourceId
    note_type: NoteType
    mental_health: bool = False
    signed_at: AwareDatetime
    author: Practitioner
    title: NonEmptyText | None = None
    text: Annotated[str, StringConstraints(min_length=1, max_length=1_000_000)]
    content_type: Literal["text/plain", "text/markdown"] = "text/plain"
    encounter_id: SourceId | None = None


# --- care plan ------------------------------------------------------------------------------------


class GoalTarget(Contract):
    """A measurable target: ``measure`` (LOINC, e.g. 44261-6 PHQ-9 total) below ``below_value`` by ``due``."""

    measure: LoincCode
    below_value: int = Field(ge=0, le=1000)
    due: dt.date | None = None


class CarePlanGoal(Contract):
    goal_id: SourceId
    description: NonEmptyText
    status: Literal["proposed", "active", "on-hold", "completed", "cancelled"] = "active"
    target: GoalTarget | None = None


FrequencyUnit = Literal["week", "month"]


class SessionFrequency(Contract):
    sessions: int = Field(ge=1, le=14)
    per: FrequencyUnit


class CarePlanData(Contract):
    """careplan.updated: the current behavioural-health treatment plan (full state)."""

    patient_id: SourceId
    care_plan_id: SourceId
    status: Literal["draft", "active", "on-hold", "revoked", "completed"] = "active"
    title: NonEmptyText | None = None
    period_start: dt.date
    period_end: dt.date | None = None
    goals: list[CarePlanGoal] = Field(default_factory=list, max_length=20)
    modalities: list[TherapyModality] = Field(default_factory=list, max_length=10)
    session_frequency: SessionFrequency | None = None
    addresses_diagnosis_ids: list[SourceId] = Field(default_factory=list, max_length=10)
    author: Practitioner
    updated_at: AwareDatetime


# --- consent --------------------------------------------------------------------------------------

PurposeOfUse = Literal["TREAT", "ETREAT", "HPAYMT", "HOPERAT", "HRESCH", "PUBHLTH", "PATRQT", "CAREMGT"]
CoveredLabel = Literal["PSY", "MH", "BH", "SUD", "ETHUD", "OPIOIDUD", "42CFRPart2"]


RecipientKind = Literal["organization", "practitioner", "care-team"]
ConsentForm = Literal["59284-0", "64292-6"]  # LOINC: patient consent, release of information


class ConsentRecipient(Contract):
    """Who may (or may not) receive. Give an ``identifier`` (e.g. the NPI): a record API token or a
    subscription acts for an organization or care team by identifier, and only a named recipient matches."""

    kind: RecipientKind
    name: NonEmptyText
    identifier: Identifier | None = None


class ConsentException(Contract):
    """An exception to the consent's decision (a nested provision of the opposite type): e.g. "permit my
    record to the clinic, except substance-use data" or "deny, except to this program"."""

    labels_covered: list[CoveredLabel] = Field(default_factory=list, max_length=7,
                                               description="Empty: every class of data.")
    recipient: ConsentRecipient | None = Field(None, description="Unset: whoever the consent names.")
    purposes: list[PurposeOfUse] = Field(default_factory=list, max_length=8, description="Empty: any purpose.")


class ConsentData(Contract):
    """consent.granted: the patient permits (or denies) disclosure of labelled data to a recipient for the
    given purposes (v3-ActReason), e.g. a 42 CFR Part 2 disclosure consent covering SUD data."""

    patient_id: SourceId
    consent_id: SourceId
    decision: Literal["permit", "deny"] = "permit"
    granted_at: AwareDatetime
    valid_until: dt.date | None = None
    recipient: ConsentRecipient
    purposes: list[PurposeOfUse] = Field(min_length=1, max_length=8)
    labels_covered: list[CoveredLabel] = Field(min_length=1, max_length=7)
    form: ConsentForm = Field(
        "59284-0", description="LOINC document type: 59284-0 patient consent, 64292-6 release of information."
    )
    exceptions: list[ConsentException] = Field(default_factory=list, max_length=10)


class ConsentRevokedData(ConsentData):
    """consent.revoked: the consent no longer applies from ``revoked_at``."""

    revoked_at: AwareDatetime


# --- lab ------------------------------------------------------------------------------------------


class ReferenceRange(Contract):
    low: Quantity | None = None
    high: Quantity | None = None
    text: NonEmptyText | None = None


ResultInterpretation = Literal["N", "A", "H", "L", "HH", "LL"]  # v3-ObservationInterpretation


class LabCoding(Contract):
    system: LoincSystem = LOINC
    code: LoincCode
    display: NonEmptyText | None = None


class LabResultData(Contract):
    """lab.resulted: one result, e.g. lithium level (LOINC 14334-7) in mmol/L."""

    patient_id: SourceId
    result_id: SourceId
    code: LabCoding
    status: Literal["preliminary", "final", "amended", "corrected"] = "final"
    value: Quantity | None = None
    value_text: NonEmptyText | None = None
    reference_range: ReferenceRange | None = None
    interpretation: ResultInterpretation | None = None
    effective_at: AwareDatetime
    issued_at: AwareDatetime | None = None
    ordering_practitioner: Practitioner | None = None
    order_id: SourceId | None = None

    @model_validator(mode="after")
    def _has_value(self) -> LabResultData:
        if (self.value is None) == (self.value_text is None):
            raise ValueError("give exactly one of value or value_text")
        return self


# --- risk -----------------------------------------------------------------------------------------


class RiskFlagData(Contract):
    """risk.flagged: a clinician flags a safety risk (e.g. suicide risk after an assessment)."""

    patient_id: SourceId
    flag_id: SourceId
    risk: Literal["suicide", "self-harm", "violence", "overdose"]
    level: Literal["low", "moderate", "high", "imminent"]
    flagged_at: AwareDatetime
    flagged_by: Practitioner | None = None
    encounter_id: SourceId | None = None


__all__ = [
    "ICD10CM",
    "SNOMED",
    "AdmissionData",
    "AdmissionEndedData",
    "AppointmentCancelledData",
    "AppointmentData",
    "AppointmentNoShowData",
    "AssessmentData",
    "AssessmentItem",
    "CarePlanData",
    "Code",
    "ConsentData",
    "ConsentRevokedData",
    "DiagnosisData",
    "DiagnosisResolvedData",
    "LabResultData",
    "MedicationChangedData",
    "MedicationDiscontinuedData",
    "MedicationOrderData",
    "NoteData",
    "PatientData",
    "ReferralClosedData",
    "ReferralData",
    "RiskFlagData",
    "SessionData",
]
