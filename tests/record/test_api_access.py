# ruff: noqa: S106 -- token= names a test fixture's token label, not a secret
"""Security labels and token scopes through the real broker and both stores: PSY data only with a
behavioural-health clearance, Part 2 data only with a part2 clearance, what is withheld always stated; patient-
bound tokens see one person's compartment; type scopes are enforced."""

from __future__ import annotations

from typing import Any

import pytest

from services.common.security_labels import PART2
from services.record.render import GENERIC_NOTICE
from tests.record.conftest import PORTAL_MRN, PORTAL_PATIENT, RecordHarness
from tests.record.fhir_data import (
    CLINIC,
    HOSPITAL,
    T0,
    Event,
    body_weight,
    depression_condition,
    full_record,
    iso,
    medication_request,
    opioid_use_condition,
    patient,
    patient_id,
    unique,
)

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

REDACTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "REDACTED",
            "display": "redacted"}


def matches(bundle: dict[str, Any]) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"}


def outcome_text(bundle: dict[str, Any]) -> str:
    outcomes = [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "outcome"]
    return " ".join(i["details"]["text"] for o in outcomes for i in o["issue"])


@pytest.fixture
def labelled(record: RecordHarness) -> dict[str, Any]:
    """One patient with ordinary, psychiatric (R/PSY) and Part 2 (R/SUD/42CFRPart2/NORDSCLCD) data."""
    mrn = unique("lbl-")
    pid = patient_id(CLINIC, mrn)
    weight = body_weight(CLINIC, pid, f"{mrn}-w", iso(T0), 68.0)
    depression = depression_condition(CLINIC, pid, f"{mrn}-dx", iso(T0, -3))
    oud = opioid_use_condition(CLINIC, pid, f"{mrn}-oud", iso(T0, -40))
    bup = medication_request(CLINIC, pid, f"{mrn}-bup", iso(T0, -39), rxnorm="1819", display="buprenorphine",
                             labels=PART2)
    rest = full_record(CLINIC, mrn, pid)
    record.publish(Event(CLINIC, mrn, [patient(CLINIC, mrn), weight, depression, oud, bup, *rest]))
    return {"pid": pid, "weight": weight, "depression": depression, "oud": oud, "bup": bup, "all": rest}


def test_behavioural_health_labels_need_clearance(record: RecordHarness, labelled: dict[str, Any]) -> None:
    pid = labelled["pid"]
    observations = {r["id"] for r in labelled["all"] if r["resourceType"] == "Observation"} | {
        labelled["weight"]["id"]}
    unlabelled = {r for r in observations
                  if not record.fhir(f"/Observation/{r}").get("meta", {}).get("security")}
    basic = record.fhir("/Observation", token="basic", params={"patient": pid})
    assert matches(basic) == unlabelled
    assert basic["total"] == len(unlabelled)
    # an uncleared caller is never told that (or how much, or why) anything was withheld
    assert "security" not in basic["meta"]
    assert outcome_text(basic) == GENERIC_NOTICE

    clinician = record.fhir("/Observation", token="bh", params={"patient": pid})
    assert matches(clinician) == observations
    assert "security" not in clinician["meta"] and outcome_text(clinician) == GENERIC_NOTICE

    # a withheld resource is answered like one that does not exist
    denied = record.get(f"/Condition/{labelled['depression']['id']}", token="basic")
    missing = record.get("/Condition/does-not-exist", token="basic")
    assert denied.status_code == missing.status_code == 404
    assert denied.json()["issue"][0]["diagnostics"].replace(labelled["depression"]["id"], "X") == \
        missing.json()["issue"][0]["diagnostics"].replace("does-not-exist", "X")
    record.fhir(f"/Condition/{labelled['depression']['id']}", token="bh")


def test_part2_data_needs_its_own_permission(record: RecordHarness, labelled: dict[str, Any]) -> None:
    """Under a Part 2 program's own policy (part2: clearance; the shipped policy needs a consent, tests/consent)."""
    pid = labelled["pid"]
    dx, oud = labelled["depression"]["id"], labelled["oud"]["id"]
    psychiatric = {dx} | {r["id"] for r in labelled["all"] if r["resourceType"] == "Condition"}
    with_bh = record.fhir("/Condition", token="bh", params={"patient": pid})
    assert matches(with_bh) == psychiatric
    assert outcome_text(with_bh) == GENERIC_NOTICE  # not cleared for Part 2: not told
    # cleared for Part 2 but not for behavioural health: told about Part 2 only (here nothing of it withheld)
    part2_only = record.fhir("/Condition", token="part2", params={"patient": pid})
    assert matches(part2_only) == {oud}
    assert outcome_text(part2_only) == GENERIC_NOTICE and "security" not in part2_only["meta"]
    assert matches(record.fhir("/Condition", token="full", params={"patient": pid})) == psychiatric | {oud}
    assert record.get(f"/MedicationRequest/{labelled['bup']['id']}", token="bh").status_code == 404
    served = record.get(f"/MedicationRequest/{labelled['bup']['id']}", token="part2")
    assert served.status_code == 200
    assert served.headers["x-carebus-part2-notice"].startswith("42 CFR part 2 prohibits unauthorized")

    everything = record.search_all(f"/Patient/{pid}/$everything", token="bh", params={"_count": 100})
    ids = {r["id"] for r in everything}
    assert dx in ids and oud not in ids and labelled["bup"]["id"] not in ids
    page = record.fhir(f"/Patient/{pid}/$everything", token="bh", params={"_count": 100})
    assert outcome_text(page) == GENERIC_NOTICE and "security" not in page["meta"]
    full = record.fhir(f"/Patient/{pid}/$everything", token="full", params={"_count": 100})
    assert full["total"] == page["total"] + 2
    notices = [e["resource"] for e in full["entry"] if e["search"]["mode"] == "include"]
    assert len(notices) == 1 and notices[0]["resourceType"] == "Provenance"
    bup = labelled["bup"]["id"]
    assert {t["reference"] for t in notices[0]["target"]} == {f"Condition/{oud}", f"MedicationRequest/{bup}"}
    # cleared for Part 2 and behavioural health but not psychotherapy notes: none here, so nothing is stated
    assert outcome_text(full) == ""


def test_patient_bound_token_sees_one_person(record: RecordHarness) -> None:
    portal_pid = PORTAL_PATIENT
    mine = full_record(CLINIC, PORTAL_MRN, portal_pid)
    other_mrn = unique("other-")
    other_pid = patient_id(HOSPITAL, other_mrn)
    others = [body_weight(HOSPITAL, other_pid, f"{other_mrn}-w", iso(T0), 90.0)]
    record.publish(Event(CLINIC, PORTAL_MRN, [patient(CLINIC, PORTAL_MRN), *mine]),
                   Event(HOSPITAL, other_mrn, [patient(HOSPITAL, other_mrn), *others]))

    own = record.search_all("/Observation", token="portal")  # no patient=: the compartment applies
    assert {r["id"] for r in own} == {r["id"] for r in mine if r["resourceType"] == "Observation"}
    assert {r["id"] for r in record.search_all("/Patient", token="portal")} == {portal_pid}
    assert record.fhir(f"/Patient/{portal_pid}/$everything", token="portal")["total"] == len(mine) + 1
    assert record.fhir(f"/Patient/{portal_pid}", token="portal")["id"] == portal_pid

    # another person's records do not exist for this token: the same 404 and text as an id no record has
    absent = "0" * len(others[0]["id"])
    for path in (f"/Patient/{other_pid}", f"/Observation/{others[0]['id']}", f"/Patient/{other_pid}/$everything",
                 f"/Observation/{others[0]['id']}/_history", f"/Observation/{others[0]['id']}/_history/1"):
        response = record.get(path, token="portal")
        assert response.status_code == 404, path
        unknown = record.get(path.replace(others[0]["id"], absent).replace(other_pid, absent), token="portal")
        assert unknown.status_code == 404
        assert response.json()["issue"][0]["diagnostics"].replace(others[0]["id"], absent).replace(
            other_pid, absent) == unknown.json()["issue"][0]["diagnostics"], path
    # a search naming another patient is refused whether or not that patient exists
    assert record.get("/Observation", token="portal", params={"patient": other_pid}).status_code == 403


def test_type_scopes(record: RecordHarness, labelled: dict[str, Any]) -> None:
    pid = labelled["pid"]
    assert record.fhir("/Observation", token="obs", params={"patient": pid})["total"] > 0
    for path in (f"/Condition?patient={pid}", f"/Patient/{pid}", f"/Condition/{labelled['depression']['id']}",
                 "/Condition/_history", f"/Patient/{pid}/$everything"):
        response = record.get(path, token="obs")
        assert response.status_code == 403, path
        assert response.json()["issue"][0]["code"] == "forbidden"


def test_everything_type_and_since_filters(record: RecordHarness, labelled: dict[str, Any]) -> None:
    pid = labelled["pid"]
    only = record.search_all(f"/Patient/{pid}/$everything", params={"_type": "Observation,Flag", "_count": 100})
    assert {r["resourceType"] for r in only} == {"Observation", "Flag"}
    assert record.fhir(f"/Patient/{pid}/$everything", params={"_type": "Basic"})["total"] == 0
    stamp = record.fhir(f"/Patient/{pid}")["meta"]["lastUpdated"]
    assert record.fhir(f"/Patient/{pid}/$everything", params={"_since": stamp})["total"] > 0
    assert record.fhir(f"/Patient/{pid}/$everything", params={"_since": "2999-01-01T00:00:00Z"})["total"] == 0
    record.fhir(f"/Patient/{pid}/$everything", params={"start": "2024"}, status=400)
    assert record.get("/NotAType/x", token=None).status_code == 401  # no probing without a token
