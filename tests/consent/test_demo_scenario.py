"""The demo's consent scenario (devstack/consent_demo.py) says what it claims: its events parse and map, the
consent names the partner clinic for SUD data, the diagnosis and the prescription are Part 2 data, and the
disclosure engine sends them to the partner clinic (with the notice) and not to the therapy practice."""

from __future__ import annotations

from datetime import UTC, datetime

from devstack import consent_demo
from services.common import disclosure
from tests.mapping.helpers import mapped, one, security_codes

AT = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)


def test_the_part2_episode_maps_and_consent_decides_as_the_demo_prints() -> None:
    consent_event, diagnosis_event, prescription_event = consent_demo.part2_episode(AT)
    consent = one(mapped(consent_event), "Consent")
    condition = one(mapped(diagnosis_event), "Condition")
    prescription = one(mapped(prescription_event), "MedicationRequest")
    for resource in (condition, prescription):
        assert {"42CFRPart2", "NORDSCLCD"} <= set(security_codes(resource))
    directive = disclosure.parse_consent(consent)
    partner = disclosure.Recipient(organization=consent_demo.PARTNER_GRANT["organization"])
    therapy = disclosure.Recipient(organization=consent_demo.THERAPY_ORGANIZATION,
                                   clearances=disclosure.CLEARANCE_CLASSES["behavioral-health"])
    later = int(AT.timestamp() * 1000) + 3_600_000
    for resource in (condition, prescription):
        to_partner = disclosure.decide(security_codes(resource), [directive], partner, "TREAT", later)
        assert to_partner.outcome == "permit-with-obligations"
        assert to_partner.consents == (f"Consent/{consent['id']}",)
        assert not disclosure.decide(security_codes(resource), [directive], therapy, "TREAT", later).permit
