"""Notification Bundles (pure): Bundle type ``history`` whose first entry is the R4 status ``Parameters``
(profile backport-subscription-status-r4), then, per event, the focus as the payload content asks
(``empty``: nothing; ``id-only``: an entry with fullUrl and request, no resource; ``full-resource``: the focus's
current version, when the recipient may still see it - else as id-only); when any event discloses Part 2 data,
one more entry: the Provenance with the 42 CFR 2.32 notice and the permitting consents
(services/common/part2.py), and NORDSCLCD on the Bundle's meta.security.

The same shape answers ``$status`` (type query-status, no events) and ``$events`` (type query-event). An
``$events`` answer also reports the numbers the subscriber may hold whose content it may no longer receive
(``withheld``: a revocation after the number went out): a ``notification-event`` with its ``event-number``
only - no timestamp, no focus, no entry - so the numbers it answers for stay gap-free and say nothing of what
was withheld.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import orjson

from services.common.fhir.codesystems import SUBSCRIPTION_ERROR, V3_ACT_CODE
from services.notify.store import EventRow
from services.notify.subscriptions import SubscriptionDef

NotificationType = Literal["handshake", "heartbeat", "event-notification", "query-status", "query-event"]
STATUS_PROFILE = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4"
NOTIFICATION_PROFILE = (
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-notification-r4")
NORDSCLCD = {"system": V3_ACT_CODE, "code": "NORDSCLCD",
             "display": "no redisclosure without consent directive"}

FocusLookup = Callable[[EventRow], Mapping[str, Any] | None]  # the current version, if the recipient may see it


def told(sub: SubscriptionDef, events: Sequence[EventRow] = (), withheld: Sequence[int] = ()) -> int:
    """``events-since-subscription-start`` of a notification: the highest number the subscriber has been shown
    (``SubscriptionDef.told``), or the highest of these events. Never the numbering counter itself: events
    numbered but not yet sent may still be withdrawn (a revocation), and the counter with them; what the
    subscriber is told never goes down, and every number up to it is one it received or can fetch."""
    return max(sub.told, max((e.number for e in events), default=0), max(withheld, default=0))


def status_parameters(sub: SubscriptionDef, base_url: str, kind: NotificationType,
                      events: Sequence[EventRow], withheld: Sequence[int] = ()) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": "subscription", "valueReference": {"reference": f"{base_url}/Subscription/{sub.id}"}},
        {"name": "topic", "valueCanonical": sub.topic},
        {"name": "status", "valueCode": sub.status},
        {"name": "type", "valueCode": kind},
        {"name": "events-since-subscription-start", "valueString": str(told(sub, events, withheld))},
    ]
    reported: list[tuple[int, list[dict[str, Any]]]] = []
    for event in events:
        parts: list[dict[str, Any]] = [
            {"name": "event-number", "valueString": str(event.number)},
            {"name": "timestamp", "valueInstant": event.focus_time},
        ]
        if sub.content != "empty":
            parts.append({"name": "focus", "valueReference": {"reference": f"{base_url}/{event.focus}"}})
        reported.append((event.number, parts))
    reported += [(number, [{"name": "event-number", "valueString": str(number)}]) for number in withheld]
    for _, parts in sorted(reported, key=lambda item: item[0]):
        params.append({"name": "notification-event", "part": parts})
    if sub.status == "error" and sub.error:
        params.append({"name": "error", "valueCodeableConcept": {
            "coding": [{"system": SUBSCRIPTION_ERROR, "code": "no-response"}], "text": sub.error}})
    return {"resourceType": "Parameters", "id": str(uuid.uuid4()), "meta": {"profile": [STATUS_PROFILE]},
            "parameter": params}


_METHOD = {"created": ("POST", "201"), "updated": ("PUT", "200"), "deleted": ("DELETE", "204")}


def notification_bundle(sub: SubscriptionDef, base_url: str, kind: NotificationType, events: Sequence[EventRow],
                        now_iso: str, focus: FocusLookup | None = None,
                        part2_notice: Mapping[str, Any] | None = None, withheld: Sequence[int] = ()
                        ) -> dict[str, Any]:
    """``part2_notice``: the Provenance of the Part 2 disclosure these events make (None: none); ``withheld``:
    numbers reported without focus or entry (``$events`` only)."""
    status = status_parameters(sub, base_url, kind, events, withheld)
    entries: list[dict[str, Any]] = [{
        "fullUrl": f"urn:uuid:{status['id']}",
        "resource": status,
        "request": {"method": "GET", "url": f"{base_url}/Subscription/{sub.id}/$status"},
        "response": {"status": "200"},
    }]
    if sub.content != "empty":
        seen: set[str] = set()
        for event in events:
            if event.focus in seen:
                continue
            seen.add(event.focus)
            method, code = _METHOD.get(event.kind, ("PUT", "200"))
            entry: dict[str, Any] = {
                "fullUrl": f"{base_url}/{event.focus}",
                "request": {"method": method, "url": event.focus},
                "response": {"status": code},
            }
            if sub.content == "full-resource" and event.kind != "deleted" and focus is not None:
                resource = focus(event)
                if resource is not None:
                    entry["resource"] = resource
            entries.append(entry)
    if part2_notice is not None:
        entries.append({
            "fullUrl": f"urn:uuid:{part2_notice['id']}",
            "resource": part2_notice,
            "request": {"method": "POST", "url": "Provenance"},
            "response": {"status": "201"},
        })
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"profile": [NOTIFICATION_PROFILE]},
        "type": "history",
        "timestamp": now_iso,
        "entry": entries,
    }
    if part2_notice is not None:
        bundle["meta"]["security"] = [NORDSCLCD]
    return bundle


def encode(bundle: Mapping[str, Any]) -> bytes:
    return orjson.dumps(bundle)
