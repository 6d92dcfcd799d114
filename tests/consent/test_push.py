"""Consent at the push exit, through the real services (record in-process, notify as its own process, the
session's real broker, real local receivers) under the shipped disclosure policy:

* the consent matrix, exit "notification": label class x consent state for a recipient organization without
  clearance, whose subscription acts for the organization its token names;
* what a subscriber may not see leaves no trace: no event number (the numbers it gets are 1..n, gap-free), no
  reference, no label, no count - the same bytes whether or not a withheld record exists;
* Part 2 disclosures carry the 42 CFR 2.32 notice Provenance citing the consent, and the labels;
* each delivered event is one BALP PrivacyDisclosure AuditEvent on carebus.audit.v1 (retries included);
* a revocation stops what is queued but not yet sent, and the numbers stay gap-free.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from services.common import audit, part2
from services.common.fhir_ids import resource_id
from services.common.settings import RecordTokenGrant
from services.common.topics import AUDIT_EVENTS
from tests.consent.conftest import eventually
from tests.consent.consents import LABEL_SETS, PART2_ORG, THERAPY_ORG, consent, consent_state
from tests.consent.test_decision import STATES, UNCLEARED_MATRIX
from tests.consent.test_record_enforcement import _consent_resource, _labelled
from tests.kafka_helpers import read_all
from tests.notify.conftest import NotifyStack, secret_of
from tests.notify.receiver import Receiver
from tests.record.fhir_data import CLINIC, Event, depression_condition, patient, patient_id, unique

pytestmark = pytest.mark.integration

SUBSCRIBERS = {
    # the SUD program's partner clinic: no clearance; a Part 2 consent may name it
    "partner": RecordTokenGrant(scopes=["system/Subscription.write"], organization=PART2_ORG,
                                label="partner clinic"),
    # a therapy practice cleared for behavioural health, named by no Part 2 consent
    "therapy": RecordTokenGrant(scopes=["system/Subscription.write"], organization=THERAPY_ORG,
                                clearances=["behavioral-health"], label="therapy practice"),
}
TOPIC = "diagnosis-recorded"
CLASS_CODES = {"PSY": ("PSY",), "SUD-Part2": ("SUD", "42CFRPart2"), "ETHUD": ("ETHUD",), "PSYTHPN": ("PSYTHPN",)}


@pytest.fixture(scope="module")
def push(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NotifyStack]:
    stack = NotifyStack(kafka_bootstrap, tmp_path_factory.mktemp("push"), SUBSCRIBERS, disclosure_policy={})
    try:
        yield stack
    finally:
        stack.close()


def _subscribe(stack: NotifyStack, receiver: Receiver, token: str, pid: str, max_count: int = 5) -> str:
    created = stack.subscribe(token, TOPIC, receiver.url, filters=(f"patient=Patient/{pid}",),
                              content="full-resource", max_count=max_count)
    receiver.secrets[created["id"]] = secret_of(created)
    stack.wait_status(created["id"], "active")
    return str(created["id"])


def _seed_person(stack: NotifyStack, consents: list[dict[str, Any]]) -> tuple[str, str]:
    mrn = unique("push-")
    pid = patient_id(CLINIC, mrn)
    stack.record.publish(Event(CLINIC, mrn, [patient(CLINIC, mrn),
                                             *(_consent_resource(c, f"{mrn}-c{i}") for i, c in enumerate(consents))]))
    return mrn, pid


def _wait_consents(stack: NotifyStack, pid: str, count: int, status: str | None = None) -> None:
    """Until notify has seen the person's consents on the change feed (it decides with what it has seen)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        seen = stack.store.consents([f"Patient/{pid}"])
        if len(seen) >= count and (status is None or any(c.status == status for c in seen)):
            return
        time.sleep(0.1)
    raise AssertionError("notify did not see the consents")


def _condition(mrn: str, pid: str, label_class: str) -> dict[str, Any]:
    return _labelled(depression_condition(CLINIC, pid, f"{mrn}-{label_class}", "2026-02-01"), LABEL_SETS[label_class])


def _numbers_and_foci(receiver: Receiver, sid: str) -> dict[int, str]:
    out: dict[int, str] = {}
    for request in receiver.of(sid):
        if request.acknowledged:
            for n, focus in zip(request.numbers, request.foci, strict=True):
                out[n] = focus.rsplit("/", 1)[1]
    return out


def _since(bundle: dict[str, Any]) -> int:
    """events-since-subscription-start of a notification (or $status answer)."""
    return int(next(p["valueString"] for p in bundle["entry"][0]["resource"]["parameter"]
                    if p["name"] == "events-since-subscription-start"))


def _audit_events(stack: NotifyStack, sids: set[str], expected: int, outcome: str = "0") -> list[dict[str, Any]]:
    """The push AuditEvents of these subscriptions on carebus.audit.v1 with this outcome (0: delivered, 4:
    withheld; waits until ``expected`` distinct)."""
    topic = AUDIT_EVENTS.name(stack.settings.topic_prefix)
    labels = {f"Subscription/{sid}" for sid in sids}

    def mine(records: list[Any]) -> list[dict[str, Any]]:
        found = [orjson.loads(r.value) for r in records]
        return [e for e in found if e["outcome"] == outcome
                and any(a.get("who", {}).get("display") in labels for a in e["agent"])]

    records = read_all(stack.settings, topic, until=lambda rs: len({e["id"] for e in mine(rs)}) >= expected)
    return mine(records)


def test_notification_matrix_no_trace_of_what_is_withheld_part2_package_and_one_audit_per_push(
        push: NotifyStack) -> None:
    receiver = Receiver()
    try:
        cells: dict[str, tuple[str, str, str]] = {}  # state -> (mrn, pid, subscription)
        for state in STATES:
            mrn, pid = _seed_person(push, [])
            cells[state] = (mrn, pid, _subscribe(push, receiver, "partner", pid))
        # the consents first (one person's changes stay in order on the feed), then one Condition per class
        for state, (mrn, pid, _) in cells.items():
            states = {cls: consent_state(state, cls, f"Patient/{pid}") for cls in UNCLEARED_MATRIX}
            consents = [c for cls, cs in states.items() for c in cs]
            # one consent resource per class covered (ids differ per class)
            stored = [_consent_resource(c, f"{mrn}-{state}-{i}") for i, c in enumerate(consents)]
            push.record.publish(Event(CLINIC, mrn, stored))
            _wait_consents(push, pid, len(consents))
            push.record.publish(Event(CLINIC, mrn, [_condition(mrn, pid, cls) for cls in UNCLEARED_MATRIX]))
        expected: dict[str, list[str]] = {}
        for state, (mrn, pid, _) in cells.items():
            expected[state] = [_condition(mrn, pid, cls)["id"] for cls, outcomes in UNCLEARED_MATRIX.items()
                               if outcomes[STATES.index(state)] != "deny"]
        assert receiver.wait_for(lambda: all(
            len(_numbers_and_foci(receiver, sid)) >= len(expected[state]) for state, (_, _, sid) in cells.items()))
        time.sleep(1.0)  # anything withheld that leaked would have arrived with the permitted events
        for state, (mrn, pid, sid) in cells.items():
            got = _numbers_and_foci(receiver, sid)
            # gap-free 1..n, in commit order, exactly the permitted Conditions
            assert sorted(got) == list(range(1, len(expected[state]) + 1)), state
            assert [got[n] for n in sorted(got)] == expected[state], state
            sub = push.store.get(sid)
            assert sub is not None and sub.events_since_start == len(expected[state])
            withheld_classes = [c for c in UNCLEARED_MATRIX if _condition(mrn, pid, c)["id"] not in expected[state]]
            withheld = {_condition(mrn, pid, cls)["id"] for cls in withheld_classes}
            for request in receiver.of(sid, kind="event-notification") + receiver.of(sid, kind="heartbeat"):
                raw = orjson.dumps(request.bundle).decode()
                assert not any(w in raw for w in withheld), state  # not even a reference
                for cls in withheld_classes:
                    for code in CLASS_CODES.get(cls, ()):
                        assert f'"code":"{code}"' not in raw, (state, code)  # no label of a withheld class
            # $events, as a recovering subscriber asks: the same events, nothing else
            bundle = push.fhir("GET", f"/Subscription/{sid}/$events", "partner")
            events = [p for p in bundle["entry"][0]["resource"]["parameter"] if p["name"] == "notification-event"]
            assert len(events) == len(expected[state])
        # Part 2: only under the permitting consent, with the 42 CFR 2.32 notice, the consent and the labels
        mrn, pid, sid = cells["permit-recipient"]
        part2_id = _condition(mrn, pid, "SUD-Part2")["id"]
        carrying = [r.bundle for r in receiver.of(sid) if part2_id in orjson.dumps(r.bundle).decode()]
        assert carrying
        for bundle in carrying:
            provenance = bundle["entry"][-1]["resource"]
            assert provenance["resourceType"] == "Provenance"
            assert f"Condition/{part2_id}" in [t["reference"] for t in provenance["target"]]
            assert part2.PART2_REGULATION in provenance["policy"]
            sud_consent = resource_id("Consent", CLINIC.system, f"{mrn}-permit-recipient-2")  # covers SUD
            assert any(p.endswith(f"/Consent/{sud_consent}") for p in provenance["policy"])
            assert part2.STATEMENT_1[:80] in provenance["text"]["div"]
            assert {"code": "NORDSCLCD"}.items() <= bundle["meta"]["security"][0].items()
            condition = next(e["resource"] for e in bundle["entry"] if e.get("resource", {}).get("id") == part2_id)
            assert {"42CFRPart2", "NORDSCLCD"} <= {c["code"] for c in condition["meta"]["security"]}
        for state in ("none", "permit-other", "deny", "expired", "revoked"):
            assert all(r.bundle["entry"][-1]["resource"]["resourceType"] != "Provenance"
                       for r in receiver.of(cells[state][2]))
        # audit: one PrivacyDisclosure per delivered event, deterministic ids, the focus by reference only
        sids = {sid for _, _, sid in cells.values()}
        total = sum(len(v) for v in expected.values())
        events_ = _audit_events(push, sids, total)
        assert len({e["id"] for e in events_}) == total
        for state, (_, pid, sid) in cells.items():
            mine = {e["id"]: e for e in events_ if any(
                a.get("who", {}).get("display") == f"Subscription/{sid}" for a in e["agent"])}
            assert set(mine) == {audit.disclosure_id("notify", sid, str(n)) for n in range(1, len(expected[state]) + 1)}
            for event in mine.values():
                assert event["type"]["code"] == "110106" and event["subtype"][0]["code"] == "disclose"
                assert event["entity"][0]["what"]["reference"] == f"Patient/{pid}"
                assert event["purposeOfEvent"][0]["coding"][0]["code"] == "TREAT"
                recipient = next(a for a in event["agent"] if a["type"]["coding"][0]["code"] == "IRCP")
                assert recipient["who"]["identifier"]["value"] == PART2_ORG.split("|")[1]
                assert "valueQuantity" not in orjson.dumps(event).decode()  # never content
        # each withheld notification is a denied attempt: one PrivacyDisclosure with outcome 4 naming the withheld
        # focus by reference, its id from the subscription and the focus version (a replayed change: the same)
        withheld_ids = {state: [_condition(mrn, pid, cls)["id"] for cls in UNCLEARED_MATRIX
                                if _condition(mrn, pid, cls)["id"] not in expected[state]]
                        for state, (mrn, pid, _) in cells.items()}
        denied = _audit_events(push, sids, sum(len(v) for v in withheld_ids.values()), outcome="4")
        assert len(denied) == len({e["id"] for e in denied}) == sum(len(v) for v in withheld_ids.values())
        for state, (_, pid, sid) in cells.items():
            mine = {e["id"]: e for e in denied if any(
                a.get("who", {}).get("display") == f"Subscription/{sid}" for a in e["agent"])}
            assert set(mine) == {audit.disclosure_id("notify-withheld", sid, f"Condition/{c}", "1")
                                 for c in withheld_ids[state]}, state
            for event in mine.values():
                assert event["type"]["code"] == "110106" and event["outcomeDesc"] == audit.DENIED_DESCRIPTION
                assert event["entity"][0]["what"]["reference"] == f"Patient/{pid}"
                assert [x["what"]["reference"] for x in event["entity"][1:]] in (
                    [[f"Condition/{c}"] for c in withheld_ids[state]])
                assert "valueQuantity" not in orjson.dumps(event).decode() and "code" not in event["entity"][1]
        # $events answers are disclosures too: one PatientQuery AuditEvent per patient, naming exactly the foci
        def events_audits(records: list[Any]) -> list[dict[str, Any]]:
            found = [orjson.loads(r.value) for r in records]
            return [e for e in found if e["type"]["code"] == "rest" and e["subtype"][0]["code"] == "operation"
                    and e["entity"][0]["what"]["reference"] == f"Patient/{pid}"]

        mrn, pid, _ = cells["permit-recipient"]
        queried = events_audits(read_all(push.settings, AUDIT_EVENTS.name(push.settings.topic_prefix),
                                         until=lambda rs: bool(events_audits(rs))))
        assert len(queried) == 1
        assert sorted(x["what"]["reference"] for x in queried[0]["entity"] if x["role"]["code"] == "4") == sorted(
            f"Condition/{c}" for c in expected["permit-recipient"])
        permitted_part2 = next(e for e in events_ if any(
            x.get("what", {}).get("reference") == f"Condition/{part2_id}" for x in e["entity"]))
        assert f"Consent/{sud_consent}" in [x.get("what", {}).get("reference") for x in permitted_part2["entity"]]
    finally:
        receiver.stop()


def test_a_subscription_acts_for_its_token_s_recipient_and_a_body_cannot_choose_another(push: NotifyStack) -> None:
    receiver = Receiver()
    try:
        _, pid = _seed_person(push, [])
        partner = push.subscribe("partner", TOPIC, receiver.url, filters=(f"patient=Patient/{pid}",))
        served = push.fhir("GET", f"/Subscription/{partner['id']}", "partner")
        recipient = next(e for e in served["extension"] if e["url"].endswith("subscription-recipient"))
        parts = {p["url"]: p for p in recipient["extension"]}
        assert parts["organization"]["valueReference"]["identifier"]["value"] == PART2_ORG.split("|")[1]
        assert parts["purposeOfUse"]["valueCoding"]["code"] == "TREAT"
        # a body cannot choose another recipient
        forged = {**served, "id": None, "status": "requested",
                  "extension": [{**recipient, "extension": [
                      {"url": "organization", "valueReference": {"identifier": {"value": "someone-else"}}}]}]}
        refused = push.record.client.post("/Subscription", content=orjson.dumps(forged),
                                          headers={"Authorization": "Bearer notify-token-partner",
                                                   "Content-Type": "application/fhir+json"})
        assert refused.status_code == 400
        assert "subscription-recipient" in refused.json()["issue"][0]["expression"][0]
    finally:
        receiver.stop()


def _partner_with_part2_consent(push: NotifyStack, receiver: Receiver
                                ) -> tuple[str, str, str, dict[str, Any]]:
    """A person whose active consent names the partner for Part 2 data, and the partner's subscription to
    them (one event per notification): (mrn, patient id, subscription id, the consent)."""
    granted = consent("c-live", "", covered=("SUD", "42CFRPart2"), start="2026-01-10T09:00:00+00:00")
    mrn, pid = _seed_person(push, [])
    live = {**granted, "patient": {"reference": f"Patient/{pid}"}}
    push.record.publish(Event(CLINIC, mrn, [_consent_resource(live, f"{mrn}-live")]))
    _wait_consents(push, pid, 1)
    return mrn, pid, _subscribe(push, receiver, "partner", pid, max_count=1), live


def _revoke(push: NotifyStack, mrn: str, pid: str, live: dict[str, Any], at: datetime) -> None:
    """The patient revokes ``live``: inactive, its period ended at ``at``; waits until notify knows."""
    revoked = {**live, "status": "inactive",
               "provision": {**live["provision"], "period": {"start": live["provision"]["period"]["start"],
                                                             "end": at.isoformat(timespec="seconds")}}}
    push.record.publish(Event(CLINIC, mrn, [_consent_resource(revoked, f"{mrn}-live")]))
    _wait_consents(push, pid, 1, status="inactive")


def test_a_revocation_stops_what_is_queued_and_the_numbers_stay_gap_free(push: NotifyStack) -> None:
    receiver = Receiver()
    try:
        now = datetime.now(UTC)
        mrn, pid, sid, live = _partner_with_part2_consent(push, receiver)
        receiver.mode = "fail"  # the first event is on the wire, retried; the next two wait behind it
        first, part2_dx, last = (_condition(mrn, pid, cls) for cls in ("none", "SUD-Part2", "none"))
        last = {**last, "id": last["id"] + "b"}
        for resource in (first, part2_dx, last):
            push.record.publish(Event(CLINIC, mrn, [resource]))
        deadline = time.monotonic() + 60
        while len(push.store.events(sid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [e.resource_id for e in push.store.events(sid)] == [first["id"], part2_dx["id"], last["id"]]
        # the patient revokes: the consent is inactive from now on
        _revoke(push, mrn, pid, live, now)
        receiver.mode = "ok"
        assert receiver.wait_for(lambda: sorted(_numbers_and_foci(receiver, sid)) == [1, 2])
        time.sleep(1.0)
        got = _numbers_and_foci(receiver, sid)
        assert got == {1: first["id"], 2: last["id"]}  # gap-free; the Part 2 diagnosis never left
        assert all(part2_dx["id"] not in orjson.dumps(r.bundle).decode() for r in receiver.received)
        sub = push.store.get(sid)
        assert sub is not None and sub.events_since_start == 2
        assert [e.resource_id for e in push.store.events(sid)] == [first["id"], last["id"]]
        # the counter the subscriber is told never goes down: across every request it received (the failed
        # attempts of number 1 while 2 and 3 were queued, the withdrawal, the deliveries) and in $status
        told = [(r.numbers, _since(r.bundle)) for r in receiver.received if r.subscription == sid]
        assert [since for _, since in told] == sorted(since for _, since in told)
        assert all(since >= max(numbers, default=0) for numbers, since in told)
        assert told[-1] == ([2], 2)
        assert _since(push.fhir("GET", f"/Subscription/{sid}/$status", "partner")) == 2
        # the first event was retried several times: still one AuditEvent per delivered event
        events_ = _audit_events(push, {sid}, 2)
        assert {e["id"] for e in events_} == {audit.disclosure_id("notify", sid, "1"),
                                              audit.disclosure_id("notify", sid, "2")}
        assert len(receiver.of(sid)) > 2  # the failed attempts were real requests
        # the Part 2 diagnosis withheld at send time: one denied attempt, audited once (outcome 4)
        denied = _audit_events(push, {sid}, 1, outcome="4")
        assert [e["id"] for e in denied] == [audit.disclosure_id("notify-withheld", sid, f"Condition/{part2_dx['id']}",
                                                                 "1")]
        assert denied[0]["entity"][1]["what"]["reference"] == f"Condition/{part2_dx['id']}"
        # the accounting of disclosures lists exactly these pushes (they reach the record through the topic)
        def accounting() -> list[str]:
            found = push.record.fhir(f"/Patient/{pid}/$disclosures", token="privacy")  # noqa: S106
            ids = sorted(e["resource"]["id"] for e in found.get("entry", [])
                         if e["resource"]["resourceType"] == "AuditEvent")
            return ids if len(ids) >= 2 else []
        assert eventually(accounting) == sorted(e["id"] for e in {e["id"]: e for e in events_}.values())
        # the denied attempt is in the record too, for the privacy officer (not in the accounting)
        def refused() -> list[str]:
            found = push.record.fhir(f"/AuditEvent?patient=Patient/{pid}&outcome=4", token="privacy")  # noqa: S106
            return [e["resource"]["id"] for e in found.get("entry", [])
                    if e["resource"]["resourceType"] == "AuditEvent"]
        assert eventually(refused) == [denied[0]["id"]]
    finally:
        receiver.stop()


def _reported(bundle: dict[str, Any]) -> dict[int, list[str]]:
    """The notification-events of an answer: number -> the names of its parts."""
    return {int(next(part["valueString"] for part in p["part"] if part["name"] == "event-number")):
            [part["name"] for part in p["part"]]
            for p in bundle["entry"][0]["resource"]["parameter"] if p["name"] == "notification-event"}


def test_a_revocation_after_a_failed_attempt_keeps_the_numbers_answered_and_sends_nothing_more(
        push: NotifyStack) -> None:
    """A Part 2 diagnosis went out (the attempt failed: the recipient may hold its number), then the patient
    revoked: it is never sent again, the next event gets the next number, and ``$events`` answers for that
    number - by the number alone, as a withheld event, with nothing of its content."""
    receiver = Receiver()
    try:
        mrn, pid, sid, live = _partner_with_part2_consent(push, receiver)
        receiver.mode = "fail"
        part2_dx, later = _condition(mrn, pid, "SUD-Part2"), _condition(mrn, pid, "none")
        push.record.publish(Event(CLINIC, mrn, [part2_dx]))
        # number 1 is on the wire: attempted (the recipient answered 500), so it may hold that number
        assert receiver.wait_for(lambda: any(r.numbers == [1] for r in receiver.of(sid)))
        push.record.publish(Event(CLINIC, mrn, [later]))
        deadline = time.monotonic() + 60
        while len(push.store.events(sid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        # the recipient goes away; the patient revokes meanwhile
        receiver.stop()
        _revoke(push, mrn, pid, live, datetime.now(UTC))

        def state_of_first() -> str:
            return next(e.state for e in push.store.events(sid, include_withheld=True) if e.number == 1)

        deadline = time.monotonic() + 60
        while state_of_first() != "withheld" and time.monotonic() < deadline:  # the delivery loop decided again
            time.sleep(0.1)
        assert state_of_first() == "withheld"
        before = len(receiver.received)
        receiver.mode = "ok"
        receiver.start()
        assert receiver.wait_for(lambda: receiver.acknowledged_numbers(sid) == [2])
        after = receiver.received[before:]
        assert after and all(part2_dx["id"] not in orjson.dumps(r.bundle).decode() for r in after)
        assert _numbers_and_foci(receiver, sid) == {2: later["id"]}
        # $events answers for both numbers, 1 by its number alone (no timestamp, no focus, no entry)
        for content in ("full-resource", "id-only", "empty"):
            answer = push.fhir("GET", f"/Subscription/{sid}/$events", "partner", params={"content": content})
            raw = orjson.dumps(answer).decode()
            assert part2_dx["id"] not in raw and '"code":"42CFRPart2"' not in raw, content
            expected_parts = ["event-number", "timestamp"] + (["focus"] if content != "empty" else [])
            assert _reported(answer) == {1: ["event-number"], 2: expected_parts}, content
            assert _since(answer) == 2
            foci = [e["fullUrl"] for e in answer["entry"][1:]]
            assert foci == ([] if content == "empty" else [f"{push.settings.record_base_url}/Condition/{later['id']}"])
        only_first = {"eventsSinceNumber": "1", "eventsUntilNumber": "1"}
        first_only = push.fhir("GET", f"/Subscription/{sid}/$events", "partner", params=only_first)
        assert _reported(first_only) == {1: ["event-number"]}
        assert _since(push.fhir("GET", f"/Subscription/{sid}/$status", "partner")) == 2
        sub = push.store.get(sid)
        assert sub is not None and sub.events_since_start == 2 and sub.told == 2
        # withheld at send time: one denied push, audited once
        denied = _audit_events(push, {sid}, 1, outcome="4")
        assert [e["id"] for e in denied] == [audit.disclosure_id("notify-withheld", sid, f"Condition/{part2_dx['id']}",
                                                                 "1")]
        # each $events answer that left its content out is a denied attempt too (the record's writer thread)
        def refused_queries(records: list[Any]) -> list[dict[str, Any]]:
            found = [orjson.loads(r.value) for r in records]
            return [e for e in found if e["type"]["code"] == "rest" and e["subtype"][0]["code"] == "operation"
                    and e["outcome"] == "4" and f"Condition/{part2_dx['id']}" in [
                        x.get("what", {}).get("reference") for x in e["entity"]]]

        queried = refused_queries(read_all(push.settings, AUDIT_EVENTS.name(push.settings.topic_prefix),
                                           until=lambda rs: len(refused_queries(rs)) >= 4))
        assert len(queried) == 4  # three contents, one range
        assert all(e["entity"][0]["what"]["reference"] == f"Patient/{pid}" for e in queried)
    finally:
        receiver.stop()


def test_withdraw_keeps_numbers_gap_free_and_never_reuses_a_number_on_the_wire(tmp_path: Path) -> None:
    from services.notify.store import open_notify_store
    from tests.notify.test_store import _phq9, _sub

    store = open_notify_store(f"sqlite:///{tmp_path}/notify.db")
    try:
        store.create(_sub("s", "Patient/p1"))
        store.record_changes([_phq9(f"o{i}", "Patient/p1") for i in range(1, 6)])
        assert [e.number for e in store.events("s")] == [1, 2, 3, 4, 5]
        store.mark_failed("s", [1], 1)  # number 1 went out once (failed): the receiver may hold it
        assert store.withdraw("s", [3]) == 1  # never sent: dropped, 4 and 5 move down
        assert [(e.number, e.resource_id) for e in store.events("s")] == [(1, "o1"), (2, "o2"), (3, "o4"),
                                                                          (4, "o5")]
        assert store.get("s").events_since_start == 4  # type: ignore[union-attr]
        assert store.withdraw("s", [1]) == 0  # on the wire: withheld, its number kept out of use
        assert [e.number for e in store.pending("s", 10)] == [2, 3, 4]
        assert [e.number for e in store.events("s")] == [2, 3, 4]  # not served by $events either
        store.record_changes([_phq9("o6", "Patient/p1")])
        assert [e.number for e in store.events("s")] == [2, 3, 4, 5]  # the next event: the next number
        store.mark_served("s", [5])  # $events showed number 5 (o6) to the subscriber
        assert store.withdraw("s", [4]) == 0  # a later number was seen: 4 is withheld, nothing moves
        assert [(e.number, e.resource_id) for e in store.events("s")] == [(2, "o2"), (3, "o4"), (5, "o6")]
        assert store.get("s").told == 5  # type: ignore[union-attr]
        # a notification told the subscriber "7 events so far" (numbers 6 and 7 in it): 6 is never renumbered
        store.record_changes([_phq9(f"o{i}", "Patient/p1") for i in (7, 8, 9)])
        assert [e.number for e in store.pending("s", 10)] == [2, 3, 5, 6, 7, 8]
        store.mark_told("s", 7)
        store.mark_told("s", 3)  # never lowered
        assert store.get("s").told == 7  # type: ignore[union-attr]
        assert store.withdraw("s", [6]) == 0  # told: withheld in place
        assert store.withdraw("s", [8]) == 1  # not told yet: dropped, nothing after it
        assert [e.number for e in store.pending("s", 10)] == [2, 3, 5, 7]
        assert store.get("s").events_since_start == 7  # type: ignore[union-attr]
    finally:
        store.close()


def test_a_store_from_before_recipients_and_served_events_gains_the_columns(tmp_path: Path) -> None:
    import re
    import sqlite3

    from services.common.sql import SQLITE
    from services.notify.store import open_notify_store, schema
    from tests.notify.test_store import _sub

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:
        for statement in schema(SQLITE):
            old.execute(re.sub(r",\s*recipient \w+|\s*served_ms \w+,", "", statement))
        old.execute("INSERT INTO notify_subscription (id, client, clearances, status, topic, filters, endpoint, "
                    "headers, content, mime, max_count, secret, events_since_start, created_ms, updated_ms) "
                    "VALUES ('old', 'clinic', 1, 'active', 'https://carebus.dev/fhir/SubscriptionTopic/"
                    "assessment-completed', '[]', 'https://ehr.example.org/hook', '[]', 'id-only', "
                    "'application/fhir+json', 1, 's', 0, 0, 0)")
        columns = {r[1] for r in old.execute("PRAGMA table_info(notify_subscription)")}
        assert "recipient" not in columns
    store = open_notify_store(f"sqlite:///{path}")
    try:
        before = store.get("old")
        assert before is not None and before.organization is None and before.purpose == "TREAT"
        store.create(_sub("new", "Patient/p1"))
        store.mark_served("new", [1])
        assert store.get("new") is not None
    finally:
        store.close()
