"""The published topic catalogue (schemas/asyncapi.yaml) matches the code and the topics it creates."""

from __future__ import annotations

import pytest
import yaml
from kafka import KafkaAdminClient

from services.common.asyncapi import ASYNCAPI_PATH, render
from services.common.kafka import client_config, ensure_topics
from services.common.settings import Settings
from services.common.topics import CATALOGUE


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
