"""The consent seam of notify (pure): one function decides, per recipient and resource version, whether a
notification is delivered, withheld, or delivered with a notice.

:func:`decide` is the only place notify asks, and it asks the disclosure engine (services/common/disclosure.py)
that the record API uses: the resource's labels, the patient's consents (the Consent resources notify has seen
on the change feed for that person), the recipient (:func:`recipient_of`: the subscription's client, its
clearances, for a patient-bound token its patient, and the organization, care teams and purpose of use of the
token that created it) and the time. Part 2 data that is disclosed carries the 42 CFR 2.32 notice
(services/common/part2.py, Statement 1) and the permitting consents.

It is asked twice: when a change is numbered (services/notify/routing.py) and again just before each
notification is sent (services/notify/delivery.py), so a revocation stops what is queued but not yet sent.

Event numbers and withheld events (the rule: the fact that a withheld record exists is itself sensitive):

====================================================  =========================================================
case                                                  event numbers / ``events-since-subscription-start``
====================================================  =========================================================
withheld when the change is numbered                  no number: the counter does not move, so the numbers a
                                                      subscriber sees are gap-free and the same whether or not
                                                      withheld records exist; any gap it sees is a real loss,
                                                      recoverable with ``$events``
withheld at send time (a revocation since), its      withdrawn (:meth:`NotifyStore.withdraw`): the event is
number above every number the subscriber was told     dropped and the later unsent events move down one number
(never in a notification, nor served by ``$events``)  - nobody had seen those numbers
withheld at send time, but its number was already     kept out of every later notification (state
told (a delivery attempt that failed, ``$events``)    ``withheld``): the recipient may hold that number already,
                                                      so it is never given to another event; ``$events``
                                                      reports the number alone (no timestamp, focus or entry)
====================================================  =========================================================

``events-since-subscription-start`` (notifications, ``$status``, ``$events``) is the highest number the
subscriber has been told (``SubscriptionDef.told``: raised before a notification goes out and when ``$events``
serves events), never the numbering counter itself, which counts queued events a withdrawal may still take back.
So it never goes down, and ``$events`` answers for every number up to it: with the event, or - withheld after
its number went out - with the number alone (services/record/subscription_api.py ``events_answer``).

Every withheld notification is a denied disclosure attempt: one BALP AuditEvent (outcome 4, no content), written
to an outbox in the same store transaction that withholds it and published by the delivery loop
(services/notify/delivery.py), with an id derived from the subscription and the focus version, so a replayed
change or a restart audits it once. The subscriber is told nothing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from services.common import disclosure, part2
from services.common.disclosure import DEFAULT_POLICY, ConsentDirective, Policy
from services.notify.subscriptions import SubscriptionDef
from services.notify.topics import Change

Outcome = Literal["deliver", "withhold", "deliver-with-notice"]

PART2_NOTICE = part2.STATEMENT_1


@dataclass(frozen=True)
class Recipient:
    """Who a subscription delivers to: the token's client, its clearances (label-class bits,
    services/common/disclosure.py) and, for a patient-bound token, the Patient it is bound to; the organization
    it acts for when known (consents name recipients by organization) and its purpose of use."""

    client: str
    clearances: int
    patient: str | None = None  # "Patient/<id>"
    organization: str | None = None
    purpose: str = "TREAT"
    care_teams: tuple[str, ...] = ()


def recipient_of(sub: SubscriptionDef) -> Recipient:
    """The recipient a subscription delivers to, as the token that created it named it."""
    return Recipient(sub.client, sub.clearances, sub.patient, sub.organization, sub.purpose, sub.care_teams)


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    notice: str | None = None
    consents: tuple[str, ...] = ()  # the consents that permit the Part 2 data (cited in the notice and audit)


DELIVER = Decision("deliver")
WITHHOLD = Decision("withhold")


def decide(
    recipient: Recipient,
    change: Change,
    consents: Sequence[ConsentDirective] = (),
    at_ms: int | None = None,
    policy: Policy = DEFAULT_POLICY,
) -> Decision:
    """Deliver, withhold or deliver with the Part 2 notice, as the disclosure engine decides now."""
    if recipient.patient is not None and recipient.patient not in (change.members or (change.patient,)):
        return WITHHOLD
    engine_recipient = disclosure.Recipient(
        organization=recipient.organization,
        care_teams=recipient.care_teams,
        clearances=recipient.clearances,
        patient_access=recipient.patient is not None,
        label=recipient.client,
    )
    when = at_ms if at_ms is not None else _now_ms()
    decision = disclosure.decide(_labels(change), consents, engine_recipient, recipient.purpose, when, policy)
    if not decision.permit:
        return WITHHOLD
    if disclosure.PART2_NOTICE in decision.obligations:
        cited = f" Disclosed under: {', '.join(decision.consents)}." if decision.consents else ""
        return Decision("deliver-with-notice", PART2_NOTICE + cited, decision.consents)
    return DELIVER


_CLASS_CODE = {disclosure.BEHAVIORAL_HEALTH: "PSY", disclosure.PART2: "42CFRPart2",
               disclosure.PSYCHOTHERAPY_NOTES: "PSYTHPN", disclosure.SUBSTANCE_USE: "ETHUD"}


def _labels(change: Change) -> tuple[str, ...]:
    """The change's labels; a change that carries only its restriction bits stands for one code per class."""
    codes = tuple(change.security)
    if disclosure.restriction_of(codes) == change.restriction or not change.restriction:
        return codes
    return (*codes, *(_CLASS_CODE[bit] for bit in disclosure.classes_of(change.restriction)))


def _now_ms() -> int:
    return int(time.time() * 1000)
