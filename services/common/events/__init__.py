"""Inbound JSON care events: CloudEvents 1.0 envelopes with typed payloads (the contracts of carebus).

Public surface:
    CareEvent                   the discriminated union of every event class (``type`` selects the payload)
    EVENT_TYPES                 ``type`` string -> event class
    parse_event(raw)            bytes / str / dict -> CareEvent; EventValidationError or RefusedContent
    patient_key(event)          Kafka key ``<source>|<patient_id>``
    check_policy(event)         the content policy alone (psychotherapy / SUD counseling notes refused)

The JSON Schemas under schemas/events/ are generated from these models by
``python -m services.common.events.export`` (tests fail when they drift). Payload models: payloads.py.
"""

from services.common.events.envelope import (
    EVENT_CLASSES,
    EVENT_TYPES,
    AdmissionEnded,
    AdmissionStarted,
    AppointmentBooked,
    AppointmentCancelled,
    AppointmentNoShow,
    AssessmentCompleted,
    CareEvent,
    CarePlanUpdated,
    CloudEvent,
    ConsentGranted,
    ConsentRevoked,
    DiagnosisRecorded,
    DiagnosisResolved,
    LabResulted,
    MedicationChanged,
    MedicationDiscontinued,
    MedicationPrescribed,
    NoteSigned,
    PatientRegistered,
    PatientUpdated,
    ReferralClosed,
    ReferralCreated,
    RiskFlagged,
    SessionCompleted,
)
from services.common.events.parsing import check_policy, parse_event, patient_key

__all__ = [
    "EVENT_CLASSES",
    "EVENT_TYPES",
    "AdmissionEnded",
    "AdmissionStarted",
    "AppointmentBooked",
    "AppointmentCancelled",
    "AppointmentNoShow",
    "AssessmentCompleted",
    "CareEvent",
    "CarePlanUpdated",
    "CloudEvent",
    "ConsentGranted",
    "ConsentRevoked",
    "DiagnosisRecorded",
    "DiagnosisResolved",
    "LabResulted",
    "MedicationChanged",
    "MedicationDiscontinued",
    "MedicationPrescribed",
    "NoteSigned",
    "PatientRegistered",
    "PatientUpdated",
    "ReferralClosed",
    "ReferralCreated",
    "RiskFlagged",
    "SessionCompleted",
    "check_policy",
    "parse_event",
    "patient_key",
]
