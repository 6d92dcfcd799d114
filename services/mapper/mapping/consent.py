"""consent.granted / consent.revoked -> Consent (no US Core profile), e.g. a 42 CFR Part 2 disclosure consent.

scope consentscope ``patient-privacy``; category LOINC 59284-0 (patient consent) or 64292-6 (release of
information); patient; dateTime = granted_at; performer = the patient; policyRule (v3-ActCode): 42CFRPart2
when the consent covers SUD data, otherwise OPTIN (permit) / OPTOUT (deny) (?); provision: type permit|deny,
period granted_at .. valid_until (or revoked_at), actor = the recipient in role IRCP (information recipient,
v3-ParticipationType), purpose = v3-ActReason codes, securityLabel = the labels the consent covers.
exceptions: nested provisions of the opposite type (actor / purpose / securityLabel as given) - the most
specific provision wins (services/common/disclosure.py).
revoked: status inactive and provision.period.end = revoked_at (the disclosure engine applies it before
that time only). Labels: the labels of the data it covers, exceptions included (labels.covered_labels).
"""

from __future__ import annotations

from typing import Any, Final

from services.common import security_labels
from services.common.events import ConsentGranted, ConsentRevoked
from services.common.events.payloads import (
    ConsentException,
    ConsentForm,
    ConsentRecipient,
    PurposeOfUse,
    RecipientKind,
)
from services.common.fhir import labels
from services.common.fhir.codesystems import CONSENT_SCOPE, LOINC, V3_ACT_CODE, V3_ACT_REASON, V3_PARTICIPATION_TYPE
from services.mapper.mapping._fhir import Draft, coding, concept, iso

FORM_DISPLAY: Final[dict[ConsentForm, str]] = {
    "59284-0": "Patient Consent", "64292-6": "Release of information consent",
}
PURPOSE_DISPLAY: Final[dict[PurposeOfUse, str]] = {
    "TREAT": "treatment",
    "ETREAT": "emergency treatment",
    "HPAYMT": "healthcare payment",
    "HOPERAT": "healthcare operations",
    "HRESCH": "healthcare research",
    "PUBHLTH": "public health",
    "PATRQT": "patient requested",
    "CAREMGT": "care management",
}


_RECIPIENT_TYPES: Final[dict[RecipientKind, str]] = {
    "organization": "Organization", "practitioner": "Practitioner", "care-team": "CareTeam",
}


def _recipient(recipient: ConsentRecipient) -> dict[str, Any]:
    found: dict[str, Any] = {"type": _RECIPIENT_TYPES[recipient.kind], "display": recipient.name}
    if recipient.identifier is not None:
        found["identifier"] = {"system": recipient.identifier.system, "value": recipient.identifier.value}
        if recipient.identifier.assigner:
            found["identifier"]["assigner"] = {"display": recipient.identifier.assigner}
    return found


def _exception(exception: ConsentException, kind: str) -> dict[str, Any]:
    """A nested provision: the opposite decision for what the exception names."""
    provision: dict[str, Any] = {"type": kind}
    if exception.recipient is not None:
        provision["actor"] = [
            {
                "role": concept(V3_PARTICIPATION_TYPE, "IRCP", "information recipient"),
                "reference": _recipient(exception.recipient),
            }
        ]
    if exception.purposes:
        provision["purpose"] = [coding(V3_ACT_REASON, p, PURPOSE_DISPLAY[p]) for p in exception.purposes]
    if exception.labels_covered:
        provision["securityLabel"] = [security_labels.coding(label) for label in exception.labels_covered]
    return provision


def map_consent(event: ConsentGranted | ConsentRevoked, draft: Draft) -> None:
    data = event.data
    subject = draft.subject
    if set(data.labels_covered) & labels.PART2_COVERED:
        policy = concept(V3_ACT_CODE, "42CFRPart2", "42 CFR Part2")
    elif data.decision == "permit":
        policy = concept(V3_ACT_CODE, "OPTIN", "opt-in")
    else:
        policy = concept(V3_ACT_CODE, "OPTOUT", "opt-out")
    recipient = _recipient(data.recipient)
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
                {"role": concept(V3_PARTICIPATION_TYPE, "IRCP", "information recipient"), "reference": recipient}
            ],
            "purpose": [coding(V3_ACT_REASON, p, PURPOSE_DISPLAY[p]) for p in data.purposes],
            "securityLabel": [security_labels.coding(label) for label in data.labels_covered],
        },
    }
    if data.exceptions:
        opposite = "deny" if data.decision == "permit" else "permit"
        consent["provision"]["provision"] = [_exception(e, opposite) for e in data.exceptions]
    if isinstance(event, ConsentRevoked):
        consent["status"] = "inactive"
        period["end"] = iso(event.data.revoked_at)
    covered = [*data.labels_covered, *(label for e in data.exceptions for label in e.labels_covered)]
    draft.add(consent, labels.covered_labels(covered))
