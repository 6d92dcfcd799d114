"""diagnosis.recorded / diagnosis.resolved -> Condition.

Profile: us-core-condition-problems-health-concerns (category problem-list-item) or
us-core-condition-encounter-diagnosis (category encounter-diagnosis). clinicalStatus active, or resolved with
abatementDateTime for diagnosis.resolved; verificationStatus from the event; code ICD-10-CM or SNOMED CT.
Labels: see labels.diagnosis_labels (F10-F19 except F17 -> PART2, other F-codes -> PSY ...).
"""

from __future__ import annotations

from typing import Any, Final

from services.common.events import DiagnosisRecorded, DiagnosisResolved
from services.common.events.payloads import DiagnosisCategory
from services.common.fhir import labels
from services.common.fhir.codesystems import CONDITION_CATEGORY, CONDITION_CLINICAL, CONDITION_VERIFICATION
from services.mapper.mapping._fhir import Draft, concept, concept_of, iso, profile

_PROFILES: Final[dict[DiagnosisCategory, tuple[str, str]]] = {
    "problem-list-item": ("us-core-condition-problems-health-concerns", "Problem List Item"),
    "encounter-diagnosis": ("us-core-condition-encounter-diagnosis", "Encounter Diagnosis"),
}


def map_diagnosis(event: DiagnosisRecorded | DiagnosisResolved, draft: Draft) -> None:
    data = event.data
    subject = draft.subject
    profile_name, category_display = _PROFILES[data.category]
    condition: dict[str, Any] = {
        "resourceType": "Condition",
        "id": subject.id("Condition", data.diagnosis_id),
        "meta": {"profile": profile(profile_name)},
        "identifier": [subject.identifier("diagnosis", data.diagnosis_id)],
        "clinicalStatus": concept(CONDITION_CLINICAL, "active", "Active"),
        "verificationStatus": concept(CONDITION_VERIFICATION, data.verification, data.verification.capitalize()),
        "category": [concept(CONDITION_CATEGORY, data.category, category_display)],
        "code": concept_of(data.code),
        "subject": subject.patient_ref,
        "recordedDate": iso(data.recorded_at),
    }
    if data.code.display:
        condition["code"]["text"] = data.code.display
    if data.onset_date:
        condition["onsetDateTime"] = iso(data.onset_date)
    if data.encounter_id:
        condition["encounter"] = subject.ref("Encounter", data.encounter_id)
    if data.practitioner is not None:
        condition["recorder"] = subject.practitioner(data.practitioner)
    if isinstance(event, DiagnosisResolved):
        condition["clinicalStatus"] = concept(CONDITION_CLINICAL, "resolved", "Resolved")
        condition["abatementDateTime"] = iso(event.data.resolved_at)
    draft.add(condition, labels.diagnosis_labels(data.code.system, data.code.code, data.sensitivity))
