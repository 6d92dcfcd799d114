"""Which subscriptions a change notifies (pure): topic triggers, the subscription's filters, its status and end,
then the consent seam. The notify store calls :func:`route` inside the transaction that numbers the events."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from services.common.disclosure import DEFAULT_POLICY, ConsentDirective, Policy
from services.notify.consent import decide, recipient_of
from services.notify.subscriptions import SubscriptionDef
from services.notify.topics import Change, matches, triggered
from services.record.fhirdates import instant_ms

COUNTING = frozenset({"requested", "active", "error"})  # off: no events; error: counted, kept for $events


@dataclass(frozen=True)
class Routed:
    subscription_id: str
    topic: str
    notice: str | None


def route(change: Change, previous: str | None, subscriptions: Iterable[SubscriptionDef],
          now_ms: int, consents: Sequence[ConsentDirective] = (), policy: Policy = DEFAULT_POLICY) -> list[Routed]:
    """The subscriptions this change notifies."""
    return route_with_withheld(change, previous, subscriptions, now_ms, consents, policy)[0]


def route_with_withheld(change: Change, previous: str | None, subscriptions: Iterable[SubscriptionDef],
                        now_ms: int,
                        consents: Sequence[ConsentDirective] | Callable[[], Sequence[ConsentDirective]] = (),
                        policy: Policy = DEFAULT_POLICY) -> tuple[list[Routed], list[Routed]]:
    """(notified, withheld): the subscriptions this change notifies, and those it would notify but for the
    consent seam (denied attempts: audited, never told to the subscriber). ``consents`` may be a function: it is
    then called once, only when some subscription's topic and filters match (most changes trigger nothing)."""
    topics = {t.canonical: t for t in triggered(change, previous)}
    if not topics:
        return [], []
    known: Sequence[ConsentDirective] | None = None if callable(consents) else consents
    out: list[Routed] = []
    withheld: list[Routed] = []
    for sub in subscriptions:
        topic = topics.get(sub.topic)
        if topic is None or sub.status not in COUNTING:
            continue
        if sub.end is not None and instant_ms(sub.end) <= now_ms:
            continue
        if not matches(topic, sub.filters, change):
            continue
        if known is None:
            assert callable(consents)
            known = consents()
        decision = decide(recipient_of(sub), change, known, now_ms, policy)
        if decision.outcome == "withhold":
            withheld.append(Routed(sub.id, sub.topic, None))
            continue
        out.append(Routed(sub.id, sub.topic, decision.notice))
    return out, withheld
