"""The notify stack of the integration tests: the real record service (store, consumer, API; in-process) and
the real notify service as its own process (so it can be killed with SIGKILL), on the session's real broker,
with notify's store on SQLite in the test's folder; subscribers are real local HTTP receivers
(tests/notify/receiver.py)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from devstack.local_broker import free_port
from services.common.settings import REPO_ROOT, RecordTokenGrant, Settings
from services.notify.store import NotifyStore, open_notify_store
from services.notify.subscriptions import EXT_FILTER, EXT_HEARTBEAT, EXT_MAX_COUNT, EXT_PAYLOAD_CONTENT, EXT_TIMEOUT
from services.notify.topics import TOPIC_BASE
from tests.record.conftest import RecordHarness, fictional_organization, harness_settings, token_config

SUBSCRIBERS: dict[str, RecordTokenGrant] = {
    "therapy": RecordTokenGrant(scopes=["system/Subscription.write", "system/*.read"],
                                clearances=["behavioral-health"], organization=fictional_organization("1999999935"),
                                label="therapy-ehr"),
    "primary": RecordTokenGrant(scopes=["system/Subscription.write"], clearances=["behavioral-health"],
                                organization=fictional_organization("1999999943"), label="primary-care-ehr"),
    "billing": RecordTokenGrant(scopes=["system/Subscription.write"], organization=fictional_organization("1999999950"),
                                label="billing"),
    "reader": RecordTokenGrant(scopes=["system/*.read"], clearances=["behavioral-health"],
                               organization=fictional_organization("1999999968"), label="reader"),
}


def tokens(subscribers: dict[str, RecordTokenGrant] | None = None) -> dict[str, RecordTokenGrant]:
    mine = {hashlib.sha256(f"notify-token-{name}".encode()).hexdigest(): g
            for name, g in (subscribers or SUBSCRIBERS).items()}
    return {**token_config(), **mine}


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer notify-token-{name}", "Content-Type": "application/fhir+json"}


class ServiceProcess:
    """A carebus service as its own process (``python -m services.<name>``), so a test can SIGKILL it."""

    def __init__(self, name: str, settings: Settings, port: int, log_path: Path,
                 extra: dict[str, str] | None = None) -> None:
        self.name = name
        self.settings = settings
        self.port = port
        self.log_path = log_path
        self.extra = extra or {}
        self.process: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        s = self.settings
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAREBUS_")}
        env.update({
            "PYTHONPATH": str(REPO_ROOT),
            "CAREBUS_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
            "CAREBUS_TOPIC_PREFIX": s.topic_prefix,
            "CAREBUS_KAFKA_TOPIC_PARTITIONS": str(s.kafka_topic_partitions),
            "CAREBUS_NOTIFY_STORE_DSN": str(s.notify_store_dsn),
            "CAREBUS_NOTIFY_PORT": str(s.notify_port),
            "CAREBUS_NOTIFY_GROUP_ID": s.notify_group_id,
            "CAREBUS_NOTIFY_RETRY_TIME_SCALE": str(s.notify_retry_time_scale),
            "CAREBUS_NOTIFY_RETRY_INITIAL_S": str(s.notify_retry_initial_s),
            "CAREBUS_NOTIFY_RETRY_MAX_S": str(s.notify_retry_max_s),
            "CAREBUS_NOTIFY_RETRY_WINDOW_S": str(s.notify_retry_window_s),
            "CAREBUS_NOTIFY_ENDPOINT_ALLOWLIST": orjson.dumps(s.notify_endpoint_allowlist).decode(),
            "CAREBUS_RECORD_BASE_URL": str(s.record_base_url),
            "CAREBUS_DISCLOSURE_POLICY": orjson.dumps(s.disclosure_policy).decode(),
            "CAREBUS_LOG_LEVEL": "INFO",
            **self.extra,
        })
        return env

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen([sys.executable, "-m", f"services.{self.name}"],  # noqa: S603
                                        env=self.env(), stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log_path.read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"{self.name} did not become ready: " + self.log_path.read_text()[-3000:])

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()


class NotifyStack:
    """``subscribers`` (name -> grant; tokens ``notify-token-<name>``) and ``disclosure_policy`` default to the
    notify suite's; the record and notify decide under the same policy. ``record_dsn`` / ``notify_dsn``: the two
    stores (default: SQLite files in ``folder``; a PostgreSQL schema each for the PostgreSQL end-to-end test)."""

    def __init__(self, kafka_bootstrap: str, folder: Path, subscribers: dict[str, RecordTokenGrant] | None = None,
                 disclosure_policy: dict[str, Any] | None = None, record_dsn: str | None = None,
                 notify_dsn: str | None = None) -> None:
        self.folder = folder
        base = harness_settings(kafka_bootstrap, **(
            {"disclosure_policy": disclosure_policy} if disclosure_policy is not None else {}))
        settings = base.model_copy(update={
            "record_tokens": tokens(subscribers),
            "notify_store_dsn": notify_dsn or f"sqlite:///{folder}/notify.db",
            "notify_endpoint_allowlist": ["http://127.0.0.1"],
            "notify_port": free_port(),
            "notify_group_id": f"notify-{uuid.uuid4().hex[:8]}",
            "notify_retry_time_scale": 3600.0,  # one real second of retrying = one hour on the retry clock
            "notify_retry_initial_s": 600.0,  # retries every ~0.1-0.2 s real time ... up to 1 h (1 s real)
            "notify_retry_max_s": 3600.0,
            "notify_retry_window_s": 86_400.0,  # 24 h = 24 s real
        })
        self.record = RecordHarness(settings, record_dsn or f"sqlite:///{folder}/record.db",
                                    "postgres" if record_dsn and record_dsn.startswith("postgres") else "sqlite")
        self.settings = settings.model_copy(update={"record_base_url": self.record.base_url})
        self.notify = ServiceProcess("notify", self.settings, self.settings.notify_port, folder / "notify.log")
        self.notify.start()
        self.store: NotifyStore = open_notify_store(str(self.settings.notify_store_dsn))

    def close(self) -> None:
        self.notify.stop()
        self.record.close()
        self.store.close()

    # --- the subscriber's side -----------------------------------------------------------------------

    def subscribe(self, token: str, topic: str, endpoint: str, filters: tuple[str, ...] = (),
                  content: str = "id-only", max_count: int | None = None, timeout_s: int | None = 2,
                  heartbeat_s: int | None = None, status: int = 201) -> dict[str, Any]:
        channel_ext: list[dict[str, Any]] = []
        if timeout_s is not None:
            channel_ext.append({"url": EXT_TIMEOUT, "valueUnsignedInt": timeout_s})
        if max_count is not None:
            channel_ext.append({"url": EXT_MAX_COUNT, "valuePositiveInt": max_count})
        if heartbeat_s is not None:
            channel_ext.append({"url": EXT_HEARTBEAT, "valueUnsignedInt": heartbeat_s})
        resource = {
            "resourceType": "Subscription", "status": "requested", "reason": "test subscriber",
            "criteria": TOPIC_BASE + topic,
            "_criteria": {"extension": [{"url": EXT_FILTER, "valueString": f} for f in filters]},
            "channel": {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json",
                        "header": ["X-Subscriber-Key: k-123"],
                        "_payload": {"extension": [{"url": EXT_PAYLOAD_CONTENT, "valueCode": content}]},
                        "extension": channel_ext},
        }
        response = self.record.client.post("/Subscription", content=orjson.dumps(resource), headers=auth(token))
        assert response.status_code == status, response.text
        body: dict[str, Any] = response.json()
        return body

    def fhir(self, method: str, path: str, token: str, status: int = 200, **kwargs: Any) -> dict[str, Any]:
        response = self.record.client.request(method, path, headers=auth(token), **kwargs)
        assert response.status_code == status, response.text
        return response.json() if response.content else {}

    def wait_status(self, sid: str, status: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            sub = self.store.get(sid)
            if sub is not None and sub.status == status:
                return
            time.sleep(0.1)
        current = self.store.get(sid)
        raise AssertionError(f"{sid} is {current.status if current else None}, not {status}")


def secret_of(created: dict[str, Any]) -> str:
    return str(next(e["valueString"] for e in created["extension"] if "signing-secret" in e["url"]))


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NotifyStack]:
    s = NotifyStack(kafka_bootstrap, tmp_path_factory.mktemp("notify"))
    try:
        yield s
    finally:
        s.close()
