"""map_event: the dispatch table from event class to family mapping; then the one assembler every path uses
(services/mapper/assembly.py: Bundle, Provenance, labels, fullUrls, counts).

What a JSON care event gives the assembler: source and id of the CloudEvent; recorded = the event ``time``
(when the source recorded the event, not when carebus received this copy: a resend or replay of the same event
makes the same Bundle and Provenance); occurred = when the change happened (Draft.occurred_at, e.g. an
appointment's cancelled_at; else the event time); the Provenance author is the source system.
Same event and same context -> identical bundle (ids from fhir_ids, no clock, no randomness).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from services.common.errors import FieldProblem, MappingError
from services.common.events import (
    AdmissionEnded,
    AdmissionStarted,
    AppointmentBooked,
    AppointmentCancelled,
    AppointmentNoShow,
    AssessmentCompleted,
    CareEvent,
    CarePlanUpdated,
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
    check_policy,
)
from services.mapper.assembly import Origin, assemble
from services.mapper.mapping._fhir import Draft, Subject, iso
from services.mapper.mapping.admission import map_admission
from services.mapper.mapping.appointment import map_appointment
from services.mapper.mapping.assessment import map_assessment
from services.mapper.mapping.careplan import map_care_plan
from services.mapper.mapping.consent import map_consent
from services.mapper.mapping.diagnosis import map_diagnosis
from services.mapper.mapping.lab import map_lab
from services.mapper.mapping.medication import map_medication
from services.mapper.mapping.note import map_note
from services.mapper.mapping.patient import map_patient
from services.mapper.mapping.referral import map_referral
from services.mapper.mapping.risk import map_risk_flag
from services.mapper.mapping.session import map_session
from services.mapper.result import MappedEvent, MappingContext

FamilyMapping = Callable[[Any, Draft], None]

DISPATCH: Final[dict[type, FamilyMapping]] = {
    PatientRegistered: map_patient,
    PatientUpdated: map_patient,
    ReferralCreated: map_referral,
    ReferralClosed: map_referral,
    AppointmentBooked: map_appointment,
    AppointmentCancelled: map_appointment,
    AppointmentNoShow: map_appointment,
    SessionCompleted: map_session,
    AssessmentCompleted: map_assessment,
    DiagnosisRecorded: map_diagnosis,
    DiagnosisResolved: map_diagnosis,
    MedicationPrescribed: map_medication,
    MedicationChanged: map_medication,
    MedicationDiscontinued: map_medication,
    AdmissionStarted: map_admission,
    AdmissionEnded: map_admission,
    NoteSigned: map_note,
    CarePlanUpdated: map_care_plan,
    ConsentGranted: map_consent,
    ConsentRevoked: map_consent,
    LabResulted: map_lab,
    RiskFlagged: map_risk_flag,
}
"""Event class -> family mapping (one module per family under services/mapper/mapping/)."""


def map_event(event: CareEvent, context: MappingContext) -> MappedEvent:
    """One care event -> one FHIR R4 Bundle (collection) with labels, alerts and data-quality codes.

    The Bundle is read-only: its resources share sub-objects where they are equal by construction (one
    meta.security list per label set; an assessment's Observations share subject, time, encounter and
    performer). It is meant to be validated and serialized; copy it (a JSON round trip) before changing it.

    Raises RefusedContent (psychotherapy / SUD counseling notes) or MappingError (e.g. answers that cannot
    be scored); both are InvalidInput: dead-letter the event and carry on."""
    check_policy(event)
    family = DISPATCH.get(type(event))
    if family is None:
        raise MappingError(
            "no mapping for this event type",
            [FieldProblem("type", "unmapped-event-type", "carebus has no mapping for this event type")],
        )
    draft = Draft(Subject(event.source, event.data.patient_id), event.id)
    family(event, draft)
    origin = Origin(source=event.source, event_id=event.id, event_type=event.type, recorded=iso(event.time),
                    occurred=iso(draft.occurred_at or event.time))
    return assemble(origin, draft.resources, context, alerts=draft.alerts, data_quality=draft.data_quality)
