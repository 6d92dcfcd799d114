"""The services' Kafka security settings (SASL/SCRAM) work against a real broker with a SCRAM listener."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from devstack.local_broker import LocalKafkaBroker
from services.common.errors import BrokerUnavailable
from services.common.kafka import OutboundRecord, RecordProducer, build_consumer, ensure_topics
from services.common.settings import REPO_ROOT, Settings
from services.common.topics import CATALOGUE, INBOUND_EVENTS

pytestmark = pytest.mark.integration


def test_scram_sha_512_authenticates_and_rejects_a_wrong_password(tmp_path: Path) -> None:
    with LocalKafkaBroker(REPO_ROOT / ".cache", workdir=tmp_path / "kafka",
                          scram_users={"carebus-intake": "s3cret-test-only"}) as broker:
        secure = Settings(
            kafka_bootstrap=broker.sasl_bootstrap, kafka_security_protocol="SASL_PLAINTEXT",
            kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username="carebus-intake",
            kafka_sasl_password=SecretStr("s3cret-test-only"), topic_prefix="sasl", kafka_request_timeout_s=5,
        )
        assert len(ensure_topics(secure, CATALOGUE)) == len(CATALOGUE)
        topic = INBOUND_EVENTS.name(secure.topic_prefix)
        producer = RecordProducer(secure, "test-sasl")
        meta = producer.send_all_and_wait([OutboundRecord(topic, "k", b"over-scram", {})])[0]
        producer.close()
        consumer = build_consumer(secure, "test-sasl", "sasl-group", [topic])
        values = []
        for _ in range(30):
            values += [r.value for rs in consumer.poll(timeout_ms=500).values() for r in rs]
            if values:
                break
        consumer.close()
        assert values == [b"over-scram"]
        assert meta.offset == 0

        wrong = secure.model_copy(update={"kafka_sasl_password": SecretStr("wrong")})
        with pytest.raises(BrokerUnavailable):
            RecordProducer(wrong, "test-sasl-wrong").send_all_and_wait([OutboundRecord(topic, "k", b"x", {})])
