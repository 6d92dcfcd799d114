"""The incremental population read behind $evaluate-measure (services/outcomes/population.py), on a real SQLite
record store: each version's body is read and parsed once; a new version, a deletion, an exclusion Condition and
an identity link show up at the next call."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from itertools import count
from pathlib import Path
from typing import Any

import orjson
import pytest

from services.common.metrics import Metrics
from services.common.security_labels import PSYCHIATRIC, meta_security
from services.common.settings import Settings
from services.outcomes.engine import OutcomesEngine
from services.outcomes.population import PopulationIndex, Warmup
from services.record.access import TokenRegistry
from services.record.api import RecordApi
from services.record.ingest import InboundBundle, prepare_bundle
from services.record.store import identity_policy, open_store
from services.record.store.sql import SqlStore

SOURCE = "urn:carebus:test:population"
_offsets = count()


class CountingStore:
    """The real store, counting the bodies it is asked for."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store
        self.bodies_read: list[str] = []

    def current_versions(self, resource_type: str, param: str | None = None, codes: Sequence[str] = ()
                         ) -> list[tuple[str, str, int, str | None, int]]:
        return self.store.current_versions(resource_type, param, codes)

    def current_bodies(self, resource_type: str, ids: Sequence[str]) -> dict[str, tuple[int, bytes]]:
        self.bodies_read.extend(ids)
        return self.store.current_bodies(resource_type, ids)

    def version_counts(self, resource_types: Sequence[str]) -> tuple[int, ...]:
        return self.store.version_counts(resource_types)


def ingest(store: SqlStore, *entries: dict[str, Any]) -> None:
    n = next(_offsets)
    bundle = {"resourceType": "Bundle", "id": f"b{n}", "type": "collection", "entry": list(entries)}
    store.ingest([prepare_bundle(InboundBundle("t", 0, n, 1_700_000_000_000 + n * 1000, SOURCE,
                                               orjson.dumps(bundle), {"ce_id": f"e{n}"}))])


def patient(pid: str, **fields: Any) -> dict[str, Any]:
    return {"resource": {"resourceType": "Patient", "id": pid, "identifier": [{"system": SOURCE, "value": pid}],
                         **fields}}


def phq9(oid: str, pid: str, total: int, when: str = "2025-02-01") -> dict[str, Any]:
    return {"resource": {
        "resourceType": "Observation", "id": oid, "meta": {"security": meta_security(PSYCHIATRIC)},
        "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": "44261-6"}]},
        "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": f"{when}T10:00:00Z",
        "valueQuantity": {"value": total, "unit": "{score}"}}}


@pytest.fixture
def store(tmp_path: Path) -> SqlStore:
    s = open_store(f"sqlite:///{tmp_path}/record.db", identity_policy(Settings()))
    yield s  # type: ignore[misc]
    s.close()


def test_each_version_is_parsed_once_and_changes_show_at_the_next_call(store: SqlStore) -> None:
    counting = CountingStore(store)
    index = PopulationIndex(counting)
    ingest(store, patient("p1"), phq9("o1", "p1", 18), phq9("o2", "p1", 9, "2025-06-01"))
    ingest(store, patient("p2"), phq9("o3", "p2", 12))
    first = {f.value.reference: f for f in index.scores(("44261-6",))}
    assert set(first) == {"Observation/o1", "Observation/o2", "Observation/o3"}
    assert first["Observation/o1"].value.total == 18 and first["Observation/o1"].patient_ref == "Patient/p1"
    assert first["Observation/o1"].restriction != 0  # PSY-labelled: the caller decides who may count it
    assert sorted(counting.bodies_read) == ["o1", "o2", "o3"]

    counting.bodies_read.clear()
    assert len(index.scores(("44261-6",))) == 3
    assert counting.bodies_read == []  # nothing new: no body read, nothing parsed

    ingest(store, phq9("o2", "p1", 4, "2025-06-01"))  # a corrected score: a new version
    ingest(store, {"request": {"method": "DELETE", "url": "Observation/o3"}})
    scores = {f.value.reference: f.value.total for f in index.scores(("44261-6",))}
    assert scores == {"Observation/o1": 18, "Observation/o2": 4}
    assert counting.bodies_read == ["o2"]


def test_exclusions_and_persons_follow_the_record(store: SqlStore) -> None:
    index = PopulationIndex(store)
    ingest(store, patient("q1"), phq9("s1", "q1", 15))
    assert index.exclusions() == []
    ingest(store, {"resource": {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/q1"},
                                "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm",
                                                     "code": "F31.9"}]}}},
           {"resource": {"resourceType": "Condition", "id": "c2", "subject": {"reference": "Patient/q1"},
                         "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "F32.1"}]}}})
    found = index.exclusions()
    assert [(f.value.reason, f.value.reference, f.patient_ref) for f in found] == [
        ("bipolar-disorder", "Condition/c1", "Patient/q1")]
    ingest(store, patient("q1", deceasedBoolean=True))
    assert {f.value.reason for f in index.exclusions()} == {"bipolar-disorder", "death"}
    # the score's person is the record's: the same person as the exclusion, whatever the link state
    (score,) = index.scores(("44261-6",))
    assert score.person == next(f.person for f in index.exclusions() if f.value.reason == "death")


def test_a_link_made_later_joins_the_two_histories(store: SqlStore) -> None:
    index = PopulationIndex(store)
    ingest(store, patient("a1"), phq9("t1", "a1", 20))
    ingest(store, patient("b1"), phq9("t2", "b1", 3, "2025-07-01"))
    before = {f.value.reference: f.person for f in index.scores(("44261-6",))}
    assert before["Observation/t1"] != before["Observation/t2"]
    empi = {"identifier": [{"system": "urn:carebus:empi", "value": "E-77"}]}
    ingest(store, patient("a1", **empi), patient("b1", **empi))  # the EMPI says: one person
    after = {f.value.reference: f.person for f in index.scores(("44261-6",))}
    assert after["Observation/t1"] == after["Observation/t2"]


def test_persons_are_kept_while_the_record_stands_and_regrouped_when_it_moves(store: SqlStore) -> None:
    counting = CountingStore(store)
    index = PopulationIndex(counting)
    ingest(store, patient("r1"), phq9("u1", "r1", 18), patient("r2"), phq9("u2", "r2", 12))
    first = {p.person: p for p in index.persons(("44261-6",))}
    assert sorted(len(p.scores) for p in first.values()) == [1, 1]
    calls: list[str] = []

    def judge(facts: Any) -> int:
        calls.append("judged")
        return sum(s.total for s in facts.scores)

    entries = list(first.values())
    assert [e.judged(e.pairs, ("k",), judge) for e in entries] == [e.scores[0].value.total for e in entries]
    assert [e.judged(e.pairs, ("k",), judge) for e in entries] == [e.scores[0].value.total for e in entries]
    assert len(calls) == 2  # judged once per person and key
    assert entries[0].judged(frozenset(), ("k",), judge) == 0  # another visible set: judged on its own facts
    assert len(calls) == 3

    again = {p.person: p for p in index.persons(("44261-6",))}
    assert all(again[k] is first[k] for k in first)  # nothing changed: the same entries
    ingest(store, phq9("u3", "r2", 3, "2025-06-01"))  # r2 changes, r1 does not
    moved = {p.person: p for p in index.persons(("44261-6",))}
    r1 = next(k for k, p in first.items() if p.scores[0].value.reference == "Observation/u1")
    r2 = next(k for k in first if k != r1)
    assert moved[r1] is first[r1] and moved[r2] is not first[r2]
    assert [s.value.total for s in moved[r2].scores] == [12, 3]
    ingest(store, {"resource": {"resourceType": "Condition", "id": "x1", "subject": {"reference": "Patient/r1"},
                                "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm",
                                                     "code": "F20.9"}]}}})
    excluded = {p.person: p for p in index.persons(("44261-6",))}
    assert [f.value.reason for f in excluded[r1].exclusions] == ["schizophrenia-or-psychotic-disorder"]
    assert excluded[r2] is moved[r2]


def test_hospice_recorded_as_an_encounter_and_its_correction_regroup_the_person(store: SqlStore) -> None:
    index = PopulationIndex(store)
    ingest(store, patient("h1"), phq9("v1", "h1", 16), patient("h2"), phq9("v2", "h2", 14))
    first = {p.person: p for p in index.persons(("44261-6",))}
    assert all(not p.exclusions for p in first.values())

    def stay(status: str) -> dict[str, Any]:
        return {"resource": {
            "resourceType": "Encounter", "id": "stay", "status": status, "subject": {"reference": "Patient/h1"},
            "period": {"start": "2025-03-01T08:00:00Z", "end": "2025-03-04T08:00:00Z"},
            "hospitalization": {"dischargeDisposition": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/discharge-disposition", "code": "hosp"}]}}}}

    ingest(store, stay("finished"))
    hospice = {p.person: p for p in index.persons(("44261-6",))}
    h1 = next(k for k, p in hospice.items() if p.exclusions)
    assert [(f.value.reason, f.value.reference) for f in hospice[h1].exclusions] == [
        ("palliative-or-hospice-care", "Encounter/stay")]
    assert all(hospice[k] is first[k] for k in first if k != h1)  # the other person is kept as it was
    ingest(store, stay("entered-in-error"))  # the sender corrects it: no longer an exclusion
    corrected = {p.person: p for p in index.persons(("44261-6",))}
    assert not corrected[h1].exclusions


def test_the_warm_up_reads_everything_before_the_first_call(store: SqlStore, caplog: pytest.LogCaptureFixture
                                                            ) -> None:
    ingest(store, patient("w1"), phq9("y1", "w1", 18), phq9("y2", "w1", 4, "2025-06-01"),
           {"resource": {"resourceType": "Procedure", "id": "pr1", "status": "completed",
                         "subject": {"reference": "Patient/w1"}, "performedDateTime": "2025-03-01",
                         "code": {"coding": [{"system": "http://snomed.info/sct", "code": "385763009"}]}}})
    counting = CountingStore(store)
    warmup = Warmup(PopulationIndex(counting))
    assert "warming" in warmup.reason
    with caplog.at_level(logging.INFO, logger="services.outcomes.population"):
        warmup.start()
        assert warmup.wait(30)
    assert warmup.reason == "ready" and warmup.seconds is not None
    assert sorted(counting.bodies_read) == ["pr1", "w1", "y1", "y2"]
    steps = [r.step for r in caplog.records if hasattr(r, "step")]  # progress, with counts and no content
    assert "scores 44261-6: 2 of 2 versions parsed" in steps and "grouped 1 persons with 44261-6 totals" in steps
    counting.bodies_read.clear()
    (person,) = warmup.index.persons(("44261-6",))  # what $evaluate-measure asks first: nothing left to read
    (grouped,) = warmup.index.persons(("44261-6", "70274-6"))  # and the clinic view
    assert counting.bodies_read == []
    assert [f.value.reference for f in person.exclusions] == ["Procedure/pr1"] and len(grouped.scores) == 2


def test_a_failed_warm_up_still_becomes_ready(store: SqlStore, caplog: pytest.LogCaptureFixture) -> None:
    class Broken(CountingStore):
        def current_versions(self, resource_type: str, param: str | None = None, codes: Sequence[str] = ()
                             ) -> list[tuple[str, str, int, str | None, int]]:
            raise RuntimeError("database is locked")

    warmup = Warmup(PopulationIndex(Broken(store)))
    with caplog.at_level(logging.INFO, logger="services.outcomes.population"):
        warmup.start()
        assert warmup.wait(30)
    assert warmup.reason == "ready"  # a cold index is only slower
    assert any("warm-up failed" in r.getMessage() for r in caplog.records)


def test_a_warm_up_asked_to_stop_ends_at_its_next_step(store: SqlStore, caplog: pytest.LogCaptureFixture) -> None:
    ingest(store, patient("z1"), phq9("z2", "z1", 18))
    counting = CountingStore(store)
    warmup = Warmup(PopulationIndex(counting))
    warmup.stop()  # the process stops before the warm-up got going
    with caplog.at_level(logging.INFO, logger="services.outcomes.population"):
        warmup.start()
        assert warmup.wait(30)
    assert any("warm-up stopped" in r.getMessage() for r in caplog.records)
    assert not any(r.levelno >= logging.ERROR for r in caplog.records)


def test_a_sites_local_hospice_code_excludes_in_every_reader(store: SqlStore) -> None:
    """``outcomes_local_hospice_codes`` reaches the one rule through the outcomes engine (Individual
    MeasureReports) and the record API's population index ($evaluate-measure, the clinic view) alike."""
    hospice_service = "urn:carebus:hl7v2:RIVERSIDE/codes/v2-0069"
    ingest(store, patient("h1"), phq9("h1-o", "h1", 18), {"resource": {
        "resourceType": "Encounter", "id": "h1-e", "status": "finished", "subject": {"reference": "Patient/h1"},
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "HH"},
        "serviceType": {"coding": [{"system": hospice_service, "code": "HOS"}]},
        "period": {"start": "2025-02-10T08:00:00Z", "end": "2025-02-20T08:00:00Z"}}})
    site = Settings(outcomes_local_hospice_codes=[f"{hospice_service}|HOS"])

    def readers(settings: Settings) -> list[list[str]]:
        api = RecordApi(settings, store, Metrics(), TokenRegistry({}), readiness=lambda: (True, "ok"))
        return [[e.reference for e in OutcomesEngine(settings, store).exclusions(["Patient/h1"])],
                [f.value.reference for f in api.population.exclusions()]]

    assert readers(site) == [["Encounter/h1-e"], ["Encounter/h1-e"]]
    assert readers(Settings()) == [[], []]  # a home-health class and an unknown local service: not hospice
