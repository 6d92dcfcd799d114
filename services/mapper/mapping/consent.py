"""consent.granted / consent.revoked -> Consent (no US Core profile), e.g. a 42 CFR Part 2 disclosure consent.

scope consentscope ``patient-privacy``; category LOINC 59284-0 (patient consent) or 64292-6 (release of
information); patient; dateTime = granted_at; performer = the patient; policyRule (v3-ActCode): 42CFRPart2
when the consent covers SUD data, otherwise OPTIN (permit) / OPTOUT (deny) (?); provision: type permit|deny,
period granted_at .. valid_until (or revoked_at), actor = the recipient in role IRCP (information recipient,
v3-ParticipationType), purpose = v3-ActReason codes, securityLabel = the labels the consent covers.
revoked: status inactive and provision.period.end = revoked_at.
Labels: the labels of the data it covers (labels.covered_labels).
"""

from __future__ import annotations

from typing import Any, Final

from services.common import security_labels
from services.common.events import ConsentGranted, ConsentRevoked
from services.mapper.mapping import labels
from services.mapper.mapping._fhir import ACT_CODE, ACT_REASON, LOINC, Draft, coding, concept, iso

CONSENT_SCOPE: Final = "http://terminology.hl7.org/CodeSystem/consentscope"
PARTICIPATION_TYPE: Final = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
FORM_DISPLAY: Final = {"59284-0": "Patient Consent", "64292-6": "Release of information consent"}
PURPOSE_DISPLAY: Final = {
    "TREAT": "treatment",
    "ETREAT": "emergency treatment",
    "HPAYMT": "healthcare payment",
    "HOPERAT": "healthcare operations",
    "HRESCH": "healthcare research",
    "PUBHLTH": "public health",
    "PATRQT": "patient requested",
    "CAREMGT": "care management",
}
_PART2_COVERED: Final = frozenset({"SUD", "ETHUD", "OPIOIDUD", "42CFRPart2"})


def map_consent(event: ConsentGranted | ConsentRevoked, draft: Draft) -> None:
    data = event.data
    subject = draft.subject
    if set(data.labels_covered) & _PART2_COVERED:
        policy = concept(ACT_CODE, "42CFRPart2", "42 CFR Part2")
    elif data.decision == "permit":
        policy = concept(ACT_CODE, "OPTIN", "opt-in")
    else:
        policy = concept(ACT_CODE, "OPTOUT", "opt-out")
    recipient: dict[str, Any] = {
        "type": "Organization" if data.recipient.kind == "organization" else "Practitioner",
        "display": data.recipient.name,
    }
    if data.recipient.identifier is not None:
        recipient["identifier"] = {
            "system": data.recipient.identifier.system,
            "value": data.recipient.identifier.value,
        }
    period: dict[str, str] = {"start": iso(data.granted_at)}
    if data.valid_until:
        period["end"] = iso(data.valid_until)
    consent: dict[str, Any] = {
        "resourceType": "Consent",
        "id": subject.id("Consent", data.consent_id),
        "identifier": [subject.identifier("consent", data.consent_id)],
        "status": "active",
        "scope": concept(CONSENT_SCOPE, "patient-privacy", "Privacy Consent"),
        "category": [concept(LOINC, data.form, FORM_DISPLAY[data.form])],
        "patient": subject.patient_ref,
        "dateTime": iso(data.granted_at),
        "performer": [subject.patient_ref],
        "policyRule": policy,
        "provision": {
            "type": data.decision,
            "period": period,
            "actor": [
                {"role": concept(PARTICIPATION_TYPE, "IRCP", "information recipient"), "reference": recipient}
            ],
            "purpose": [coding(ACT_REASON, p, PURPOSE_DISPLAY[p]) for p in data.purposes],
            "securityLabel": [security_labels.coding(label) for label in data.labels_covered],
        },
    }
    if isinstance(event, ConsentRevoked):
        consent["status"] = "inactive"
        period["end"] = iso(event.data.revoked_at)
    draft.add(consent, labels.covered_labels(data.labels_covered))
