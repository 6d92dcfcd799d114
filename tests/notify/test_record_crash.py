"""kill -9 of the record service in the middle of a burst (its store commits, change-outbox publishes and offset
commits all interleave): after a restart every committed change reaches notify, every notification arrives,
and no event gets a second number. Record, notify and the receiver are real processes / a real server."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import orjson
import pytest

from devstack.local_broker import free_port
from services.common.kafka import RecordProducer
from services.notify.subscriptions import EXT_FILTER
from services.notify.topics import TOPIC_BASE
from tests.notify.conftest import ServiceProcess, auth, secret_of, tokens
from tests.notify.receiver import Receiver
from tests.record.conftest import harness_settings
from tests.record.fhir_data import CLINIC, Event, patient, patient_id, phq9_total, unique


def test_kill_9_of_the_record_mid_burst_loses_no_notification(kafka_bootstrap: str, tmp_path: Path) -> None:
    record_port = free_port()
    settings = harness_settings(kafka_bootstrap).model_copy(update={
        "record_tokens": tokens(), "record_port": record_port,
        "record_base_url": f"http://127.0.0.1:{record_port}",
        "notify_store_dsn": f"sqlite:///{tmp_path}/notify.db", "notify_endpoint_allowlist": ["http://127.0.0.1"],
        "notify_port": free_port(), "notify_group_id": f"notify-{uuid.uuid4().hex[:8]}",
    })
    record_env = {
        "CAREBUS_RECORD_PORT": str(record_port), "CAREBUS_RECORD_STORE_DSN": f"sqlite:///{tmp_path}/record.db",
        "CAREBUS_RECORD_GROUP_ID": settings.record_group_id,
        "CAREBUS_RECORD_TOKENS": orjson.dumps({k: v.model_dump() for k, v in settings.record_tokens.items()}).decode(),
    }
    record = ServiceProcess("record", settings, record_port, tmp_path / "record.log", record_env)
    notify = ServiceProcess("notify", settings, settings.notify_port, tmp_path / "notify.log")
    receiver = Receiver()
    producer = RecordProducer(settings, "test-burst")
    record.start()
    notify.start()
    try:
        mrn = unique("kr-")
        pid = patient_id(CLINIC, mrn)
        producer.send_all_and_wait([Event(CLINIC, mrn, [patient(CLINIC, mrn)]).record(settings.topic_prefix)])
        body = {"resourceType": "Subscription", "status": "requested", "reason": "crash test",
                "criteria": TOPIC_BASE + "assessment-completed",
                "_criteria": {"extension": [{"url": EXT_FILTER, "valueString": f"patient=Patient/{pid}"}]},
                "channel": {"type": "rest-hook", "endpoint": receiver.url, "payload": "application/fhir+json"}}
        created = httpx.post(f"{settings.record_base_url}/Subscription", content=orjson.dumps(body),
                             headers=auth("therapy"), timeout=10)
        assert created.status_code == 201, created.text
        sid = created.json()["id"]
        receiver.secrets[sid] = secret_of(created.json())
        observations = [phq9_total(CLINIC, pid, f"{mrn}-phq-{i}", f"2024-06-{i % 28 + 1:02d}", i % 28)
                        for i in range(60)]
        records = [Event(CLINIC, mrn, [obs]).record(settings.topic_prefix) for obs in observations]
        producer.send_all_and_wait(records[:30])
        assert receiver.wait_for(lambda: len(receiver.acknowledged_numbers(sid)) >= 1, timeout_s=60)
        producer.send_all_and_wait(records[30:])
        time.sleep(0.3)  # the record is ingesting the second half
        record.kill9()
        record.start()
        expected = list(range(1, 61))
        assert receiver.wait_for(lambda: sorted(set(receiver.acknowledged_numbers(sid))) == expected,
                                 timeout_s=120), receiver.acknowledged_numbers(sid)
        foci: dict[int, str] = {}
        for r in receiver.of(sid):
            for n, focus in zip(r.numbers, r.foci, strict=True):
                assert foci.setdefault(n, focus) == focus
        assert [foci[n].rsplit("/", 1)[1] for n in expected] == [o["id"] for o in observations]  # commit order
        time.sleep(1)
        assert max(foci) == 60  # nothing numbered twice
    finally:
        producer.close()
        receiver.stop()
        notify.stop()
        record.stop()


pytestmark = pytest.mark.integration
