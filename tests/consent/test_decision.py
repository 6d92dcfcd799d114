"""The disclosure decision engine (services/common/disclosure.py), table-driven: label class x consent state for
an uncleared treating recipient and a cleared one; deny wins; most specific provision wins; time; policy."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.common import disclosure as d
from tests.consent.consents import (
    LABEL_SETS,
    OTHER_ORG,
    PART2_ORG,
    T_NOW_MS,
    consent,
    consent_state,
)

PATIENT = "Patient/p1"
UNCLEARED = d.Recipient(organization=PART2_ORG)
CLEARED = d.Recipient(organization=PART2_ORG, clearances=d.CLEARANCE_CLASSES["behavioral-health"]
                      | d.CLEARANCE_CLASSES["part2"])
STATES = ("none", "permit-recipient", "permit-other", "deny", "expired", "revoked")
P, W, D = "permit", "permit-with-obligations", "deny"

# label class -> expected outcome per consent state (in STATES order)
UNCLEARED_MATRIX: dict[str, tuple[str, ...]] = {
    "none":      (P, P, P, D, P, P),
    "PSY":       (D, P, D, D, D, D),
    "SUD-Part2": (D, W, D, D, D, D),
    "ETHUD":     (D, P, D, D, D, D),
    "PSYTHPN":   (D, D, D, D, D, D),
}
CLEARED_MATRIX: dict[str, tuple[str, ...]] = {
    "none":      (P, P, P, D, P, P),
    "PSY":       (P, P, P, D, P, P),
    "SUD-Part2": (D, W, D, D, D, D),  # a clearance is not a Part 2 consent
    "ETHUD":     (P, P, P, D, P, P),
    "PSYTHPN":   (D, D, D, D, D, D),  # never, whatever the consent
}


def _decide(labels: tuple[str, ...], state: str, label_class: str, recipient: d.Recipient,
            at_ms: int = T_NOW_MS, purpose: str = "TREAT") -> d.Decision:
    consents = [d.parse_consent(c) for c in consent_state(state, label_class, PATIENT)]
    return d.decide(labels, consents, recipient, purpose, at_ms)


@pytest.mark.parametrize("label_class", list(UNCLEARED_MATRIX))
@pytest.mark.parametrize("state", STATES)
def test_matrix_uncleared_recipient(label_class: str, state: str) -> None:
    decision = _decide(LABEL_SETS[label_class], state, label_class, UNCLEARED)
    assert decision.outcome == UNCLEARED_MATRIX[label_class][STATES.index(state)]


@pytest.mark.parametrize("label_class", list(CLEARED_MATRIX))
@pytest.mark.parametrize("state", STATES)
def test_matrix_cleared_recipient(label_class: str, state: str) -> None:
    decision = _decide(LABEL_SETS[label_class], state, label_class, CLEARED)
    assert decision.outcome == CLEARED_MATRIX[label_class][STATES.index(state)]


def test_part2_permit_carries_obligations_and_cites_the_consent() -> None:
    decision = _decide(LABEL_SETS["SUD-Part2"], "permit-recipient", "SUD-Part2", UNCLEARED)
    assert decision.obligations == (d.PART2_NOTICE, d.NO_REDISCLOSURE)
    assert decision.consents == ("Consent/c-permit",)
    withheld = _decide(LABEL_SETS["SUD-Part2"], "none", "SUD-Part2", CLEARED)
    assert not withheld.permit and withheld.withheld == d.PART2


def test_revoked_consent_applies_before_its_revocation_time_only() -> None:
    revoked_at = int(datetime(2026, 4, 1, 12, tzinfo=UTC).timestamp() * 1000)
    before = _decide(LABEL_SETS["SUD-Part2"], "revoked", "SUD-Part2", UNCLEARED, at_ms=revoked_at - 1)
    at = _decide(LABEL_SETS["SUD-Part2"], "revoked", "SUD-Part2", UNCLEARED, at_ms=revoked_at)
    assert before.permit and not at.permit


def test_consent_period_start_and_date_end() -> None:
    granted = int(datetime(2026, 1, 10, 9, tzinfo=UTC).timestamp() * 1000)
    expired_end = int(datetime(2026, 3, 2, tzinfo=UTC).timestamp() * 1000)  # end date "2026-03-01": whole day
    for at, permitted in ((granted - 1, False), (granted, True), (expired_end - 1, True), (expired_end, False)):
        decision = _decide(LABEL_SETS["PSY"], "expired", "PSY", UNCLEARED, at_ms=at)
        assert decision.permit is permitted, at


def test_deny_wins_over_permit_across_consents() -> None:
    consents = [d.parse_consent(c) for c in (
        consent("a", PATIENT, "permit", covered=("PSY",)),
        consent("b", PATIENT, "deny", org=None, covered=("PSY",), purposes=()),  # deny PSY to anyone
    )]
    assert not d.decide(("R", "PSY"), consents, UNCLEARED, "TREAT", T_NOW_MS).permit
    assert not d.decide(("R", "PSY"), consents, CLEARED, "TREAT", T_NOW_MS).permit
    assert d.decide((), consents, UNCLEARED, "TREAT", T_NOW_MS).permit  # ordinary data unaffected


def test_most_specific_provision_wins_inside_a_consent() -> None:
    # permit everything to the partner clinic, except Part 2 data (a nested deny)
    except_part2 = consent("x", PATIENT, "permit", purposes=(), exceptions=[
        {"type": "deny", "securityLabel": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                            "code": "42CFRPart2"}]}])
    parsed = [d.parse_consent(except_part2)]
    assert d.decide(("R", "PSY"), parsed, UNCLEARED, "TREAT", T_NOW_MS).permit
    assert not d.decide(("R", "SUD", "42CFRPart2", "NORDSCLCD"), parsed, UNCLEARED, "TREAT", T_NOW_MS).permit
    # deny everything to anyone, except Part 2 data to the partner clinic (an untyped nested provision is the
    # opposite of its parent)
    only_partner = consent("y", PATIENT, "deny", org=None, purposes=(), exceptions=[
        {"actor": [{"reference": {"identifier": {"system": PART2_ORG.split("|")[0],
                                                 "value": PART2_ORG.split("|")[1]}}}],
         "securityLabel": [{"code": "42CFRPart2"}, {"code": "SUD"}]}])
    parsed = [d.parse_consent(only_partner)]
    assert d.decide(("R", "SUD", "42CFRPart2"), parsed, UNCLEARED, "TREAT", T_NOW_MS).permit
    assert not d.decide((), parsed, UNCLEARED, "TREAT", T_NOW_MS).permit
    other = d.Recipient(organization=OTHER_ORG)
    assert not d.decide(("R", "SUD", "42CFRPart2"), parsed, other, "TREAT", T_NOW_MS).permit


def test_purpose_of_use_is_part_of_the_decision() -> None:
    parsed = [d.parse_consent(consent("r", PATIENT, covered=("PSY",), purposes=("TREAT",)))]
    assert d.decide(("R", "PSY"), parsed, UNCLEARED, "TREAT", T_NOW_MS).permit
    assert not d.decide(("R", "PSY"), parsed, UNCLEARED, "HRESCH", T_NOW_MS).permit
    # research is not treatment/payment/operations: even ordinary data needs a consent
    assert not d.decide((), [], UNCLEARED, "HRESCH", T_NOW_MS).permit
    research = [d.parse_consent(consent("s", PATIENT, purposes=("HRESCH",)))]
    assert d.decide((), research, UNCLEARED, "HRESCH", T_NOW_MS).permit


def test_unevaluated_conditions_never_widen_a_disclosure() -> None:
    narrow_permit = consent("n", PATIENT, covered=("PSY",))
    narrow_permit["provision"]["class"] = [{"system": "http://hl7.org/fhir/resource-types", "code": "Condition"}]
    narrow_deny = consent("m", PATIENT, "deny", covered=("PSY",))
    narrow_deny["provision"]["class"] = [{"system": "http://hl7.org/fhir/resource-types", "code": "Condition"}]
    assert not d.decide(("R", "PSY"), [d.parse_consent(narrow_permit)], UNCLEARED, "TREAT", T_NOW_MS).permit
    assert not d.decide(("R", "PSY"), [d.parse_consent(narrow_deny)], CLEARED, "TREAT", T_NOW_MS).permit


def test_only_privacy_consents_in_force_count() -> None:
    draft = consent("q", PATIENT, covered=("PSY",), status="proposed")
    treatment = consent("t", PATIENT, covered=("PSY",))
    treatment["scope"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                                      "code": "treatment"}]}
    for c in (draft, treatment):
        assert not d.decide(("R", "PSY"), [d.parse_consent(c)], UNCLEARED, "TREAT", T_NOW_MS).permit


def test_care_team_recipient_and_reference_actors() -> None:
    c = consent("ct", PATIENT, org=None, covered=("PSY",))
    c["provision"]["actor"] = [{"role": {"text": "recipient"}, "reference": {"reference": "CareTeam/team-7"}}]
    parsed = [d.parse_consent(c)]
    assert d.decide(("R", "PSY"), parsed, d.Recipient(care_teams=("CareTeam/team-7",)), "TREAT", T_NOW_MS).permit
    assert not d.decide(("R", "PSY"), parsed, d.Recipient(care_teams=("CareTeam/team-8",)), "TREAT",
                        T_NOW_MS).permit


def test_patient_access_is_not_restricted_by_consents() -> None:
    me = d.Recipient(patient_access=True, clearances=d.BEHAVIORAL_HEALTH)
    deny_all = [d.parse_consent(consent("z", PATIENT, "deny", org=None, purposes=()))]
    assert d.decide(("R", "PSY"), deny_all, me, "PATRQT", T_NOW_MS).permit
    assert not d.decide(("V", "PSYTHPN"), [], d.Recipient(patient_access=True, clearances=d.ALL_CLASSES),
                        "PATRQT", T_NOW_MS).permit


def test_grant_is_the_decision_for_every_class_at_once() -> None:
    parsed = [d.parse_consent(c) for c in consent_state("permit-recipient", "SUD-Part2", PATIENT)]
    g = d.grant(parsed, UNCLEARED, "TREAT", T_NOW_MS)
    assert g.permits(0) and g.permits(d.PART2) and not g.permits(d.BEHAVIORAL_HEALTH)
    assert g.part2_consents == ("Consent/c-permit",)
    for labels in LABEL_SETS.values():
        assert d.decide_with(g, labels) == d.decide(labels, parsed, UNCLEARED, "TREAT", T_NOW_MS)
    deny_all = d.grant([d.parse_consent(consent("z", PATIENT, "deny", purposes=()))], UNCLEARED, "TREAT", T_NOW_MS)
    assert not deny_all.permits(0) and deny_all.withheld(0) == d.ORDINARY and deny_all.denied_by_consent


def test_policy_is_configurable() -> None:
    strict = d.policy_from_settings({"behavioral-health": "consent"})
    assert not d.decide(("R", "PSY"), [], CLEARED, "TREAT", T_NOW_MS, strict).permit
    program = d.policy_from_settings({"part2": "clearance"})  # e.g. carebus inside one Part 2 program
    assert d.decide(("R", "SUD", "42CFRPart2"), [], CLEARED, "TREAT", T_NOW_MS, program).permit
    with pytest.raises(ValueError, match="unknown label class"):
        d.policy_from_settings({"hiv": "never"})
    with pytest.raises(ValueError, match="unknown disclosure rule"):
        d.policy_from_settings({"part2": "sometimes"})


def test_restriction_bits() -> None:
    assert d.restriction_of(["R", "PSY"]) == d.BEHAVIORAL_HEALTH
    assert d.restriction_of(["R", "SUD", "42CFRPart2", "NORDSCLCD"]) == d.PART2
    assert d.restriction_of(["R", "ETHUD"]) == d.SUBSTANCE_USE
    assert d.restriction_of(["V", "PSYTHPN"]) == d.PSYCHOTHERAPY_NOTES
    assert d.restriction_of(["N", "NORDSCLCD"]) == 0
