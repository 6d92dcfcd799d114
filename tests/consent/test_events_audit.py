"""A ``$events`` answer is audited: one PatientQuery per patient whose events it discloses, and one denied attempt
(outcome 4) per patient whose events the disclosure policy left out of it, naming the withheld foci by reference
only (services/record/subscription_api.py ``events_audit``)."""

from __future__ import annotations

from fhir.resources.R4B.auditevent import AuditEvent

from services.common import audit
from services.common.disclosure import Recipient
from services.notify.delivery import Screened
from services.notify.store import EventRow
from services.record.access import Access
from services.record.subscription_api import events_audit

BASE = "https://record.example.org/fhir"
ACCESS = Access(scopes=(), clearances=0, patient=None, label="partner clinic",
                recipient=Recipient(organization="http://hl7.org/fhir/sid/us-npi|1999999984"), client="a1b2c3")


def _row(number: int, resource_id: str) -> EventRow:
    return EventRow("sub-1", number, "Condition", resource_id, 1, "created", "2026-05-01T10:00:00Z", "delivered", 1,
                    None, None, None, 0, 0)


ROWS = [_row(1, "c1"), _row(2, "c2"), _row(3, "c3"), _row(4, "c4")]


def test_disclosed_and_withheld_events_are_audited_apart() -> None:
    screened = Screened(withheld=(2, 4), events=(ROWS[0], ROWS[2]),
                        patients={1: "Patient/p1", 3: "Patient/p2"}, part2={3: ("Consent/k1",)},
                        withheld_patients={2: "Patient/p1", 4: "Patient/p1"})
    events = events_audit(ACCESS, screened, ROWS, BASE, "eventsSinceNumber=1")
    for event in events:
        AuditEvent.model_validate(event)
    disclosed = [e for e in events if e["outcome"] == "0"]
    denied = [e for e in events if e["outcome"] == "4"]
    assert [e["entity"][0]["what"]["reference"] for e in disclosed] == ["Patient/p1", "Patient/p2"]
    assert len(denied) == 1
    assert denied[0]["outcomeDesc"] == audit.DENIED_DESCRIPTION
    assert denied[0]["subtype"][0]["code"] == "operation"
    assert denied[0]["entity"][0]["what"]["reference"] == "Patient/p1"
    named = [x["what"]["reference"] for x in denied[0]["entity"][1:] if "what" in x]
    assert "Condition/c2" in named and "Condition/c4" in named
    assert "Condition/c1" not in named and "Consent/k1" not in named  # what was disclosed is not a denial


def test_an_answer_that_withheld_nothing_has_no_denied_attempt() -> None:
    screened = Screened(withheld=(), events=(ROWS[0],), patients={1: "Patient/p1"})
    events = events_audit(ACCESS, screened, ROWS[:1], BASE, "")
    assert [e["outcome"] for e in events] == ["0"]


def test_an_event_with_nothing_known_about_it_is_not_accounted_to_a_patient() -> None:
    screened = Screened(withheld=(1,), events=())  # its focus is gone from notify's store: no patient to name
    assert events_audit(ACCESS, screened, ROWS[:1], BASE, "") == []


def test_events_answer_reports_held_numbers_alone_and_stops_before_a_number_never_seen() -> None:
    from dataclasses import replace

    from services.notify.subscriptions import SubscriptionDef
    from services.record.subscription_api import events_answer
    from tests.consent.test_validation import _subscription

    sub: SubscriptionDef = replace(_subscription(), told=3)
    rows = [replace(ROWS[0], state="delivered"),  # 1: delivered, revoked since
            replace(ROWS[1], state="withheld"),  # 2: withheld after a failed attempt (decided "permit" now)
            replace(ROWS[2], state="pending", attempts=1),  # 3: on the wire, permitted
            replace(ROWS[3], state="pending", attempts=0),  # 4: never told, never attempted, withheld now
            replace(_row(5, "c5"), state="pending", attempts=0)]  # 5: permitted, but after 4
    screened = Screened(withheld=(1, 4), events=(rows[1], rows[2], rows[4]),
                        patients={2: "Patient/p1", 3: "Patient/p1", 5: "Patient/p1"},
                        withheld_patients={1: "Patient/p1", 4: "Patient/p1"})
    answer = events_answer(sub, rows, screened)
    assert [e.number for e in answer.screened.events] == [3]  # 5 waits: 4 is withdrawn and 5 becomes 4
    assert answer.withheld == (1, 2)
    assert answer.screened.withheld_patients == {1: "Patient/p1", 2: "Patient/p1"}
    # once 4 is no longer in the way, everything after it is answered
    assert [e.number for e in events_answer(sub, [*rows[:3], rows[4]], replace(
        screened, withheld=(1,), withheld_patients={1: "Patient/p1"})).screened.events] == [3, 5]
