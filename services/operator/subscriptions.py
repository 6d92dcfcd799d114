"""``carebus subscriptions``: what the operator sees of the notify store (ids, topics, status, counts; never
endpoints' headers, secrets or PHI), and the replay of a subscription's dead letters."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.settings import Settings
from services.notify.store import NotifyStore, notify_store_dsn, open_notify_store
from services.notify.subscriptions import SubscriptionDef


@dataclass(frozen=True)
class SubscriptionSummary:
    sub: SubscriptionDef
    pending: int
    dead: int
    oldest_pending_ms: int | None


def open_store(settings: Settings) -> NotifyStore:
    return open_notify_store(notify_store_dsn(settings), pool_size=2)


def summaries(store: NotifyStore) -> list[SubscriptionSummary]:
    backlog = {b.subscription_id: b for b in store.backlog()}
    out = []
    for sub in store.subscriptions():
        b = backlog.get(sub.id)
        out.append(SubscriptionSummary(sub, b.pending if b else 0, b.dead if b else 0,
                                       b.oldest_pending_ms if b else None))
    return out
