"""Strimzi resources against the topic catalogue: KafkaTopics equal services/common/topics.py CATALOGUE, and
each service's KafkaUser may do exactly what the service does on Kafka."""

from __future__ import annotations

import importlib.util
from types import ModuleType
from typing import Any

import pytest

from services.common.settings import Settings
from services.common.topics import (
    AUDIT_EVENTS,
    CATALOGUE,
    DEAD_LETTERS,
    FHIR_BUNDLES,
    GENERAL_BUNDLES,
    INBOUND_EVENTS,
    OUTCOMES,
    RECORD_CHANGES,
    SAFETY_ALERTS,
)
from tests.deploy.helpers import ALL_KUSTOMIZATIONS, K8S, of_kind, one, render

Obj = dict[str, Any]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_topics", K8S / "generate_topics.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GENERATOR = _generator()
PREFIX = str(Settings.model_fields["topic_prefix"].default)
PARTITIONS = int(Settings.model_fields["kafka_topic_partitions"].default)


def test_checked_in_topics_are_generated_from_the_catalogue() -> None:
    checked_in = (K8S / "base" / "kafka" / "topics.yaml").read_text(encoding="utf-8")
    assert checked_in == GENERATOR.render(), "run: .venv/bin/python deploy/k8s/generate_topics.py"
    assert GENERATOR.main(["--check"]) == 0


@pytest.mark.parametrize("name", ALL_KUSTOMIZATIONS)
def test_kafka_topics_equal_the_catalogue(name: str) -> None:
    objects = render(name)
    cluster = one(objects, "Kafka", "carebus")["metadata"]["name"]
    topics = {t["spec"]["topicName"]: t for t in of_kind(objects, "KafkaTopic")}
    assert set(topics) == {spec.name(PREFIX) for spec in CATALOGUE}
    for spec in CATALOGUE:
        topic = topics[spec.name(PREFIX)]
        assert topic["apiVersion"] == "kafka.strimzi.io/v1"
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == cluster
        assert topic["spec"]["partitions"] == PARTITIONS
        assert topic["spec"]["replicas"] == 3
        assert topic["spec"]["config"] == {
            "cleanup.policy": spec.cleanup_policy,
            "retention.ms": spec.retention_ms,
            "max.message.bytes": spec.max_message_bytes,
            "min.insync.replicas": 2,
        }


@pytest.mark.parametrize("name", ALL_KUSTOMIZATIONS)
def test_services_use_the_prefix_of_the_topics(name: str) -> None:
    settings = one(render(name), "ConfigMap", _settings_config_map(render(name)))["data"]
    assert settings["CAREBUS_TOPIC_PREFIX"] == PREFIX


def _settings_config_map(objects: list[Obj]) -> str:
    names = [
        c["metadata"]["name"]
        for c in of_kind(objects, "ConfigMap")
        if c["metadata"]["name"].startswith("carebus-settings")
    ]
    assert len(names) == 1
    return str(names[0])


# --------------------------------------------------------------------------------------------- ACLs


def _allowed(user: Obj, resource_type: str, name: str, operation: str) -> bool:
    for acl in user["spec"]["authorization"]["acls"]:
        resource = acl["resource"]
        if resource["type"] != resource_type:
            continue
        pattern = resource.get("patternType", "literal")
        if (pattern == "literal" and resource["name"] in (name, "*")) or (
            pattern == "prefix" and name.startswith(resource["name"])
        ):
            if operation in acl["operations"] or "All" in acl["operations"]:
                return True
    return False


def _group_ids(objects: list[Obj]) -> dict[str, str]:
    config = one(objects, "ConfigMap", _settings_config_map(objects))["data"]
    record = one(objects, "Deployment", "carebus-record")["spec"]["template"]["spec"]["containers"][0]
    record_env = {e["name"]: e.get("value") for e in record.get("env", [])}
    return {
        "mapper": config.get(
            "CAREBUS_MAPPER_GROUP_ID", str(Settings.model_fields["mapper_group_id"].default)
        ),
        "record": record_env.get("CAREBUS_RECORD_GROUP_ID") or "carebus-record",
        "notify": _env_of(objects, "notify").get("CAREBUS_NOTIFY_GROUP_ID") or "carebus-notify",
        "outcomes": _env_of(objects, "outcomes").get("CAREBUS_OUTCOMES_GROUP_ID") or "carebus-outcomes",
        "outcomes-alerts": _env_of(objects, "outcomes").get("CAREBUS_ALERTS_GROUP_ID") or "carebus-safety-alerts",
    }


def _env_of(objects: list[Obj], service: str) -> dict[str, str | None]:
    container = one(objects, "Deployment", f"carebus-{service}")["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value") for e in container.get("env", [])}


# What each service does on Kafka: the topics it reads and writes. record also writes identity link/unlink
# commands to the bundle topic (services/record/api.py) and bundles it cannot store to the dead letters.
READS = {"intake": set(), "mapper": {INBOUND_EVENTS}, "record": {FHIR_BUNDLES, AUDIT_EVENTS},
         "general": {FHIR_BUNDLES}, "notify": {RECORD_CHANGES}, "outcomes": {RECORD_CHANGES, SAFETY_ALERTS}}
WRITES = {
    "intake": {INBOUND_EVENTS},
    "mapper": {FHIR_BUNDLES, SAFETY_ALERTS, DEAD_LETTERS},
    "record": {FHIR_BUNDLES, DEAD_LETTERS, RECORD_CHANGES, AUDIT_EVENTS},
    "general": {GENERAL_BUNDLES},
    "notify": set(),
    "outcomes": {FHIR_BUNDLES, OUTCOMES, SAFETY_ALERTS},  # derived resources and Tasks, outcome changes, escalations
}


@pytest.mark.parametrize("name", ALL_KUSTOMIZATIONS)
@pytest.mark.parametrize("service", ["intake", "mapper", "record", "general", "notify", "outcomes"])
def test_kafka_user_acls_grant_exactly_what_the_service_does(name: str, service: str) -> None:
    objects = render(name)
    user = one(objects, "KafkaUser", f"carebus-{service}")
    assert user["spec"]["authorization"]["type"] == "simple"
    for spec in CATALOGUE:
        topic = spec.name(PREFIX)
        assert _allowed(user, "topic", topic, "Read") == (spec in READS[service]), f"Read {topic}"
        assert _allowed(user, "topic", topic, "Write") == (spec in WRITES[service]), f"Write {topic}"
        if spec in READS[service] | WRITES[service]:
            assert _allowed(user, "topic", topic, "Describe"), f"Describe {topic}"
        for operation in ("Create", "Delete", "Alter", "AlterConfigs", "All"):
            assert not _allowed(user, "topic", topic, operation), f"{operation} {topic}"
    groups = _group_ids(objects)
    for owner, group in groups.items():
        assert _allowed(user, "group", group, "Read") == (owner.split("-")[0] == service), f"group {group}"
    assert not any(
        acl["resource"]["type"] in ("cluster", "transactionalId")
        for acl in user["spec"]["authorization"]["acls"]
    )


@pytest.mark.parametrize("name", ALL_KUSTOMIZATIONS)
def test_vendors_read_the_general_topic_only(name: str) -> None:
    vendors = [u for u in of_kind(render(name), "KafkaUser")
               if u["metadata"]["labels"].get("carebus.dev/role") == "vendor"]
    assert vendors
    for user in vendors:
        for spec in CATALOGUE:
            topic = spec.name(PREFIX)
            assert _allowed(user, "topic", topic, "Read") == (spec is GENERAL_BUNDLES), topic
            assert not _allowed(user, "topic", topic, "Write"), topic


@pytest.mark.parametrize("name", ALL_KUSTOMIZATIONS)
def test_mapper_may_describe_every_catalogue_topic(name: str) -> None:
    # the mapper's readiness (services/mapper/__main__.py) waits for every catalogue topic to be listed, and a
    # principal only sees the topics it may Describe
    user = one(render(name), "KafkaUser", "carebus-mapper")
    for spec in CATALOGUE:
        assert _allowed(user, "topic", spec.name(PREFIX), "Describe")


@pytest.mark.parametrize("name", ALL_KUSTOMIZATIONS)
def test_every_kafka_user_belongs_to_the_cluster_and_uses_scram(name: str) -> None:
    objects = render(name)
    users = of_kind(objects, "KafkaUser")
    assert {u["metadata"]["name"] for u in users} >= {"carebus-intake", "carebus-mapper", "carebus-record"}
    for user in users:
        assert user["apiVersion"] == "kafka.strimzi.io/v1"
        assert user["metadata"]["labels"]["strimzi.io/cluster"] == "carebus"
        assert user["spec"]["authentication"]["type"] == "scram-sha-512"
        for acl in user["spec"]["authorization"]["acls"]:
            assert acl["resource"]["type"] in ("topic", "group")
            assert acl["resource"]["name"].startswith("carebus"), "ACLs only on carebus resources"
