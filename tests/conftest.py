"""Shared fixtures. Integration tests run against one real Kafka broker (KRaft) started once per test
session on a free port, or the cluster named by CAREBUS_KAFKA_BOOTSTRAP when that is set."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.local_broker import LocalKafkaBroker
from services.common.native import stale_compiled_modules
from services.common.settings import REPO_ROOT, Settings
from tests.senders import TEST_INTAKE_GRANTS

SAMPLES = Path(__file__).parent / "samples"


def pytest_configure(config: pytest.Config) -> None:
    stale = stale_compiled_modules()
    if stale:  # the old build, not the edited source, would be tested
        pytest.exit(f"compiled modules are older than their source: {', '.join(stale)}; rebuild them with "
                    "`make test` (or `make setup`)", returncode=4)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    configured = os.environ.get("CAREBUS_KAFKA_BOOTSTRAP")
    if configured:
        yield configured
        return
    broker = LocalKafkaBroker(REPO_ROOT / ".cache", workdir=tmp_path_factory.mktemp("kafka"))
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def settings(kafka_bootstrap: str) -> Settings:
    """Settings pointing at the test broker, with a topic prefix of this test's own (isolated topics)."""
    return Settings(
        kafka_bootstrap=kafka_bootstrap,
        topic_prefix=f"test{uuid.uuid4().hex[:10]}",
        kafka_topic_partitions=3,
        kafka_request_timeout_s=10.0,
        intake_tokens=TEST_INTAKE_GRANTS,  # clients send tests.senders.TEST_INTAKE_HEADERS
    )
