# ruff: noqa: S106, S107 -- token= names a test fixture's token label, not a secret
"""Patient identity through the real broker and both stores: enterprise-id linking across three sources,
operator link / unlink (Linkage on the bundle topic), HL7 A40 merges, review candidates, and patient= /
$everything following the links."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from services.common.security_labels import PART2
from services.record.fhirdates import date_range
from tests.record.conftest import RecordHarness, bearer
from tests.record.fhir_data import (
    CLINIC,
    HOSPITAL,
    SUD_PROGRAM,
    T0,
    Event,
    encounter,
    full_record,
    iso,
    medication_request,
    opioid_use_condition,
    patient,
    patient_id,
    phq9_total,
    unique,
)

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


def eventually(check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    """Wait for something the service does asynchronously (an admin command travels through Kafka)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.1)


def members(record: RecordHarness, pid: str) -> set[str]:
    response = record.get(f"/admin/identity/persons/{pid}", token="admin")
    assert response.status_code == 200
    return set(response.json()["members"])


def admin(record: RecordHarness, action: str, body: dict[str, Any], token: str = "admin") -> Any:
    return record.client.post(f"/admin/identity/{action}", json=body, headers=bearer(token))


def links_of(record: RecordHarness, pid: str) -> dict[str, str]:
    served = record.fhir(f"/Patient/{pid}")
    return {link["other"]["reference"]: link["type"] for link in served.get("link", [])}


def candidates(record: RecordHarness) -> set[tuple[str, ...]]:
    """Every page of the review candidates."""
    found: set[tuple[str, ...]] = set()
    url: str | None = "/admin/identity/candidates?_count=1000"
    while url:
        response = record.get(url.removeprefix(record.base_url), token="admin")
        assert response.status_code == 200
        body = response.json()
        found.update(tuple(c["patients"]) for c in body["candidates"])
        url = body.get("next")
    return found


def test_three_sources_one_person(record: RecordHarness) -> None:
    empi = unique("EMPI-")
    family = unique("Okafor")
    mrn_c, mrn_h, mrn_s = unique("c-"), unique("h-"), unique("s-")
    pid_c, pid_h, pid_s = patient_id(CLINIC, mrn_c), patient_id(HOSPITAL, mrn_h), patient_id(SUD_PROGRAM, mrn_s)
    clinic = [patient(CLINIC, mrn_c, family=family, empi=empi), *full_record(CLINIC, mrn_c, pid_c)]
    hospital = [patient(HOSPITAL, mrn_h, family=family, empi=empi),
                encounter(HOSPITAL, pid_h, f"{mrn_h}-adm", iso(T0, 3), iso(T0, 6), klass="IMP"),
                phq9_total(HOSPITAL, pid_h, f"{mrn_h}-phq", iso(T0, 5), 21)]
    sud = [patient(SUD_PROGRAM, mrn_s, family=family),
           opioid_use_condition(SUD_PROGRAM, pid_s, f"{mrn_s}-oud", iso(T0, -90)),
           medication_request(SUD_PROGRAM, pid_s, f"{mrn_s}-bup", iso(T0, -85), rxnorm="1819",
                              display="buprenorphine", labels=PART2)]
    record.publish(Event(CLINIC, mrn_c, clinic), Event(HOSPITAL, mrn_h, hospital),
                   Event(SUD_PROGRAM, mrn_s, sud))

    # the shared enterprise id links clinic and hospital; the SUD program record only looks the same
    ref_c, ref_h, ref_s = f"Patient/{pid_c}", f"Patient/{pid_h}", f"Patient/{pid_s}"
    assert members(record, pid_c) == {ref_c, ref_h}
    assert members(record, pid_s) == {ref_s}
    review = candidates(record)
    assert tuple(sorted((ref_c, ref_s))) in review and tuple(sorted((ref_h, ref_s))) in review
    assert links_of(record, pid_c) == {ref_h: "seealso"}
    phq_h = [r["id"] for r in hospital if r["resourceType"] == "Observation"]
    found = {e["resource"]["id"] for e in record.fhir("/Observation", params={"patient": pid_c})["entry"]}
    assert set(phq_h) <= found  # patient= follows the link

    # the operator links the SUD program record
    accepted = admin(record, "link", {"patients": [ref_c, pid_s]})
    assert accepted.status_code == 202, accepted.text
    eventually(lambda: members(record, pid_h) == {ref_c, ref_h, ref_s})
    assert links_of(record, pid_s) == {ref_c: "seealso", ref_h: "seealso"}
    assert not any(ref_s in pair for pair in candidates(record))

    everything = record.search_all(f"/Patient/{pid_h}/$everything", params={"_count": 7})
    expected = {r["id"] for r in clinic + hospital + sud}
    assert {r["resourceType"] for r in everything[:3]} == {"Patient"}  # the person's Patients first
    assert "Patient" not in {r["resourceType"] for r in everything[3:]}
    assert {r["id"] for r in everything} == expected
    assert len(everything) == len(expected)  # no duplicates across pages
    times = [_clinical_start(r) for r in everything[3:]]
    assert times == sorted(times)  # ordered by clinical time
    first_page = record.fhir(f"/Patient/{pid_s}/$everything", params={"_count": 5})
    assert first_page["total"] == len(expected)
    assert any(link["relation"] == "next" for link in first_page["link"])
    sud_data = record.fhir("/Condition", params={"patient": pid_h})
    assert {e["resource"]["id"] for e in sud_data["entry"]} >= {sud[1]["id"]}

    # unlink: the SUD record stands alone again, every record intact
    assert admin(record, "unlink", {"patients": [pid_s, pid_c]}).status_code == 202
    eventually(lambda: members(record, pid_s) == {ref_s})
    assert members(record, pid_c) == {ref_c, ref_h}
    for pid in (pid_c, pid_h, pid_s):
        assert record.get(f"/Patient/{pid}").status_code == 200
    assert ref_s not in links_of(record, pid_c)
    assert {e["resource"]["id"] for e in record.fhir("/Condition", params={"patient": pid_h})["entry"]} \
        .isdisjoint({sud[1]["id"]})
    assert record.fhir(f"/Patient/{pid_s}/$everything")["total"] == len(sud)
    linkage_id = accepted.json()["linkage"]
    linkage = record.fhir(f"/{linkage_id}")
    assert linkage["active"] is False and linkage["meta"]["versionId"] == "2"
    assert record.fhir(f"/{linkage_id}/_history")["total"] == 2
    # the operator decided: no longer a review candidate
    assert tuple(sorted((ref_c, ref_s))) not in candidates(record)


def _clinical_start(resource: dict[str, Any]) -> int:
    for key in ("effectiveDateTime", "onsetDateTime", "authoredOn", "authored", "start", "date"):
        if key in resource:
            return date_range(resource[key])[0]
    for key in ("period",):
        if key in resource:
            return date_range(resource[key]["start"])[0]
    if "context" in resource:
        return date_range(resource["context"]["period"]["start"])[0]
    raise AssertionError(resource["resourceType"])


def test_a40_merge_links_replaced_by_and_replaces(record: RecordHarness) -> None:
    family = unique("Marsh")
    old, new = unique("old-"), unique("new-")
    pid_old, pid_new = patient_id(HOSPITAL, old), patient_id(HOSPITAL, new)
    record.publish(
        Event(HOSPITAL, old, [patient(HOSPITAL, old, family=family),
                              phq9_total(HOSPITAL, pid_old, f"{old}-phq", iso(T0), 12)]),
        Event(HOSPITAL, new, [patient(HOSPITAL, new, family=family)]),
    )
    assert members(record, pid_new) == {f"Patient/{pid_new}"}
    # ADT^A40 as the mapper writes it: the retired record inactive and replaced-by, the survivor replaces
    record.publish(Event(HOSPITAL, new, [
        patient(HOSPITAL, old, family=family, active=False, links=((pid_new, "replaced-by"),)),
        patient(HOSPITAL, new, family=family, links=((pid_old, "replaces"),)),
    ]))
    assert members(record, pid_old) == {f"Patient/{pid_old}", f"Patient/{pid_new}"}
    assert links_of(record, pid_old) == {f"Patient/{pid_new}": "replaced-by"}
    assert links_of(record, pid_new) == {f"Patient/{pid_old}": "replaces"}
    observations = record.fhir("/Observation", params={"patient": pid_new})
    assert observations["total"] == 1
    # the operator can still separate them; both records stay
    assert admin(record, "unlink", {"patients": [pid_old, pid_new]}).status_code == 202
    eventually(lambda: members(record, pid_new) == {f"Patient/{pid_new}"})
    assert "link" not in record.fhir(f"/Patient/{pid_new}")
    assert record.fhir(f"/Patient/{pid_old}")["active"] is False


def test_ambiguous_candidate_is_reported_not_merged(record: RecordHarness) -> None:
    family = unique("Nguyen")
    mrn_a, mrn_b = unique("a-"), unique("b-")
    pid_a, pid_b = patient_id(CLINIC, mrn_a), patient_id(HOSPITAL, mrn_b)
    record.publish(Event(CLINIC, mrn_a, [patient(CLINIC, mrn_a, family=family, given=("Lan",))]),
                   Event(HOSPITAL, mrn_b, [patient(HOSPITAL, mrn_b, family=family.upper(), given=("LAN", "T"))]))
    pair = tuple(sorted((f"Patient/{pid_a}", f"Patient/{pid_b}")))
    assert pair in candidates(record)
    assert members(record, pid_a) == {f"Patient/{pid_a}"}
    assert "link" not in record.fhir(f"/Patient/{pid_a}")
    # merge by the operator, survivor named
    response = admin(record, "link", {"patients": [pid_a, pid_b], "kind": "merge", "survivor": pid_b})
    assert response.status_code == 202
    eventually(lambda: len(members(record, pid_a)) == 2)
    assert links_of(record, pid_a) == {f"Patient/{pid_b}": "replaced-by"}
    assert links_of(record, pid_b) == {f"Patient/{pid_a}": "replaces"}
    assert pair not in candidates(record)


def test_admin_commands_are_checked(record: RecordHarness) -> None:
    mrn = unique("adm-")
    pid = patient_id(CLINIC, mrn)
    record.publish(Event(CLINIC, mrn, [patient(CLINIC, mrn)]))
    assert admin(record, "link", {"patients": [pid, "x"]}, token="full").status_code == 403
    assert admin(record, "link", {"patients": [pid, "x"]}, token="portal").status_code == 403
    assert record.client.post("/admin/identity/link", json={"patients": [pid, "x"]}).status_code == 401
    assert admin(record, "link", {"patients": [pid]}).status_code == 400
    assert admin(record, "link", {"patients": [pid, pid]}).status_code == 400
    bad_merge = admin(record, "link", {"patients": [pid, "y"], "kind": "merge", "survivor": "z"})
    assert bad_merge.status_code == 400
    unknown = admin(record, "link", {"patients": [pid, "no-such-patient"]})
    assert unknown.status_code == 404
    assert unknown.json()["resourceType"] == "OperationOutcome"
    assert record.get("/admin/identity/candidates", token="portal").status_code == 403
