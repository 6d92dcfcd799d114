"""referral.created / referral.closed -> ServiceRequest (us-core-servicerequest, intent order, category
SNOMED 3457005 "Patient referral").

| specialty  | ServiceRequest.code (SNOMED CT, eCQM value sets (t))            |
|------------|-----------------------------------------------------------------|
| therapy    | 306343005 Referral to psychotherapist (procedure)               |
| psychiatry | 183524004 Referral to psychiatry service (procedure)            |

closed: outcome completed -> status completed; declined / cancelled -> revoked; entered-in-error as is.
Labels: PSY (a referral to therapy / psychiatry is psychiatric information) + the reason codes' labels.
"""

from __future__ import annotations

from typing import Any, Final

from services.common.events import ReferralClosed, ReferralCreated
from services.common.fhir import labels
from services.common.fhir.codesystems import SNOMED
from services.mapper.mapping._fhir import Draft, concept, concept_of, iso, profile

REFERRAL_CODES: Final = {
    "therapy": ("306343005", "Referral to psychotherapist (procedure)"),
    "psychiatry": ("183524004", "Referral to psychiatry service (procedure)"),
}
_STATUS: Final = {
    "completed": "completed",
    "declined": "revoked",
    "cancelled": "revoked",
    "entered-in-error": "entered-in-error",
}


def map_referral(event: ReferralCreated | ReferralClosed, draft: Draft) -> None:
    data = event.data
    subject = draft.subject
    code, display = REFERRAL_CODES[data.specialty]
    request: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": subject.id("ServiceRequest", data.referral_id),
        "meta": {"profile": profile("us-core-servicerequest")},
        "identifier": [subject.identifier("referral", data.referral_id)],
        "status": "active",
        "intent": "order",
        "category": [concept(SNOMED, "3457005", "Patient referral")],
        "priority": data.priority,
        "code": concept(SNOMED, code, display),
        "subject": subject.patient_ref,
        "authoredOn": iso(data.authored_on),
        "requester": subject.practitioner(data.requester),
        "reasonCode": [concept_of(reason) for reason in data.reason_codes],
    }
    if data.encounter_id:
        request["encounter"] = subject.ref("Encounter", data.encounter_id)
    if data.performer_organization:
        request["performer"] = [{"type": "Organization", "display": data.performer_organization}]
    if isinstance(event, ReferralClosed):
        request["status"] = _STATUS[event.data.outcome]
        request["occurrenceDateTime"] = iso(event.data.closed_at)
    reason_labels = [labels.diagnosis_labels(r.system, r.code) for r in data.reason_codes]
    draft.add(request, labels.referral_labels(reason_labels))
