"""Fixtures of the consent tests: the whole record service (real broker, both stores) under the *shipped*
disclosure policy (Part 2 only with a consent), with recipient tokens that name their organizations.

Tokens: ``partner`` (the SUD program's partner clinic, no clearance), ``partner-bh`` (the same clinic, cleared
for behavioural health and substance use), ``therapy`` (a therapy practice cleared for behavioural health,
named by no Part 2 consent), ``basic`` (a vendor without clearance, named by no consent), ``privacy`` (the
privacy officer: AuditEvent read), ``portal`` is not needed here.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from services.common.settings import RecordTokenGrant
from tests.consent.consents import PART2_ORG, THERAPY_ORG
from tests.record.conftest import (  # noqa: F401
    BACKENDS,
    HOSPITAL_ORG,
    VENDOR_ORG,
    RecordHarness,
    harness_settings,
    postgres_server,
)

TOKENS: dict[str, RecordTokenGrant] = {
    "partner": RecordTokenGrant(scopes=["user/*.read"], organization=PART2_ORG, label="partner clinic"),
    "partner-bh": RecordTokenGrant(scopes=["user/*.read"], organization=PART2_ORG,
                                   clearances=["behavioral-health", "part2"], label="partner clinic (clinician)"),
    "therapy": RecordTokenGrant(scopes=["user/*.read"], organization=THERAPY_ORG,
                                clearances=["behavioral-health"], label="therapy practice"),
    "basic": RecordTokenGrant(scopes=["user/*.read"], organization=VENDOR_ORG, label="vendor"),
    "privacy": RecordTokenGrant(scopes=["user/AuditEvent.read", "user/Patient.read"], organization=HOSPITAL_ORG,
                                label="privacy officer"),
    "research": RecordTokenGrant(scopes=["user/*.read"], organization=PART2_ORG, purpose_of_use="HRESCH",
                                 label="partner clinic (research)"),
}


def token_config() -> dict[str, RecordTokenGrant]:
    return {hashlib.sha256(f"test-token-{name}".encode()).hexdigest(): grant for name, grant in TOKENS.items()}


@pytest.fixture(scope="session", params=BACKENDS)
def shipped(request: pytest.FixtureRequest, kafka_bootstrap: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[RecordHarness]:
    """The record service with the default disclosure policy."""
    if request.param == "sqlite":
        dsn = f"sqlite:///{tmp_path_factory.mktemp('consent')}/record.db"
    else:
        dsn = request.getfixturevalue("postgres_server").fresh_schema_dsn()
    settings = harness_settings(kafka_bootstrap, disclosure_policy={}, record_tokens=token_config())
    harness = RecordHarness(settings, dsn, request.param)
    try:
        yield harness
    finally:
        harness.close()


def eventually(probe: Callable[[], Any], timeout_s: float = 30.0) -> Any:
    """Poll ``probe`` until it returns something truthy (AuditEvents reach the record asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = probe()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)
