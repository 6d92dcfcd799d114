# ruff: noqa: S106, S107 -- token= names a test fixture's token label, not a secret
"""Hostile and careless requests to the record API: every one gets a 4xx OperationOutcome naming the rule (never a
500 or an OverflowError), the keep-alive connection survives, and U+0000 never reaches a query."""

from __future__ import annotations

import socket

import orjson
import pytest
from fastapi import FastAPI

from services.common.metrics import Metrics
from services.record.api import MetricsMiddleware
from tests.record.conftest import RecordHarness, ServerThread, bearer
from tests.record.fhir_data import CLINIC, Event, patient, patient_id, unique

pytestmark = pytest.mark.postgres


def exchange(port: int, paths: list[str], token: str = "full") -> list[tuple[int, bytes]]:
    """GET each path in turn over ONE HTTP/1.1 connection; fails if the server closes it in between."""
    answers: list[tuple[int, bytes]] = []
    auth = bearer(token)["Authorization"]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        reader = sock.makefile("rb")
        for path in paths:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\nAuthorization: {auth}\r\n\r\n".encode())
            status_line = reader.readline()
            assert status_line, f"the server closed the connection before answering {path}"
            headers: dict[str, str] = {}
            while (line := reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            assert headers.get("connection", "").lower() != "close", path
            answers.append((int(status_line.split()[1]), reader.read(int(headers["content-length"]))))
    return answers


def outcome(body: bytes) -> str:
    data = orjson.loads(body)
    assert data["resourceType"] == "OperationOutcome"
    return str(data["issue"][0]["diagnostics"])


def test_huge_numbers_in_history_and_paging_are_4xx_and_the_connection_is_kept(record: RecordHarness) -> None:
    mrn = unique("huge-")
    record.publish(Event(CLINIC, mrn, [patient(CLINIC, mrn)]))
    pid = patient_id(CLINIC, mrn)
    huge = "99999999999999999999"
    answers = exchange(record.http.port, [
        f"/Patient/{pid}/_history/{huge}",
        f"/Patient?_offset={huge}",
        f"/Patient/{pid}/_history?_offset={huge}",
        f"/Patient/{pid}/$everything?_offset={huge}",
        f"/Patient?_count={huge}",
        f"/Patient/{pid}/_history/%C2%B2",  # "²" is a digit to str.isdigit(), not to int()
        "/Patient?_offset=-1",
        "/Patient?_offset=9999999999",
        f"/Patient/{pid}",
    ])
    statuses = [status for status, _ in answers]
    assert statuses == [404, 400, 400, 400, 400, 404, 400, 400, 200]
    assert "_offset must be a non-negative integer of at most 10 digits" in outcome(answers[1][1])
    assert "_count must be" in outcome(answers[4][1])
    assert "_offset must be at most 1000000000" in outcome(answers[7][1])


@pytest.mark.parametrize("query", [
    "name:contains=%00", "name=%00", "name:exact=Ri%00vera", "identifier=urn:x|%00", "family%00=x",
    "name:contains=%EF%BF%BE",
])
def test_a_forbidden_character_in_a_search_is_refused_not_matched(record: RecordHarness, query: str) -> None:
    mrn = unique("nulq-")
    record.publish(Event(CLINIC, mrn, [patient(CLINIC, mrn)]))
    response = record.get(f"/Patient?{query}")
    assert response.status_code == 400, response.text
    assert "which FHIR text may not contain" in outcome(response.content)


def test_a_forbidden_character_in_history_parameters_is_refused(record: RecordHarness) -> None:
    response = record.get("/Patient/_history?_since=2025%00")
    assert response.status_code == 400
    assert "U+0000" in outcome(response.content)


def test_review_candidates_need_the_identity_admin_scope_and_are_paged(record: RecordHarness) -> None:
    for _ in range(3):  # three source records with one name and birth date: three candidate pairs at least
        mrn = unique("twin-")
        record.publish(Event(CLINIC, mrn, [patient(CLINIC, mrn, family="Okonkwo-Candidate", birth="1979-02-03")]))
    for token in ("basic", "bh", "full"):  # any read scope, even every clearance, is not identity administration
        assert record.get("/admin/identity/candidates", token=token).status_code == 403
    first = record.get("/admin/identity/candidates?_count=1", token="admin")
    assert first.status_code == 200
    body = first.json()
    assert body["total"] >= 3 and body["count"] == 1 and len(body["candidates"]) == 1
    second = record.get(body["next"].removeprefix(record.base_url), token="admin").json()
    assert second["offset"] == 1 and second["candidates"] != body["candidates"]
    assert record.get("/admin/identity/candidates?_offset=99999999999999999999",
                      token="admin").status_code == 400


def test_an_unexpected_error_is_a_500_outcome_and_the_connection_is_kept() -> None:
    app = FastAPI()
    app.add_middleware(MetricsMiddleware, metrics=Metrics())

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("a value that may be PHI")

    @app.get("/fine")
    def fine() -> dict[str, str]:
        return {"ok": "yes"}

    server = ServerThread(app).start()
    try:
        answers = exchange(server.port, ["/boom", "/fine"])
    finally:
        server.stop()
    assert [status for status, _ in answers] == [500, 200]
    assert outcome(answers[0][1]) == "internal error"
