"""The CloudEvents 1.0 envelope (structured-mode JSON) and one class per care event type.

    {"specversion": "1.0", "id": "...", "source": "urn:carebus:source:riverside-primary-care",
     "type": "org.carebus.assessment.completed.v1", "time": "2025-03-04T15:20:00Z",
     "datacontenttype": "application/json", "data": {...}}

``type`` is the discriminator of the :data:`CareEvent` union; types are versioned (``.v1``): a breaking change
to a payload gets a new type, and both are accepted while senders migrate.

Envelope rules: ``id`` is non-empty and unique per ``source``; ``source`` is a URI-reference naming the
sending system (carebus uses ``urn:carebus:source:<system>``); ``time`` must carry a timezone; ``subject``
is optional and must not carry PHI (carebus never reads it); ``datacontenttype`` is ``application/json``.
Unknown envelope attributes are rejected except the declared extension ``correlationid``.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from services.common.events.payloads import (
    AdmissionData,
    AdmissionEndedData,
    AppointmentCancelledData,
    AppointmentData,
    AppointmentNoShowData,
    AssessmentData,
    CarePlanData,
    ConsentData,
    ConsentRevokedData,
    DiagnosisData,
    DiagnosisResolvedData,
    LabResultData,
    MedicationChangedData,
    MedicationDiscontinuedData,
    MedicationOrderData,
    NoteData,
    PatientData,
    ReferralClosedData,
    ReferralData,
    RiskFlagData,
    SessionData,
)

EVENT_TYPE_PREFIX: Final = "org.carebus."

CloudEventId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^\S+$")]
# URI-reference (RFC 3986): carebus requires at least a non-empty reference without whitespace.
CloudEventSource = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^\S+$")]


class CloudEvent(BaseModel):
    """Envelope attributes shared by every care event (CloudEvents 1.0, structured mode)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    specversion: Literal["1.0"]
    id: CloudEventId
    source: CloudEventSource = Field(
        description="URI-reference of the sending system, e.g. urn:carebus:source:riverside-primary-care."
    )
    time: AwareDatetime
    subject: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None
    datacontenttype: Literal["application/json"] = "application/json"
    dataschema: Annotated[str, StringConstraints(min_length=1, max_length=512)] | None = None
    correlationid: Annotated[str, StringConstraints(min_length=1, max_length=128)] | None = Field(
        None, description="CloudEvents extension: ties the events of one workflow together (no PHI)."
    )


class PatientRegistered(CloudEvent):
    """A patient was registered at the source."""

    type: Literal["org.carebus.patient.registered.v1"]
    data: PatientData


class PatientUpdated(CloudEvent):
    """A patient's demographics changed (full snapshot)."""

    type: Literal["org.carebus.patient.updated.v1"]
    data: PatientData


class ReferralCreated(CloudEvent):
    """Primary care referred the patient to therapy or psychiatry."""

    type: Literal["org.carebus.referral.created.v1"]
    data: ReferralData


class ReferralClosed(CloudEvent):
    """A referral was completed, declined or cancelled."""

    type: Literal["org.carebus.referral.closed.v1"]
    data: ReferralClosedData


class AppointmentBooked(CloudEvent):
    """An appointment was booked."""

    type: Literal["org.carebus.appointment.booked.v1"]
    data: AppointmentData


class AppointmentCancelled(CloudEvent):
    """An appointment was cancelled."""

    type: Literal["org.carebus.appointment.cancelled.v1"]
    data: AppointmentCancelledData


class AppointmentNoShow(CloudEvent):
    """The patient did not attend an appointment."""

    type: Literal["org.carebus.appointment.noshow.v1"]
    data: AppointmentNoShowData


class SessionCompleted(CloudEvent):
    """A therapy session or psychiatric / primary-care visit took place."""

    type: Literal["org.carebus.session.completed.v1"]
    data: SessionData


class AssessmentCompleted(CloudEvent):
    """A standard instrument (PHQ-9, GAD-7 ...) was completed."""

    type: Literal["org.carebus.assessment.completed.v1"]
    data: AssessmentData


class DiagnosisRecorded(CloudEvent):
    """A diagnosis was recorded."""

    type: Literal["org.carebus.diagnosis.recorded.v1"]
    data: DiagnosisData


class DiagnosisResolved(CloudEvent):
    """A diagnosis was resolved."""

    type: Literal["org.carebus.diagnosis.resolved.v1"]
    data: DiagnosisResolvedData


class MedicationPrescribed(CloudEvent):
    """A medication was prescribed."""

    type: Literal["org.carebus.medication.prescribed.v1"]
    data: MedicationOrderData


class MedicationChanged(CloudEvent):
    """A prescription's dose or frequency changed."""

    type: Literal["org.carebus.medication.changed.v1"]
    data: MedicationChangedData


class MedicationDiscontinued(CloudEvent):
    """A medication was stopped."""

    type: Literal["org.carebus.medication.discontinued.v1"]
    data: MedicationDiscontinuedData


class AdmissionStarted(CloudEvent):
    """An inpatient stay began."""

    type: Literal["org.carebus.admission.started.v1"]
    data: AdmissionData


class AdmissionEnded(CloudEvent):
    """An inpatient stay ended (discharge)."""

    type: Literal["org.carebus.admission.ended.v1"]
    data: AdmissionEndedData


class NoteSigned(CloudEvent):
    """A clinical note was signed."""

    type: Literal["org.carebus.note.signed.v1"]
    data: NoteData


class CarePlanUpdated(CloudEvent):
    """The treatment plan was created or changed."""

    type: Literal["org.carebus.careplan.updated.v1"]
    data: CarePlanData


class ConsentGranted(CloudEvent):
    """The patient granted (or denied) a disclosure consent."""

    type: Literal["org.carebus.consent.granted.v1"]
    data: ConsentData


class ConsentRevoked(CloudEvent):
    """The patient revoked a disclosure consent."""

    type: Literal["org.carebus.consent.revoked.v1"]
    data: ConsentRevokedData


class LabResulted(CloudEvent):
    """A laboratory result was reported."""

    type: Literal["org.carebus.lab.resulted.v1"]
    data: LabResultData


class RiskFlagged(CloudEvent):
    """A clinician flagged a safety risk."""

    type: Literal["org.carebus.risk.flagged.v1"]
    data: RiskFlagData


CareEvent = Annotated[
    PatientRegistered
    | PatientUpdated
    | ReferralCreated
    | ReferralClosed
    | AppointmentBooked
    | AppointmentCancelled
    | AppointmentNoShow
    | SessionCompleted
    | AssessmentCompleted
    | DiagnosisRecorded
    | DiagnosisResolved
    | MedicationPrescribed
    | MedicationChanged
    | MedicationDiscontinued
    | AdmissionStarted
    | AdmissionEnded
    | NoteSigned
    | CarePlanUpdated
    | ConsentGranted
    | ConsentRevoked
    | LabResulted
    | RiskFlagged,
    Field(discriminator="type"),
]
"""Any inbound JSON care event; ``type`` selects the payload model."""

EVENT_CLASSES: Final[tuple[type[CloudEvent], ...]] = (
    PatientRegistered,
    PatientUpdated,
    ReferralCreated,
    ReferralClosed,
    AppointmentBooked,
    AppointmentCancelled,
    AppointmentNoShow,
    SessionCompleted,
    AssessmentCompleted,
    DiagnosisRecorded,
    DiagnosisResolved,
    MedicationPrescribed,
    MedicationChanged,
    MedicationDiscontinued,
    AdmissionStarted,
    AdmissionEnded,
    NoteSigned,
    CarePlanUpdated,
    ConsentGranted,
    ConsentRevoked,
    LabResulted,
    RiskFlagged,
)

EVENT_TYPES: Final[dict[str, type[CloudEvent]]] = {
    cls.model_fields["type"].annotation.__args__[0]: cls  # type: ignore[union-attr]
    for cls in EVENT_CLASSES
}
"""``type`` string -> event class, e.g. "org.carebus.patient.registered.v1" -> PatientRegistered."""
