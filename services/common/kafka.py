"""The one wrapper around kafka-python: connection/security settings, acks, idempotence, keys and headers.

Producers connect lazily and flush on close. Every produce that answers a sender waits for acks=all, so
nothing is acknowledged upstream before it is durable in Kafka. kafka-python errors are wrapped in
:class:`BrokerUnavailable` (``raise ... from exc``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.partitioner.default import DefaultPartitioner, murmur2
from kafka.producer.future import FutureRecordMetadata, RecordMetadata

from services.common.errors import BrokerUnavailable
from services.common.settings import Settings
from services.common.topics import TopicSpec

log = logging.getLogger(__name__)


def client_config(settings: Settings, client_id: str) -> dict[str, Any]:
    """Connection and security options shared by producers, consumers and the admin client."""
    config: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap.split(","),
        "client_id": client_id,
        "security_protocol": settings.kafka_security_protocol,
        "request_timeout_ms": int(settings.kafka_request_timeout_s * 1000) + 5000,
        "bootstrap_timeout_ms": int(settings.kafka_request_timeout_s * 1000),
        # kafka-python backs off reconnects exponentially up to 30 s by default: after an outage a client then
        # waits up to that long after the broker is back. At most 1 s between attempts.
        "reconnect_backoff_max_ms": 1000,
    }
    if settings.kafka_sasl_mechanism:
        config["sasl_mechanism"] = settings.kafka_sasl_mechanism
        config["sasl_plain_username"] = settings.kafka_sasl_username
        config["sasl_plain_password"] = (
            settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else None
        )
    if settings.kafka_ssl_cafile:
        config["ssl_cafile"] = str(settings.kafka_ssl_cafile)
    if settings.kafka_ssl_certfile:
        config["ssl_certfile"] = str(settings.kafka_ssl_certfile)
    if settings.kafka_ssl_keyfile:
        config["ssl_keyfile"] = str(settings.kafka_ssl_keyfile)
    return config


@dataclass  # hot path: plain, never changed after init (docs/hot-path.md)
class OutboundRecord:
    """One record to write: ``headers`` values are plain strings without PHI."""

    topic: str
    key: str
    value: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


@lru_cache(maxsize=65536)
def _key_hash(key: bytes) -> int:
    return int(murmur2(key)) & 0x7FFFFFFF


class KeyHashPartitioner(DefaultPartitioner):  # type: ignore[misc]
    """kafka-python's default partitioning (murmur2 of the key, as the Java client does, so every client puts
    a patient's records on the same partition) with each key's hash memoized: one patient's events come in
    runs, and the pure-Python hash costs about as much as the rest of a small record's send."""

    def partition(self, topic: str, key: Any, serialized_key: bytes | None, value: Any,
                  serialized_value: Any, cluster: Any) -> int:
        partitions = cluster.partitions_for_topic(topic) if serialized_key is not None else None
        if not partitions:  # no key (random), or an unknown topic (the default raises)
            return int(super().partition(topic, key, serialized_key, value, serialized_value, cluster))
        return int(sorted(partitions)[_key_hash(serialized_key) % len(partitions)])


def _encode_headers(headers: Mapping[str, str]) -> list[tuple[str, bytes]]:
    return [(name, value.encode()) for name, value in headers.items()]


class RecordWriter(Protocol):
    """What a service that answers senders needs of a producer (RecordProducer; tests/fakes.py in tests)."""

    async def send_all_async(self, records: Sequence[OutboundRecord]) -> list[RecordMetadata]: ...


class RecordProducer:
    """Idempotent acks=all producer. Thread-safe (kafka-python's producer is).

    ``broker_down``, when given, says the broker is known to be unreachable (a readiness probe's last answer):
    writes then fail at once with BrokerUnavailable instead of each waiting out the request timeout.

    A write Kafka does not acknowledge drops the client (:meth:`reset`): kafka-python's idempotent producer can
    stay wedged for good after the broker crashed with writes in flight (every later write times out; tested in
    tests/faults), so the next write starts a new producer (a new producer id). The caller retries what failed.
    """

    def __init__(self, settings: Settings, client_id: str, *, broker_down: Callable[[], bool] | None = None,
                 **overrides: Any) -> None:
        self._settings = settings
        self._broker_down = broker_down
        self._config = {
            **client_config(settings, client_id),
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": 0,
            "partitioner": KeyHashPartitioner(),
            "metrics_enabled": False,  # kafka-python's own sensors: never read nor exported, a cost on every request
            "max_block_ms": int(settings.kafka_request_timeout_s * 1000),
            "delivery_timeout_ms": int(settings.kafka_request_timeout_s * 1000) + 6000,
            **overrides,
        }
        self._producer: KafkaProducer | None = None
        self._lock = threading.Lock()
        self._acks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopAcks] = weakref.WeakKeyDictionary()

    def _client(self) -> KafkaProducer:
        with self._lock:
            if self._producer is None:
                try:
                    self._producer = KafkaProducer(**self._config)
                except KafkaError as exc:
                    raise BrokerUnavailable(f"cannot connect to Kafka: {type(exc).__name__}") from exc
            return self._producer

    def reset(self) -> None:
        """Forget the client after a write was not acknowledged; the next write makes a new one. Writes still in
        flight on the old client are abandoned (closed without waiting, on a thread of its own)."""
        with self._lock:
            old, self._producer = self._producer, None
        if old is not None:
            threading.Thread(target=_close_quietly, args=(old,), name="producer-close", daemon=True).start()

    @property
    def request_timeout_s(self) -> float:
        """How long a write may wait for its acknowledgement."""
        return self._settings.kafka_request_timeout_s

    def send(self, record: OutboundRecord) -> FutureRecordMetadata:
        """Start a write; the future resolves once every in-sync replica has it."""
        try:
            return self._client().send(
                record.topic,
                value=record.value,
                key=record.key.encode(),
                headers=_encode_headers(record.headers),
            )
        except KafkaError as exc:
            raise BrokerUnavailable(f"produce to {record.topic} failed: {type(exc).__name__}") from exc

    def _knows_partitions(self, topics: set[str]) -> bool:
        """Whether the producer has partition metadata for every topic, so send() cannot block: the same test
        kafka-python's send() makes before it would wait for metadata."""
        metadata = getattr(self._producer, "_metadata", None)
        return metadata is not None and all(metadata.partitions_for_topic(topic) is not None for topic in topics)

    def _check_broker(self) -> None:
        if self._broker_down is not None and self._broker_down():
            raise BrokerUnavailable("kafka is known to be unreachable")

    def send_all_and_wait(self, records: Sequence[OutboundRecord]) -> list[RecordMetadata]:
        """Write every record and block until all are acknowledged (acks=all), or raise BrokerUnavailable."""
        self._check_broker()
        try:
            futures = [self.send(record) for record in records]
            timeout = self._settings.kafka_request_timeout_s
            return [future.get(timeout=timeout) for future in futures]
        except KafkaError as exc:
            self.reset()
            raise BrokerUnavailable(f"write not acknowledged: {type(exc).__name__}") from exc
        except BrokerUnavailable:
            self.reset()
            raise

    async def send_all_async(self, records: Sequence[OutboundRecord]) -> list[RecordMetadata]:
        """Asyncio form of :meth:`send_all_and_wait`: awaits the broker's acks without blocking the loop."""
        self._check_broker()
        loop = asyncio.get_running_loop()
        try:
            if self._knows_partitions({record.topic for record in records}):
                # send() only appends to the accumulator: no reason to hop to a thread (the hop, its wake-up and
                # the GIL hand-overs cost more than the send itself)
                futures = [self.send(record) for record in records]
            else:
                # kafka-python's send() blocks while it waits for topic metadata (at start, after a broker
                # outage, up to max_block_ms): a worker thread waits instead, so one slow write never stalls
                # the others
                futures = await loop.run_in_executor(None, lambda: [self.send(record) for record in records])
        except BrokerUnavailable:
            self.reset()
            raise
        acks = self._acks.get(loop)
        if acks is None:
            acks = self._acks[loop] = _LoopAcks(loop)
        waiters: list[asyncio.Future[RecordMetadata]] = []
        for future in futures:
            waiter: asyncio.Future[RecordMetadata] = loop.create_future()
            future.add_callback(acks.resolve, waiter)
            future.add_errback(acks.reject, waiter)
            waiters.append(waiter)
        try:
            async with asyncio.timeout(self._settings.kafka_request_timeout_s):
                if len(waiters) == 1:  # the usual single write: no gathering future
                    return [await waiters[0]]
                return list(await asyncio.gather(*waiters))
        except (TimeoutError, KafkaError) as exc:
            self.reset()
            raise BrokerUnavailable(f"write not acknowledged: {type(exc).__name__}") from exc

    def flush(self, timeout_s: float | None = None) -> None:
        if self._producer is not None:
            self._producer.flush(timeout=timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        """Send what is pending (waiting at most ``timeout_s``), then stop the producer's network thread."""
        producer, self._producer = self._producer, None
        if producer is not None:
            _shut(producer, timeout_s)


def _close_quietly(producer: KafkaProducer) -> None:
    """Close an abandoned producer without waiting for its writes (their callers have been told they failed)."""
    _shut(producer, 0.0)


def _shut(producer: KafkaProducer, timeout_s: float) -> None:
    """Close ``producer`` and make sure its network thread stops. kafka-python's ``close`` flushes first and, when
    the flush times out (records still pending because the broker is gone), raises before it stops the thread:
    each abandoned producer would keep a thread reconnecting to a dead broker for the life of the process. Its
    sender is then force-closed (dropping what is pending: those writes were already reported as failed)."""
    try:
        producer.close(timeout=timeout_s)
    except Exception as exc:  # whatever the flush raised, the thread must still stop
        log.debug("producer closed with pending writes", extra={"error": type(exc).__name__})
        sender = getattr(producer, "_sender", None)
        if sender is not None:
            sender.force_close()
            sender.join(timeout=max(timeout_s, 1.0))


class _LoopAcks:
    """Acknowledgements handed from kafka-python's sender thread to one event loop, with one wake-up of the loop
    for all those that arrive together (a produce response completes every record of its batches at once;
    each ``call_soon_threadsafe`` is a write to the loop's self-pipe, and the loop's read of it)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[asyncio.Future[RecordMetadata], RecordMetadata | BaseException]] = []

    def resolve(self, waiter: asyncio.Future[RecordMetadata], meta: RecordMetadata) -> None:
        self._put(waiter, meta)

    def reject(self, waiter: asyncio.Future[RecordMetadata], exc: BaseException) -> None:
        self._put(waiter, exc)

    def _put(self, waiter: asyncio.Future[RecordMetadata], outcome: RecordMetadata | BaseException) -> None:
        with self._lock:
            self._pending.append((waiter, outcome))
            if len(self._pending) > 1:  # a wake-up is already on its way: it takes this one too
                return
        try:
            self._loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the loop is closed: nobody waits on it any more
            with self._lock:
                self._pending.clear()

    def _deliver(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for waiter, outcome in pending:
            if waiter.done():  # its writer stopped waiting (timed out, cancelled)
                continue
            if isinstance(outcome, BaseException):
                waiter.set_exception(outcome)
            else:
                waiter.set_result(outcome)


def build_consumer(settings: Settings, client_id: str, group_id: str, topics: Iterable[str]) -> KafkaConsumer:
    """A consumer that never auto-commits: callers commit only after their outputs are acknowledged."""
    try:
        return KafkaConsumer(
            *topics,
            **client_config(settings, client_id),
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=500,
            session_timeout_ms=10000,
            heartbeat_interval_ms=3000,
        )
    except KafkaError as exc:
        raise BrokerUnavailable(f"cannot connect consumer: {type(exc).__name__}") from exc


def read_recent_headers(settings: Settings, client_id: str, topic: str, per_partition: int,
                        timeout_s: float = 15.0) -> Iterator[dict[str, bytes]]:
    """The headers of the last ``per_partition`` records of each partition of ``topic`` (oldest first within a
    partition), read without a consumer group and without committing anything. Stops at ``timeout_s``."""
    try:
        consumer = KafkaConsumer(**client_config(settings, client_id), group_id=None, enable_auto_commit=False)
    except KafkaError as exc:
        raise BrokerUnavailable(f"cannot connect consumer: {type(exc).__name__}") from exc
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not partitions:
            return
        consumer.assign(partitions)
        ends = consumer.end_offsets(partitions)
        starts = consumer.beginning_offsets(partitions)
        remaining = {tp for tp in partitions if ends[tp] > starts[tp]}
        for tp in partitions:
            consumer.seek(tp, max(starts[tp], ends[tp] - per_partition))
        deadline = time.monotonic() + timeout_s
        while remaining and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=500, max_records=2000).items():
                for record in records:
                    if record.offset < ends[tp]:
                        yield {name: value for name, value in record.headers or ()}
                if records and records[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
    finally:
        consumer.close(autocommit=False)


def ensure_topics(settings: Settings, specs: Iterable[TopicSpec]) -> list[str]:
    """Create the catalogue's topics that do not exist yet, and raise max.message.bytes on existing ones that
    accept less than the catalogue (e.g. created by an older carebus with Kafka's 1 MiB default: the mapper's
    4 MiB batches would be refused). Other settings of existing topics are the operators' and left alone.
    Returns the names created."""
    specs = list(specs)
    new_topics = [
        NewTopic(
            name=spec.name(settings.topic_prefix),
            num_partitions=settings.kafka_topic_partitions,
            replication_factor=settings.kafka_topic_replication,
            topic_configs={"cleanup.policy": spec.cleanup_policy, "retention.ms": str(spec.retention_ms),
                           "max.message.bytes": str(spec.max_message_bytes)},
        )
        for spec in specs
    ]
    try:
        admin = KafkaAdminClient(**client_config(settings, "carebus-admin"))
    except KafkaError as exc:
        raise BrokerUnavailable(f"cannot connect admin client: {type(exc).__name__}") from exc
    try:
        existing = set(admin.list_topics())
        missing = [topic for topic in new_topics if topic.name not in existing]
        created: list[str] = []
        for topic in missing:
            try:
                admin.create_topics([topic])
                created.append(topic.name)
            except TopicAlreadyExistsError:
                pass
        if created:
            admin.wait_for_topics(created, timeout_ms=30000)  # leaders elected, visible in metadata
            log.info("created topics", extra={"topics": created})
        _raise_max_message_bytes(admin, {spec.name(settings.topic_prefix): spec.max_message_bytes
                                         for spec in specs if spec.name(settings.topic_prefix) in existing})
        return created
    except KafkaError as exc:
        raise BrokerUnavailable(f"topic set-up failed: {type(exc).__name__}") from exc
    finally:
        admin.close()


def _raise_max_message_bytes(admin: KafkaAdminClient, wanted: dict[str, int]) -> None:
    if not wanted:
        return
    described = admin.describe_configs(  # the value in force, whether set on the topic or the broker
        [ConfigResource(ConfigResourceType.TOPIC, name, configs={"max.message.bytes": None}) for name in wanted],
        config_filter="all")
    too_small: dict[str, int] = {}
    for name, least in wanted.items():
        value = described.get("topic", {}).get(name, {}).get("max.message.bytes", {}).get("value")
        if value is None or int(value) < least:
            too_small[name] = least
    if too_small:
        admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, name, configs={"max.message.bytes": str(least)})
                             for name, least in too_small.items()])
        log.warning("raised max.message.bytes of existing topics to the catalogue's",
                    extra={"topics": sorted(too_small)})


def end_offsets_lag(consumer: KafkaConsumer) -> dict[TopicPartition, int]:
    """Consumer lag per assigned partition (end offset minus position)."""
    assigned = consumer.assignment()
    if not assigned:
        return {}
    ends = consumer.end_offsets(list(assigned))
    return {tp: max(0, ends[tp] - consumer.position(tp)) for tp in assigned}
