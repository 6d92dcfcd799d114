"""medication.prescribed / .changed / .discontinued -> MedicationRequest (us-core-medicationrequest).

status active (prescribed, changed) or stopped (discontinued, with statusReason and the stop time in
dispenseRequest.validityPeriod.end); intent order; medicationCodeableConcept RxNorm; dosageInstruction with
timing (frequency / period / periodUnit), asNeededBoolean, route, doseAndRate.doseQuantity (UCUM when a code
is given). medication.changed: the order as changed, valid from the change (``changed_at`` ->
dispenseRequest.validityPeriod.start); with ``replaces_prescription_id`` -> priorPrescription.
Labels: labels.medication_labels (OUD treatment -> PART2, psychiatric ingredients -> PSY) + reason codes.
"""

from __future__ import annotations

from typing import Any

from services.common.events import MedicationChanged, MedicationDiscontinued, MedicationPrescribed
from services.common.fhir import labels
from services.common.fhir.codesystems import RXNORM
from services.mapper.mapping._fhir import Draft, coding, concept_of, iso, number, profile, quantity


def map_medication(
    event: MedicationPrescribed | MedicationChanged | MedicationDiscontinued, draft: Draft
) -> None:
    data = event.data
    subject = draft.subject
    dosage: dict[str, Any] = {
        "timing": {
            "repeat": {
                "frequency": data.frequency.times,
                "period": number(data.frequency.period),
                "periodUnit": data.frequency.period_unit,
            }
        },
        "asNeededBoolean": data.as_needed,
        "doseAndRate": [{"doseQuantity": quantity(data.dose.value, data.dose.unit, data.dose.code)}],
    }
    if data.route is not None:
        dosage["route"] = concept_of(data.route)
    medication: dict[str, Any] = {"coding": [coding(RXNORM, data.medication.code, data.medication.display)]}
    if data.medication.display:
        medication["text"] = data.medication.display
    request: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": subject.id("MedicationRequest", data.prescription_id),
        "meta": {"profile": profile("us-core-medicationrequest")},
        "identifier": [subject.identifier("prescription", data.prescription_id)],
        "status": "active",
        "intent": "order",
        "reportedBoolean": False,
        "medicationCodeableConcept": medication,
        "subject": subject.patient_ref,
        "authoredOn": iso(data.authored_on),
        "requester": subject.practitioner(data.prescriber),
        "dosageInstruction": [dosage],
    }
    if data.reason_codes:
        request["reasonCode"] = [concept_of(reason) for reason in data.reason_codes]
    if data.encounter_id:
        request["encounter"] = subject.ref("Encounter", data.encounter_id)
    if isinstance(event, MedicationChanged):
        request["dispenseRequest"] = {"validityPeriod": {"start": iso(event.data.changed_at)}}
        if event.data.replaces_prescription_id:
            request["priorPrescription"] = subject.ref("MedicationRequest", event.data.replaces_prescription_id)
    if isinstance(event, MedicationDiscontinued):
        request["status"] = "stopped"
        if event.data.reason is not None:
            request["statusReason"] = concept_of(event.data.reason)
        request["dispenseRequest"] = {"validityPeriod": {"end": iso(event.data.discontinued_at)}}
    reason_labels = [labels.diagnosis_labels(r.system, r.code) for r in data.reason_codes]
    draft.add(
        request,
        labels.combine(
            labels.medication_labels(data.medication.code, data.sensitivity, data.medication.display),
            *reason_labels,
        ),
    )
