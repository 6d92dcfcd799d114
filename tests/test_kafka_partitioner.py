"""The producer's partitioner puts every key where kafka-python's (and the Java client's) default puts it."""

from __future__ import annotations

import pytest
from kafka.partitioner.default import DefaultPartitioner

from services.common.kafka import KeyHashPartitioner


class Cluster:
    """The three questions a partitioner asks of kafka-python's ClusterMetadata."""

    def __init__(self, partitions: int) -> None:
        self._partitions = set(range(partitions))

    def topics(self) -> set[str]:
        return {"t"}

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return self._partitions if topic == "t" else None

    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return self._partitions


@pytest.mark.parametrize("partitions", [1, 3, 6, 12, 48])
def test_keys_land_where_the_default_partitioner_puts_them(partitions: int) -> None:
    cluster = Cluster(partitions)
    ours, default = KeyHashPartitioner(), DefaultPartitioner()
    keys = [f"urn:carebus:clinic-{n % 7}|MRN{n:06d}".encode() for n in range(3000)] + [b"", b"\x00\xff", b"k" * 300]
    for key in keys + keys:  # the second pass is served by the memo
        assert ours.partition("t", key, key, None, b"v", cluster) == default.partition("t", key, key, None, b"v",
                                                                                        cluster)


def test_records_without_key_spread_and_unknown_topics_fail_as_before() -> None:
    cluster = Cluster(6)
    assert {KeyHashPartitioner().partition("t", None, None, None, b"v", cluster) for _ in range(300)} == set(range(6))
    with pytest.raises(ValueError):
        KeyHashPartitioner().partition("other", b"k", b"k", None, b"v", cluster)
