"""Search through the real broker and both stores: every supported parameter, modifiers and prefixes, paging,
sorting, _lastUpdated and _id. Each test uses patients of its own, so totals are exact."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from services.record.fhirdates import date_range, format_instant
from tests.record.conftest import RecordHarness
from tests.record.fhir_data import CLINIC, HOSPITAL, T0, Event, full_record, iso, patient, patient_id, unique

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


def _ids(bundle: dict[str, Any]) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"}


def _seed(record: RecordHarness, source: Any = CLINIC) -> tuple[str, dict[str, dict[str, Any]]]:
    mrn = unique("srch-")
    pid = patient_id(source, mrn)
    resources = full_record(source, mrn, pid)
    record.publish(Event(source, mrn, [patient(source, mrn), *resources]))
    by_key = {r["id"]: r for r in resources}
    return pid, by_key


def test_patient_search_by_identifier_name_and_birthdate(record: RecordHarness) -> None:
    tag = unique("q")
    mrn_a, mrn_b = unique("pa-"), unique("pb-")
    pid_a, pid_b = patient_id(CLINIC, mrn_a), patient_id(HOSPITAL, mrn_b)
    record.publish(
        Event(CLINIC, mrn_a, [patient(CLINIC, mrn_a, family=f"Ödegård{tag}", given=("Siri",), birth="1979-11-02")]),
        Event(HOSPITAL, mrn_b, [patient(HOSPITAL, mrn_b, family=f"Odell{tag}", given=("Ravi",), birth="1990-06")]),
    )

    assert _ids(record.fhir("/Patient", params={"identifier": f"{CLINIC.mrn_system}|{mrn_a}"})) == {pid_a}
    assert _ids(record.fhir("/Patient", params={"identifier": mrn_b})) == {pid_b}
    assert _ids(record.fhir("/Patient", params={"identifier": f"{HOSPITAL.mrn_system}|{mrn_a}"})) == set()
    assert _ids(record.fhir("/Patient", params={"identifier": f"{CLINIC.mrn_system}|{mrn_a},{mrn_b}"})) == {
        pid_a, pid_b}

    # name: starts-with, case and accent insensitive, on any part; :exact; :contains
    assert _ids(record.fhir("/Patient", params={"name": f"odegard{tag}"})) == {pid_a}
    assert _ids(record.fhir("/Patient", params={"name": "ODEGÅRD" + tag.upper()})) == {pid_a}
    assert _ids(record.fhir("/Patient", params=[("name", f"ode{tag}"), ("name", "x")])) == set()
    assert _ids(record.fhir("/Patient", params={"name:exact": f"Ödegård{tag}"})) == {pid_a}
    assert _ids(record.fhir("/Patient", params={"name:exact": f"odegard{tag}"})) == set()
    assert _ids(record.fhir("/Patient", params={"name:contains": f"gard{tag}"})) == {pid_a}
    assert _ids(record.fhir("/Patient", params={"name:contains": f"de%{tag}"})) == set()  # % is literal
    both = record.fhir("/Patient", params={"name": f"Ödegård{tag},Odell{tag}"})
    assert _ids(both) == {pid_a, pid_b}

    # birthdate: ranges by precision and prefixes, combined with name to stay within this test's patients
    def born(value: str) -> set[str]:
        return _ids(record.fhir("/Patient", params={"name:contains": tag, "birthdate": value}))

    assert born("1979") == {pid_a}
    assert born("1979-11-02") == {pid_a}
    assert born("1990-06-15") == set()  # a month of birth is not within one day
    assert born("1990") == {pid_b}  # ...but is within the year
    assert born("ge1985-01-01") == {pid_b}
    assert born("lt1985") == {pid_a}
    assert born("le1979-11-02") == {pid_a}
    assert born("ne1979-11-02") == {pid_b}
    assert born("sa1979-12") == {pid_b}
    assert born("eb1990-06-01") == {pid_a}


def test_observation_search_by_patient_code_date_and_category(record: RecordHarness) -> None:
    pid, resources = _seed(record)
    obs = {r["code"]["coding"][0]["code"] + "@" + r["effectiveDateTime"]: r["id"]
           for r in resources.values() if r["resourceType"] == "Observation"}
    phq = {v for k, v in obs.items() if k.startswith("44261-6")}
    gad = {v for k, v in obs.items() if k.startswith("70274-6")}
    weight = {v for k, v in obs.items() if k.startswith("29463-7")}

    def search(**params: str) -> set[str]:
        return _ids(record.fhir("/Observation", params={"patient": pid, **params}))

    assert search() == phq | gad | weight
    assert _ids(record.fhir("/Observation", params={"patient": f"Patient/{pid}"})) == phq | gad | weight
    assert search(code="http://loinc.org|44261-6") == phq
    assert search(code="44261-6,70274-6") == phq | gad
    assert search(code="http://snomed.info/sct|44261-6") == set()
    assert search(code="http://loinc.org|") == phq | gad | weight
    assert search(category="survey") == phq | gad
    assert search(category="http://terminology.hl7.org/CodeSystem/observation-category|vital-signs") == weight
    day0 = T0.strftime("%Y-%m-%d")
    assert search(date=day0) == {obs[f"44261-6@{iso(T0)}"], obs[f"70274-6@{iso(T0)}"]}
    assert search(date=f"gt{day0}") == {obs[f"44261-6@{iso(T0, 28)}"], obs[f"29463-7@{iso(T0, 1)}"]}
    assert search(date=f"ge{iso(T0, 28)}") == {obs[f"44261-6@{iso(T0, 28)}"]}
    assert search(date=f"lt{iso(T0, 1)}", code="44261-6") == {obs[f"44261-6@{iso(T0)}"]}
    both = _ids(record.fhir("/Observation", params=[("patient", pid), ("date", f"ge{day0}"),
                                                     ("date", f"le{iso(T0, 2)[:10]}")]))
    assert both == {obs[f"44261-6@{iso(T0)}"], obs[f"70274-6@{iso(T0)}"], obs[f"29463-7@{iso(T0, 1)}"]}
    assert search(_id=next(iter(weight))) == weight


def test_search_by_patient_for_every_clinical_type(record: RecordHarness) -> None:
    pid, resources = _seed(record)
    other_pid, _ = _seed(record, HOSPITAL)
    for rtype in ("Condition", "MedicationRequest", "Encounter", "DocumentReference", "QuestionnaireResponse",
                  "ServiceRequest", "Appointment", "CarePlan", "Flag"):
        expected = {r["id"] for r in resources.values() if r["resourceType"] == rtype}
        found = record.fhir(f"/{rtype}", params={"patient": pid})
        assert _ids(found) == expected, rtype
        assert found["total"] == len(expected)
        assert all(e["fullUrl"].endswith(f"/{rtype}/{e['resource']['id']}") for e in found["entry"])
        assert other_pid not in str(found)


def test_medication_status_and_encounter_date(record: RecordHarness) -> None:
    pid, resources = _seed(record)
    meds = {r["status"]: r["id"] for r in resources.values() if r["resourceType"] == "MedicationRequest"}
    assert _ids(record.fhir("/MedicationRequest", params={"patient": pid, "status": "active"})) == {meds["active"]}
    assert _ids(record.fhir("/MedicationRequest", params={"patient": pid, "status": "stopped,active"})) == set(
        meds.values())
    encounters = {r["period"]["start"]: r["id"] for r in resources.values() if r["resourceType"] == "Encounter"}
    first, later = encounters[iso(T0)], encounters[iso(T0, 28)]

    def on(value: str) -> set[str]:
        return _ids(record.fhir("/Encounter", params={"patient": pid, "date": value}))

    assert on(T0.strftime("%Y-%m-%d")) == {first}  # an encounter within that day
    assert on(f"ge{iso(T0, 10)}") == {later}
    assert on(f"lt{iso(T0, 10)}") == {first}
    assert on((T0 + timedelta(days=28)).strftime("%Y-%m")) == {first, later}  # both in that month
    assert on("2024-02") == set()
    assert on("2023") == set()


def test_paging_sorting_and_last_updated(record: RecordHarness) -> None:
    pid, resources = _seed(record)
    observations = [r for r in resources.values() if r["resourceType"] == "Observation"]
    first = record.fhir("/Observation", params={"patient": pid, "_count": 1, "_sort": "-date"})
    assert first["total"] == len(observations)
    relations = {link["relation"] for link in first["link"]}
    assert {"self", "first", "next", "last"} <= relations and "previous" not in relations

    pages: list[dict[str, Any]] = [first]
    while nxt := [link["url"] for link in pages[-1]["link"] if link["relation"] == "next"]:
        pages.append(record.fhir(nxt[0].removeprefix(record.base_url)))
    assert len(pages) == len(observations)
    assert all(p["total"] == len(observations) for p in pages)
    assert any(link["relation"] == "previous" for link in pages[1]["link"])
    ordered = [p["entry"][0]["resource"] for p in pages]
    assert len({r["id"] for r in ordered}) == len(observations)
    times = [date_range(r["effectiveDateTime"])[0] for r in ordered]
    assert times == sorted(times, reverse=True)  # _sort=-date, across pages

    ascending = record.search_all("/Encounter", params={"patient": pid, "_sort": "date"})
    assert [r["period"]["start"] for r in ascending] == sorted(r["period"]["start"] for r in ascending)
    for rtype in ("Patient", "Condition", "Flag", "Appointment"):  # _sort=-date is accepted on every type
        record.fhir(f"/{rtype}", params={"_sort": "-date", "_count": 2})

    everything_once = record.fhir("/Observation", params={"patient": pid, "_count": 0})
    assert everything_once["total"] == len(observations) and "entry" not in everything_once

    stamp = record.fhir(f"/Observation/{observations[0]['id']}")["meta"]["lastUpdated"]
    assert _ids(record.fhir("/Observation", params={"patient": pid, "_lastUpdated": f"ge{stamp}"})) == {
        r["id"] for r in observations}
    future = format_instant(date_range(stamp)[0] + 3_600_000)
    assert _ids(record.fhir("/Observation", params={"patient": pid, "_lastUpdated": f"gt{future}"})) == set()
    by_update = record.search_all("/Observation", params={"patient": pid, "_sort": "-_lastUpdated"})
    assert len(by_update) == len(observations)


def test_search_via_post(record: RecordHarness) -> None:
    pid, resources = _seed(record)
    response = record.client.post("/Flag/_search", data={"patient": pid},
                                  headers={"Authorization": "Bearer test-token-full"})
    assert response.status_code == 200
    assert {e["resource"]["id"] for e in response.json()["entry"]} == {
        r["id"] for r in resources.values() if r["resourceType"] == "Flag"}
