"""Inspect dead letters and replay them into the pipeline after a fix.

Replay re-publishes the original record (same key, value and headers) to the topic it came from, then writes a
ledger entry keyed '<partition>:<offset>' to the compacted ledger topic. A dead letter whose key is in the ledger
is never replayed again. ``dry_run`` lists what would be replayed and writes nothing.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from kafka import KafkaConsumer, TopicPartition

from services.common.event_headers import OPERATOR_SOURCE, REPLAYED_DEAD_LETTER_EVENT_TYPE, cloudevent_headers
from services.common.kafka import OutboundRecord, RecordProducer, client_config
from services.common.settings import Settings
from services.common.topics import DEAD_LETTERS, REPLAYED_DEAD_LETTERS


@dataclass(frozen=True)
class DeadLetter:
    partition: int
    offset: int
    reason: str
    message: str
    event_id: str
    event_type: str
    source_topic: str
    source_offset: int
    key: str
    original: bytes
    headers: dict[str, str]

    @property
    def ledger_key(self) -> str:
        return f"{self.partition}:{self.offset}"


def parse_dead_letter(partition: int, offset: int, value: bytes) -> DeadLetter:
    letter: dict[str, Any] = orjson.loads(value)
    original = letter["original"]
    raw = (base64.b64decode(original["value"]) if original.get("encoding") == "base64"
           else str(original["value"]).encode())
    source = letter.get("source", {})
    return DeadLetter(
        partition=partition, offset=offset, reason=str(letter.get("reason", "")),
        message=str(letter.get("message", "")), event_id=str(letter.get("event_id", "")),
        event_type=str(letter.get("event_type", "")), source_topic=str(source.get("topic", "")),
        source_offset=int(source.get("offset", -1)), key=str(source.get("key", "")), original=raw,
        headers={str(k): str(v) for k, v in letter.get("headers", {}).items()},
    )


def select_for_replay(letters: Iterable[DeadLetter], replayed: set[str], reason: str | None = None,
                      event_type: str | None = None) -> list[DeadLetter]:
    """Pure: the dead letters to replay now: matching the filters and never replayed before."""
    return [
        letter for letter in letters
        if letter.ledger_key not in replayed
        and (reason is None or letter.reason == reason)
        and (event_type is None or letter.event_type == event_type)
    ]


def _read_topic(settings: Settings, topic: str) -> Iterator[tuple[int, int, bytes | None, bytes | None]]:
    consumer = KafkaConsumer(**client_config(settings, "carebus-operator"), enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not partitions:
            return
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        while any(consumer.position(tp) < ends[tp] for tp in partitions):
            for tp, records in consumer.poll(timeout_ms=500).items():
                for record in records:
                    if record.offset < ends[tp]:
                        yield tp.partition, record.offset, record.key, record.value
    finally:
        consumer.close()


def read_dead_letters(settings: Settings) -> list[DeadLetter]:
    topic = DEAD_LETTERS.name(settings.topic_prefix)
    return [parse_dead_letter(p, o, v) for p, o, _, v in _read_topic(settings, topic) if v is not None]


def read_replayed(settings: Settings) -> set[str]:
    topic = REPLAYED_DEAD_LETTERS.name(settings.topic_prefix)
    return {k.decode() for _, _, k, v in _read_topic(settings, topic) if k is not None and v is not None}


def replay(settings: Settings, reason: str | None = None, event_type: str | None = None,
           dry_run: bool = False, now: datetime | None = None) -> list[DeadLetter]:
    """Replay the selected dead letters; returns them. Each is re-published before its ledger entry."""
    chosen = select_for_replay(read_dead_letters(settings), read_replayed(settings), reason, event_type)
    if dry_run or not chosen:
        return chosen
    ledger = REPLAYED_DEAD_LETTERS.name(settings.topic_prefix)
    stamp = (now or datetime.now(UTC)).isoformat()
    producer = RecordProducer(settings, "carebus-operator")
    try:
        producer.send_all_and_wait([
            OutboundRecord(letter.source_topic, letter.key, letter.original, letter.headers) for letter in chosen])
        producer.send_all_and_wait([
            OutboundRecord(ledger, letter.ledger_key,
                           orjson.dumps({"replayed_at": stamp, "reason": letter.reason,
                                         "source_offset": letter.source_offset}),
                           cloudevent_headers(letter.ledger_key, REPLAYED_DEAD_LETTER_EVENT_TYPE, OPERATOR_SOURCE,
                                              "application/json", stamp, letter.event_id))
            for letter in chosen])
    finally:
        producer.close()
    return chosen
