"""Subscription management at the record API's FHIR base (Subscriptions R5 Backport IG 1.1.0 on R4):
``POST /Subscription``, read, search, ``PUT`` (status off / active), ``DELETE``, ``$status`` and ``$events``.

Definitions live in the notify store (services/notify/store.py), which the notify process reads; ``$status`` and
``$events`` answer from the stored state. A token needs a Subscription write scope (``system/`` ``user/`` or
``patient/Subscription.write``, SMART v2 ``.c``) to create one, and a Subscription read or write scope to manage
its own; a subscription belongs to the token's client (the grant's ``label``, else the token itself), and no
client sees another's. It acts for the recipient the token names (the grant's ``organization``, ``care_teams``
and ``purpose_of_use``), served back read-only in the ``subscription-recipient`` extension: notify decides every
notification for that recipient with the disclosure engine, as the record API decides the token's reads;
``$events`` decides each event again now, and an answer that discloses foci is audited (BALP PatientQuery, one
AuditEvent per patient, before it leaves). Errors are OperationOutcomes naming the element (``issue.expression``).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from services.common import audit
from services.common.disclosure import policy_from_settings
from services.notify.bundles import notification_bundle
from services.notify.delivery import Screened, focus_lookup, iso_now, part2_notice, screen
from services.notify.store import EventRow, NotifyStore, notify_store_dsn, open_notify_store
from services.notify.subscriptions import (
    InvalidSubscription,
    SubscriptionDef,
    parse_subscription,
    render_subscription,
    status_update,
)
from services.record.access import Access, token_digest
from services.record.disclosures import denied_attempt, requester
from services.record.errors import Forbidden, ResourceNotFound

FHIR_JSON = "application/fhir+json"
_EVENTS_LIMIT = 1000


def _fhir(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=FHIR_JSON, headers=headers)


def invalid(exc: InvalidSubscription, status: int = 400) -> Response:
    return _fhir({"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "invalid", "diagnostics": f"{exc.element}: {exc.message}",
         "expression": [exc.element]}]}, status)


def _client_of(request: Request, access: Access) -> str:
    if access.label:
        return access.label
    token = (request.headers.get("authorization") or "").partition(" ")[2].strip()
    return f"token-{token_digest(token)[:16]}"


@dataclass(frozen=True)
class EventsAnswer:
    """What one ``$events`` answer serves: ``screened`` - the events it discloses (with their patients and Part 2
    consents) and, as ``withheld``, the numbers it reports without focus (also its denied attempts' audit)."""

    screened: Screened

    @property
    def withheld(self) -> tuple[int, ...]:
        return self.screened.withheld


def events_answer(sub: SubscriptionDef, rows: Sequence[EventRow], screened: Screened) -> EventsAnswer:
    """The events of an ``$events`` answer, from the rows in its range (withheld ones included) decided now
    (``screened``), so that it answers for every number the subscriber may hold and for none it may not:

    ======================================================  ====================================================
    event                                                   in the answer
    ======================================================  ====================================================
    the recipient may receive it now                        served: number, timestamp, focus (as ``content``)
    withheld after its number went out (state withheld:     its number only - no timestamp, focus or entry - so
    a revocation after a failed attempt), or one it may     the numbers stay gap-free; its content is withheld
    no longer receive whose number it may hold (delivered   as for any other withheld event (a denied attempt,
    before, or at or below ``told``)                        audited)
    one it may no longer receive whose number it has        the answer stops before it: the delivery loop
    never seen (pending, above ``told``, never attempted)   withdraws it and the later events move down a
                                                            number (services/notify/store.py ``withdraw``);
                                                            serving a later one now would fix their numbers
    ======================================================  ====================================================
    """
    by_number = {row.number: row for row in rows}
    denied = set(screened.withheld)
    cut = min((n for n in denied if by_number[n].state == "pending" and n > sub.told and by_number[n].attempts == 0),
              default=None)

    def kept(number: int) -> bool:
        return cut is None or number < cut

    held = {row.number for row in rows if row.state == "withheld"}
    events = tuple(e for e in screened.events if kept(e.number) and e.number not in held)
    served = {e.number for e in events}
    withheld = tuple(sorted(n for n in denied | held if kept(n)))
    patients = {**screened.patients, **screened.withheld_patients}
    return EventsAnswer(Screened(
        withheld, events, {n: p for n, p in screened.patients.items() if n in served},
        {n: c for n, c in screened.part2.items() if n in served}, {n: patients.get(n) for n in withheld}))


def events_audit_withheld(screened: Screened, rows: Sequence[EventRow]) -> list[tuple[str, list[str]]]:
    """Per patient whose events the disclosure policy left out of a ``$events`` answer, the withheld foci."""
    focus_of = {row.number: row.focus for row in rows}
    withheld: dict[str, list[str]] = {}
    for number in screened.withheld:
        patient = screened.withheld_patients.get(number)
        if patient is None or number not in focus_of:  # nothing known about it: no patient to account to
            continue
        foci = withheld.setdefault(patient, [])
        if focus_of[number] not in foci:
            foci.append(focus_of[number])
    return sorted(withheld.items())


def events_audit(access: Access, screened: Screened, rows: Sequence[EventRow], base_url: str,
                 query: str) -> list[dict[str, Any]]:
    """The AuditEvents of one ``$events`` answer (BALP PatientQuery, ``operation``): per patient whose events it
    discloses, one naming the foci and the consents permitting their Part 2 data; per patient whose events the
    disclosure policy left out, one denied attempt (outcome 4) naming the withheld foci by reference. The caller
    is told nothing of the second kind."""
    by_patient: dict[str, list[str]] = {}
    consents: dict[str, list[str]] = {}
    for event in screened.events:
        patient = screened.patients.get(event.number)
        if patient is None:
            continue
        foci = by_patient.setdefault(patient, [])
        if event.focus not in foci:
            foci.append(event.focus)
        cited = consents.setdefault(patient, [])
        cited.extend(c for c in screened.part2.get(event.number, ()) if c not in cited)
    withheld = events_audit_withheld(screened, rows)
    recorded = iso_now()
    who = requester(access)
    return [
        *(audit.api_access_event(str(uuid.uuid4()), recorded, "operation", who, base_url, patient, foci,
                                 consents[patient], query)
          for patient, foci in sorted(by_patient.items())),
        *(audit.api_access_event(str(uuid.uuid4()), recorded, "operation", who, base_url, patient, foci,
                                 query=query, denied=True)
          for patient, foci in withheld),
    ]


def _may(access: Access, write: bool) -> bool:
    return any(s.resource_type in ("*", "Subscription") and (s.write if write else (s.read or s.write))
               for s in access.scopes)


def subscription_router(api: Any) -> APIRouter:
    """The routes, for ``create_app`` to include before its generic ``/{type}/{id}`` routes. ``api`` is the
    RecordApi (settings, tokens, base_url)."""
    router = APIRouter()
    settings = api.settings
    lock = threading.Lock()
    opened: list[NotifyStore] = []

    def store() -> NotifyStore:
        with lock:
            if not opened:
                opened.append(open_notify_store(notify_store_dsn(settings), pool_size=4, policy=policy_from_settings(
                    settings.disclosure_policy, settings.disclosure_treatment_purposes)))
            return opened[0]

    def caller(request: Request, write: bool = False) -> tuple[Access, str]:
        access: Access = api.authenticate(request)
        if not _may(access, write):
            verb = "write (create)" if write else "read or write"
            raise Forbidden(f"the token has no Subscription {verb} scope")
        return access, _client_of(request, access)

    def owned(subscription_id: str, client: str) -> SubscriptionDef:
        sub = store().get(subscription_id)
        if sub is None or sub.client != client:  # another client's subscription does not exist for you
            raise ResourceNotFound(f"Subscription/{subscription_id} is not known")
        return sub

    async def body_of(request: Request) -> Any:
        try:
            return orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            raise InvalidSubscription("Subscription", "the body is not JSON") from exc

    @router.post("/Subscription")
    async def create(request: Request) -> Response:
        access, client = caller(request, write=True)
        try:
            resource = await body_of(request)
            sub = parse_subscription(resource, allowlist=settings.notify_endpoint_allowlist, client=client,
                                     clearances=access.clearances,
                                     patient=f"Patient/{access.patient}" if access.patient else None,
                                     organization=access.recipient.organization,
                                     care_teams=access.recipient.care_teams, purpose=access.purpose)
        except InvalidSubscription as exc:
            return invalid(exc, 422 if exc.element == "Subscription.channel.endpoint" else 400)
        store().create(sub)
        chose_secret = isinstance(resource, dict) and any(
            isinstance(e, dict) and e.get("url", "").endswith("subscription-signing-secret")
            for e in resource.get("extension") or ())
        body = render_subscription(sub, include_secret=not chose_secret)
        location = f"{api.base_url(request)}/Subscription/{sub.id}"
        return _fhir(body, 201, {"Location": location, "ETag": 'W/"1"'})

    @router.get("/Subscription")
    def search(request: Request) -> Response:
        _, client = caller(request)
        params = request.query_params
        unknown = set(params) - {"status", "url", "criteria", "_count", "_format"}
        if unknown:
            return invalid(InvalidSubscription("Subscription", f"unsupported search parameter {sorted(unknown)[0]}"))
        subs = store().subscriptions(client)
        if "status" in params:
            subs = [s for s in subs if s.status in params["status"].split(",")]
        topic = params.get("url") or params.get("criteria")
        if topic:
            subs = [s for s in subs if s.topic == topic]
        base = api.base_url(request)
        return _fhir({
            "resourceType": "Bundle", "id": str(uuid.uuid4()), "type": "searchset", "total": len(subs),
            "link": [{"relation": "self", "url": str(request.url)}],
            "entry": [{"fullUrl": f"{base}/Subscription/{s.id}", "resource": render_subscription(s),
                       "search": {"mode": "match"}} for s in subs],
        })

    @router.get("/Subscription/{subscription_id}")
    def read(subscription_id: str, request: Request) -> Response:
        _, client = caller(request)
        return _fhir(render_subscription(owned(subscription_id, client)))

    @router.put("/Subscription/{subscription_id}")
    async def update(subscription_id: str, request: Request) -> Response:
        _, client = caller(request, write=True)
        current = owned(subscription_id, client)
        try:
            changed = status_update(current, await body_of(request))
        except InvalidSubscription as exc:
            return invalid(exc)
        store().update_definition(changed)
        return _fhir(render_subscription(changed))

    @router.delete("/Subscription/{subscription_id}")
    def delete(subscription_id: str, request: Request) -> Response:
        _, client = caller(request, write=True)
        owned(subscription_id, client)
        store().delete(subscription_id)
        return Response(status_code=204)

    def _status(subscription_id: str, request: Request) -> Response:
        _, client = caller(request)
        sub = owned(subscription_id, client)
        bundle = notification_bundle(sub, api.base_url(request), "query-status", [], iso_now())
        return _fhir(bundle)

    @router.get("/Subscription/{subscription_id}/$status")
    def status_get(subscription_id: str, request: Request) -> Response:
        return _status(subscription_id, request)

    @router.post("/Subscription/{subscription_id}/$status")
    def status_post(subscription_id: str, request: Request) -> Response:
        return _status(subscription_id, request)

    @router.get("/Subscription/{subscription_id}/$events")
    def events(subscription_id: str, request: Request) -> Response:
        access, client = caller(request)
        sub = owned(subscription_id, client)
        params = request.query_params
        bounds: list[int | None] = []
        for name in ("eventsSinceNumber", "eventsUntilNumber"):
            value = params.get(name)
            if value is not None and not value.isdigit():
                return invalid(InvalidSubscription(name, "must be a non-negative integer"))
            bounds.append(int(value) if value is not None else None)
        content = params.get("content")
        if content is not None:
            if content not in ("empty", "id-only", "full-resource"):
                return invalid(InvalidSubscription("content", "must be empty, id-only or full-resource"))
            sub = replace(sub, content=content)  # type: ignore[arg-type]
        rows = store().events(sub.id, bounds[0], bounds[1], _EVENTS_LIMIT, include_withheld=True)
        # decided now, as a delivery would be: what the recipient may no longer receive is not disclosed
        answer = events_answer(sub, rows, screen(store(), sub, rows, int(time.time() * 1000)))
        screened = answer.screened
        focus = focus_lookup(store(), sub) if sub.content == "full-resource" else None
        base = api.base_url(request)
        served = [e.number for e in screened.events] + list(answer.withheld)
        # shown from now on: never renumbered, and covered by events-since-subscription-start
        store().mark_served(sub.id, served)
        sub = replace(sub, told=max([sub.told, *served]))
        bundle = notification_bundle(sub, base, "query-event", screened.events, iso_now(), focus,
                                     part2_notice(sub, base, screened, iso_now()), answer.withheld)
        # an answer that discloses foci is audited like any API access, before it leaves; what the policy left
        # out is audited as denied attempts whatever the content
        query = request.url.query
        if sub.content != "empty":
            api.audit(events_audit(access, replace(screened, withheld=()), rows, base, query))
        # built and written off the request path, as every answer's denied attempts (services/record/denials.py)
        api.deny_later(denied_attempt(access, "operation", base, int(time.time() * 1000),
                                      events_audit_withheld(screened, rows), query))
        return _fhir(bundle)

    return router

