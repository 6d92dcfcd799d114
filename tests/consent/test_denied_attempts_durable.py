"""Denied attempts survive a kill -9 of the record service (issue 14: each denied attempt produces one AuditEvent).

The real record process (``python -m services.record``) on the session's broker, with the writer's cadence set to
an hour so the kill surely comes before its tick: an uncleared caller's search and read that withheld a Part 2
diagnosis are answered, the process is killed with SIGKILL, started again, and exactly one AuditEvent per
denied attempt appears on the audit topic and in the record - the AuditEvents the journal's rows describe, ids
included (services/record/denials.py)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from devstack.local_broker import free_port
from services.common.kafka import RecordProducer
from services.common.topics import AUDIT_EVENTS
from services.record.denials import JOURNAL_FILE
from services.record.disclosures import DeniedAttempt, denied_events
from tests.consent.conftest import token_config
from tests.kafka_helpers import read_all
from tests.notify.conftest import ServiceProcess
from tests.record.conftest import bearer, harness_settings
from tests.record.fhir_data import CLINIC, T0, Event, iso, opioid_use_condition, patient, patient_id, unique

pytestmark = pytest.mark.integration


def _journalled(path: Path) -> list[DeniedAttempt]:
    """The journal's rows (read-only, beside the killed process's file)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [DeniedAttempt.from_json(facts) for (facts,) in conn.execute("SELECT facts FROM denied_attempt "
                                                                              "ORDER BY id")]
    finally:
        conn.close()


def _denied_about(records: list[Any], pid: str) -> list[dict[str, Any]]:
    events = [orjson.loads(r.value) for r in records]
    return [e for e in events if e["outcome"] == "4" and e["entity"][0]["what"]["reference"] == f"Patient/{pid}"]


def test_denied_attempts_answered_before_a_kill_9_are_audited_once_after_the_restart(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = harness_settings(kafka_bootstrap, disclosure_policy={}, record_tokens=token_config()).model_copy(
        update={"record_port": port, "record_base_url": base, "notify_store_dsn": f"sqlite:///{tmp_path}/notify.db"})
    env = {
        "CAREBUS_RECORD_PORT": str(port), "CAREBUS_RECORD_STORE_DSN": f"sqlite:///{tmp_path}/record.db",
        "CAREBUS_RECORD_GROUP_ID": settings.record_group_id,
        "CAREBUS_RECORD_TOKENS": orjson.dumps({k: v.model_dump() for k, v in settings.record_tokens.items()}).decode(),
        "CAREBUS_RECORD_DENIALS_INTERVAL_S": "3600",  # the writer's tick: only at start-up and shutdown here
    }
    record = ServiceProcess("record", settings, port, tmp_path / "record.log", env)
    mrn = unique("dur-")
    pid = patient_id(CLINIC, mrn)
    diagnosis = opioid_use_condition(CLINIC, pid, f"{mrn}-oud", iso(T0, 1))  # Part 2, no consent: withheld
    record.start()
    try:
        producer = RecordProducer(settings, "test-durable-denials")
        try:
            producer.send_all_and_wait([Event(CLINIC, mrn, [patient(CLINIC, mrn), diagnosis]).record(
                settings.topic_prefix)])
        finally:
            producer.close()
        with httpx.Client(base_url=base, headers=bearer("basic"), timeout=30) as client:
            deadline = time.monotonic() + 60
            while client.get(f"/Patient/{pid}").status_code != 200:
                assert time.monotonic() < deadline, "the bundle was not ingested"
                time.sleep(0.2)
            search = client.get("/Condition", params={"patient": pid, "_count": "5"})
            assert search.status_code == 200 and search.json()["total"] == 0  # withheld: a denied attempt
            assert client.get(f"/Condition/{diagnosis['id']}").status_code == 404  # withheld: another
        journalled = [a for a in _journalled(tmp_path / JOURNAL_FILE) if a.withheld]
        assert [(a.interaction, a.withheld) for a in journalled] == [
            ("search-type", ((f"Patient/{pid}", ()),)),
            ("read", ((f"Patient/{pid}", (f"Condition/{diagnosis['id']}",)),)),
        ]  # durable before the answers left, not written yet
        record.kill9()
        record.start()  # the writer's first tick writes what the killed process left

        expected = [e for a in journalled for e in denied_events(a)]
        topic = AUDIT_EVENTS.name(settings.topic_prefix)
        found = _denied_about(read_all(settings, topic, until=lambda rs: len(_denied_about(rs, pid)) >= 2), pid)
        assert sorted(found, key=lambda e: e["id"]) == sorted(expected, key=lambda e: e["id"])
        deadline = time.monotonic() + 60
        while True:  # and in the record, once each
            stored = httpx.get(f"{base}/AuditEvent", params={"patient": pid, "outcome": "4"},
                               headers=bearer("privacy"), timeout=30).json()
            if stored.get("total", 0) >= len(expected) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        audits = [e["resource"] for e in stored["entry"] if e["resource"]["resourceType"] == "AuditEvent"]
        assert sorted(e["id"] for e in audits) == sorted(e["id"] for e in expected)
        assert {e["subtype"][0]["code"] for e in audits} == {"search-type", "read"}
    finally:
        record.stop()
    assert [a for a in _journalled(tmp_path / JOURNAL_FILE) if a.withheld] == []  # written, then deleted
