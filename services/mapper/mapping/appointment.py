"""appointment.booked / .cancelled / .noshow -> Appointment (no US Core profile).

Status: booked / cancelled / noshow. Cancellation reason (appointment-cancellation-reason): patient -> pat,
provider -> prov, other -> text only. The time of the cancellation (``cancelled_at``; R4's Appointment has no
element for it, R5's cancellationDate has no R4 form the HL7 validator accepts) -> the Bundle's
Provenance.occurredDateTime: the cancellation is the activity it records. A telehealth appointment has
appointmentType text "telehealth" (R4 Appointment has no virtual-service element).
Labels: therapy / psychiatry -> PSY; primary care -> none.
"""

from __future__ import annotations

from typing import Any, Final

from services.common.events import AppointmentBooked, AppointmentCancelled, AppointmentNoShow
from services.common.events.payloads import ServiceLine
from services.common.fhir import labels
from services.common.fhir.codesystems import APPOINTMENT_CANCELLATION_REASON, SNOMED
from services.mapper.mapping._fhir import Draft, concept, iso

SERVICE_TYPES: Final[dict[ServiceLine, tuple[str, str]]] = {  # SNOMED CT (t)
    "primary-care": ("737470001", "Primary care management (procedure)"),  # (v) US BHP example encounter type
    "therapy": ("75516001", "Psychotherapy (regime/therapy)"),
    "psychiatry": ("88848003", "Psychiatric follow-up (procedure)"),
}


def map_appointment(
    event: AppointmentBooked | AppointmentCancelled | AppointmentNoShow, draft: Draft
) -> None:
    data = event.data
    subject = draft.subject
    code, display = SERVICE_TYPES[data.service]
    minutes = int((data.end - data.start).total_seconds() // 60)
    appointment: dict[str, Any] = {
        "resourceType": "Appointment",
        "id": subject.id("Appointment", data.appointment_id),
        "identifier": [subject.identifier("appointment", data.appointment_id)],
        "status": "booked",
        "serviceType": [concept(SNOMED, code, display)],
        "start": iso(data.start),
        "end": iso(data.end),
        "minutesDuration": max(minutes, 1),
        "participant": [
            {"actor": subject.patient_ref, "required": "required", "status": "accepted"},
            {"actor": subject.practitioner(data.practitioner), "required": "required", "status": "accepted"},
        ],
    }
    if data.telehealth:
        appointment["appointmentType"] = {"text": "telehealth"}
    if data.booked_at:
        appointment["created"] = iso(data.booked_at)
    if data.referral_id:
        appointment["basedOn"] = [subject.ref("ServiceRequest", data.referral_id)]
    if isinstance(event, AppointmentCancelled):
        appointment["status"] = "cancelled"
        draft.occurred_at = event.data.cancelled_at
        by = event.data.cancelled_by
        if by == "patient":
            appointment["cancelationReason"] = concept(APPOINTMENT_CANCELLATION_REASON, "pat", "Patient")
        elif by == "provider":
            appointment["cancelationReason"] = concept(APPOINTMENT_CANCELLATION_REASON, "prov", "Provider")
        else:
            appointment["cancelationReason"] = {"text": "other"}
    elif isinstance(event, AppointmentNoShow):
        appointment["status"] = "noshow"
        appointment["participant"][0]["status"] = "declined"
    draft.add(appointment, labels.care_service_labels(data.service))
