"""Consent as data: consent.granted / consent.revoked events and FHIR Consents posted to /fhir become R4 Consents
the disclosure engine reads as meant (scope, permit/deny, actor = recipient organization or care team,
purpose, securityLabel, period, nested exceptions, revocation from its time on)."""

from __future__ import annotations

from datetime import UTC, datetime

from services.common import disclosure as d
from services.mapper.fhir_in import map_fhir_payload
from tests.consent.consents import consent
from tests.fhir_in.test_fhir_in import CONTEXT as FHIR_CONTEXT
from tests.fhir_in.test_fhir_in import envelope
from tests.mapping.helpers import example, mapped, one, security_codes

PARTNER = {"system": "http://hl7.org/fhir/sid/us-npi", "value": "1999999984"}
PARTNER_NAME = f"{PARTNER['system']}|{PARTNER['value']}"
NOW = int(datetime(2025, 6, 1, tzinfo=UTC).timestamp() * 1000)


def _granted(**changes: object) -> dict[str, object]:
    data = {"recipient": {"kind": "organization", "name": "Harbor partner clinic", "identifier": PARTNER},
            "labels_covered": ["SUD", "42CFRPart2"], "purposes": ["TREAT"], "decision": "permit",
            "granted_at": "2025-03-20T17:20:00Z", "valid_until": None, **changes}
    return example("consent.granted", **data)


def _directive(event: dict[str, object]) -> d.ConsentDirective:
    return d.parse_consent(one(mapped(event), "Consent"))


def test_part2_consent_event_permits_the_named_recipient_only() -> None:
    directive = _directive(_granted())
    partner = d.Recipient(organization=PARTNER_NAME)
    other = d.Recipient(organization="http://hl7.org/fhir/sid/us-npi|1999999976")
    part2 = ("R", "SUD", "42CFRPart2", "NORDSCLCD")
    decision = d.decide(part2, [directive], partner, "TREAT", NOW)
    assert decision.outcome == "permit-with-obligations" and decision.consents == (directive.reference,)
    assert not d.decide(part2, [directive], other, "TREAT", NOW).permit
    assert not d.decide(part2, [directive], partner, "HRESCH", NOW).permit  # purpose not covered
    assert not d.decide(("R", "PSY"), [directive], partner, "TREAT", NOW).permit  # class not covered


def test_valid_until_ends_the_consent_after_that_day() -> None:
    directive = _directive(_granted(valid_until="2025-05-31"))
    partner = d.Recipient(organization=PARTNER_NAME)
    part2 = ("R", "SUD", "42CFRPart2")
    last_day = int(datetime(2025, 5, 31, 23, tzinfo=UTC).timestamp() * 1000)
    assert d.decide(part2, [directive], partner, "TREAT", last_day).permit
    assert not d.decide(part2, [directive], partner, "TREAT", NOW).permit


def test_revocation_event_is_inactive_from_its_time_on() -> None:
    revoked = example("consent.revoked", recipient={"kind": "organization", "name": "Harbor partner clinic",
                                                   "identifier": PARTNER},
                      labels_covered=["SUD", "42CFRPart2"], revoked_at="2025-05-01T00:00:00Z")
    resource = one(mapped(revoked), "Consent")
    assert resource["status"] == "inactive" and resource["provision"]["period"]["end"].startswith("2025-05-01")
    directive = d.parse_consent(resource)
    partner = d.Recipient(organization=PARTNER_NAME)
    before = int(datetime(2025, 4, 30, tzinfo=UTC).timestamp() * 1000)
    assert d.decide(("R", "SUD"), [directive], partner, "TREAT", before).permit
    assert not d.decide(("R", "SUD"), [directive], partner, "TREAT", NOW).permit


def test_exceptions_become_nested_provisions_of_the_opposite_type() -> None:
    event = _granted(labels_covered=["PSY", "SUD", "42CFRPart2"],
                     exceptions=[{"labels_covered": ["SUD", "42CFRPart2"]}])  # everything but Part 2
    resource = one(mapped(event), "Consent")
    nested = resource["provision"]["provision"]
    assert nested[0]["type"] == "deny" and [c["code"] for c in nested[0]["securityLabel"]] == ["SUD", "42CFRPart2"]
    assert set(security_codes(resource)) == {"R", "42CFRPart2", "NORDSCLCD", "PSY", "SUD"}
    partner = d.Recipient(organization=PARTNER_NAME)
    directive = d.parse_consent(resource)
    assert d.decide(("R", "PSY"), [directive], partner, "TREAT", NOW).permit
    assert not d.decide(("R", "SUD", "42CFRPart2"), [directive], partner, "TREAT", NOW).permit


def test_care_team_recipient() -> None:
    team = {"system": "urn:carebus:care-team", "value": "bh-team-7"}
    directive = _directive(_granted(recipient={"kind": "care-team", "name": "BH team 7", "identifier": team},
                                    labels_covered=["PSY"]))
    assert d.decide(("R", "PSY"), [directive], d.Recipient(care_teams=("urn:carebus:care-team|bh-team-7",)),
                    "TREAT", NOW).permit


def test_fhir_consent_posted_to_fhir_is_labelled_and_read_the_same_way() -> None:
    sent = consent("src-consent-1", "Patient/src-p1", covered=("SUD", "42CFRPart2"), org=PARTNER_NAME,
                   start="2025-01-01T00:00:00Z")
    sent["provision"]["provision"] = [{"type": "deny", "purpose": [
        {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HPAYMT"}]}]
    result = map_fhir_payload(envelope(sent, "fhir-consent-1"), FHIR_CONTEXT)
    stored = next(e["resource"] for e in result.bundle["entry"] if e["resource"]["resourceType"] == "Consent")
    assert {c["code"] for c in stored["meta"]["security"]} >= {"42CFRPart2", "NORDSCLCD"}  # reveals SUD data
    directive = d.parse_consent(stored)
    partner = d.Recipient(organization=PARTNER_NAME)
    assert d.decide(("R", "SUD", "42CFRPart2"), [directive], partner, "TREAT", NOW).permit
    assert not d.decide(("R", "SUD", "42CFRPart2"), [directive], partner, "HPAYMT", NOW).permit
