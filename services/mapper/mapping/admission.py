"""admission.started / admission.ended -> Encounter (us-core-encounter), class IMP (v3-ActCode).

type SNOMED CT 32485007 "Hospital admission (procedure)" (t); status in-progress (started) or finished
(ended, period.end = discharged_at, hospitalization.dischargeDisposition from the HL7 discharge-disposition
code system, e.g. ``psy`` = discharged to a psychiatric hospital); involuntary admissions get
hospitalization.admitSource text "involuntary" (R4 has no standard code); reasonCode from the event.
Labels: inpatient-psychiatry -> PSY; inpatient-detox -> PART2; inpatient-medical -> its reason codes only.
"""

from __future__ import annotations

from typing import Any, Final

from services.common.events import AdmissionEnded, AdmissionStarted
from services.common.events.payloads import AdmissionService
from services.common.fhir import labels
from services.common.fhir.codesystems import DISCHARGE_DISPOSITION, SNOMED, V3_ACT_CODE
from services.mapper.mapping._fhir import Draft, coding, concept, concept_of, iso, profile

DISPOSITION_DISPLAY: Final = {
    "home": "Home",
    "alt-home": "Alternative home",
    "other-hcf": "Other healthcare facility",
    "hosp": "Hospice",
    "long": "Long-term care",
    "aadvice": "Left against advice",
    "exp": "Expired",
    "psy": "Psychiatric hospital",
    "rehab": "Rehabilitation",
    "snf": "Skilled nursing facility",
    "oth": "Other",
}
SERVICE_TEXT: Final[dict[AdmissionService, str]] = {
    "inpatient-psychiatry": "Inpatient psychiatry",
    "inpatient-detox": "Inpatient withdrawal management",
    "inpatient-medical": "Inpatient medical",
}


def map_admission(event: AdmissionStarted | AdmissionEnded, draft: Draft) -> None:
    data = event.data
    subject = draft.subject
    encounter: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": subject.id("Encounter", data.admission_id),
        "meta": {"profile": profile("us-core-encounter")},
        "identifier": [subject.identifier("encounter", data.admission_id)],
        "status": "in-progress",
        "class": coding(V3_ACT_CODE, "IMP", "inpatient encounter"),
        "type": [concept(SNOMED, "32485007", "Hospital admission (procedure)")],
        "serviceType": {"text": SERVICE_TEXT[data.service]},
        "subject": subject.patient_ref,
        "period": {"start": iso(data.admitted_at)},
    }
    if data.reason_codes:
        encounter["reasonCode"] = [concept_of(reason) for reason in data.reason_codes]
    if data.attending is not None:
        encounter["participant"] = [{"individual": subject.practitioner(data.attending)}]
    if data.facility:
        encounter["serviceProvider"] = {"display": data.facility}
    hospitalization: dict[str, Any] = {}
    if data.involuntary:
        hospitalization["admitSource"] = {"text": "involuntary"}
    if isinstance(event, AdmissionEnded):
        encounter["status"] = "finished"
        encounter["period"]["end"] = iso(event.data.discharged_at)
        code = event.data.discharge_disposition
        hospitalization["dischargeDisposition"] = concept(
            DISCHARGE_DISPOSITION, code, DISPOSITION_DISPLAY[code]
        )
    if hospitalization:
        encounter["hospitalization"] = hospitalization
    reason_labels = [labels.diagnosis_labels(r.system, r.code) for r in data.reason_codes]
    draft.add(encounter, labels.admission_labels(data.service, reason_labels))
