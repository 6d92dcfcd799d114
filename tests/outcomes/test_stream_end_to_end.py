"""The outcome stream end to end, through real processes on the session's real broker: the mapper's real Pipeline
maps PHQ-9 assessments (a constructed timeline: index 18, then 8 = response, then 4 = remission) into the bundles
the record service ingests (in-process, SQLite); the outcomes service (its own process, ``python -m
services.outcomes``) follows the record's change feed and publishes outcome changes on ``carebus.outcomes.v1``
keyed by patient; the notify service (its own process) notifies the subscribers of the matching outcome topics at
a real local HTTP receiver. A resend of the same assessments, and a replay of the whole change feed by a
restarted outcomes process, make no new change and no new notification; a subscriber filtered to another patient
receives none of this patient's.

Every wait is on a condition with a generous deadline; the negative checks are fenced by a later event that must
arrive behind anything they exclude (the same key, hence the same partition and order)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer

from devstack.local_broker import free_port
from services.common.fhir_ids import resource_id
from services.common.kafka import OutboundRecord, client_config
from services.common.topics import OUTCOMES
from services.mapper.pipeline import Pipeline, TopicNames
from tests.notify.conftest import NotifyStack, ServiceProcess, secret_of
from tests.notify.receiver import Receiver
from tests.outcomes.conftest import SOURCE, eventually, mapped, patient_event, phq9_event, unique

pytestmark = pytest.mark.integration

INDEX = datetime(2024, 1, 10, 15, 0, tzinfo=UTC)  # the episode and both its windows are over by the test's today
RESPONSE = INDEX + timedelta(days=130)  # in the DRR-E window (days 120-240): 8 is a 56 % reduction from 18
REMISSION = INDEX + timedelta(days=320)  # in the CMS159 window (12 months +/- 60 days), before it is overdue


@dataclass
class EndToEnd:
    notify: NotifyStack
    outcomes: ServiceProcess
    pipeline: Pipeline
    watch: KafkaConsumer
    seen: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (key, value) on carebus.outcomes.v1

    def send(self, *events: dict[str, Any]) -> list[OutboundRecord]:
        """Map the events and publish their bundles; returns once the record has ingested them."""
        records = [r for r in mapped(self.pipeline, *events) if r.topic.endswith("fhir.bundles.v1")]
        self.notify.record.publish_raw(records)
        return records

    def changes(self, patient: str) -> list[dict[str, Any]]:
        for batch in self.watch.poll(timeout_ms=300).values():
            self.seen.extend(((r.key or b"").decode(), orjson.loads(r.value)) for r in batch)
        return [value for key, value in self.seen if key == patient]

    def changes_until(self, patient: str, kind: str) -> list[dict[str, Any]]:
        """Wait until a change of ``kind`` for the patient is on the stream; return all the patient's changes."""
        def reached() -> list[dict[str, Any]] | None:
            found = self.changes(patient)
            return found if any(c["kind"] == kind for c in found) else None
        return eventually(reached, timeout_s=60, what=f"outcome change {kind}")

    def foci(self, receiver: Receiver, subscription: str) -> list[str]:
        """The resources (``Type/id``, no version) the subscription's notifications were about."""
        base = f"{self.notify.record.base_url}/"
        return [focus.removeprefix(base).split("/_history/")[0] for n in receiver.of(subscription)
                for focus in n.foci]

    def stored_events(self, subscription: str) -> list[int]:
        """Every event number notify has stored for the subscription (``$events``: sent or not yet)."""
        answer = self.notify.fhir("GET", f"/Subscription/{subscription}/$events", "therapy")
        status = answer["entry"][0]["resource"]
        return [int(part["valueString"]) for p in status["parameter"] if p["name"] == "notification-event"
                for part in p["part"] if part["name"] == "event-number"]


@pytest.fixture(scope="module")
def e2e(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EndToEnd]:
    folder: Path = tmp_path_factory.mktemp("outcomes-e2e")
    notify = NotifyStack(kafka_bootstrap, folder)
    settings = notify.settings.model_copy(update={"outcomes_port": free_port()})
    outcomes = ServiceProcess("outcomes", settings, settings.outcomes_port, folder / "outcomes.log", extra={
        "CAREBUS_RECORD_STORE_DSN": f"sqlite:///{folder}/record.db",  # the record's store (NotifyStack's default)
        "CAREBUS_OUTCOMES_PORT": str(settings.outcomes_port),
        "CAREBUS_OUTCOMES_GROUP_ID": f"outcomes-{uuid.uuid4().hex[:8]}",
        "CAREBUS_ALERTS_GROUP_ID": f"alerts-{uuid.uuid4().hex[:8]}",
        "CAREBUS_OUTCOMES_SWEEP_INTERVAL_S": "36000",  # no full recompute during the test: only the change feed
    })
    watch: KafkaConsumer | None = None
    try:
        outcomes.start()
        watch = KafkaConsumer(OUTCOMES.name(settings.topic_prefix), **client_config(settings, "outcomes-e2e-watch"),
                              group_id=None, auto_offset_reset="earliest", enable_auto_commit=False)
        yield EndToEnd(notify, outcomes, Pipeline(TopicNames.for_prefix(settings.topic_prefix)), watch)
    finally:
        if watch is not None:
            watch.close()
        if outcomes.process is not None and outcomes.process.poll() is None:
            outcomes.process.terminate()  # both processes stop at once: outcomes.stop() then waits for it
        notify.close()
        outcomes.stop()


def _total(records: list[OutboundRecord]) -> str:
    """"Observation/<id>" of the PHQ-9 total the mapper computed in these bundles."""
    return next(f"Observation/{e['resource']['id']}" for r in records for e in orjson.loads(r.value)["entry"]
                if e["resource"]["resourceType"] == "Observation"
                and any(c.get("code") == "44261-6" for c in e["resource"]["code"]["coding"]))


def _subscribe(e2e: EndToEnd, receiver: Receiver, topic: str, patient: str) -> str:
    created = e2e.notify.subscribe("therapy", topic, receiver.url, filters=(f"patient={patient}",))
    receiver.secrets[created["id"]] = secret_of(created)
    return str(created["id"])


def test_outcome_changes_stream_and_notify_once_each(e2e: EndToEnd) -> None:
    mrn, other_mrn = unique("E2E"), unique("E2O")
    patient = f"Patient/{resource_id('Patient', SOURCE, mrn)}"
    other = f"Patient/{resource_id('Patient', SOURCE, other_mrn)}"
    receiver = Receiver()
    try:
        response = _subscribe(e2e, receiver, "outcome-response-reached", patient)
        remission = _subscribe(e2e, receiver, "outcome-remission-reached", patient)
        elsewhere = _subscribe(e2e, receiver, "outcome-response-reached", other)
        for sid in (response, remission, elsewhere):
            e2e.notify.wait_status(sid, "active")

        # the index score, then the response (and partial response) on a later date
        first = e2e.send(patient_event(SOURCE, mrn), phq9_event(SOURCE, mrn, INDEX, 18))
        assert [c["kind"] for c in e2e.changes_until(patient, "episode-started")] == ["episode-started"]
        second = e2e.send(phq9_event(SOURCE, mrn, RESPONSE, 8))
        assert receiver.wait_for(lambda: receiver.acknowledged_numbers(response) == [1])

        # a resend of the same assessments (the same bundles again, as a sender's retry delivers them) ...
        e2e.notify.record.publish_raw([*first, *second])
        # ... and a replay: a restarted outcomes process in a new consumer group reads the change feed from its start
        e2e.outcomes.stop()
        e2e.outcomes.extra["CAREBUS_OUTCOMES_GROUP_ID"] = f"outcomes-{uuid.uuid4().hex[:8]}"
        e2e.outcomes.start()
        # then the remission: its change comes behind anything the resend or the replay could have caused (the
        # person's changes share a key, so a partition and its order)
        third = e2e.send(phq9_event(SOURCE, mrn, REMISSION, 4))
        assert receiver.wait_for(lambda: receiver.acknowledged_numbers(remission) == [1])
        expected = ["episode-started", "response-reached", "partial-response-reached", "remission-reached"]
        changes = e2e.changes_until(patient, "remission-reached")
        assert [c["kind"] for c in changes] == expected  # in order, once each: the resend made no new change
        assert len({c["id"] for c in changes}) == len(expected)
        episode = changes[0]["episode"]
        assert {c["episode"] for c in changes} == {episode} and {c["patient"] for c in changes} == {patient}
        assert [c["date"] for c in changes] == [INDEX.date().isoformat(), RESPONSE.date().isoformat(),
                                                RESPONSE.date().isoformat(), REMISSION.date().isoformat()]
        assert [c["score"] for c in changes] == [_total(first), _total(second), _total(second), _total(third)]
        assert changes[-1]["state"] == "remitted"

        # another patient's response: the fence for the subscriber filtered to them; its first event is theirs
        e2e.send(patient_event(SOURCE, other_mrn), phq9_event(SOURCE, other_mrn, INDEX, 16),
                 phq9_event(SOURCE, other_mrn, RESPONSE, 7))
        assert receiver.wait_for(lambda: receiver.acknowledged_numbers(elsewhere) == [1])
        others_episode = e2e.changes_until(other, "response-reached")[0]["episode"]
        assert e2e.foci(receiver, elsewhere) == [others_episode]

        # at the receiver: each subscriber of this patient got its one notification, signed, about the episode
        for sid in (response, remission):
            notifications = receiver.of(sid)
            assert [n.numbers for n in notifications] == [[1]]
            assert notifications[0].signature_ok
            assert e2e.foci(receiver, sid) == [episode]
        # and notify holds nothing more for anyone, sent or waiting (a resent version would have been number 2)
        assert [e2e.stored_events(sid) for sid in (response, remission, elsewhere)] == [[1], [1], [1]]
    finally:
        receiver.stop()

