# ruff: noqa: S106 -- token= names a test fixture's token label, not a secret
"""The consent matrix through the real record service (real broker, SQLite and PostgreSQL) under the shipped
policy: label class x consent state x exit (read, search, $everything) for a recipient without clearance; no
side channel (totals, links, 403/404, error texts); Part 2 notice; audit and the accounting of disclosures;
revocation."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from services.common import security_labels
from services.common.fhir_ids import resource_id
from services.common.part2 import CONSENT_HEADER, NOTICE_HEADER, PART2_REGULATION, STATEMENT_1
from services.record.render import GENERIC_NOTICE
from tests.consent.conftest import eventually
from tests.consent.consents import LABEL_SETS, consent, consent_state
from tests.consent.test_decision import STATES, UNCLEARED_MATRIX
from tests.record.conftest import RecordHarness, validate_fhir
from tests.record.fhir_data import (
    CLINIC,
    T0,
    Event,
    body_weight,
    depression_condition,
    iso,
    opioid_use_condition,
    patient,
    patient_id,
    progress_note,
    unique,
)

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


def _labelled(resource: dict[str, Any], labels: tuple[str, ...]) -> dict[str, Any]:
    meta = {k: v for k, v in resource.get("meta", {}).items() if k != "security"}
    if labels:
        meta["security"] = security_labels.meta_security(labels)
    return {**resource, "meta": meta} if meta else {k: v for k, v in resource.items() if k != "meta"}


def _consent_resource(c: dict[str, Any], key: str) -> dict[str, Any]:
    """A consent as the mapper stores it: its own id, labelled with the classes it covers."""
    c = {**c, "id": resource_id("Consent", CLINIC.system, key)}
    return _labelled(c, security_labels.PART2)


def seed_patient(record: RecordHarness, consents_of: Callable[[str], list[dict[str, Any]]] = lambda pid: []
                 ) -> dict[str, Any]:
    """A patient with one resource per label class and the consents ``consents_of(patient reference)``."""
    mrn = unique("cm-")
    pid = patient_id(CLINIC, mrn)
    consents = consents_of(f"Patient/{pid}")
    resources = {
        "none": _labelled(body_weight(CLINIC, pid, f"{mrn}-w", iso(T0), 70.0), ()),
        "PSY": depression_condition(CLINIC, pid, f"{mrn}-dx", iso(T0, 1)),
        "SUD-Part2": opioid_use_condition(CLINIC, pid, f"{mrn}-oud", iso(T0, 2)),
        "ETHUD": _labelled(body_weight(CLINIC, pid, f"{mrn}-audc", iso(T0, 3), 71.0), LABEL_SETS["ETHUD"]),
        "PSYTHPN": _labelled(progress_note(CLINIC, pid, f"{mrn}-pn", iso(T0, 4)), LABEL_SETS["PSYTHPN"]),
    }
    stored = [_consent_resource(c, f"{mrn}-{i}") for i, c in enumerate(consents)]
    record.publish(Event(CLINIC, mrn, [patient(CLINIC, mrn), *resources.values(), *stored]))
    return {"pid": pid, "resources": resources, "consents": stored}


def matches(bundle: dict[str, Any]) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"}


def outcome_texts(bundle: dict[str, Any]) -> list[str]:
    return [i["details"]["text"] for e in bundle.get("entry", []) if e["search"]["mode"] == "outcome"
            for i in e["resource"]["issue"]]


def test_consent_matrix_read_search_everything(shipped: RecordHarness) -> None:
    """The expected outcome of each cell is the engine's table (tests/consent/test_decision.py)."""
    for state in STATES:
        # one consent per state, covering every class (no securityLabel)
        seeded = seed_patient(shipped, lambda ref, state=state: consent_state(state, "none", ref))
        pid = seeded["pid"]
        if state == "deny":  # the Patient itself is withheld: $everything answers as for an unknown patient
            assert shipped.get(f"/Patient/{pid}/$everything", token="partner").status_code == 404
            everything: set[str] = set()
        else:
            everything = {r["id"] for r in shipped.search_all(f"/Patient/{pid}/$everything", token="partner",
                                                              params={"_count": 3})}
        for label_class, resource in seeded["resources"].items():
            expected = UNCLEARED_MATRIX[label_class][STATES.index(state)]
            visible = expected != "deny"
            rtype, rid = resource["resourceType"], resource["id"]
            read = shipped.get(f"/{rtype}/{rid}", token="partner")
            assert read.status_code == (200 if visible else 404), (state, label_class, read.text)
            found = shipped.fhir(f"/{rtype}", token="partner", params={"patient": pid})
            assert (rid in matches(found)) is visible, (state, label_class)
            assert found["total"] == len(matches(found))
            assert (rid in everything) is visible, (state, label_class)
            if expected == "permit-with-obligations":
                assert read.headers[NOTICE_HEADER].startswith("42 CFR part 2 prohibits")
                assert read.headers[CONSENT_HEADER] == f"Consent/{seeded['consents'][0]['id']}"
                notices = [e["resource"] for e in found["entry"] if e["search"]["mode"] == "include"]
                assert [t["reference"] for t in notices[0]["target"]] == [f"{rtype}/{rid}"]
                assert notices[0]["policy"][0] == PART2_REGULATION
                assert notices[0]["policy"][1].endswith(f"/Consent/{seeded['consents'][0]['id']}")
                assert STATEMENT_1[:60] in notices[0]["text"]["div"]
                assert {c["code"] for c in notices[0]["meta"]["security"]} >= {"42CFRPart2", "NORDSCLCD"}
            else:
                assert NOTICE_HEADER not in read.headers


def test_cross_patient_search_applies_each_persons_consents(shipped: RecordHarness) -> None:
    permitted = seed_patient(shipped)
    other = seed_patient(shipped)
    shipped.publish(Event(CLINIC, f"c-{permitted['pid']}", [_consent_resource(
        consent("x", f"Patient/{permitted['pid']}", covered=("SUD", "42CFRPart2")), f"{permitted['pid']}-c")]))
    ouds = [permitted["resources"]["SUD-Part2"]["id"], other["resources"]["SUD-Part2"]["id"]]
    dxs = [permitted["resources"]["PSY"]["id"], other["resources"]["PSY"]["id"]]
    # no patient= : every person's consents apply, each to its own data
    found = shipped.fhir("/Condition", token="partner-bh", params={"_id": ",".join(ouds + dxs)})
    assert matches(found) == {ouds[0], *dxs}
    assert found["total"] == 3
    # the partner's clinician is cleared for Part 2 and may be told what was withheld (no ids)
    assert any(t.startswith("1 matching resource was withheld: 42 CFR Part 2") for t in outcome_texts(found))
    paged = shipped.search_all("/Condition", token="partner-bh", params={"_id": ",".join(ouds + dxs), "_count": 1})
    assert {r["id"] for r in paged} == {ouds[0], *dxs}
    # the therapy practice is named by no consent: behavioural health yes, Part 2 no, and it is not told
    therapy = shipped.fhir("/Condition", token="therapy", params={"_id": ",".join(ouds + dxs)})
    assert matches(therapy) == set(dxs) and therapy["total"] == 2
    assert outcome_texts(therapy) == [GENERIC_NOTICE]


def _comparable(response: Any, *ids: str) -> tuple[int, str]:
    text = response.text
    for i, rid in enumerate(ids):
        text = text.replace(rid, f"<id{i}>")
    return response.status_code, text


def _shape(bundle: dict[str, Any], pid: str) -> dict[str, Any]:
    return {
        "total": bundle["total"],
        "links": [(link["relation"], link["url"].replace(pid, "<pid>")) for link in bundle["link"]],
        "entries": len(bundle.get("entry", [])),
        "security": bundle["meta"].get("security"),
        "outcome": outcome_texts(bundle),
    }


@pytest.mark.parametrize("token", ["basic", "partner", "therapy"])
def test_no_side_channel_for_an_uncleared_caller(shipped: RecordHarness, token: str) -> None:
    """Totals, paging links, statuses and error texts are the same whether a withheld resource exists or not."""
    with_part2 = seed_patient(shipped)
    mrn = unique("sc-")
    pid_b = patient_id(CLINIC, mrn)
    ordinary = [body_weight(CLINIC, pid_b, f"{mrn}-w", iso(T0), 70.0),
                _labelled(body_weight(CLINIC, pid_b, f"{mrn}-w2", iso(T0, 3), 71.0), ()),
                depression_condition(CLINIC, pid_b, f"{mrn}-dx", iso(T0, 1))]
    shipped.publish(Event(CLINIC, mrn, [patient(CLINIC, mrn), *ordinary]))
    pid_a = with_part2["pid"]
    # A has a Part 2 Condition (and more labelled data); B has the same ordinary and PSY data and nothing else
    for params in ({"_count": "1"}, {"_count": "50"}, {}):
        a = shipped.fhir("/Condition", token=token, params={"patient": pid_a, **params})
        b = shipped.fhir("/Condition", token=token, params={"patient": pid_b, **params})
        assert _shape(a, pid_a) == _shape(b, pid_b)
    oud = with_part2["resources"]["SUD-Part2"]["id"]
    withheld = shipped.get(f"/Condition/{oud}", token=token)
    absent = shipped.get("/Condition/00000000-0000-5000-8000-000000000000", token=token)
    assert _comparable(withheld, oud) == _comparable(absent, "00000000-0000-5000-8000-000000000000")
    assert withheld.status_code == 404
    for path in ("_history", "_history/1"):
        w = shipped.get(f"/Condition/{oud}/{path}", token=token)
        n = shipped.get(f"/Condition/00000000-0000-5000-8000-000000000000/{path}", token=token)
        assert _comparable(w, oud) == _comparable(n, "00000000-0000-5000-8000-000000000000")
    assert "Part 2" not in withheld.text and "SUD" not in withheld.text and "withheld" not in withheld.text


def _audit(record: RecordHarness, pid: str, **params: str) -> list[dict[str, Any]]:
    bundle = record.fhir("/AuditEvent", token="privacy", params={"patient": pid, "_count": "200", **params})
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def test_each_disclosure_yields_one_audit_event_and_the_accounting_lists_them(shipped: RecordHarness) -> None:
    seeded = seed_patient(shipped)
    pid = seeded["pid"]
    shipped.publish(Event(CLINIC, f"c-{pid}", [_consent_resource(
        consent("x", f"Patient/{pid}", covered=("SUD", "42CFRPart2")), f"{pid}-c")]))
    consent_ref = f"Consent/{resource_id('Consent', CLINIC.system, f'{pid}-c')}"
    oud, dx = seeded["resources"]["SUD-Part2"]["id"], seeded["resources"]["PSY"]["id"]
    assert shipped.get(f"/Condition/{oud}", token="partner").status_code == 200
    shipped.fhir("/Condition", token="partner", params={"patient": pid})
    shipped.fhir(f"/Patient/{pid}/$everything", token="partner")
    assert shipped.get(f"/Condition/{dx}", token="partner").status_code == 404  # a denied attempt
    assert shipped.fhir("/Encounter", token="partner", params={"patient": pid})["total"] == 0  # nothing: no audit

    events = eventually(lambda: len(found := _audit(shipped, pid)) >= 6 and found)
    assert len(events) == 6, [e["subtype"][0]["code"] for e in events]
    for event in events:
        validate_fhir(event)
        assert event["entity"][0]["what"]["reference"] == f"Patient/{pid}"
        assert event["purposeOfEvent"][0]["coding"][0]["code"] == "TREAT"
        recipients = [a for a in event["agent"] if a["type"]["coding"][0]["code"] == "IRCP"]
        assert recipients[0]["who"]["identifier"]["value"] == "1999999984"
        assert "valueQuantity" not in orjson.dumps(event).decode()  # references only, never content
    by_kind = {(e["subtype"][0]["code"], e["outcome"]): e for e in events}
    # the search and $everything disclosed some data and withheld the rest (PSY: no clearance, no consent for it):
    # a denied attempt each, naming the patient and the query, not the withheld resources
    assert set(by_kind) == {("read", "0"), ("search-type", "0"), ("operation", "0"), ("read", "4"),
                            ("search-type", "4"), ("operation", "4")}
    for kind in ("search-type", "operation"):
        denied = by_kind[(kind, "4")]
        assert denied["outcomeDesc"] == "refused by the disclosure policy"
        assert [e["role"]["code"] for e in denied["entity"]] == ["1", "24"]  # the patient, the query
    query_denied = next(e for e in by_kind[("search-type", "4")]["entity"] if "query" in e)
    assert base64.b64decode(query_denied["query"]).decode() == f"patient={pid}"
    read = by_kind[("read", "0")]
    assert [e["what"]["reference"] for e in read["entity"]][1:] == [f"Condition/{oud}", consent_ref]
    assert read["agent"][2]["policy"][0].endswith(consent_ref)
    query = next(e for e in by_kind[("search-type", "0")]["entity"] if "query" in e)
    assert base64.b64decode(query["query"]).decode() == f"patient={pid}"
    assert by_kind[("read", "4")]["entity"][1]["what"]["reference"] == f"Condition/{dx}"

    accounting = shipped.fhir(f"/Patient/{pid}/$disclosures", token="privacy", params={"start": "2020-01-01"})
    listed = matches(accounting)
    assert listed == {e["id"] for e in events if e["outcome"] == "0"}
    assert shipped.fhir(f"/Patient/{pid}/$disclosures", token="privacy", params={"end": "2020-01-01"})["total"] == 0
    assert shipped.get(f"/Patient/{pid}/$disclosures", token="partner").status_code == 403
    # the audit trail is the privacy officer's: a "*" scope does not cover it
    assert shipped.get("/AuditEvent", token="basic", params={"patient": pid}).status_code == 403
    assert "AuditEvent" not in {r["resourceType"] for r in shipped.search_all(
        f"/Patient/{pid}/$everything", token="partner-bh", params={"_count": 100})}


def test_a_search_whose_matches_were_withheld_is_audited_as_a_denied_attempt(shipped: RecordHarness) -> None:
    """Without any consent (the caller's baseline grant decides alone): a search that withheld matches writes one
    denied PatientQuery per patient concerned, besides the disclosure of what it returned; one that withheld
    nothing writes none."""
    pid = seed_patient(shipped)["pid"]
    shipped.fhir("/Condition", token="basic", params={"patient": pid})  # PSY and Part 2 diagnoses withheld
    shipped.fhir("/Observation", token="therapy", params={"patient": pid, "_count": "1"})  # AUDIT-C withheld
    shipped.fhir("/Patient", token="basic", params={"_id": pid})  # nothing withheld
    # a last denied search: its AuditEvent follows any of the Patient search on the patient's audit partition
    shipped.fhir("/Condition", token="basic", params={"patient": pid, "_count": "2"})

    def queries(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
        return sorted((e["subtype"][0]["code"], base64.b64decode(
            next(x["query"] for x in e["entity"] if "query" in x)).decode()) for e in events)

    events = eventually(lambda: (found := _audit(shipped, pid, outcome="4")) and (
        ("search-type", f"patient={pid}&_count=2") in queries(found)) and found)
    assert queries(events) == [("search-type", f"patient={pid}"), ("search-type", f"patient={pid}&_count=1"),
                               ("search-type", f"patient={pid}&_count=2")]
    assert all(e["entity"][0]["what"]["reference"] == f"Patient/{pid}" for e in events)


def test_revocation_stops_disclosure_from_its_time_on(shipped: RecordHarness) -> None:
    seeded = seed_patient(shipped)
    pid = seeded["pid"]
    oud = seeded["resources"]["SUD-Part2"]["id"]
    granted = consent("r", f"Patient/{pid}", covered=("SUD", "42CFRPart2"))
    shipped.publish(Event(CLINIC, f"c-{pid}", [_consent_resource(granted, f"{pid}-r")]))
    assert shipped.get(f"/Condition/{oud}", token="partner").status_code == 200
    revoked = {**granted, "status": "inactive",
               "provision": {**granted["provision"], "period": {"start": granted["provision"]["period"]["start"],
                                                                 "end": "2026-06-01T00:00:00Z"}}}
    shipped.publish(Event(CLINIC, f"c-{pid}", [_consent_resource(revoked, f"{pid}-r")]))
    assert shipped.get(f"/Condition/{oud}", token="partner").status_code == 404
    assert oud not in matches(shipped.fhir("/Condition", token="partner", params={"patient": pid}))


def test_purpose_of_use_outside_treatment_needs_a_consent(shipped: RecordHarness) -> None:
    seeded = seed_patient(shipped)
    pid = seeded["pid"]
    assert shipped.fhir("/Observation", token="research", params={"patient": pid})["total"] == 0
    assert shipped.fhir("/Observation", token="partner", params={"patient": pid})["total"] == 1
