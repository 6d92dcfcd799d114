"""Builders of FHIR R4 Consent resources and labelled resources for the consent tests."""

from __future__ import annotations

from typing import Any

from services.common import security_labels

PART2_ORG = "urn:oid:2.16.840.1.113883.4.6|1999999984"  # the SUD program's partner clinic (NPI-style)
THERAPY_ORG = "urn:oid:2.16.840.1.113883.4.6|1999999992"  # a therapy practice
OTHER_ORG = "urn:oid:2.16.840.1.113883.4.6|1999999976"

# label class -> meta.security codes as carebus labels them (services/common/fhir/labels.py)
LABEL_SETS: dict[str, tuple[str, ...]] = {
    "none": (),
    "PSY": security_labels.PSYCHIATRIC,
    "SUD-Part2": security_labels.PART2,
    "ETHUD": ("R", "ETHUD"),
    "PSYTHPN": ("V", "PSYTHPN"),
}
# what a consent that "covers" the class lists in provision.securityLabel (none: no securityLabel = all data)
COVERED: dict[str, tuple[str, ...]] = {
    "none": (),
    "PSY": ("PSY",),
    "SUD-Part2": ("SUD", "42CFRPart2"),
    "ETHUD": ("ETHUD",),
    "PSYTHPN": ("PSYTHPN",),
}

T_GRANTED = "2026-01-10T09:00:00+00:00"
T_NOW_MS = 1_780_000_000_000  # 2026-05-28
T_EXPIRED_END = "2026-03-01"
T_REVOKED = "2026-04-01T12:00:00+00:00"


def actor(org: str) -> dict[str, Any]:
    system, _, value = org.partition("|")
    return {
        "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
        "reference": {"type": "Organization", "identifier": {"system": system, "value": value}, "display": "clinic"},
    }


def consent(
    cid: str,
    patient: str,
    decision: str = "permit",
    org: str | None = PART2_ORG,
    covered: tuple[str, ...] = (),
    purposes: tuple[str, ...] = ("TREAT",),
    start: str = T_GRANTED,
    end: str | None = None,
    status: str = "active",
    exceptions: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    period: dict[str, str] = {"start": start}
    if end:
        period["end"] = end
    provision: dict[str, Any] = {"type": decision, "period": period}
    if org:
        provision["actor"] = [actor(org)]
    if purposes:
        provision["purpose"] = [
            {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": p} for p in purposes
        ]
    if covered:
        provision["securityLabel"] = [security_labels.coding(c) for c in covered]
    if exceptions:
        provision["provision"] = exceptions
    return {
        "resourceType": "Consent",
        "id": cid,
        "status": status,
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": patient},
        "dateTime": start,
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                   "code": "42CFRPart2"}]},
        "provision": provision,
    }


def consent_state(state: str, label_class: str, patient: str, recipient: str = PART2_ORG) -> list[dict[str, Any]]:
    """The consents of one matrix cell: none / permit-recipient / permit-other / deny / expired / revoked."""
    covered = COVERED[label_class]
    match state:
        case "none":
            return []
        case "permit-recipient":
            return [consent("c-permit", patient, org=recipient, covered=covered)]
        case "permit-other":
            return [consent("c-other", patient, org=OTHER_ORG, covered=covered)]
        case "deny":
            return [consent("c-deny", patient, "deny", org=recipient, covered=covered)]
        case "expired":
            return [consent("c-expired", patient, org=recipient, covered=covered, end=T_EXPIRED_END)]
        case "revoked":
            return [consent("c-revoked", patient, org=recipient, covered=covered, end=T_REVOKED, status="inactive")]
    raise AssertionError(state)
