"""An in-memory stand-in for services.common.kafka.RecordProducer, for in-process tests of what answers senders.

Honest about what it is: it keeps every record it acknowledged (``sent``), in order, with the partition the real
producer would choose (murmur2 of the key, services.common.kafka.KeyHashPartitioner's rule) and per-partition
offsets; it can be told to fail the way Kafka does (``go_down()``: every write raises BrokerUnavailable, nothing
is kept; ``fail_after(n)``: the next write keeps its first ``n`` records, then raises, as an acks=all batch that
times out part-way). It is not a broker: integration tests use the real one (tests/conftest.py).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from kafka import TopicPartition
from kafka.producer.future import RecordMetadata

from services.common.errors import BrokerUnavailable
from services.common.kafka import OutboundRecord, _key_hash


class FakeProducer:
    """Satisfies services.common.kafka.RecordWriter."""

    def __init__(self, partitions: int = 3) -> None:
        self.partitions = partitions
        self.sent: list[OutboundRecord] = []
        self.attempts = 0  # calls of send_all_async, failed ones included
        self._offsets: dict[tuple[str, int], int] = defaultdict(int)
        self._down = False
        self._fail_after: int | None = None

    def go_down(self) -> None:
        self._down = True

    def come_back(self) -> None:
        self._down = False
        self._fail_after = None

    def fail_after(self, records: int) -> None:
        self._fail_after = records

    def partition_of(self, key: str) -> int:
        return _key_hash(key.encode()) % self.partitions

    async def send_all_async(self, records: Sequence[OutboundRecord]) -> list[RecordMetadata]:
        self.attempts += 1
        if self._down:
            raise BrokerUnavailable("write not acknowledged: KafkaTimeoutError")
        metas: list[RecordMetadata] = []
        for index, record in enumerate(records):
            if self._fail_after is not None and index >= self._fail_after:
                self._fail_after = None
                raise BrokerUnavailable("write not acknowledged: KafkaTimeoutError")
            partition = self.partition_of(record.key)
            offset = self._offsets[(record.topic, partition)]
            self._offsets[(record.topic, partition)] = offset + 1
            self.sent.append(record)
            metas.append(RecordMetadata(record.topic, partition, TopicPartition(record.topic, partition), offset,
                                        -1, -1, len(record.key), len(record.value), -1))
        self._fail_after = None
        return metas
