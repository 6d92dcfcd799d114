"""What `carebus status` shows: services up, per-topic throughput, consumer lag, dead letters, alerts waiting."""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from services.common.kafka import client_config
from services.common.lag import group_partition_lag
from services.common.settings import Settings
from services.common.topics import CATALOGUE, DEAD_LETTERS, FHIR_BUNDLES, INBOUND_EVENTS, SAFETY_ALERTS


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    url: str
    ready: bool
    detail: str


@dataclass(frozen=True)
class TopicStatus:
    topic: str
    records: int  # end offsets summed over partitions
    per_second: float  # new records per second over the sampling window


@dataclass(frozen=True)
class GroupLag:
    group: str
    topic: str
    lag: int


def service_status(settings: Settings) -> list[ServiceStatus]:
    out = []
    for name, port in (("intake", settings.intake_port), ("mapper", settings.mapper_port),
                       ("record", settings.record_port)):
        url = f"http://{settings.http_host}:{port}/readyz"
        try:
            response = httpx.get(url, timeout=2)
            out.append(ServiceStatus(name, url, response.status_code == 200, response.json().get("reason", "")))
        except (httpx.HTTPError, ValueError) as exc:
            out.append(ServiceStatus(name, url, False, type(exc).__name__))
    return out


def _end_offsets(consumer: KafkaConsumer, topic: str) -> dict[TopicPartition, int]:
    partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
    return dict(consumer.end_offsets(partitions)) if partitions else {}


def topic_status(settings: Settings, window_s: float = 2.0) -> list[TopicStatus]:
    consumer = KafkaConsumer(**client_config(settings, "carebus-status"))
    try:
        names = [spec.name(settings.topic_prefix) for spec in CATALOGUE]
        before = {name: sum(_end_offsets(consumer, name).values()) for name in names}
        time.sleep(window_s)
        after = {name: sum(_end_offsets(consumer, name).values()) for name in names}
    finally:
        consumer.close()
    return [TopicStatus(name, after[name], (after[name] - before[name]) / window_s) for name in names]


def group_lags(settings: Settings, groups: dict[str, str]) -> list[GroupLag]:
    """Lag of each ``group -> topic`` pair: end offsets minus committed offsets (uncommitted counts whole)."""
    admin = KafkaAdminClient(**client_config(settings, "carebus-status"))
    consumer = KafkaConsumer(**client_config(settings, "carebus-status"))
    try:
        out = []
        for group, topic in groups.items():
            try:
                lag = sum(group_partition_lag(admin, consumer, group, topic).values())
            except KafkaError:
                lag = sum(_end_offsets(consumer, topic).values())
            out.append(GroupLag(group, topic, lag))
        return out
    finally:
        admin.close()
        consumer.close()


def default_groups(settings: Settings) -> dict[str, str]:
    p = settings.topic_prefix
    return {
        settings.mapper_group_id: INBOUND_EVENTS.name(p),
        "carebus-record": FHIR_BUNDLES.name(p),
        settings.alerts_group_id: SAFETY_ALERTS.name(p),
    }


def dead_letter_depth(settings: Settings, replayed: int) -> int:
    consumer = KafkaConsumer(**client_config(settings, "carebus-status"))
    try:
        return max(0, sum(_end_offsets(consumer, DEAD_LETTERS.name(settings.topic_prefix)).values()) - replayed)
    finally:
        consumer.close()
