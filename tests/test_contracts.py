"""The published topic catalogue (schemas/asyncapi.yaml) matches the code and the topics it creates."""

from __future__ import annotations

import pytest
import yaml
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic

from services.common.asyncapi import ASYNCAPI_PATH, render
from services.common.kafka import OutboundRecord, RecordProducer, client_config, ensure_topics
from services.common.settings import Settings
from services.common.topics import CATALOGUE, FHIR_BUNDLES, MAX_MESSAGE_BYTES, SAFETY_ALERTS
from services.mapper.service import PRODUCER_TUNING
from tests.kafka_helpers import read_all


def test_checked_in_asyncapi_is_current() -> None:
    assert ASYNCAPI_PATH.read_text() == render(), "run: python -m services.common.asyncapi"


def test_every_channel_names_key_headers_and_payload() -> None:
    doc = yaml.safe_load(ASYNCAPI_PATH.read_text())
    assert doc["asyncapi"].startswith("3.")
    for name, message in doc["components"]["messages"].items():
        assert message["bindings"]["kafka"]["key"]["description"], name
        assert message["headers"]["properties"], name
        assert message["payload"], name


@pytest.mark.integration
def test_asyncapi_channels_equal_the_topics_the_code_creates(settings: Settings) -> None:
    created = ensure_topics(settings, CATALOGUE)
    admin = KafkaAdminClient(**client_config(settings, "test-admin"))
    try:
        on_broker = {t for t in admin.list_topics() if t.startswith(settings.topic_prefix + ".")}
    finally:
        admin.close()
    doc = yaml.safe_load(render(settings.topic_prefix))
    documented = {channel["address"] for channel in doc["channels"].values()}
    assert documented == on_broker == set(created)


def test_topics_are_created_with_the_catalogue_s_configuration(settings: Settings) -> None:
    ensure_topics(settings, CATALOGUE)
    admin = KafkaAdminClient(**client_config(settings, "test-admin"))
    try:
        described = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, spec.name(settings.topic_prefix)) for spec in CATALOGUE])
    finally:
        admin.close()
    for spec in CATALOGUE:
        config = described["topic"][spec.name(settings.topic_prefix)]
        assert config["cleanup.policy"]["value"] == spec.cleanup_policy
        assert config["retention.ms"]["value"] == str(spec.retention_ms)
        assert config["max.message.bytes"]["value"] == str(spec.max_message_bytes)


def test_a_bundle_over_kafka_s_default_1_mib_is_written_and_read_back(settings: Settings) -> None:
    ensure_topics(settings, CATALOGUE)
    topic = FHIR_BUNDLES.name(settings.topic_prefix)
    big = b'{"resourceType":"Bundle","pad":"' + b"x" * (3 * 1024 * 1024) + b'"}'
    assert 1024 * 1024 < len(big) < PRODUCER_TUNING["batch_size"] <= MAX_MESSAGE_BYTES
    producer = RecordProducer(settings, "test-big", **PRODUCER_TUNING)
    try:
        producer.send_all_and_wait([OutboundRecord(topic, "src|big", big, {}) for _ in range(2)])
    finally:
        producer.close()
    records = read_all(settings, topic, until=lambda rs: len(rs) >= 2)  # a reader with default fetch sizes
    assert [len(r.value) for r in records] == [len(big), len(big)]


def test_an_existing_topic_that_accepts_less_than_the_catalogue_is_raised_and_a_larger_one_kept(
        settings: Settings) -> None:
    bundles, alerts = FHIR_BUNDLES.name(settings.topic_prefix), SAFETY_ALERTS.name(settings.topic_prefix)
    admin = KafkaAdminClient(**client_config(settings, "test-admin"))
    try:
        admin.create_topics([  # as an older carebus (or someone else) made them
            NewTopic(bundles, 1, 1),  # Kafka's default: 1 MiB
            NewTopic(alerts, 1, 1, topic_configs={"max.message.bytes": str(4 * MAX_MESSAGE_BYTES)}),
        ])
        created = ensure_topics(settings, CATALOGUE)
        assert bundles not in created and alerts not in created
        described = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in (bundles, alerts)])
    finally:
        admin.close()
    assert described["topic"][bundles]["max.message.bytes"]["value"] == str(MAX_MESSAGE_BYTES)
    assert described["topic"][alerts]["max.message.bytes"]["value"] == str(4 * MAX_MESSAGE_BYTES)
