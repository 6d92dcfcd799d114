"""Reading topics back in tests (real broker)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from services.common.kafka import client_config
from services.common.settings import Settings


def read_all(settings: Settings, topic: str, until: Callable[[list[ConsumerRecord]], bool] | None = None,
             timeout_s: float = 30.0) -> list[ConsumerRecord]:
    """Every record of ``topic`` from the beginning; waits until ``until(records)`` holds (or times out)."""
    consumer = KafkaConsumer(**client_config(settings, "test-reader"), enable_auto_commit=False)
    try:
        deadline = time.monotonic() + timeout_s
        partitions: list[TopicPartition] = []
        while not partitions and time.monotonic() < deadline:
            partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
            if not partitions:
                time.sleep(0.2)
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        records: list[ConsumerRecord] = []
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
            ends = consumer.end_offsets(partitions)
            caught_up = all(consumer.position(tp) >= ends[tp] for tp in partitions)
            if caught_up and (until is None or until(records)):
                break
        return records
    finally:
        consumer.close()


def header(record: ConsumerRecord, name: str) -> str | None:
    for key, value in record.headers or ():
        if key == name:
            return bytes(value).decode()
    return None


def binary_cloudevent(record: ConsumerRecord) -> Any:
    """The CloudEvent of a consumed record in the Kafka binding's binary mode, read by the CloudEvents SDK (which
    raises when a required attribute is missing or malformed)."""
    from cloudevents.core.bindings import kafka as ce_kafka

    headers = {name: bytes(value) for name, value in record.headers or ()}
    assert "ce_specversion" in headers, "not a binary-mode CloudEvent: no ce_specversion"
    return ce_kafka.from_binary_event(ce_kafka.KafkaMessage(headers=headers, key=record.key, value=record.value))
