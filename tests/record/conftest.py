# ruff: noqa: S107 -- token= names a test fixture's token label, not a secret
"""Fixtures of the record service's tests.

* ``postgres_server`` (session): a real PostgreSQL started for the session (initdb into a temp folder,
  pg_ctl on a free port; as the ``postgres``/``nobody`` user when the tests run as root), or the server named by
  ``CAREBUS_TEST_POSTGRES_DSN``. No mock database.
* ``store_dsn`` / ``store`` (function, parametrized sqlite|postgres): a fresh store per test (a file, or a
  schema of its own).
* ``record`` (session, parametrized sqlite|postgres): the whole record service (store, Kafka consumer thread,
  API) on the real test broker, with the tokens below; tests publish bundles with ``record.publish`` which
  returns once the consumer has ingested them. Tests use patients of their own (unique MRNs).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import pytest
import uvicorn
from fastapi import FastAPI
from fhir.resources.R4B import get_fhir_model_class
from kafka.producer.future import RecordMetadata

from devstack.local_broker import free_port
from devstack.local_postgres import LocalPostgres
from services.common.kafka import RecordProducer, ensure_topics
from services.common.settings import RecordTokenGrant, Settings
from services.common.topics import CATALOGUE
from services.record.identity import IdentityPolicy
from services.record.service import RecordService, build_service
from services.record.store import SqlStore, identity_policy, open_store
from tests.record.fhir_data import CLINIC, Event, patient_id

BACKENDS = ["sqlite", "postgres"]

PORTAL_MRN = "portal-owner-0001"
PARTNER_ORG = "urn:oid:2.16.840.1.113883.4.6|1999999984"  # NPI-style identifier of the partner clinic
THERAPY_ORG = "urn:oid:2.16.840.1.113883.4.6|1999999992"
PORTAL_PATIENT = patient_id(CLINIC, PORTAL_MRN)


def fictional_organization(npi: str) -> str:
    """A fictional organization (NPI-style identifier, valid check digit) that no test consent names: every
    token that is not patient-bound must name the organization it acts for (services/record/access.py)."""
    return f"urn:oid:2.16.840.1.113883.4.6|{npi}"


HOSPITAL_ORG = fictional_organization("1999999901")  # carebus's own hospital (integration, admin, privacy office)
CLINIC_ORG = fictional_organization("1999999919")  # a clinic EHR
VENDOR_ORG = fictional_organization("1999999927")  # a vendor without clearance

TOKENS: dict[str, RecordTokenGrant] = {
    "full": RecordTokenGrant(scopes=["system/*.read"], clearances=["behavioral-health", "part2"],
                             organization=HOSPITAL_ORG, label="integration"),
    "bh": RecordTokenGrant(scopes=["user/*.read"], clearances=["behavioral-health"], organization=CLINIC_ORG,
                           label="clinic EHR"),
    "basic": RecordTokenGrant(scopes=["user/*.read"], organization=VENDOR_ORG, label="vendor"),
    "part2": RecordTokenGrant(scopes=["user/*.read"], clearances=["part2"], organization=CLINIC_ORG,
                              label="SUD program"),
    "obs": RecordTokenGrant(scopes=["user/Observation.read"], clearances=["behavioral-health"],
                            organization=CLINIC_ORG, label="observations app"),
    "admin": RecordTokenGrant(scopes=["system/*.read", "system/Linkage.write"],
                              clearances=["behavioral-health", "part2", "psychotherapy-notes"],
                              organization=HOSPITAL_ORG, label="identity admin"),
    "portal": RecordTokenGrant(scopes=["patient/*.read"], patient=PORTAL_PATIENT,
                               clearances=["behavioral-health"]),
    # the SUD program's partner clinic: named by the Part 2 consents the tests publish (tests/consent)
    "partner": RecordTokenGrant(scopes=["user/*.read"], clearances=["behavioral-health"],
                                organization=PARTNER_ORG, label="partner clinic"),
    "therapy": RecordTokenGrant(scopes=["user/*.read"], clearances=["behavioral-health"],
                                organization=THERAPY_ORG, label="therapy practice"),
    "privacy": RecordTokenGrant(scopes=["user/AuditEvent.read", "user/Patient.read"],
                                clearances=["behavioral-health", "part2"], organization=HOSPITAL_ORG,
                                label="privacy officer"),
}


def side_by_side(work: Callable[[int], None], sides: int = 2, timeout_s: float = 120,
                 on_failure: Callable[[], None] = lambda: None) -> None:
    """``work(0)`` ... ``work(sides - 1)`` at once, one thread each (record instances ingesting together into one
    database); the first failure of any is raised here (``on_failure`` runs in the failing thread first, e.g. to
    release the others from a barrier)."""
    failures: list[BaseException] = []

    def run(side: int) -> None:
        try:
            work(side)
        except BaseException as exc:  # reported by the calling thread
            failures.append(exc)
            on_failure()

    threads = [threading.Thread(target=run, args=(side,)) for side in range(sides)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout_s)
    assert not any(thread.is_alive() for thread in threads), "a side did not finish"
    if failures:
        raise failures[0]


def token_config() -> dict[str, RecordTokenGrant]:
    return {hashlib.sha256(f"test-token-{name}".encode()).hexdigest(): grant for name, grant in TOKENS.items()}


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer test-token-{name}"}


def validate_fhir(data: dict[str, Any]) -> None:
    """Every returned resource and Bundle must be valid FHIR (R4B models; nested resources included)."""
    get_fhir_model_class(data["resourceType"]).model_validate(data)


# --- PostgreSQL ---------------------------------------------------------------------------------------------


class PostgresServer:
    """Either a local server this session started, or an external one (CAREBUS_TEST_POSTGRES_DSN)."""

    def __init__(self) -> None:
        self.external = os.environ.get("CAREBUS_TEST_POSTGRES_DSN")
        self.local: LocalPostgres | None = None

    def start(self) -> None:
        if not self.external:
            self.local = LocalPostgres(durable=False).start()

    def stop(self) -> None:
        if self.local is not None:
            self.local.stop()

    def admin_dsn(self) -> str:
        if self.external:
            return self.external
        assert self.local is not None
        return self.local.dsn()

    def fresh_schema_dsn(self) -> str:
        schema = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.admin_dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        separator = "&" if "?" in self.admin_dsn() else "?"
        return f"{self.admin_dsn()}{separator}options=-csearch_path%3D{schema}"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


StoreFactory = Callable[[IdentityPolicy], SqlStore]
DEFAULT_POLICY = IdentityPolicy()


@pytest.fixture(params=BACKENDS)
def store_factory(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[StoreFactory]:
    """Makes fresh, empty stores of one backend (closed at the end of the test)."""
    opened: list[SqlStore] = []

    def make(policy: IdentityPolicy = DEFAULT_POLICY) -> SqlStore:
        if request.param == "sqlite":
            dsn = f"sqlite:///{tmp_path_factory.mktemp('store')}/record.db"
        else:
            dsn = request.getfixturevalue("postgres_server").fresh_schema_dsn()
        store = open_store(dsn, policy)
        opened.append(store)
        return store

    make.backend = request.param  # type: ignore[attr-defined]
    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(store_factory: StoreFactory) -> SqlStore:
    return store_factory(IdentityPolicy())


# --- the whole service on the real broker ---------------------------------------------------------------------


class ServerThread:
    """The app under a real uvicorn server on a free loopback port, in a thread."""

    def __init__(self, app: FastAPI) -> None:
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None,
                                                    access_log=False, lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-test", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


class RecordHarness:
    def __init__(self, settings: Settings, dsn: str, backend: str) -> None:
        self.backend = backend
        if settings.record_denials_journal is None and not dsn.startswith("sqlite:///"):
            # the denied-attempt journal of a PostgreSQL-backed harness: a folder of its own, not the cache's
            journal = Path(tempfile.mkdtemp(prefix="carebus-denials-")) / "denied-attempts.db"
            settings = settings.model_copy(update={"record_denials_journal": journal})
        self.settings = settings
        ensure_topics(settings, CATALOGUE)
        self.store = open_store(dsn, identity_policy(settings))
        self.service: RecordService = build_service(settings, store=self.store)
        self.service.start()
        self.http = ServerThread(self.service.app).start()
        self.base_url = self.http.base_url
        self.client = httpx.Client(base_url=self.base_url, timeout=30)
        self.producer = RecordProducer(settings, "test-publisher")

    def publish(self, *events: Event) -> list[RecordMetadata]:
        metas = self.producer.send_all_and_wait([e.record(self.settings.topic_prefix) for e in events])
        assert self.service.ingestor.wait_for([(m.partition, m.offset) for m in metas], timeout_s=60)
        return metas

    def publish_raw(self, records: list[Any]) -> list[RecordMetadata]:
        metas = self.producer.send_all_and_wait(records)
        assert self.service.ingestor.wait_for([(m.partition, m.offset) for m in metas], timeout_s=60)
        return metas

    def get(self, path: str, token: str | None = "full", params: Any = None,
            headers: dict[str, str] | None = None) -> httpx.Response:
        all_headers = {**(bearer(token) if token else {}), **(headers or {})}
        return self.client.get(path, params=params, headers=all_headers)

    def fhir(self, path: str, token: str | None = "full", params: Any = None, status: int = 200,
             headers: dict[str, str] | None = None) -> dict[str, Any]:
        """GET, check status and content type, validate the FHIR body, return it."""
        response = self.get(path, token, params, headers)
        assert response.status_code == status, response.text
        assert response.headers["content-type"].startswith("application/fhir+json")
        body: dict[str, Any] = orjson.loads(response.content)
        validate_fhir(body)
        return body

    def search_all(self, path: str, token: str = "full", params: Any = None) -> list[dict[str, Any]]:
        """Follow next links to the end; return every match entry's resource."""
        resources: list[dict[str, Any]] = []
        page = self.fhir(path, token, params)
        while True:
            resources.extend(e["resource"] for e in page.get("entry", [])
                             if e.get("search", {}).get("mode", "match") == "match" and "resource" in e
                             and e["resource"]["resourceType"] != "OperationOutcome")
            nxt = [link["url"] for link in page["link"] if link["relation"] == "next"]
            if not nxt:
                return resources
            page = self.fhir(nxt[0].removeprefix(self.base_url), token)

    def close(self) -> None:
        self.client.close()
        self.producer.close()
        self.http.stop()
        self.service.stop()


# The REST, search and identity tests predate consent: they run carebus as a Part 2 program's own record would
# (the part2 clearance suffices). tests/consent runs the shipped policy (Part 2 only with a consent).
PROGRAM_POLICY: dict[str, Any] = {"part2": "clearance"}


def harness_settings(kafka_bootstrap: str, **overrides: Any) -> Settings:
    overrides.setdefault("disclosure_policy", PROGRAM_POLICY)
    overrides.setdefault("record_tokens", token_config())
    return Settings(
        kafka_bootstrap=kafka_bootstrap,
        topic_prefix=f"rec{uuid.uuid4().hex[:10]}",
        kafka_topic_partitions=3,
        kafka_request_timeout_s=10.0,
        record_group_id=f"record-{uuid.uuid4().hex[:8]}",
        **overrides,
    )


@pytest.fixture(scope="session", params=BACKENDS)
def record(request: pytest.FixtureRequest, kafka_bootstrap: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[RecordHarness]:
    if request.param == "sqlite":
        dsn = f"sqlite:///{tmp_path_factory.mktemp('record')}/record.db"
    else:
        dsn = request.getfixturevalue("postgres_server").fresh_schema_dsn()
    harness = RecordHarness(harness_settings(kafka_bootstrap), dsn, request.param)
    try:
        yield harness
    finally:
        harness.close()
