"""What strict FHIR clients send, through the real record service: HAPI's ``history().since()`` and date searches
put ``+00:00`` in the query string without escaping the ``+`` (a space once URL-decoded), which FHIR servers
accept; conditional read (If-None-Match / If-Modified-Since) answers 304 Not Modified for the version the client
has."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from tests.record.conftest import RecordHarness
from tests.record.fhir_data import HOSPITAL, Event, body_weight, patient, patient_id, unique

pytestmark = [pytest.mark.integration]


def _ids(bundle: dict) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", [])]


def test_an_unescaped_plus_in_a_date_parameter_is_a_time_zone(record: RecordHarness) -> None:
    mrn = unique("plus-")
    pid = patient_id(HOSPITAL, mrn)
    record.publish(Event(HOSPITAL, mrn, [patient(HOSPITAL, mrn), body_weight(HOSPITAL, pid, mrn, "2024-05-01", 70)]))
    # raw query strings, exactly as HAPI's generic client sends them: '+' is not percent-encoded
    for path in (f"/Patient/{pid}/_history?_since=2020-01-01T00:00:00+00:00",
                 f"/Observation?patient={pid}&date=ge2024-04-30T22:00:00+02:00",
                 f"/Patient/{pid}/$everything?_since=2020-01-01T00:00:00.000+00:00"):
        response = record.get(path)
        assert response.status_code == 200, (path, response.text)
        assert _ids(response.json()), path
    # the same instants, escaped, select the same; a later _since selects nothing
    escaped = record.get(f"/Observation?patient={pid}&date=ge2024-04-30T22:00:00%2B02:00").json()
    assert _ids(escaped) == _ids(record.get(f"/Observation?patient={pid}&date=ge2024-04-30T22:00:00+02:00").json())
    assert _ids(record.get(f"/Observation?patient={pid}&date=ge2024-05-02T03:00:00+02:00").json()) == []
    later = record.get(f"/Patient/{pid}/_history?_since=2999-01-01T00:00:00+00:00")
    assert later.status_code == 200 and _ids(later.json()) == []
    # anything else is still refused
    assert record.get(f"/Patient/{pid}/_history?_since=2020-01-01T00:00:00 0000").status_code == 400


def test_conditional_read_answers_304_for_the_version_the_client_has(record: RecordHarness) -> None:
    mrn = unique("etag-")
    pid = patient_id(HOSPITAL, mrn)
    record.publish(Event(HOSPITAL, mrn, [patient(HOSPITAL, mrn)]))
    record.publish(Event(HOSPITAL, mrn, [patient(HOSPITAL, mrn, phone="555-0100")]))
    current = record.get(f"/Patient/{pid}")
    assert current.status_code == 200 and current.headers["etag"] == 'W/"2"'

    for tag in ('W/"2"', '"2"', '"1", W/"2"', "*"):
        response = record.get(f"/Patient/{pid}", headers={"If-None-Match": tag})
        assert response.status_code == 304, tag
        assert response.content == b""
        assert response.headers["etag"] == 'W/"2"'
    stale = record.get(f"/Patient/{pid}", headers={"If-None-Match": 'W/"1"'})
    assert stale.status_code == 200 and stale.json()["meta"]["versionId"] == "2"

    modified = datetime.now(UTC) + timedelta(minutes=5)
    assert record.get(f"/Patient/{pid}", headers={
        "If-Modified-Since": format_datetime(modified, usegmt=True)}).status_code == 304
    assert record.get(f"/Patient/{pid}", headers={
        "If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}).status_code == 200
    # If-None-Match wins over If-Modified-Since (RFC 9110 13.1.3)
    assert record.get(f"/Patient/{pid}", headers={
        "If-None-Match": 'W/"1"', "If-Modified-Since": format_datetime(modified, usegmt=True)}).status_code == 200
    # an unknown resource is still 404, whatever the client has
    assert record.get(f"/Patient/{pid}x", headers={"If-None-Match": "*"}).status_code == 404


def test_api_description_paths_point_at_the_capability_statement(record: RecordHarness) -> None:
    for path in ("/docs", "/openapi.json", "/redoc"):
        response = record.get(path, token=None)
        assert response.status_code == 404, path
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["detail"].endswith("CapabilityStatement at GET /metadata")
        assert response.headers["link"] == '</metadata>; rel="describedby"'
    # a FHIR path that is not a resource type still answers as FHIR
    unknown = record.get("/Docs")
    assert unknown.json()["resourceType"] == "OperationOutcome"
