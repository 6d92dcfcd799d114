"""Unit tests of the pure parts: FHIR date ranges, search parsing, scopes and labels, indexing, rendering and
the CapabilityStatement."""

from __future__ import annotations

import hashlib
import uuid

import orjson
import pytest

from services.common.disclosure import ORDINARY
from services.common.settings import RecordTokenGrant
from services.record.access import (
    ALL_CLEARANCES,
    BEHAVIORAL_HEALTH,
    PART2,
    PSYCHOTHERAPY_NOTES,
    SUBSTANCE_USE,
    TokenRegistry,
    grant_access,
    parse_scope,
    restriction_of,
)
from services.record.capability import capability_statement
from services.record.errors import BadRequest, Forbidden, NotAuthenticated, UnknownParameter
from services.record.fhirdates import OPEN_END, date_range, format_instant, instant_ms
from services.record.indexing import clinical_range, index_resource, normalize_text, patient_reference
from services.record.render import history, searchset, withheld_outcome
from services.record.search import (
    DateCriterion,
    IdCriterion,
    PatientCriterion,
    StringCriterion,
    TokenCriterion,
    parse_search,
)
from services.record.store.base import Page, StoredRow
from tests.record.conftest import CLINIC_ORG, validate_fhir
from tests.record.fhir_data import CLINIC, T0, appointment, encounter, iso, patient, progress_note

MS_DAY = 86_400_000


@pytest.mark.parametrize("value, start, length_ms", [
    ("2024", "2024-01-01T00:00:00.000Z", 366 * MS_DAY),
    ("2023-02", "2023-02-01T00:00:00.000Z", 28 * MS_DAY),
    ("2024-02-29", "2024-02-29T00:00:00.000Z", MS_DAY),
    ("2024-03-01T10:15", "2024-03-01T10:15:00.000Z", 60_000),
    ("2024-03-01T10:15:30Z", "2024-03-01T10:15:30.000Z", 1_000),
    ("2024-03-01T10:15:30+02:00", "2024-03-01T08:15:30.000Z", 1_000),
    ("2024-03-01T10:15:30.25-05:00", "2024-03-01T15:15:30.250Z", 1),
])
def test_fhir_dates_are_ranges_by_precision(value: str, start: str, length_ms: int) -> None:
    low, high = date_range(value)
    assert format_instant(low) == start
    assert high - low + 1 == length_ms
    assert instant_ms(value) == low


@pytest.mark.parametrize("value", ["", "24", "2024-13", "2023-02-29", "2024-01-01T25:00Z", "01/02/2024",
                                   "2024-01-01T10:00:00+2"])
def test_malformed_dates_are_refused(value: str) -> None:
    with pytest.raises(ValueError):
        date_range(value)


def test_search_parsing() -> None:
    query = parse_search("Observation", [
        ("patient", "Patient/p1,p2"), ("code", "http://loinc.org|44261-6,\\,odd"), ("category", "|survey"),
        ("date", "ge2024-01-01"), ("_id", "a,b"), ("_count", "5000"), ("_offset", "10"), ("_sort", "-date"),
        ("_format", "json"),
    ], default_count=50, max_count=1000)
    assert query.criteria == (
        PatientCriterion(("Patient/p1", "Patient/p2")),
        TokenCriterion("code", (("http://loinc.org", "44261-6"), (None, ",odd"))),
        TokenCriterion("category", (("", "survey"),)),
        DateCriterion("date", (("ge", *date_range("2024-01-01")),)),
        IdCriterion(("a", "b")),
    )
    assert (query.count, query.offset, query.sort) == (1000, 10, "-date")
    names = parse_search("Patient", [("name:contains", "ann"), ("name:exact", "Ann")], 50, 100)
    assert names.criteria == (StringCriterion("name", "contains", ("ann",)),
                              StringCriterion("name", "exact", ("Ann",)))
    assert parse_search("Observation", [("nope", "1")], 50, 100, lenient=True).criteria == ()
    for params, error in [([("nope", "1")], UnknownParameter), ([("code:text", "x")], UnknownParameter),
                          ([("date", "ap2024")], UnknownParameter), ([("date", "xx2024")], BadRequest),
                          ([("date", "2024-99")], BadRequest), ([("_count", "-1")], BadRequest),
                          ([("_sort", "code")], UnknownParameter), ([("code", "")], BadRequest),
                          ([("patient", "Group/1")], BadRequest), ([("status", "active")], UnknownParameter)]:
        with pytest.raises(error):
            parse_search("Observation", params, 50, 100)


def test_a_token_names_the_organization_it_acts_for() -> None:
    """Recipients are known: a token that is not patient-bound without an organization stops the start, with a
    message naming its label (or digest prefix), never the token; a patient-bound token acts for its patient."""
    secret = "s3cret-never-in-errors"  # noqa: S105 - a test token
    digest = hashlib.sha256(secret.encode()).hexdigest()
    for scopes in (["user/*.read"], ["system/Subscription.write"], ["system/*.read", "system/Linkage.write"]):
        with pytest.raises(ValueError, match="'billing desk': a token that is not patient-bound must name the "
                                             "organization") as refused:
            grant_access(RecordTokenGrant(scopes=scopes, clearances=["behavioral-health"], label="billing desk"),
                         digest)
        assert secret not in str(refused.value)
    with pytest.raises(ValueError, match=f"sha256 {digest[:12]}.*must name the organization"):
        TokenRegistry({digest: RecordTokenGrant(scopes=["user/*.read"])})  # unlabelled: named by its digest prefix
    for malformed in ("Acme Clinic", "Patient/p1", "|1999999919", "urn:oid:2.16.840.1.113883.4.6|", "npi|123"):
        with pytest.raises(ValueError, match="'vendor': 'organization' must be"):
            grant_access(RecordTokenGrant(scopes=["user/*.read"], organization=malformed, label="vendor"))
    with pytest.raises(ValueError, match="'vendor': each of 'care_teams' must be"):
        grant_access(RecordTokenGrant(scopes=["user/*.read"], organization=CLINIC_ORG, care_teams=["team 7"],
                                      label="vendor"))
    with pytest.raises(ValueError, match="'vendor': not a supported scope"):
        grant_access(RecordTokenGrant(scopes=["admin/*.read"], organization=CLINIC_ORG, label="vendor"))

    portal = grant_access(RecordTokenGrant(scopes=["patient/*.read"], patient="Patient/p1", label="portal"))
    assert portal.patient == "p1" and portal.recipient.organization is None and portal.recipient.patient_access
    assert portal.purpose == "PATRQT"
    named = grant_access(RecordTokenGrant(scopes=["user/*.read"], organization="Organization/clinic-7",
                                          care_teams=["CareTeam/ct-1", "urn:oid:2.16.840.1.113883.19|team-a"],
                                          purpose_of_use="HRESCH", label="research"))
    assert named.recipient.organization == "Organization/clinic-7" and named.purpose == "HRESCH"
    assert named.recipient.care_teams == ("CareTeam/ct-1", "urn:oid:2.16.840.1.113883.19|team-a")


def test_scopes_and_grants() -> None:
    assert parse_scope("patient/*.read") == parse_scope("patient/*.rs")
    assert parse_scope("system/Observation.write").read is False
    assert parse_scope("user/*.cruds").write is True
    for bad in ("system/*", "admin/*.read", "system/observation.read", "system/*.x", "system/*."):
        with pytest.raises(ValueError):
            parse_scope(bad)
    with pytest.raises(ValueError, match="must name its patient"):
        grant_access(RecordTokenGrant(scopes=["patient/*.read"]))
    access = grant_access(RecordTokenGrant(scopes=["user/Observation.read"], clearances=["part2"],
                                           organization=CLINIC_ORG))
    assert access.may_read("Observation") and not access.may_read("Condition")
    assert access.cleared_for(PART2) and not access.cleared_for(PART2 | BEHAVIORAL_HEALTH)
    assert access.purpose == "TREAT" and access.recipient.organization == CLINIC_ORG  # the documented default
    with pytest.raises(Forbidden):
        access.require_write("Linkage")

    registry = TokenRegistry({hashlib.sha256(b"s3cret").hexdigest(): RecordTokenGrant(
        scopes=["system/*.read"], organization="Organization/hospital")})
    assert registry.authenticate("Bearer s3cret").may_read("Flag")
    for header in (None, "", "Basic s3cret", "Bearer ", "Bearer other"):
        with pytest.raises(NotAuthenticated):
            registry.authenticate(header)


def test_labels_map_to_clearances() -> None:
    assert restriction_of(["R", "PSY"]) == BEHAVIORAL_HEALTH
    assert restriction_of(["R", "SUD", "42CFRPart2", "NORDSCLCD"]) == PART2
    assert restriction_of(["V", "PSYTHPN"]) == PSYCHOTHERAPY_NOTES
    assert restriction_of(["N"]) == 0
    assert restriction_of(["MH", "ETHUD"]) == BEHAVIORAL_HEALTH | SUBSTANCE_USE


def test_indexing_of_patients_and_clinical_time() -> None:
    person = patient(CLINIC, "ix-1", family="Ødegård-Smith", given=("Anne Marie",), birth="1980-05")
    index = index_resource(person)
    assert index.patient_ref == f"Patient/{person['id']}" and index.clinical_time is None
    assert (index.date_start, index.date_end) == date_range("1980-05")
    assert ("name", normalize_text("Ødegård-Smith")) in index.strings
    assert ("name:exact", "Anne Marie") in index.strings
    assert ("identifier", CLINIC.mrn_system, "ix-1") in index.tokens

    pid = person["id"]
    visit = appointment(CLINIC, pid, "a", iso(T0, 3), iso(T0, 3.1))
    assert patient_reference(visit) == f"Patient/{pid}"
    assert clinical_range(visit) == (date_range(iso(T0, 3))[0], date_range(iso(T0, 3.1))[1])
    ongoing = encounter(CLINIC, pid, "e", iso(T0), None)
    assert clinical_range(ongoing) == (date_range(iso(T0))[0], OPEN_END)
    note = progress_note(CLINIC, pid, "n", iso(T0))
    assert index_resource(note).restriction == BEHAVIORAL_HEALTH


def test_rendered_bundles_are_valid_fhir_and_state_what_was_withheld() -> None:
    body = orjson.dumps(patient(CLINIC, "r-1") | {"meta": {"versionId": "1",
                                                          "lastUpdated": "2024-01-01T00:00:00.000Z"}})
    row = StoredRow("Patient", "r-1", 1, 0, False, "Patient/r-1", 0, body)
    gone = StoredRow("Patient", "r-1", 2, 5, True, "Patient/r-1", 0, None)
    page = Page([row], total=1, withheld={BEHAVIORAL_HEALTH: 2, PART2 | BEHAVIORAL_HEALTH: 1})
    bundle = orjson.loads(searchset("http://x", "Patient", [("name", "a")], page, 1, 0, lambda r: r.body or b"",
                                    str(uuid.uuid4()), 0))
    validate_fhir(bundle)
    outcome = bundle["entry"][-1]
    assert outcome["search"]["mode"] == "outcome"
    texts = [i["details"]["text"] for i in outcome["resource"]["issue"]]
    assert texts[0].startswith("2 matching resources were withheld") and "Part 2" in texts[1]
    assert bundle["meta"]["security"][0]["code"] == "REDACTED"
    validate_fhir(orjson.loads(history("http://x", "Patient/r-1/_history", [], Page([gone, row], 2), 10, 0,
                                       str(uuid.uuid4()), 0)))
    assert withheld_outcome({}) is None


def test_capability_statement_is_valid_and_lists_stored_types() -> None:
    statement = capability_statement("http://x", ["Provenance"])
    validate_fhir(statement)
    types = {r["type"] for r in statement["rest"][0]["resource"]}
    assert {"Patient", "Observation", "Flag", "Linkage", "Provenance"} <= types
    assert ALL_CLEARANCES == BEHAVIORAL_HEALTH | PART2 | PSYCHOTHERAPY_NOTES | SUBSTANCE_USE | ORDINARY


def test_partition_merge_releases_by_timestamp_and_waits_for_busy_partitions() -> None:
    from collections import namedtuple

    from kafka import TopicPartition

    from services.record.consumer import PartitionMerge

    Record = namedtuple("Record", "topic partition offset timestamp")
    p0, p1 = TopicPartition("t", 0), TopicPartition("t", 1)
    merge = PartitionMerge()
    merge.add(p0, [Record("t", 0, 0, 10), Record("t", 0, 1, 30), Record("t", 0, 2, 5)])
    # p1 has nothing queued and is not caught up: its next record may be older, so nothing is released
    assert merge.take([p0, p1], lambda tp: False, limit=10) == []
    merge.add(p1, [Record("t", 1, 0, 20), Record("t", 1, 0, 20)])  # a re-fetched duplicate is ignored
    taken = merge.take([p0, p1], lambda tp: True, limit=10)
    # across partitions by timestamp, within a partition never reordered (offset 2 stays after offset 1)
    assert [(r.partition, r.offset) for r in taken] == [(0, 0), (1, 0), (0, 1), (0, 2)]
    merge.restore(taken[1:])
    assert merge.queued(p0) == 2 and merge.queued(p1) == 1
    assert [(r.partition, r.offset) for r in merge.take([p0, p1], lambda tp: True, limit=2)] == [(1, 0), (0, 1)]
    merge.retain([p0])
    assert merge.queued(p1) == 0 and merge.total == 1
