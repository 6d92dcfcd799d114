"""The operator CLI against the real broker: topics, status, dead-letter inspection and replay (never twice)."""

from __future__ import annotations

import orjson
import pytest
from typer.testing import CliRunner

from services.common.kafka import RecordProducer
from services.common.runtime import prepare_topics
from services.common.settings import Settings
from services.common.topics import CATALOGUE, INBOUND_EVENTS
from services.mapper.pipeline import InboundRecord, Pipeline, TopicNames
from services.operator import deadletters
from services.operator.cli import app
from tests.kafka_helpers import read_all

pytestmark = pytest.mark.integration


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("CAREBUS_KAFKA_BOOTSTRAP", settings.kafka_bootstrap)
    monkeypatch.setenv("CAREBUS_TOPIC_PREFIX", settings.topic_prefix)
    monkeypatch.setenv("CAREBUS_KAFKA_TOPIC_PARTITIONS", "3")
    monkeypatch.setenv("COLUMNS", "250")
    return settings


def test_topics_create_then_check(cli_env: Settings) -> None:
    runner = CliRunner()
    check = runner.invoke(app, ["topics", "check"])
    assert check.exit_code == 1 and "MISSING" in check.output
    created = runner.invoke(app, ["topics", "create"])
    assert created.exit_code == 0 and f"created {len(CATALOGUE)} topic(s)" in created.output
    check = runner.invoke(app, ["topics", "check"])
    assert check.exit_code == 0, check.output
    assert "MISSING" not in check.output


def test_status_reports_services_topics_lag_and_dead_letters(cli_env: Settings) -> None:
    prepare_topics(cli_env)
    result = CliRunner().invoke(app, ["status", "--window", "0.2"])
    assert result.exit_code == 0, result.output
    for heading in ("services", "topics", "consumer lag", "dead letters waiting"):
        assert heading in result.output


def test_dead_letters_replay_once_with_dry_run(cli_env: Settings) -> None:
    settings = cli_env
    prepare_topics(settings)
    # Two records the mapper dead-letters: a schema violation and a type the mapper does not know yet.
    pipeline = Pipeline(TopicNames.for_prefix(settings.topic_prefix))
    inbound = INBOUND_EVENTS.name(settings.topic_prefix)
    letters = []
    for offset, body in enumerate([b'{"specversion": "1.0", "id": "e1", "type": "org.carebus.nope.v1"}', b"[1]"]):
        outcome = pipeline.process(InboundRecord(inbound, 0, offset, 1767600000000, b"src|p1", body,
                                                 (("ce_id", f"e{offset}".encode()),)))
        assert outcome.dead_letter_reason is not None
        letters.extend(outcome.records)
    producer = RecordProducer(settings, "test-operator")
    producer.send_all_and_wait(letters)
    producer.close()

    runner = CliRunner()
    listed = runner.invoke(app, ["deadletters", "list"])
    assert listed.exit_code == 0 and "2 dead letter(s)" in listed.output
    assert "schema-violation" in listed.output and "mapping-failed" in listed.output

    dry = runner.invoke(app, ["deadletters", "replay", "--reason", "schema-violation", "--dry-run"])
    assert "would replay 1 dead letter(s)" in dry.output
    assert read_all(settings, inbound, timeout_s=3) == []  # a dry run writes nothing

    first = runner.invoke(app, ["deadletters", "replay", "--reason", "schema-violation"])
    assert "replayed 1 dead letter(s)" in first.output
    again = runner.invoke(app, ["deadletters", "replay"])
    assert "replayed 1 dead letter(s)" in again.output  # only the other one
    third = runner.invoke(app, ["deadletters", "replay"])
    assert "replayed 0 dead letter(s)" in third.output  # never the same one twice

    replayed = read_all(settings, inbound, until=lambda rs: len(rs) >= 2)
    assert sorted(r.value for r in replayed) == sorted(
        [b'{"specversion": "1.0", "id": "e1", "type": "org.carebus.nope.v1"}', b"[1]"])
    assert {r.key for r in replayed} == {b"src|p1"}
    assert len(deadletters.read_replayed(settings)) == 2
    assert orjson.loads(letters[0].value)["source"]["offset"] == 0


@pytest.mark.parametrize("command", [["deadletters", "list"], ["topics", "check"], ["status", "--window", "0"]])
def test_unreachable_kafka_is_one_line_and_exit_2(command: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAREBUS_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    monkeypatch.setenv("CAREBUS_KAFKA_REQUEST_TIMEOUT_S", "1")
    monkeypatch.setenv("CAREBUS_INTAKE_PORT", "1")
    monkeypatch.setenv("CAREBUS_MAPPER_PORT", "1")
    monkeypatch.setenv("CAREBUS_RECORD_PORT", "1")
    monkeypatch.setenv("COLUMNS", "250")
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 2
    assert "Kafka unreachable" in result.output
    assert "Traceback" not in result.output
