"""The outcomes stack for integration tests: the record service (real broker, SQLite store, HTTP API) and the
outcomes service beside it (its own store connection on the same database, its own consumers), started once per
session; events go through the mapper's real Pipeline so bundles and alerts are exactly the mapper's.

The outcomes clock is a settable object (tests move time forward for escalations)."""

from __future__ import annotations

import copy
import hashlib
import itertools
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import orjson
import pytest
from kafka import KafkaConsumer

from services.common.events.examples import EXAMPLES
from services.common.kafka import OutboundRecord, client_config
from services.common.settings import RecordTokenGrant
from services.mapper.pipeline import InboundRecord, Pipeline, TopicNames
from services.outcomes.service import OutcomesService, build_service
from services.record.store import identity_policy, open_store
from tests.record.conftest import CLINIC_ORG, RecordHarness, harness_settings

T = TypeVar("T")
_ids = itertools.count(1)
SOURCE = "urn:carebus:source:riverside-cmhc"
OTHER_SOURCE = "urn:carebus:source:st-mary-hospital"
PHQ9_ITEMS = ["44250-9", "44255-8", "44259-0", "44254-1", "44251-7", "44258-2", "44252-5", "44253-3", "44260-8"]


def eventually(check: Callable[[], T | None], timeout_s: float = 30.0, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 15, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_ids):04d}-{uuid.uuid4().hex[:6]}"


def patient_event(source: str, patient_id: str, empi: str | None = None) -> dict[str, Any]:
    event = copy.deepcopy(EXAMPLES["org.carebus.patient.registered.v1"])
    event.update(id=unique("evt"), source=source)
    identifiers: list[dict[str, str]] = [{"system": f"{source}/mrn", "value": patient_id}]
    if empi:
        identifiers.append({"system": "urn:carebus:empi", "value": empi})
    event["data"].update(patient_id=patient_id, identifiers=identifiers)
    return event


def phq9_event(source: str, patient_id: str, authored: datetime, total: int, item9: int = 0,
               assessment_id: str | None = None) -> dict[str, Any]:
    """A PHQ-9 whose items add up to ``total`` (item 9 as given)."""
    remaining = total - item9
    answers = []
    for _ in PHQ9_ITEMS[:8]:
        answer = min(3, remaining)
        answers.append(answer)
        remaining -= answer
    assert remaining == 0, "total too high for the items"
    answers.append(item9)
    event = copy.deepcopy(EXAMPLES["org.carebus.assessment.completed.v1"])
    event.update(id=unique("evt"), source=source, time=authored.isoformat().replace("+00:00", "Z"))
    event["data"].update(patient_id=patient_id, assessment_id=assessment_id or unique("PHQ9"),
                         authored=authored.isoformat().replace("+00:00", "Z"), reported_total=None,
                         encounter_id=None,
                         items=[{"code": c, "answer": a} for c, a in zip(PHQ9_ITEMS, answers, strict=True)])
    return event


def mapped(pipeline: Pipeline, *events: dict[str, Any]) -> list[OutboundRecord]:
    """The records the mapper's real Pipeline makes of these events (bundles, alerts); none may dead-letter."""
    out: list[OutboundRecord] = []
    for n, event in enumerate(events):
        key = f"{event['source']}|{event['data']['patient_id']}".encode()
        raw = orjson.dumps(event)
        inbound = InboundRecord("inbound", 0, n, int(time.time() * 1000), key, raw,
                                (("ce_id", event["id"].encode()), ("ce_type", event["type"].encode())))
        outcome = pipeline.process(inbound)
        assert all(not r.topic.endswith("deadletter.v1") for r in outcome.records), outcome.records
        out.extend(outcome.records)
    return out


class OutcomesStack:
    def __init__(self, harness: RecordHarness) -> None:
        self.record = harness
        self.clock = Clock()
        self.settings = harness.settings.model_copy(update={
            "outcomes_group_id": f"outcomes-{uuid.uuid4().hex[:8]}",
            "alerts_group_id": f"alerts-{uuid.uuid4().hex[:8]}",
            "outcomes_escalation_interval_s": 3600.0,
            "outcomes_sweep_interval_s": 36000.0,
            "safety_task_owners": {"*": ["CareTeam/on-call", "Organization/crisis-line"],
                                   OTHER_SOURCE: ["CareTeam/st-mary-psych", "Practitioner/duty-psychiatrist"]},
        })
        store = open_store(harness.store.dsn, identity_policy(self.settings))
        self.outcomes: OutcomesService = build_service(self.settings, store=store)
        self.outcomes.engine.clock = self.clock
        self.pipeline = Pipeline(TopicNames.for_prefix(self.settings.topic_prefix))
        self.outcomes.start()
        prefix = self.settings.topic_prefix
        self.watch = KafkaConsumer(f"{prefix}.outcomes.v1", f"{prefix}.alerts.safety.v1",
                                   **client_config(self.settings, "outcomes-test-watch"), group_id=None,
                                   auto_offset_reset="earliest", enable_auto_commit=False)
        self.seen: list[tuple[str, str, dict[str, Any]]] = []  # (topic suffix, key, value)

    def mapped(self, *events: dict[str, Any]) -> list[OutboundRecord]:
        return mapped(self.pipeline, *events)

    def send(self, *events: dict[str, Any]) -> list[OutboundRecord]:
        """Map the events and publish their bundles and alerts (waits for the record to ingest the bundles)."""
        records = self.mapped(*events)
        self.publish(records)
        return records

    def publish(self, records: list[OutboundRecord]) -> None:
        bundles = [r for r in records if r.topic.endswith("fhir.bundles.v1")]
        others = [r for r in records if not r.topic.endswith("fhir.bundles.v1")]
        if bundles:
            self.record.publish_raw(bundles)
        if others:
            self.record.producer.send_all_and_wait(others)

    def poll(self) -> list[tuple[str, str, dict[str, Any]]]:
        for records in self.watch.poll(timeout_ms=300).values():
            for r in records:
                suffix = r.topic.split(".", 1)[1]
                self.seen.append((suffix, (r.key or b"").decode(), orjson.loads(r.value)))
        return self.seen

    def changes(self, patient: str) -> list[dict[str, Any]]:
        return [v for topic, key, v in self.poll() if topic == "outcomes.v1" and key == patient]

    def close(self) -> None:
        self.watch.close()
        self.outcomes.stop()


@pytest.fixture(scope="session")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OutcomesStack]:
    dsn = f"sqlite:///{tmp_path_factory.mktemp('outcomes')}/record.db"
    settings = harness_settings(kafka_bootstrap)
    writer = RecordTokenGrant(scopes=["user/*.read", "user/Task.write"], clearances=["behavioral-health"],
                              organization=CLINIC_ORG, label="clinic safety desk")
    tokens = {**settings.record_tokens, hashlib.sha256(b"test-token-writer").hexdigest(): writer}
    harness = RecordHarness(settings.model_copy(update={"record_tokens": tokens}), dsn, "sqlite")
    built = OutcomesStack(harness)
    try:
        yield built
    finally:
        built.close()
        harness.close()


DAY = timedelta(days=1)
