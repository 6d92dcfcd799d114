# ruff: noqa: S106 -- token= names a test fixture's token, not a secret
"""The outcomes service on the real broker beside the record service: outcome changes on carebus.outcomes.v1,
derived resources in the record API, replay determinism, a merge joining two sources' histories, safety Task
lifecycle (once per alert, acknowledged, escalated on a driven clock, closed, audited) and $evaluate-measure over
50 constructed patients."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from services.common.fhir_ids import resource_id
from services.common.kafka import OutboundRecord
from services.common.security_labels import PSYCHIATRIC, meta_security
from services.common.topics import FHIR_BUNDLES, HEADER_EVENT_ID, HEADER_EVENT_TYPE, HEADER_SECURITY
from services.outcomes.engine import OutcomesEngine, clock_of
from services.outcomes.fhir import MEASURES
from tests.outcomes.conftest import OTHER_SOURCE, SOURCE, OutcomesStack, eventually, patient_event, phq9_event, unique
from tests.outcomes.population import EXPECTED, PERIOD, exclusion_resources, measure_score, population
from tests.record.conftest import bearer

pytestmark = pytest.mark.integration
START = datetime(2023, 6, 1, 15, 0, tzinfo=UTC)  # outside the measure tests' period
EPISODE_CODE = "urn:carebus:codesystem:outcomes|phq-9-episode"


def patient_ref(source: str, patient_id: str) -> str:
    return f"Patient/{resource_id('Patient', source, patient_id)}"


def derived(stack: OutcomesStack, patient: str, state: str | None = None) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        found = stack.record.search_all("Observation", params={"patient": patient, "code": EPISODE_CODE})
        if found and (state is None or found[0]["valueCodeableConcept"]["coding"][0]["code"] == state):
            return found[0]
        return None
    return eventually(check, what=f"derived Observation ({state})")


def test_outcome_changes_and_derived_resources(stack: OutcomesStack) -> None:
    pid = unique("P")
    ref = patient_ref(SOURCE, pid)
    stack.send(patient_event(SOURCE, pid), phq9_event(SOURCE, pid, START, 20))
    changes = eventually(lambda: stack.changes(ref), what="episode-started")
    assert [c["kind"] for c in changes] == ["episode-started"]
    follow_up = stack.send(phq9_event(SOURCE, pid, START + timedelta(days=130), 8))
    kinds = eventually(lambda: {c["kind"] for c in stack.changes(ref)} >= {"response-reached"} and
                       [c["kind"] for c in stack.changes(ref)], what="response-reached")
    assert sorted(kinds) == ["episode-started", "partial-response-reached", "response-reached"]
    assert len({c["id"] for c in stack.changes(ref)}) == 3
    observation = derived(stack, ref, "responding")
    scores = stack.record.search_all("Observation", params={"patient": ref, "code": "http://loinc.org|44261-6"})
    assert {d["reference"] for d in observation["derivedFrom"]} == {f"Observation/{s['id']}" for s in scores}
    assert {"R", "PSY"} <= {c["code"] for c in observation["meta"]["security"]}
    reports = stack.record.search_all("MeasureReport", params={"patient": ref})
    assert len(reports) == 2 and {r["type"] for r in reports} == {"individual"}
    drr = next(r for r in reports if "4-8-months" in r["measure"])
    assert {p["id"]: p["count"] for p in drr["group"][0]["population"]}["numerator"] == 1
    # an uncleared token sees none of it
    hidden = stack.record.fhir("Observation", token="basic", params={"patient": ref, "code": EPISODE_CODE})
    assert not [e for e in hidden.get("entry", []) if e["resource"]["resourceType"] == "Observation"]

    # replay: the same bundles again change nothing and emit no new change ids
    versions = observation["meta"]["versionId"]
    before = len(stack.changes(ref))
    stack.publish(follow_up)
    stack.outcomes.sweep_once()  # a full recompute too
    again = derived(stack, ref)
    assert again["meta"]["versionId"] == versions
    assert len({c["id"] for c in stack.changes(ref)}) == 3
    assert len(stack.changes(ref)) >= before
    # a new process (nothing remembered) recomputing from the record converges on exactly what is stored: the
    # same ids and contents, so nothing to write and no outcome change to announce again
    fresh = OutcomesEngine(stack.settings, stack.outcomes.engine.store, clock=stack.clock)
    assert fresh.recompute([ref]).records == []


def test_a_merge_joins_two_sources_histories(stack: OutcomesStack) -> None:
    empi = unique("EMPI")
    clinic, hospital = unique("C"), unique("H")
    clinic_ref, hospital_ref = patient_ref(SOURCE, clinic), patient_ref(OTHER_SOURCE, hospital)
    stack.send(patient_event(SOURCE, clinic), phq9_event(SOURCE, clinic, START, 19))
    assert derived(stack, clinic_ref, "awaiting-follow-up")
    # a hospital record of someone else (no shared identifier yet) with a low score: no episode there
    stack.send(patient_event(OTHER_SOURCE, hospital),
               phq9_event(OTHER_SOURCE, hospital, START + timedelta(days=150), 3))
    # the hospital learns the enterprise id, and so does the clinic: one person
    stack.send(patient_event(OTHER_SOURCE, hospital, empi), patient_event(SOURCE, clinic, empi))
    observation = derived(stack, clinic_ref, "remitted")
    assert len(observation["derivedFrom"]) == 2
    assert observation["subject"]["reference"] == clinic_ref
    kinds = eventually(lambda: {c["kind"] for c in stack.changes(clinic_ref)} >= {"remission-reached"} and
                       {c["kind"] for c in stack.changes(clinic_ref)}, what="remission after merge")
    assert "remission-reached" in kinds
    assert stack.record.search_all("Observation", params={"patient": hospital_ref, "code": EPISODE_CODE})


def _alerts(stack: OutcomesStack) -> list[dict[str, Any]]:
    return [v for topic, _, v in stack.poll() if topic == "alerts.safety.v1"]


def _task(stack: OutcomesStack, ref: str, status: str | None = None) -> list[dict[str, Any]]:
    params = {"patient": ref, **({"status": status} if status else {})}
    return stack.record.search_all("Task", params=params)


def test_safety_task_lifecycle(stack: OutcomesStack) -> None:
    pid = unique("S")
    ref = patient_ref(SOURCE, pid)
    stack.clock.now = datetime.now(UTC)
    records = stack.send(patient_event(SOURCE, pid), phq9_event(SOURCE, pid, stack.clock.now, 14, item9=2))
    tasks = eventually(lambda: _task(stack, ref), what="Task")
    assert len(tasks) == 1
    task = tasks[0]
    assert task["status"] == "requested" and task["priority"] == "urgent"
    assert task["focus"]["reference"].startswith("Flag/") and task["owner"]["reference"] == "CareTeam/on-call"
    due = datetime.fromisoformat(task["restriction"]["period"]["end"].replace("Z", "+00:00"))
    assert timedelta(minutes=29) < due - stack.clock.now <= timedelta(minutes=30)
    assert _task(stack, ref, "requested") and not _task(stack, ref, "accepted")

    # a resend of the same alert (and of its bundle) never makes a second Task
    stack.publish(records)
    stack.publish([r for r in records if r.topic.endswith("alerts.safety.v1")])
    eventually(lambda: stack.outcomes.alerts.processed >= 3, what="alerts consumed")
    assert len(_task(stack, ref)) == 1

    # not yet due: nothing escalates; past due: the next owner of the chain, an event on the alerts topic
    assert stack.outcomes.escalate_once() == 0
    stack.clock.now = due + timedelta(minutes=1)
    assert stack.outcomes.escalate_once() >= 1
    escalated = eventually(lambda: [t for t in _task(stack, ref) if t["owner"]["reference"] ==
                                    "Organization/crisis-line"], what="escalated Task")[0]
    assert escalated["status"] == "requested" and escalated["businessStatus"]["coding"][0]["code"] == "escalated-1"
    events = eventually(lambda: [a for a in _alerts(stack) if a.get("task") == f"Task/{task['id']}"], what="event")
    assert events[0]["kind"] == "escalation" and events[0]["level"] == 1
    gauge = stack.outcomes.metrics.registry.get_sample_value("carebus_safety_alerts_unacknowledged",
                                                            {"due": "overdue"})
    assert gauge is not None and gauge >= 1

    # acknowledge: an API call by a practitioner, audited
    path = f"/Task/{task['id']}"
    body = {**escalated, "status": "accepted", "owner": {"reference": "Practitioner/dr-okafor"}}
    refused = stack.record.client.put(path, content=orjson.dumps(body), headers=bearer("full"))
    assert refused.status_code == 403  # a read-only token
    response = stack.record.client.put(path, content=orjson.dumps(body), headers=bearer("writer"))
    assert response.status_code == 200, response.text
    accepted = response.json()
    assert accepted["status"] == "accepted" and accepted["owner"]["reference"] == "Practitioner/dr-okafor"
    version = accepted["meta"]["versionId"]
    audit = stack.record.fhir(f"/AuditEvent/{_audit_id(task['id'], version)}", token="privacy")  # AuditEvent scope
    assert audit["agent"][0]["who"]["reference"] == "Practitioner/dr-okafor" and audit["action"] == "U"
    assert audit["entity"][0]["what"]["reference"] == f"Task/{task['id']}/_history/{version}"
    assert _task(stack, ref, "accepted")
    # acknowledged: later checks do not escalate it
    stack.clock.now = due + timedelta(hours=3)
    stack.outcomes.escalate_once()
    assert _task(stack, ref)[0]["status"] == "accepted"

    # only status, owner and note may change; a closed Task stays closed
    tampered = {**accepted, "priority": "routine", "owner": {"reference": "Practitioner/dr-okafor"}}
    assert stack.record.client.put(path, content=orjson.dumps(tampered), headers=bearer("writer")).status_code == 422
    no_practitioner = {**accepted, "status": "completed", "owner": {"reference": "CareTeam/on-call"}}
    assert stack.record.client.put(path, content=orjson.dumps(no_practitioner),
                                   headers=bearer("writer")).status_code == 422
    closing = {**accepted, "status": "completed", "note": [{"text": "Safety plan reviewed by phone."}]}
    closed = stack.record.client.put(path, content=orjson.dumps(closing), headers=bearer("writer"))
    assert closed.status_code == 200 and closed.json()["status"] == "completed"
    assert "end" in closed.json()["executionPeriod"]
    assert _task(stack, ref, "completed") and not _task(stack, ref, "requested")
    reopen = {**closed.json(), "status": "requested"}
    assert stack.record.client.put(path, content=orjson.dumps(reopen), headers=bearer("writer")).status_code == 409


def _audit_id(task_id: str, version: str) -> str:
    from services.outcomes.episodes import outcome_id

    return outcome_id("audit", f"Task/{task_id}/_history/{version}")


def test_clock_is_driven_by_a_setting(stack: OutcomesStack) -> None:
    shifted = clock_of(stack.settings.model_copy(update={"outcomes_clock_offset_s": 3600.0}))()
    assert timedelta(minutes=59) < shifted - datetime.now(UTC) <= timedelta(minutes=61)


def _score_bundle(key: str, points: list[tuple[Any, int]]) -> OutboundRecord:
    patient = {"resourceType": "Patient", "id": resource_id("Patient", "urn:carebus:test:measures", key),
               "identifier": [{"system": "urn:carebus:test:measures", "value": key}]}
    died, conditions = exclusion_resources(key, points[0][0], patient["id"])
    patient.update(died)
    entries = [{"fullUrl": f"urn:uuid:{patient['id']}", "resource": patient},
               *({"fullUrl": f"urn:uuid:{c['id']}", "resource": c} for c in conditions)]
    for n, (when, total) in enumerate(points):
        observation = {
            "resourceType": "Observation", "id": resource_id("Observation", "urn:carebus:test:measures", key, str(n)),
            "meta": {"security": meta_security(PSYCHIATRIC)}, "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "44261-6"}]},
            "subject": {"reference": f"Patient/{patient['id']}"},
            "effectiveDateTime": f"{when.isoformat()}T10:00:00Z",
            "valueQuantity": {"value": total, "unit": "{score}", "system": "http://unitsofmeasure.org",
                              "code": "{score}"}}
        entries.append({"fullUrl": f"urn:uuid:{observation['id']}", "resource": observation})
    event_id = f"measure-{key}"
    return OutboundRecord(topic=FHIR_BUNDLES.name(""), key=f"urn:carebus:test:measures|{key}",
                          value=orjson.dumps({"resourceType": "Bundle", "id": event_id, "type": "collection",
                                              "entry": entries}),
                          headers={HEADER_EVENT_ID: event_id, HEADER_EVENT_TYPE: "test", HEADER_SECURITY: "R,PSY"})


def test_evaluate_measure_counts_match_the_hand_count(stack: OutcomesStack) -> None:
    tag = unique("m")
    records = [_score_bundle(f"{tag}-{key}", points) for key, points in population()]
    for record in records:
        record.topic = FHIR_BUNDLES.name(stack.settings.topic_prefix)
    stack.record.publish_raw(records)
    params = {"periodStart": PERIOD[0].isoformat(), "periodEnd": PERIOD[1].isoformat()}
    listed = stack.record.fhir("/Measure")
    assert {e["resource"]["id"] for e in listed["entry"]} == {m.id for m in MEASURES}
    drr, cms = MEASURES
    for query, expected in (({"url": drr.url}, [drr.id]), ({"_id": f"{cms.id},{drr.id}"}, [drr.id, cms.id]),
                            ({"name": "carebusphq9remissionat"}, [cms.id]), ({"title": "Depression"}, [drr.id, cms.id]),
                            ({"status": "active", "version": "1.0.0", "url": cms.url}, [cms.id]),
                            ({"status": "retired"}, []), ({"title": "remission"}, [])):  # title: from its start
        found = stack.record.fhir("/Measure", params=query)
        assert sorted(e["resource"]["id"] for e in found["entry"]) == sorted(expected), query
        assert found["total"] == len(expected)
    unknown = stack.record.get("/Measure", params={"publisher": "carebus"})
    assert unknown.status_code == 400 and "publisher" in unknown.text
    for spec in MEASURES:
        assert stack.record.fhir(f"/Measure/{spec.id}")["url"] == spec.url
        report = stack.record.fhir(f"/Measure/{spec.id}/$evaluate-measure", params=params)
        counts = {p["id"]: p["count"] for p in report["group"][0]["population"]}
        # only these 50 patients have index scores in the period; evaluated as of today, every window has closed
        assert report["type"] == "summary" and report["status"] == "complete"
        assert counts == EXPECTED[spec.window]  # denominator exclusions included (Conditions, a death)
        assert report["group"][0]["measureScore"]["value"] == measure_score(spec.window)
    for key, expected in (("remit-early-03", {"denominator-exclusion": 0, "numerator": 1}),
                          ("remit-early-00", {"denominator-exclusion": 1, "numerator": 0}),  # bipolar disorder
                          ("respond-00", {"denominator-exclusion": 1, "numerator": 0}),  # discharged to hospice
                          ("remit-both-02", {"denominator-exclusion": 0, "numerator": 1})):  # hospice only planned
        subject = f"Patient/{resource_id('Patient', 'urn:carebus:test:measures', f'{tag}-{key}')}"
        one = stack.record.fhir(f"/Measure/{MEASURES[0].id}/$evaluate-measure", params={**params, "subject": subject})
        assert one["type"] == "individual"
        found = {p["id"]: p["count"] for p in one["group"][0]["population"]}
        assert {k: found[k] for k in expected} == expected, key
    # the outcomes service's own Individual MeasureReport reads the hospice Encounter too (its $everything read)
    hospice = f"Patient/{resource_id('Patient', 'urn:carebus:test:measures', f'{tag}-respond-00')}"

    def excluded_report() -> dict[str, Any] | None:
        reports = stack.record.search_all("MeasureReport", params={"patient": hospice})
        drr = [r for r in reports if MEASURES[0].url in r["measure"]]
        counts = {p["id"]: p["count"] for p in drr[0]["group"][0]["population"]} if drr else {}
        return drr[0] if counts.get("denominator-exclusion") == 1 else None
    report = eventually(excluded_report, timeout_s=90, what="the hospice patient's Individual MeasureReport")
    assert any(e["reference"].startswith("Encounter/") for e in report["evaluatedResource"])
    # an uncleared token counts nothing it may not see
    hidden = stack.record.fhir(f"/Measure/{MEASURES[0].id}/$evaluate-measure", token="basic", params=params)
    assert {p["id"]: p["count"] for p in hidden["group"][0]["population"]}["initial-population"] == 0
    bad = stack.record.get(f"/Measure/{MEASURES[0].id}/$evaluate-measure", params={"periodStart": "2025-01-01"})
    assert bad.status_code == 400 and "periodEnd" in bad.text
