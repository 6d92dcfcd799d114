"""notify end to end on PostgreSQL, as a cluster runs it (deploy/k8s: both stores in PostgreSQL): the record
service on a PostgreSQL store publishing its change feed, the record API's /Subscription routes and the notify
process sharing one PostgreSQL notify store, a real local receiver. A subscription is created through the API,
handshaken, notified in commit order; a kill -9 of notify mid-delivery loses nothing and renumbers nothing;
$status and $events answer from the PostgreSQL store."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.notify.conftest import NotifyStack, secret_of
from tests.notify.receiver import Receiver
from tests.record.conftest import postgres_server  # noqa: F401 - the session's PostgreSQL fixture
from tests.record.fhir_data import CLINIC, Event, patient, patient_id, phq9_total, unique

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


@pytest.fixture(scope="module")
def pg_stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory,
             postgres_server: object) -> Iterator[NotifyStack]:  # noqa: F811 - the fixture imported above
    server = postgres_server
    stack = NotifyStack(kafka_bootstrap, tmp_path_factory.mktemp("notify-pg"),
                        record_dsn=server.fresh_schema_dsn(),  # type: ignore[attr-defined]
                        notify_dsn=server.fresh_schema_dsn())  # type: ignore[attr-defined]
    try:
        yield stack
    finally:
        stack.close()


def test_notify_on_postgresql_delivers_in_order_across_a_kill_9(pg_stack: NotifyStack) -> None:
    stack = pg_stack
    assert str(stack.settings.notify_store_dsn).startswith("postgresql://")
    assert stack.record.backend == "postgres"
    receiver = Receiver(slow_s=0.5, slow_within_timeout=True)
    try:
        mrn = unique("pg-")
        pid = patient_id(CLINIC, mrn)
        stack.record.publish(Event(CLINIC, mrn, [patient(CLINIC, mrn)]))
        created = stack.subscribe("therapy", "assessment-completed", receiver.url,
                                  filters=(f"patient=Patient/{pid}",), timeout_s=5)
        sid = str(created["id"])
        receiver.secrets[sid] = secret_of(created)
        stack.wait_status(sid, "active")  # the handshake went out from notify and was recorded in PostgreSQL
        assert receiver.of(sid, "handshake") and receiver.of(sid, "handshake")[0].signature_ok

        def assessments(scores: range) -> list[str]:
            ids = []
            for i in scores:
                observation = phq9_total(CLINIC, pid, f"{mrn}-phq-{i}", f"2024-06-{i:02d}", i)
                stack.record.publish(Event(CLINIC, mrn, [observation]))
                ids.append(observation["id"])
            return ids

        receiver.mode = "slow"  # half a second per delivery: the kill lands while one is in flight
        ids = assessments(range(1, 5))
        assert receiver.wait_for(lambda: len(receiver.of(sid)) >= 1)
        stack.notify.kill9()
        ids += assessments(range(5, 7))  # committed by the record while notify is dead
        receiver.mode = "ok"
        stack.notify.start()
        assert receiver.wait_for(lambda: sorted(set(receiver.acknowledged_numbers(sid))) == list(range(1, 7)),
                                 timeout_s=60), receiver.acknowledged_numbers(sid)
        focus: dict[int, str] = {}
        for received in receiver.of(sid):
            assert received.signature_ok
            for number, reference in zip(received.numbers, received.foci, strict=True):
                assert focus.setdefault(number, reference.rsplit("/", 1)[1]) == reference.rsplit("/", 1)[1]
        assert [focus[n] for n in range(1, 7)] == ids  # commit order, no new number for an old event
        acknowledged = receiver.acknowledged_numbers(sid)
        assert acknowledged == sorted(acknowledged) and len(acknowledged) - len(set(acknowledged)) <= 1

        status = stack.fhir("GET", f"/Subscription/{sid}/$status", "therapy")
        parameters = {p["name"]: p for p in status["entry"][0]["resource"]["parameter"]}
        assert parameters["events-since-subscription-start"]["valueString"] == "6"
        assert parameters["status"]["valueCode"] == "active"
        events = stack.fhir("GET", f"/Subscription/{sid}/$events", "therapy",
                            params={"eventsSinceNumber": "2", "eventsUntilNumber": "5"})
        numbered = [(int(parts["event-number"]["valueString"]), parts["focus"]["valueReference"]["reference"])
                    for p in events["entry"][0]["resource"]["parameter"] if p["name"] == "notification-event"
                    for parts in [{part["name"]: part for part in p["part"]}]]
        assert [(n, ref.rsplit("/", 1)[1]) for n, ref in numbered] == [(n, ids[n - 1]) for n in range(2, 6)]
    finally:
        receiver.stop()
