"""Every code-system and identifier-system URI carebus writes or reads, named once.

Every module imports the URI from here; ``tests/test_codesystems.py`` fails when one of these literals (or any
``http://terminology.hl7.org/CodeSystem/...`` or ``urn:carebus:codesystem:...`` literal) is written anywhere else
in ``services/``. Profiles, extensions and operation definitions are not code systems and live beside the code
that uses them.

The ``...System`` ``Literal`` types are for the event contracts, whose fields accept one system only.
"""

from __future__ import annotations

from typing import Final, Literal

# --- terminologies -------------------------------------------------------------------------------------------
SNOMED: Final = "http://snomed.info/sct"
LOINC: Final = "http://loinc.org"
LOINC_QUESTIONNAIRE: Final = "http://loinc.org/q/"  # + panel code: the canonical of a LOINC questionnaire
RXNORM: Final = "http://www.nlm.nih.gov/research/umls/rxnorm"
ICD10CM: Final = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10: Final = "http://hl7.org/fhir/sid/icd-10"
ICD9CM: Final = "http://hl7.org/fhir/sid/icd-9-cm"
ICD10PCS: Final = "http://www.cms.gov/Medicare/Coding/ICD10"
NDC: Final = "http://hl7.org/fhir/sid/ndc"
CVX: Final = "http://hl7.org/fhir/sid/cvx"
MVX: Final = "http://terminology.hl7.org/CodeSystem/MVX"
CPT: Final = "http://www.ama-assn.org/go/cpt"
HCPCS: Final = "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"  # HCPCS Level II (THO)
HCPCS_R4: Final = "http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"  # as FHIR R4 spelled it
NUBC_DISCHARGE: Final = "https://www.nubc.org/CodeSystem/PatDischargeStatus"  # UB-04 FL17 patient status
UCUM: Final = "http://unitsofmeasure.org"
CDCREC: Final = "urn:oid:2.16.840.1.113883.6.238"
NUCC: Final = "http://nucc.org/provider-taxonomy"
ISO3166: Final = "urn:iso:std:iso:3166"
BCP47: Final = "urn:ietf:bcp:47"
NCIT: Final = "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl"
DICOM: Final = "http://dicom.nema.org/resources/ontology/DCM"

SnomedSystem = Literal["http://snomed.info/sct"]
LoincSystem = Literal["http://loinc.org"]
RxNormSystem = Literal["http://www.nlm.nih.gov/research/umls/rxnorm"]
Icd10CmSystem = Literal["http://hl7.org/fhir/sid/icd-10-cm"]
# the FHIR value set administrative-gender (Patient.gender): the JSON contracts, HL7 v2 PID-8 and AUDIT-C read it
AdministrativeGender = Literal["male", "female", "other", "unknown"]

# --- HL7 v3 ---------------------------------------------------------------------------------------------------
V3_CONFIDENTIALITY: Final = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
V3_ACT_CODE: Final = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
V3_ACT_REASON: Final = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
V3_NULL_FLAVOR: Final = "http://terminology.hl7.org/CodeSystem/v3-NullFlavor"
V3_OBSERVATION_INTERPRETATION: Final = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
V3_OBSERVATION_VALUE: Final = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
V3_PARTICIPATION_TYPE: Final = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
V3_DATA_OPERATION: Final = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"

# --- HL7 v2 tables --------------------------------------------------------------------------------------------
V2_TABLE_BASE: Final = "http://terminology.hl7.org/CodeSystem/v2-"
V2_0003: Final = "http://terminology.hl7.org/CodeSystem/v2-0003"
V2_0004: Final = "http://terminology.hl7.org/CodeSystem/v2-0004"
V2_0074: Final = "http://terminology.hl7.org/CodeSystem/v2-0074"
V2_0203: Final = "http://terminology.hl7.org/CodeSystem/v2-0203"


def v2_table(table: str) -> str:
    """The code system of HL7 v2 table ``table`` (four digits: ``"0001"``)."""
    return V2_TABLE_BASE + table


# --- FHIR and terminology.hl7.org code systems ----------------------------------------------------------------
OBSERVATION_CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/observation-category"
CONDITION_CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/condition-category"
CONDITION_CLINICAL: Final = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION: Final = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
ALLERGY_CLINICAL: Final = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
MEDICATION_REQUEST_CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/medicationrequest-category"
MEDICATION_REQUEST_STATUS: Final = "http://hl7.org/fhir/CodeSystem/medicationrequest-status"
DISCHARGE_DISPOSITION: Final = "http://terminology.hl7.org/CodeSystem/discharge-disposition"
DIAGNOSIS_ROLE: Final = "http://terminology.hl7.org/CodeSystem/diagnosis-role"
APPOINTMENT_CANCELLATION_REASON: Final = "http://terminology.hl7.org/CodeSystem/appointment-cancellation-reason"
FLAG_CATEGORY: Final = "http://terminology.hl7.org/CodeSystem/flag-category"
DATA_ABSENT_REASON: Final = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
CONSENT_SCOPE: Final = "http://terminology.hl7.org/CodeSystem/consentscope"
PROVENANCE_PARTICIPANT_TYPE: Final = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
LIFECYCLE_EVENT: Final = "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle"
AUDIT_EVENT_TYPE: Final = "http://terminology.hl7.org/CodeSystem/audit-event-type"
AUDIT_ENTITY_TYPE: Final = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
AUDIT_EVENT_OUTCOME: Final = "http://hl7.org/fhir/audit-event-outcome"
OBJECT_ROLE: Final = "http://terminology.hl7.org/CodeSystem/object-role"
SECURITY_SOURCE_TYPE: Final = "http://terminology.hl7.org/CodeSystem/security-source-type"
RESTFUL_INTERACTION: Final = "http://hl7.org/fhir/restful-interaction"
TASK_STATUS: Final = "http://hl7.org/fhir/task-status"
LINK_TYPE: Final = "http://hl7.org/fhir/link-type"
SUBSCRIPTION_ERROR: Final = "http://terminology.hl7.org/CodeSystem/subscription-error"
MEASURE_SCORING: Final = "http://terminology.hl7.org/CodeSystem/measure-scoring"
MEASURE_POPULATION: Final = "http://terminology.hl7.org/CodeSystem/measure-population"
MEASURE_IMPROVEMENT_NOTATION: Final = "http://terminology.hl7.org/CodeSystem/measure-improvement-notation"
US_CORE_CAREPLAN_CATEGORY: Final = "http://hl7.org/fhir/us/core/CodeSystem/careplan-category"
US_CORE_DOCUMENTREFERENCE_CATEGORY: Final = "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category"

# --- identifier systems ---------------------------------------------------------------------------------------
NPI: Final = "http://hl7.org/fhir/sid/us-npi"
SSN: Final = "http://hl7.org/fhir/sid/us-ssn"
RFC3986: Final = "urn:ietf:rfc:3986"  # Identifier.system of an identifier that is itself a URI

# --- carebus's own systems ------------------------------------------------------------------------------------
CAREBUS_PREFIX: Final = "urn:carebus:"
EMPI: Final = "urn:carebus:empi"  # the enterprise patient id (the default enterprise identifier system)
CAREBUS_MAPPER: Final = "urn:carebus:system:mapper"  # carebus's mapper as an agent (Provenance, AuditEvent)
CAREBUS_CLIENT: Final = "urn:carebus:client"  # Identifier.system of a token's / subscription's client id
CAREBUS_ORGANIZATION: Final = "urn:carebus:organization"
OUTCOMES_EPISODE: Final = "urn:carebus:outcomes:episode"
SAFETY_ALERT_TASK: Final = "urn:carebus:safety-alert"  # Task.identifier of a safety alert's follow-up
CSSRS_RISK_LEVEL: Final = "urn:carebus:codesystem:cssrs-risk-level"
OUTCOMES_CODES: Final = "urn:carebus:codesystem:outcomes"
SAFETY_TASK_CODES: Final = "urn:carebus:codesystem:safety-task"
GENERATED_BY_CODES: Final = "urn:carebus:codesystem:generated-by"
HL7V2_UNMAPPED_SEGMENT: Final = "urn:carebus:hl7v2:unmapped-segment"
