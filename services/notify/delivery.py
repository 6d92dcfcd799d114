"""Delivery over httpx: one asyncio task per subscription, so a slow, failing or hanging endpoint only ever
delays its own subscription. The backlog of a subscription is its pending rows in the notify store (durable);
a task holds at most one notification (``max_count`` events) in memory.

Per subscription: handshake while ``requested`` (then ``active``); event notifications in event-number order,
the next one only after the previous was acknowledged (2xx, an empty body is fine) - so one patient's
notifications arrive in the order the record committed them; heartbeats when idle for the heartbeat period.

Failures: 410 turns the subscription off (reason stated, pending events dead-lettered); 404
``notify_not_found_limit`` times in a row likewise; anything else (5xx, other 4xx, timeouts, refused
connections) is retried with exponential backoff and full jitter (``notify_retry_initial_s`` doubling up to
``notify_retry_max_s``) until ``notify_retry_window_s`` after the first failure of the oldest pending event; then
the pending events become dead letters with the reason and the status ``error`` (events keep being numbered and
stay readable with ``$events``; ``carebus subscriptions replay ID`` re-sends them with the same numbers). The
retry clock runs ``notify_retry_time_scale`` times real time (tests drive 24 hours through it).

Every request is signed: ``X-Carebus-Signature: sha256=<hex HMAC-SHA256 of the exact body, keyed with the
subscription's secret>``.

Consent at send time: just before a notification goes out, each of its events is decided again for the
subscription's recipient (:func:`screen`, services/notify/consent.py): an event the recipient may no longer
receive (a revocation since it was numbered) is withdrawn (:meth:`NotifyStore.withdraw`) and never sent. Part 2
events carry the 42 CFR 2.32 notice Provenance (services/common/part2.py).

Audit: each delivered event is one disclosure - one BALP PrivacyDisclosure AuditEvent (services/common/audit.py)
per event, to ``carebus.audit.v1``, with an id derived from the subscription and the event number, so a
delivery retried (or repeated after a crash) yields the same AuditEvent, once in the record. The AuditEvents
are written (acks=all) before the events are marked delivered. Each withheld notification (when a change is
numbered, or at send time) is a denied attempt: the store keeps it in an outbox (``notify_denied``) in the
transaction that withholds it, and :meth:`Deliverer._denials_loop` writes its AuditEvent (outcome 4, id from the
subscription and the focus version) before marking it audited. The subscriber is told nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

import httpx
import orjson

from services.common import audit, part2
from services.common.errors import BrokerUnavailable, StoreUnavailable
from services.common.kafka import OutboundRecord
from services.common.metrics import Metrics
from services.common.settings import Settings
from services.notify.bundles import NotificationType, encode, notification_bundle
from services.notify.consent import decide, recipient_of
from services.notify.store import DeniedRow, EventRow, FocusRow, NotifyStore, now_ms
from services.notify.subscriptions import SubscriptionDef
from services.notify.topics import Change

log = logging.getLogger(__name__)
_jitter = random.Random()  # noqa: S311 - notify's own retry jitter, not a secret; shared `random` left alone

SIGNATURE_HEADER = "X-Carebus-Signature"
DENIALS_POLL_S = 1.0  # how often the outbox of withheld notifications is looked at (the feed's denials)
IDLE_WAKE_S = 30.0  # an idle task looks again this often; new events and definition changes wake it at once
Outcome = Literal["delivered", "retry", "gone", "not-found"]


def signature(secret: str, body: bytes) -> str:
    """The value of X-Carebus-Signature for ``body`` (a receiver computes the same and compares in constant
    time)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def backoff_s(attempt: int, initial_s: float, max_s: float, rng: Callable[[], float] = _jitter.random) -> float:
    """Retry-clock seconds before attempt ``attempt + 1`` (attempt >= 1): exponential, full jitter."""
    ceiling: float = min(max_s, initial_s * 2.0 ** min(attempt - 1, 40))
    return ceiling * (0.5 + 0.5 * rng())


def iso_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class NotifyMetrics:
    """notify's metrics (defined with every carebus metric in services/common/metrics.py)."""

    def __init__(self, metrics: Metrics) -> None:
        self.deliveries = metrics.notify_deliveries
        self.events_numbered = metrics.notify_events
        self.pending = metrics.notify_pending
        self.retry_backlog = metrics.notify_retry_backlog
        self.dead = metrics.notify_dead
        self.oldest_age = metrics.notify_oldest_age
        self.latency = metrics.notify_latency
        self.step = metrics.notify_step


@dataclass(frozen=True)
class _Claim:
    sub: SubscriptionDef | None
    events: list[EventRow]
    screened: Screened | None
    body: bytes | None  # the event notification, rendered (None: nothing to send)


class MarkWriter:
    """The group commit of every subscription's delivery marks: each delivery cycle hands over what its
    subscriber may know from now on (told) and what was acknowledged and audited (delivered), and waits; the
    marks of all cycles waiting meanwhile are written in one transaction (:meth:`NotifyStore.record_deliveries`).
    SQLite has one writer and the change feed's numbering holds it for a batch at a time: a transaction per
    subscription per request queued every delivery behind it, twice per request."""

    def __init__(self, store: NotifyStore, step: Any) -> None:
        self._store = store
        self._step = step
        self._told: dict[str, int] = {}
        self._delivered: dict[str, list[int]] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def write(self, subscription_id: str, told: int | None, delivered: Sequence[int]) -> None:
        """Returns once the marks are committed; raises StoreUnavailable when they were not (nothing of this
        call is kept then: the caller hands them over again)."""
        if told is not None:
            self._told[subscription_id] = max(told, self._told.get(subscription_id, 0))
        if delivered:
            self._delivered.setdefault(subscription_id, []).extend(delivered)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        await waiter

    async def _flush(self) -> None:
        while self._waiters:
            told, delivered, waiters = self._told, self._delivered, self._waiters
            self._told, self._delivered, self._waiters = {}, {}, []
            started = time.perf_counter()
            try:
                await asyncio.to_thread(self._store.record_deliveries, told, delivered)
            except Exception as exc:  # handed to every waiter (on StoreUnavailable they hand their marks again)
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(exc)
                continue
            self._step.labels(step="marks").observe(time.perf_counter() - started)
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)


@dataclass
class _Audit:
    """An acknowledged notification's AuditEvents being written (:meth:`Deliverer._audit`) while the
    subscription's next notification is read, screened and rendered."""

    task: asyncio.Task[bool]
    numbers: tuple[int, ...]

    async def settle(self, unmarked: list[int]) -> None:
        """Wait for the AuditEvents; once written, the events may be marked delivered (added to ``unmarked``).
        When stopping they are not: sent again with the same numbers (and the same AuditEvent ids) at restart."""
        if await self.task:
            unmarked.extend(self.numbers)


@dataclass
class _Failure:
    attempts: int = 0
    not_found: int = 0
    first_ms: int | None = None  # handshake failures (events carry their own first failure)


class Deliverer:
    """Runs the per-subscription tasks on its own asyncio loop (a thread of the notify process)."""

    def __init__(self, settings: Settings, store: NotifyStore, metrics: NotifyMetrics, base_url: str,
                 rng: Callable[[], float] = _jitter.random,
                 audit_sink: Callable[[Sequence[OutboundRecord]], Awaitable[Any]] | None = None) -> None:
        self.settings = settings
        # writes AuditEvent records and awaits the broker's acks on this loop (RecordProducer.send_all_async):
        # a worker thread held for each ack wait let the few threads of the loop's executor serialize every
        # subscription's deliveries behind the broker's round trips
        self.audit_sink = audit_sink
        self.store = store
        self.metrics = metrics
        self.base_url = base_url.rstrip("/")
        self._rng = rng
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._wakes: dict[str, asyncio.Event] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._failing: set[str] = set()
        self._denials_wake: asyncio.Event | None = None
        self._marks = MarkWriter(store, metrics.step)
        self._verify: ssl.SSLContext | None = None
        self.running = False

    # --- control from other threads --------------------------------------------------------------------

    def wake(self, subscription_ids: Sequence[str] | None = None) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._wake_now, list(subscription_ids) if subscription_ids else None)

    def _wake_now(self, ids: list[str] | None) -> None:
        for sid, event in self._wakes.items():
            if ids is None or sid in ids:
                event.set()

    def stop(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)

    # --- the loop ---------------------------------------------------------------------------------------

    def run(self) -> None:
        asyncio.run(self._main())

    def _tls(self) -> ssl.SSLContext:
        """The TLS context every subscription's client shares (made once: a context per client costs a read of
        the CA bundle): httpx's default verification, with the client certificate when mTLS is configured."""
        if self.settings.notify_client_certfile:
            context = ssl.create_default_context()
            context.load_cert_chain(self.settings.notify_client_certfile, self.settings.notify_client_keyfile)
            return context
        return httpx.create_ssl_context(trust_env=False)

    def _client(self) -> httpx.AsyncClient:
        """A subscription's own HTTP client (its own connection pool: at most one request of a subscription is in
        flight, so one kept-alive connection). One client shared by every subscription made each request pay for
        the pool's bookkeeping over all the others' connections (httpcore's pool is scanned per request: with
        100 subscriptions in flight, 3.5 ms of CPU per request instead of 0.7 and a p99 of seconds on loopback;
        encode/httpx#3215), and a slow endpoint's connections sat in the same pool as everyone else's."""
        assert self._verify is not None
        return httpx.AsyncClient(verify=self._verify, follow_redirects=False, trust_env=False,
                                 limits=httpx.Limits(max_connections=2, max_keepalive_connections=1))

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.running = True
        generation: tuple[int, int] | None = None
        self._verify = self._tls()
        metrics_task = asyncio.create_task(self._metrics_loop())
        self._denials_wake = asyncio.Event()
        denials_task = asyncio.create_task(self._denials_loop())
        try:
            while not self._stop.is_set():
                try:
                    current = await asyncio.to_thread(self.store.generation)
                    if current != generation:
                        generation = current
                        await self._reconcile()
                except StoreUnavailable:
                    log.warning("notify store unavailable; retrying")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 0.5)
        finally:
            metrics_task.cancel()
            denials_task.cancel()
            for task in self._tasks.values():
                task.cancel()
            await asyncio.gather(*self._tasks.values(), metrics_task, denials_task, return_exceptions=True)
            self.running = False

    async def _reconcile(self) -> None:
        subs = {s.id: s for s in await asyncio.to_thread(self.store.subscriptions)}
        for sid in list(self._tasks):
            if sid not in subs:
                self._tasks.pop(sid).cancel()
                self._wakes.pop(sid, None)
                for gauge in (self.metrics.pending, self.metrics.retry_backlog, self.metrics.dead,
                              self.metrics.oldest_age):
                    with contextlib.suppress(KeyError):
                        gauge.remove(sid)
        for sid in subs:
            if sid not in self._tasks or self._tasks[sid].done():
                self._wakes[sid] = asyncio.Event()
                self._tasks[sid] = asyncio.create_task(self._worker(sid), name=f"subscription-{sid}")
        self._wake_now(None)  # a status may have changed

    async def _metrics_loop(self) -> None:
        while True:
            with contextlib.suppress(StoreUnavailable):
                now = now_ms()
                for b in await asyncio.to_thread(self.store.backlog):
                    self.metrics.pending.labels(subscription=b.subscription_id).set(b.pending)
                    self.metrics.dead.labels(subscription=b.subscription_id).set(b.dead)
                    self.metrics.retry_backlog.labels(subscription=b.subscription_id).set(
                        b.pending if b.subscription_id in self._failing else 0)
                    age = (now - b.oldest_pending_ms) / 1000 if b.oldest_pending_ms is not None else 0.0
                    self.metrics.oldest_age.labels(subscription=b.subscription_id).set(max(age, 0.0))
            await asyncio.sleep(2.0)

    def _wake_denials(self) -> None:
        if self._denials_wake is not None:
            self._denials_wake.set()

    async def _denials_loop(self) -> None:
        """Audit every withheld notification (the store's outbox of denied attempts): one BALP AuditEvent each
        (outcome 4), written (acks=all) before the denial is marked audited, so a crash or a broker outage in
        between writes the same AuditEvent (same id) again, never none."""
        if self.audit_sink is None:
            return
        while True:
            try:
                denied = await asyncio.to_thread(self.store.denials, 500)
                if denied:
                    records = [audit.audit_record(e, self.settings.topic_prefix)
                               for e in denied_audit_events(denied, self.base_url)]
                    if records:
                        await self.audit_sink(records)
                    await asyncio.to_thread(self.store.mark_audited, [d.key for d in denied])
                    if len(denied) == 500:
                        continue
            except (StoreUnavailable, BrokerUnavailable) as exc:
                log.warning("withheld notifications not audited yet; retrying", extra={"error": type(exc).__name__})
            assert self._denials_wake is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._denials_wake.wait(), DENIALS_POLL_S)
            self._denials_wake.clear()

    async def _pause(self, sid: str, seconds: float) -> None:
        """Sleep up to ``seconds`` (real time), waking early on a wake-up for this subscription."""
        event = self._wakes.get(sid)
        if event is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), max(seconds, 0.0))
        event.clear()

    def _claim(self, sid: str, after: int) -> _Claim:
        """The subscription, and when it is active its next notification: the events numbered above ``after``
        (those delivered but not yet marked are not sent twice), decided again for its recipient (``screen``)
        and, when none is withheld, rendered (full-resource payloads carry the focus's current version, decided
        again too). Reads only, in one trip to a worker thread; the told mark is written by the group commit
        before the request goes out."""
        started = time.perf_counter()
        sub = self.store.get(sid)
        if sub is None or sub.status in ("off", "error", "requested"):
            return _Claim(sub, [], None, None)
        events = list(self.store.pending(sid, sub.max_count, after))
        screened = screen(self.store, sub, events, now_ms())
        body = None
        if events and not screened.withheld:
            body = self._render(sub, "event-notification", events, screened)
        self.metrics.step.labels(step="claim").observe(time.perf_counter() - started)
        return _Claim(sub, events, screened, body)

    async def _worker(self, sid: str) -> None:
        failure = _Failure()
        last_sent = time.monotonic()
        # acknowledged and audited, not yet marked delivered: written with the next notification's told mark (one
        # group commit per cycle), before that notification goes out; a crash before re-sends them (same numbers)
        unmarked: list[int] = []
        # the AuditEvents of the last notification acknowledged, written while the next one is read, screened and
        # rendered (its events are marked only once Kafka acknowledged them, and before the next request)
        inflight: _Audit | None = None
        http = self._client()
        try:
            while True:
                try:
                    after = max([*unmarked, *(inflight.numbers if inflight else ())], default=0)
                    claim = await asyncio.to_thread(self._claim, sid, after)
                    if inflight is not None:
                        landed, inflight = inflight, None  # cleared first: an audit that failed is not awaited twice
                        await landed.settle(unmarked)
                    sub, events, screened = claim.sub, claim.events, claim.screened
                    top = max((e.number for e in events), default=0)
                    told = top if sub is not None and claim.body is not None and top > sub.told else None
                    if unmarked or told is not None:
                        await self._marks.write(sid, told, unmarked)
                        unmarked = []
                    if sub is None:
                        return
                    if sub.status in ("off", "error"):
                        self._failing.discard(sid)
                        await self._pause(sid, IDLE_WAKE_S)
                        continue
                    if sub.status == "requested":
                        outcome = await self._send(http, sub, "handshake", self._render(sub, "handshake", []))
                        if outcome == "delivered":
                            await asyncio.to_thread(self.store.set_status, sid, "active", None, ("requested",))
                            failure = _Failure()
                            last_sent = time.monotonic()
                            continue
                        failure.first_ms = failure.first_ms or now_ms()
                        await self._after_failure(sub, outcome, failure, failure.first_ms, [])
                        continue
                    assert screened is not None
                    if screened.withheld:  # a revocation since they were numbered: never sent (and audited)
                        await asyncio.to_thread(self.store.withdraw, sid, screened.withheld,
                                                screened.withheld_patients)
                        self._wake_denials()
                        continue
                    if not events:
                        self._failing.discard(sid)
                        if sub.heartbeat_s and time.monotonic() - last_sent >= sub.heartbeat_s:
                            outcome = await self._send(http, sub, "heartbeat", self._render(sub, "heartbeat", []))
                            last_sent = time.monotonic()
                            if outcome in ("gone", "not-found"):
                                await self._after_failure(sub, outcome, failure, now_ms(), [])
                            continue
                        wait = sub.heartbeat_s - (time.monotonic() - last_sent) if sub.heartbeat_s else IDLE_WAKE_S
                        await self._pause(sid, min(wait, IDLE_WAKE_S))
                        continue
                    assert claim.body is not None
                    numbers = [e.number for e in events]
                    outcome = await self._send(http, sub, "event-notification", claim.body, events)
                    last_sent = time.monotonic()
                    if outcome == "delivered":
                        failure = _Failure()
                        self._failing.discard(sid)
                        now = now_ms()
                        for e in events:
                            self.metrics.latency.observe(max(now - e.created_ms, 0) / 1000)
                        inflight = _Audit(asyncio.create_task(self._audit(sub, screened)), tuple(numbers))
                        continue
                    first = min((e.first_failure_ms for e in events if e.first_failure_ms is not None),
                                default=now_ms())
                    await asyncio.to_thread(self.store.mark_failed, sid, numbers, first)
                    await self._after_failure(sub, outcome, failure, first, events)
                except asyncio.CancelledError:
                    raise
                except StoreUnavailable:
                    log.warning("notify store unavailable; delivery paused", extra={"subscription": sid})
                    await self._pause(sid, 2.0)
                except Exception:
                    log.exception("delivery task failed; restarting it", extra={"subscription": sid})
                    await self._pause(sid, 2.0)
        finally:
            if inflight is not None:  # stopping: its events stay pending, sent again (same numbers) at restart
                inflight.task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.shield(http.aclose())

    async def _after_failure(self, sub: SubscriptionDef, outcome: Outcome, failure: _Failure, first_ms: int,
                             events: Sequence[EventRow]) -> bool:
        """Decide what a failed request means; waits the backoff when it is retried. True when retried."""
        sid = sub.id
        self._failing.add(sid)
        if outcome == "gone":
            await self._give_up(sub, "off", "the endpoint answered 410 Gone")
            return False
        if outcome == "not-found":
            failure.not_found += 1
            if failure.not_found >= self.settings.notify_not_found_limit:
                await self._give_up(sub, "off", f"the endpoint answered 404 Not Found {failure.not_found} times "
                                                "in a row")
                return False
        else:
            failure.not_found = 0
        failure.attempts += 1
        scale = self.settings.notify_retry_time_scale
        elapsed_retry_s = (now_ms() - first_ms) / 1000 * scale
        if elapsed_retry_s >= self.settings.notify_retry_window_s:
            hours = self.settings.notify_retry_window_s / 3600
            await self._give_up(sub, "error", f"not delivered within the retry window ({hours:g} h)")
            return False
        delay = backoff_s(failure.attempts, self.settings.notify_retry_initial_s, self.settings.notify_retry_max_s,
                          self._rng)
        delay = min(delay, self.settings.notify_retry_window_s - elapsed_retry_s + 0.001)
        await self._pause_retry(sid, delay / scale)
        return True

    async def _pause_retry(self, sid: str, seconds: float) -> None:
        """The backoff: not shortened by new events (they queue behind the failing one), only by stopping."""
        assert self._stop is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), max(seconds, 0.0))

    async def _give_up(self, sub: SubscriptionDef, status: str, reason: str) -> None:
        count = await asyncio.to_thread(self.store.dead_letter, sub.id, reason, status, reason)
        self.metrics.deliveries.labels(kind="event-notification", outcome="dead-lettered").inc(count)
        self._failing.discard(sub.id)
        log.warning("subscription stopped delivering", extra={"subscription": sub.id, "status": status,
                                                              "reason": reason, "dead_letters": count})

    async def _audit(self, sub: SubscriptionDef, screened: Screened) -> bool:
        """Write the AuditEvents of delivered events; a broker outage is waited out. False when stopping."""
        if self.audit_sink is None:
            return True
        records = [audit.audit_record(e, self.settings.topic_prefix)
                   for e in push_audit_events(sub, screened, self.base_url, iso_now())]
        if not records:
            return True
        assert self._stop is not None
        while not self._stop.is_set():
            try:
                started = time.perf_counter()
                await self.audit_sink(records)
                self.metrics.step.labels(step="audit").observe(time.perf_counter() - started)
                return True
            except BrokerUnavailable:
                log.warning("audit topic unavailable; delivered events stay pending until audited",
                            extra={"subscription": sub.id})
                await self._pause_retry(sub.id, 2.0)
        return False

    # --- one request -----------------------------------------------------------------------------------

    def _render(self, sub: SubscriptionDef, kind: NotificationType, events: Sequence[EventRow],
                screened: Screened | None = None) -> bytes:
        """The notification's body (a full-resource payload reads the foci: on a worker thread then)."""
        focus = focus_lookup(self.store, sub) if sub.content == "full-resource" and events else None
        if kind == "handshake":
            sub = _with_status(sub, "requested")
        notice = part2_notice(sub, self.base_url, screened, iso_now()) if screened is not None else None
        return encode(notification_bundle(sub, self.base_url, kind, events, iso_now(), focus, notice))

    async def _send(self, http: httpx.AsyncClient, sub: SubscriptionDef, kind: NotificationType, body: bytes,
                    events: Sequence[EventRow] = ()) -> Outcome:
        headers = {"Content-Type": sub.mime, SIGNATURE_HEADER: signature(sub.secret, body),
                   "X-Carebus-Subscription": sub.id}
        for header in sub.headers:
            name, _, value = header.partition(":")
            headers[name.strip()] = value.strip()
        timeout = float(sub.timeout_s or self.settings.notify_request_timeout_s)
        outcome: Outcome
        started = time.perf_counter()
        try:
            response = await http.post(sub.endpoint, content=body, headers=headers,
                                             timeout=httpx.Timeout(timeout))
            status = response.status_code
            if 200 <= status < 300:
                outcome = "delivered"
            elif status == 410:
                outcome = "gone"
            elif status == 404:
                outcome = "not-found"
            else:
                outcome = "retry"
            detail = f"http-{status}"
        except httpx.TimeoutException:
            outcome, detail = "retry", "timeout"
        except httpx.HTTPError as exc:
            outcome, detail = "retry", type(exc).__name__
        self.metrics.step.labels(step="send").observe(time.perf_counter() - started)
        self.metrics.deliveries.labels(kind=kind, outcome=outcome).inc()
        log.log(logging.DEBUG if outcome == "delivered" else logging.INFO,
                "notification sent" if outcome == "delivered" else "notification not accepted",
                extra={"subscription": sub.id, "kind": kind, "outcome": outcome, "detail": detail,
                       "events": [e.number for e in events]})
        return outcome


def _with_status(sub: SubscriptionDef, status: Any) -> SubscriptionDef:
    return replace(sub, status=status)


def _change_of(event: EventRow, row: FocusRow) -> Change:
    """The event's focus as the consent seam sees it now: its current labels and person."""
    body = orjson.loads(row.body) if row.body is not None else {}
    security = tuple(c["code"] for c in (body.get("meta") or {}).get("security") or ()
                     if isinstance(c, dict) and isinstance(c.get("code"), str))
    return Change(event.resource_type, event.resource_id, row.version_id, event.focus_time, "updated",
                  _patient_of(event, row, body), None, row.members, security, row.restriction)


def _patient_of(event: EventRow, row: FocusRow, body: Mapping[str, Any]) -> str | None:
    """The Patient an event is about (for its AuditEvent): the focus itself, its subject / patient, else the
    first Patient record of its person."""
    if event.resource_type == "Patient":
        return event.focus
    for element in ("subject", "patient", "beneficiary"):
        ref = (body.get(element) or {}).get("reference") if isinstance(body.get(element), dict) else None
        if isinstance(ref, str) and ref.startswith("Patient/"):
            return ref
    return row.members[0] if row.members else None


@dataclass(frozen=True)
class Screened:
    """Pending events decided again at send time: ``withheld`` event numbers; for each permitted one, its
    Patient and the consents permitting its Part 2 data (``part2``: only events that carry Part 2 data)."""

    withheld: tuple[int, ...]
    events: tuple[EventRow, ...] = ()
    patients: Mapping[int, str | None] = field(default_factory=dict)
    part2: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    withheld_patients: Mapping[int, str | None] = field(default_factory=dict)  # for the denied attempts' audit


def screen(store: NotifyStore, sub: SubscriptionDef, events: Sequence[EventRow], at_ms: int) -> Screened:
    """Decide each event again for the subscription's recipient, with the person's consents as notify knows
    them now (reads only)."""
    recipient = recipient_of(sub)
    withheld: list[int] = []
    kept: list[EventRow] = []
    patients: dict[int, str | None] = {}
    withheld_patients: dict[int, str | None] = {}
    part2_consents: dict[int, tuple[str, ...]] = {}
    for event in events:
        row = store.focus(event.resource_type, event.resource_id)
        if row is None:
            withheld.append(event.number)  # nothing known about it: nothing is disclosed
            continue
        change = _change_of(event, row)
        decision = decide(recipient, change, store.consents(row.members), at_ms, store.policy)
        if decision.outcome == "withhold":
            withheld.append(event.number)
            withheld_patients[event.number] = change.patient
            continue
        kept.append(event)
        patients[event.number] = change.patient
        if decision.outcome == "deliver-with-notice":
            part2_consents[event.number] = decision.consents
    return Screened(tuple(withheld), tuple(kept), patients, part2_consents, withheld_patients)


def part2_notice(sub: SubscriptionDef, base_url: str, screened: Screened, recorded: str) -> dict[str, Any] | None:
    """The Provenance with the 42 CFR 2.32 notice for the Part 2 events of one notification (the same id on
    every retry of it)."""
    numbers = [e.number for e in screened.events if e.number in screened.part2]
    if not numbers:
        return None
    consents: list[str] = []
    for n in numbers:
        consents.extend(c for c in screened.part2[n] if c not in consents)
    targets = list(dict.fromkeys(e.focus for e in screened.events if e.number in screened.part2))
    return part2.disclosure_notice(part2.notice_id(sub.id, *map(str, numbers)), recorded, targets, consents,
                                   base_url, sub.purpose, sub.organization)


def push_audit_events(sub: SubscriptionDef, screened: Screened, base_url: str,
                      recorded: str) -> list[dict[str, Any]]:
    """One BALP PrivacyDisclosure AuditEvent per delivered event (events without a Patient are not audited,
    as the record API does not audit them): the id is the same for the same subscription and event number."""
    requester = audit.Requester(sub.client, f"Subscription/{sub.id}", sub.organization, sub.purpose)
    out = []
    for event in screened.events:
        patient = screened.patients.get(event.number)
        if patient is None:
            continue
        out.append(audit.push_disclosure_event(
            audit.disclosure_id("notify", sub.id, str(event.number)), recorded, requester, base_url, patient,
            [event.focus], screened.part2.get(event.number, ())))
    return out


def denied_audit_events(denied: Sequence[DeniedRow], base_url: str) -> list[dict[str, Any]]:
    """One BALP AuditEvent (PrivacyDisclosure, outcome 4: a denied attempt) per withheld notification, naming
    the recipient, the patient and the withheld focus by reference; the id is derived from the subscription
    and the focus version, ``recorded`` is when it was withheld: the same denial always yields the same
    AuditEvent. Denials without a Patient are not audited (as delivered events without one are not)."""
    out = []
    for d in denied:
        if d.patient_ref is None:
            continue
        requester = audit.Requester(d.client, f"Subscription/{d.subscription_id}", d.organization, d.purpose)
        recorded = datetime.fromtimestamp(d.denied_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        out.append(audit.push_disclosure_event(
            audit.disclosure_id("notify-withheld", d.subscription_id, d.focus, str(d.version_id)), recorded,
            requester, base_url, d.patient_ref, [d.focus], denied=True))
    return out


def focus_lookup(store: NotifyStore, sub: SubscriptionDef) -> Callable[[EventRow], Mapping[str, Any] | None]:
    """The focus's current version for a full-resource payload, when the recipient may still see it (the
    consent seam decides again); else None, and the entry goes out id-only."""
    recipient = recipient_of(sub)

    def lookup(event: EventRow) -> Mapping[str, Any] | None:
        row = store.focus(event.resource_type, event.resource_id)
        if row is None or row.body is None:
            return None
        change = _change_of(event, row)
        # decided again at send time: a revocation since the event was queued withholds the content
        if decide(recipient, change, store.consents(row.members), policy=store.policy).outcome == "withhold":
            return None
        resource: Mapping[str, Any] = orjson.loads(row.body)
        return resource

    return lookup
