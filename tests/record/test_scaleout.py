"""Scale-out of the record: two record processes in one consumer group on one PostgreSQL share the bundle
partitions and build exactly the record that one instance builds — identity merges across partitions included.

The input is the mapper's real output for the sample care journey of many people: some are distinct, and some
are one person registered by several source systems under one enterprise identifier (their bundles are keyed by
source patient, so they land on different partitions and are ingested by different instances)."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from devstack.journey import sample_care_journey
from devstack.local_broker import free_port
from services.common.events import parse_event, patient_key
from services.common.kafka import RecordProducer, client_config, ensure_topics
from services.common.settings import REPO_ROOT, Settings
from services.common.topics import CATALOGUE, FHIR_BUNDLES, INBOUND_EVENTS
from services.mapper.pipeline import InboundRecord, Pipeline, TopicNames
from tests.record.conftest import PostgresServer, token_config

pytestmark = pytest.mark.integration

# what a store holds, in an order that does not depend on which instance wrote a row first
STORE_QUERIES = {
    "current": "SELECT resource_type, id, version_id, deleted, content_hash, patient_ref, restriction "
               "FROM resource_current ORDER BY resource_type, id",
    "versions": "SELECT resource_type, id, version_id, deleted, content_hash FROM resource_version "
                "ORDER BY resource_type, id, version_id",
    "persons": "SELECT patient_ref, person_id FROM identity_member ORDER BY patient_ref",
    "search": "SELECT resource_type, id, param, system, code, patient_ref FROM search_token "
              "ORDER BY resource_type, id, param, system, code",
    "assertions": "SELECT assertion_id, ref_a, ref_b, kind, survivor FROM identity_assertion ORDER BY 1",
}


def _suffix_ids(value: Any, suffix: str) -> Any:
    """Every source id (``*_id`` fields) made the person's own, so no two people share an appointment id."""
    if isinstance(value, dict):
        return {k: (f"{v}{suffix}" if k.endswith("_id") and isinstance(v, str) else _suffix_ids(v, suffix))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_suffix_ids(v, suffix) for v in value]
    return value


def journey_events(people: int, shared_person: int) -> list[dict[str, Any]]:
    """The journey for ``people`` source patients; the first ``shared_person`` share one enterprise id (one
    person registered by many systems); the others have enterprise ids of their own."""
    journey = sample_care_journey(datetime(2026, 1, 5, 9, 0, tzinfo=UTC) - timedelta(days=1))
    events: list[dict[str, Any]] = []
    for person in range(people):
        suffix = f"-so{person}"
        for template in journey:
            event = copy.deepcopy(template)
            event["id"] = f"{template['id']}{suffix}"
            event["data"] = _suffix_ids(event["data"], suffix)
            for identifier in event["data"].get("identifiers", []) or []:
                if person >= shared_person and isinstance(identifier, dict) and "value" in identifier:
                    identifier["value"] = f"{identifier['value']}{suffix}"
            events.append(event)
    return events


def mapped_bundles(settings: Settings, events: list[dict[str, Any]]) -> int:
    """Map the events with the real pipeline and write its bundle records to the bundle topic."""
    pipeline = Pipeline(TopicNames.for_prefix(settings.topic_prefix))
    bundle_topic = FHIR_BUNDLES.name(settings.topic_prefix)
    inbound = INBOUND_EVENTS.name(settings.topic_prefix)
    records = []
    for offset, event in enumerate(events):
        key = patient_key(parse_event(event)).encode()  # as intake keys it: by source patient
        outcome = pipeline.process(InboundRecord(inbound, 0, offset, 1767600000000 + offset, key,
                                                 orjson.dumps(event), (("ce_id", event["id"].encode()),
                                                                       ("ce_type", event["type"].encode()))))
        assert outcome.dead_letter_reason is None, outcome.dead_letter_reason
        records.extend(r for r in outcome.records if r.topic == bundle_topic)
    producer = RecordProducer(settings, "test-scaleout")
    producer.send_all_and_wait(records)
    producer.close()
    return len(records)


def start_record(settings: Settings, dsn: str, group: str, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {**os.environ, "CAREBUS_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
           "CAREBUS_TOPIC_PREFIX": settings.topic_prefix, "CAREBUS_KAFKA_TOPIC_PARTITIONS": "6",
           "CAREBUS_RECORD_PORT": str(port), "CAREBUS_RECORD_GROUP_ID": group,
           "CAREBUS_RECORD_STORE_DSN": dsn, "CAREBUS_LOG_LEVEL": "INFO",
           "CAREBUS_RECORD_TOKENS": json.dumps({d: g.model_dump() for d, g in token_config().items()})}
    with log.open("ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "services.record"], cwd=REPO_ROOT, env=env,
                                   stdout=out, stderr=subprocess.STDOUT)
    return process, port


def wait_members(settings: Settings, group: str, members: int, timeout_s: float = 60) -> None:
    """Until the group has ``members`` members that each hold bundle partitions."""
    admin = KafkaAdminClient(**client_config(settings, "test-scaleout-admin"))
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                described = admin.describe_groups([group]).get(group, {})
            except KafkaError:  # the group (or its coordinator) does not exist yet
                described = {}
            holding = [m for m in described.get("members", [])
                       if (m.get("member_assignment") or {}).get("assigned_partitions")]
            state = described.get("group_state")
            if state == "Stable" and len(holding) == members:
                return
            assert time.monotonic() < deadline, f"group {group}: {state}, {described.get('members')}"
            time.sleep(0.3)
    finally:
        admin.close()


def versions_written(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return sum(float(v) for v in re.findall(r"^carebus_record_versions_written_total\{?[^ ]*\}? (\S+)$", text, re.M))


def wait_consumed(settings: Settings, group: str, processes: list[subprocess.Popen[bytes]], log: Path,
                  timeout_s: float = 180) -> None:
    topic = FHIR_BUNDLES.name(settings.topic_prefix)
    consumer = KafkaConsumer(**client_config(settings, "test-scaleout-lag"), group_id=group,
                             enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends = consumer.end_offsets(partitions)
        deadline = time.monotonic() + timeout_s
        while True:
            assert all(p.poll() is None for p in processes), log.read_text()[-3000:]
            if all((consumer.committed(tp) or 0) >= ends[tp] for tp in partitions):
                return
            assert time.monotonic() < deadline, "the record instances did not catch up"
            time.sleep(0.5)
    finally:
        consumer.close()


def store_contents(dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(dsn) as conn:
        return {name: conn.execute(query).fetchall() for name, query in STORE_QUERIES.items()}


def test_two_record_instances_build_the_record_one_instance_builds(
        kafka_bootstrap: str, postgres_server: PostgresServer, tmp_path: Path) -> None:
    settings = Settings(kafka_bootstrap=kafka_bootstrap, topic_prefix=f"so{uuid.uuid4().hex[:8]}",
                        kafka_topic_partitions=6)
    ensure_topics(settings, CATALOGUE)
    log = tmp_path / "record.log"
    runs = {name: (postgres_server.fresh_schema_dsn(), f"record-{name}-{uuid.uuid4().hex[:6]}", instances)
            for name, instances in (("one", 1), ("two", 2))}
    started = {name: [start_record(settings, dsn, group, log) for _ in range(instances)]
               for name, (dsn, group, instances) in runs.items()}
    processes = [process for run in started.values() for process, _port in run]
    try:
        for _name, (_dsn, group, instances) in runs.items():  # both instances hold partitions before data flows
            wait_members(settings, group, instances)
        written = mapped_bundles(settings, journey_events(people=24, shared_person=8))
        assert written > 300
        for _name, (_dsn, group, _instances) in runs.items():
            wait_consumed(settings, group, processes, log)
        per_instance = {name: [versions_written(port) for _process, port in run] for name, run in started.items()}
    finally:
        for process in processes:
            process.terminate()
        exit_codes = [process.wait(timeout=60) for process in processes]
    assert exit_codes == [0] * len(processes), log.read_text()[-3000:]
    assert all(count > 0 for count in per_instance["two"]), f"both instances must have ingested bundles: {per_instance}"
    one, two = (store_contents(runs[name][0]) for name in ("one", "two"))
    assert sum(per_instance["two"]) == sum(per_instance["one"])
    assert len(one["current"]) > 100
    persons = {person for _ref, person in one["persons"]}
    assert len(persons) < len(one["persons"]), "some source patients must have been linked into one person"
    assert one == two
