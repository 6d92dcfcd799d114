"""Delivery as subscribers live it, with the real notify process and real local receivers: an endpoint down,
failing, slow past its timeout, answering 200 with an empty body, then back - every event delivered (2xx)
exactly once per event number, in the order the record committed them; gaps recoverable with $events; one bad
endpoint never holds up another; the retry window ends in status error and dead letters that the operator
replays with the same numbers; 410 turns a subscription off; kill -9 of notify loses nothing and numbers
nothing anew. The retry clock runs 3600x (tests/notify/conftest.py): 24 hours are 24 real seconds."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import httpx

from services.common.settings import REPO_ROOT
from tests.notify.conftest import NotifyStack, secret_of
from tests.notify.receiver import Receiver
from tests.record.fhir_data import CLINIC, Event, patient, patient_id, phq9_total, unique


def _person(stack: NotifyStack) -> tuple[str, str]:
    mrn = unique("dl-")
    stack.record.publish(Event(CLINIC, mrn, [patient(CLINIC, mrn)]))
    return mrn, patient_id(CLINIC, mrn)


def _assessments(stack: NotifyStack, mrn: str, pid: str, scores: range | list[int], tag: str = "") -> list[str]:
    """One PHQ-9 per event (separate bundles, in order); returns the Observation ids in commit order."""
    ids = []
    for i in scores:
        obs = phq9_total(CLINIC, pid, f"{mrn}-phq{tag}-{i}", f"2024-05-{(i % 27) + 1:02d}", i % 28)
        stack.record.publish(Event(CLINIC, mrn, [obs]))
        ids.append(obs["id"])
    return ids


def _subscribe(stack: NotifyStack, receiver: Receiver, pid: str, **kwargs: Any) -> str:
    created = stack.subscribe("therapy", "assessment-completed", receiver.url,
                              filters=(f"patient=Patient/{pid}",), **kwargs)
    receiver.secrets[created["id"]] = secret_of(created)
    return str(created["id"])


def _focus_ids(receiver: Receiver, sid: str) -> dict[int, str]:
    """event number -> focus id, over every request (duplicates must agree)."""
    out: dict[int, str] = {}
    for r in receiver.of(sid):
        for n, focus in zip(r.numbers, r.foci, strict=True):
            assert out.setdefault(n, focus.rsplit("/", 1)[1]) == focus.rsplit("/", 1)[1]
    return out


def _events(stack: NotifyStack, sid: str, **params: Any) -> list[tuple[int, str]]:
    bundle = stack.fhir("GET", f"/Subscription/{sid}/$events", "therapy", params=params)
    status = bundle["entry"][0]["resource"]["parameter"]
    out = []
    for p in status:
        if p["name"] == "notification-event":
            parts = {part["name"]: part for part in p["part"]}
            out.append((int(parts["event-number"]["valueString"]),
                        parts["focus"]["valueReference"]["reference"].rsplit("/", 1)[1]))
    return out


def test_down_failing_slow_empty_then_back_delivers_each_event_once_in_order(stack: NotifyStack) -> None:
    receiver = Receiver(slow_s=2.5)
    try:
        mrn, pid = _person(stack)
        sid = _subscribe(stack, receiver, pid, timeout_s=1)
        stack.wait_status(sid, "active")
        ids = _assessments(stack, mrn, pid, range(1, 3))  # 1, 2 delivered normally
        assert receiver.wait_for(lambda: receiver.acknowledged_numbers(sid) == [1, 2])
        receiver.stop()  # down: connection refused (about 3 hours on the retry clock)
        ids += _assessments(stack, mrn, pid, range(3, 6))
        time.sleep(3)
        metrics = httpx.get(f"http://127.0.0.1:{stack.settings.notify_port}/metrics").text
        assert f'carebus_notify_pending_events{{subscription="{sid}"}} 3.0' in metrics
        assert f'carebus_notify_oldest_undelivered_age_seconds{{subscription="{sid}"}}' in metrics
        receiver.mode = "fail"  # back, but answering 500
        receiver.start()
        ids += _assessments(stack, mrn, pid, range(6, 8))
        assert receiver.wait_for(lambda: len(receiver.of(sid)) >= 4)
        receiver.mode = "slow"  # answers after the subscription's 1 s timeout
        assert receiver.wait_for(lambda: sum(1 for r in receiver.of(sid) if not r.acknowledged) >= 7)
        receiver.mode = "empty"  # 200 with an empty body: success
        assert receiver.wait_for(lambda: sorted(set(receiver.acknowledged_numbers(sid))) == list(range(1, 8)),
                                 timeout_s=60), receiver.acknowledged_numbers(sid)
        acknowledged = receiver.acknowledged_numbers(sid)
        assert acknowledged == list(range(1, 8))  # exactly once each, in order
        assert [_focus_ids(receiver, sid)[n] for n in range(1, 8)] == ids  # commit order = event order
        assert all(r.signature_ok for r in receiver.of(sid))
        sub = stack.store.get(sid)
        assert sub is not None and sub.status == "active" and sub.events_since_start == 7
        # a subscriber that saw a gap asks for it: same numbers, same foci, from the stored state
        assert _events(stack, sid, eventsSinceNumber=3, eventsUntilNumber=5) == list(zip(range(3, 6), ids[2:5],
                                                                                          strict=True))
        status = stack.fhir("GET", f"/Subscription/{sid}/$status", "therapy")["entry"][0]["resource"]
        assert {"name": "events-since-subscription-start", "valueString": "7"} in status["parameter"]
    finally:
        receiver.stop()


def test_one_endpoint_down_or_hanging_never_holds_up_another(stack: NotifyStack) -> None:
    down, hanging, healthy = Receiver(), Receiver(slow_s=8), Receiver()
    try:
        mrn, pid = _person(stack)
        sids = {name: _subscribe(stack, r, pid, timeout_s=5) for name, r in
                (("down", down), ("hanging", hanging), ("healthy", healthy))}
        for sid in sids.values():
            stack.wait_status(sid, "active")
        down.stop()
        hanging.mode = "slow"
        _assessments(stack, mrn, pid, range(1, 6))
        assert healthy.wait_for(lambda: healthy.acknowledged_numbers(sids["healthy"]) == [1, 2, 3, 4, 5])
        # the healthy subscriber has everything while the others have still not acknowledged their first
        assert stack.store.pending(sids["down"], 10)[0].number == 1
        assert stack.store.pending(sids["hanging"], 10)[0].number == 1
        assert hanging.acknowledged_numbers(sids["hanging"]) == []
    finally:
        for r in (down, hanging, healthy):
            r.stop()


def _cli(stack: NotifyStack, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "CAREBUS_NOTIFY_STORE_DSN": str(stack.settings.notify_store_dsn)}
    done = subprocess.run([sys.executable, "-m", "services.operator.cli", "subscriptions", *args],  # noqa: S603
                          env=env, capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


def test_after_the_retry_window_status_error_dead_letters_and_an_operator_replay(stack: NotifyStack) -> None:
    receiver = Receiver()
    try:
        mrn, pid = _person(stack)
        sid = _subscribe(stack, receiver, pid, timeout_s=1)
        stack.wait_status(sid, "active")
        receiver.mode = "fail"
        ids = _assessments(stack, mrn, pid, range(1, 4))
        stack.wait_status(sid, "error", timeout_s=90)  # 24 h on the retry clock
        sub = stack.store.get(sid)
        assert sub is not None and "retry window (24 h)" in (sub.error or "")
        dead = [e for e in stack.store.events(sid) if e.state == "dead"]
        assert [e.number for e in dead] == [1, 2, 3] and all("retry window" in (e.dead_reason or "") for e in dead)
        status = stack.fhir("GET", f"/Subscription/{sid}/$status", "therapy")["entry"][0]["resource"]
        assert {"name": "status", "valueCode": "error"} in status["parameter"]
        assert any(p["name"] == "error" for p in status["parameter"])
        # still counting while in error, and still readable
        ids += _assessments(stack, mrn, pid, [4])
        assert stack.record.service.ingestor.running
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(stack.store.events(sid)) < 4:
            time.sleep(0.1)
        assert [n for n, _ in _events(stack, sid)] == [1, 2, 3, 4]
        assert "error" in _cli(stack, "list")
        assert "dead: events 1..3 (3)" in _cli(stack, "status", sid)
        receiver.mode = "ok"
        assert "3 dead letter(s)" in _cli(stack, "replay", sid)
        assert receiver.wait_for(lambda: receiver.acknowledged_numbers(sid) == [1, 2, 3, 4])
        assert [_focus_ids(receiver, sid)[n] for n in range(1, 5)] == ids
    finally:
        receiver.stop()


def test_410_turns_the_subscription_off_with_the_reason(stack: NotifyStack) -> None:
    receiver = Receiver()
    try:
        mrn, pid = _person(stack)
        sid = _subscribe(stack, receiver, pid)
        stack.wait_status(sid, "active")
        receiver.mode = "gone"
        _assessments(stack, mrn, pid, [1])
        stack.wait_status(sid, "off")
        sub = stack.store.get(sid)
        assert sub is not None and sub.error == "the endpoint answered 410 Gone"
        served = stack.fhir("GET", f"/Subscription/{sid}", "therapy")
        assert served["status"] == "off" and served["error"] == "the endpoint answered 410 Gone"
        _assessments(stack, mrn, pid, [2], tag="after-off")
        time.sleep(2)
        assert [e.number for e in stack.store.events(sid)] == [1]  # off: no more events
        assert len(receiver.of(sid)) == 1
    finally:
        receiver.stop()


def test_kill_9_of_notify_mid_delivery_loses_nothing_and_renumbers_nothing(stack: NotifyStack) -> None:
    receiver = Receiver(slow_s=1.0, slow_within_timeout=True)
    try:
        mrn, pid = _person(stack)
        sid = _subscribe(stack, receiver, pid, timeout_s=5)
        stack.wait_status(sid, "active")
        receiver.mode = "slow"  # deliveries take a second each: the kill lands mid-request
        ids = _assessments(stack, mrn, pid, range(1, 7))
        assert receiver.wait_for(lambda: len(receiver.of(sid)) >= 2)
        stack.notify.kill9()
        ids += _assessments(stack, mrn, pid, range(7, 9))  # while notify is dead
        receiver.mode = "ok"
        stack.notify.start()
        assert receiver.wait_for(lambda: sorted(set(receiver.acknowledged_numbers(sid))) == list(range(1, 9)),
                                 timeout_s=60), receiver.acknowledged_numbers(sid)
        focus = _focus_ids(receiver, sid)
        assert sorted(focus) == list(range(1, 9))  # no new number for an old event
        assert [focus[n] for n in range(1, 9)] == ids
        # only the notification in flight at the kill may arrive twice (it was never acknowledged to notify)
        acknowledged = receiver.acknowledged_numbers(sid)
        assert len(acknowledged) - len(set(acknowledged)) <= 1 and acknowledged == sorted(acknowledged)
        sub = stack.store.get(sid)
        assert sub is not None and sub.events_since_start == 8
    finally:
        receiver.stop()


def test_heartbeats_on_an_idle_channel(stack: NotifyStack) -> None:
    receiver = Receiver()
    try:
        _, pid = _person(stack)
        sid = _subscribe(stack, receiver, pid, heartbeat_s=1)
        assert receiver.wait_for(lambda: len(receiver.of(sid, "heartbeat")) >= 2, timeout_s=30)
        beat = receiver.of(sid, "heartbeat")[0]
        assert beat.numbers == [] and beat.signature_ok
    finally:
        receiver.stop()
