"""The intake sender token the test session configures (tests/conftest.py's ``settings``): any source.

In-process clients send ``TEST_INTAKE_HEADERS``; a service process started by a test gets ``TEST_INTAKE_ENV``."""

from __future__ import annotations

import hashlib

import orjson

from services.common.settings import IntakeSenderGrant

TEST_INTAKE_TOKEN = "carebus-test-session-sender"  # noqa: S105 - a test credential
TEST_INTAKE_GRANTS = {
    hashlib.sha256(TEST_INTAKE_TOKEN.encode()).hexdigest(): IntakeSenderGrant(sources=["*"], label="test session")
}
TEST_INTAKE_HEADERS = {"authorization": f"Bearer {TEST_INTAKE_TOKEN}"}
TEST_INTAKE_ENV = {
    "CAREBUS_INTAKE_TOKENS": orjson.dumps({d: g.model_dump() for d, g in TEST_INTAKE_GRANTS.items()}).decode(),
    "CAREBUS_INTAKE_TOKEN": TEST_INTAKE_TOKEN,
}
