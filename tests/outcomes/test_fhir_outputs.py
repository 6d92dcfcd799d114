"""Derived Observations, Individual and Summary MeasureReports and the Measures: valid FHIR (R4B models), the
right references, labels and counts (hand count over 50 constructed patients, tests/outcomes/population.py)."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from services.outcomes.episodes import Score, evaluate_person, index_window, phq9_rules
from services.outcomes.exclusions import Exclusion, exclusion_of
from services.outcomes.fhir import (
    CMS159_STYLE,
    DRR_E_STYLE,
    MEASURES,
    PersonFacts,
    derived_observation,
    index_episode,
    individual_report,
    measure_resource,
    outcome_resources,
    population_counts,
    summary_report,
)
from tests.outcomes.population import AS_OF, EXPECTED, PERIOD, exclusion_resources, measure_score, population

RULES = phq9_rules()


def valid(resource: dict[str, Any]) -> dict[str, Any]:
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    return resource


def history(key: str, points: list[tuple[date, int]]) -> list[Score]:
    return [Score(when, f"Observation/{key}-{i}", total, "phq-9", f"Patient/{key}", ("R", "PSY"))
            for i, (when, total) in enumerate(points)]


def test_derived_observation_points_at_the_scores_it_used() -> None:
    scores = history("p1", [(date(2025, 1, 5), 20), (date(2025, 2, 5), 14), (date(2025, 6, 1), 8)])
    scores.append(Score(date(2025, 7, 1), "Observation/sud-1", 4, "phq-9", "Patient/p1",
                        ("R", "SUD", "42CFRPart2", "NORDSCLCD")))
    episode = evaluate_person(scores, date(2025, 7, 2)).of("phq-9")[0]
    observation = valid(derived_observation(episode))
    assert [d["reference"] for d in observation["derivedFrom"]] == [s.reference for s in sorted(scores)]
    assert observation["subject"] == {"reference": "Patient/p1"}
    assert observation["valueCodeableConcept"]["coding"][0]["code"] == "remitted"
    assert observation["status"] == "preliminary"
    codes = {c["code"] for c in observation["meta"]["security"]}
    assert {"R", "PSY", "SUD", "42CFRPart2", "NORDSCLCD"} <= codes  # the labels of every score it used
    components = {c["code"]["coding"][0]["code"]: c for c in observation["component"]}
    assert components["index-score"]["valueInteger"] == 20
    assert components["window-drr-e"]["valueCodeableConcept"]["coding"][0]["code"] == "remission"
    assert components["remission-reached"]["valueDateTime"] == "2025-07-01"


def test_individual_reports_follow_the_deqm_profile() -> None:
    scores = history("p2", [(date(2025, 1, 5), 20), (date(2025, 6, 1), 9)])
    episode = evaluate_person(scores, date(2026, 1, 1)).of("phq-9")[0]
    drr = valid(individual_report(DRR_E_STYLE, episode, "Riverside"))
    cms = valid(individual_report(CMS159_STYLE, episode, "Riverside"))
    for report in (drr, cms):
        assert report["type"] == "individual"
        assert report["subject"] == {"reference": "Patient/p2"} and report["reporter"]["display"] == "Riverside"
        assert {"status", "measure", "date", "period", "group", "improvementNotation"} <= set(report)
    counts = {p["code"]["coding"][0]["code"]: p["count"] for p in drr["group"][0]["population"]}
    assert counts == {"initial-population": 1, "denominator": 1, "denominator-exclusion": 0, "numerator": 1}
    assert drr["status"] == "complete" and drr["period"] == {"start": "2025-01-05", "end": "2025-09-02"}
    assert cms["group"][0]["measureScore"]["value"] == 0.0  # no score at 12 months
    assert cms["status"] == "pending"  # the 12-month window is open until 2026-03-06
    assert [r["reference"] for r in drr["evaluatedResource"]] == ["Observation/p2-0", "Observation/p2-1"]


def test_outcome_resources_are_deterministic() -> None:
    scores = history("p3", [(date(2025, 1, 5), 20), (date(2025, 6, 1), 9)])
    first = outcome_resources(evaluate_person(scores, date(2026, 1, 1)), "org")
    again = outcome_resources(evaluate_person(list(reversed(scores)), date(2026, 1, 1)), "org")
    assert first == again and len(first) == 3
    assert len({r["id"] for r in first}) == 3


@pytest.mark.parametrize("spec", MEASURES, ids=lambda s: s.window)
def test_measures_are_valid(spec: Any) -> None:
    measure = valid(measure_resource(spec))
    assert measure["url"] == spec.url and measure["status"] == "active"
    assert [p["id"] for p in measure["group"][0]["population"]] == [
        "initial-population", "denominator", "denominator-exclusion", "numerator"]


def exclusions(key: str, points: list[tuple[date, int]]) -> list[Exclusion]:
    patient, conditions = exclusion_resources(key, points[0][0], key)
    found = [exclusion_of(r) for r in [*conditions, {"resourceType": "Patient", "id": key, **patient}]]
    return [e for e in found if e is not None]


@pytest.mark.parametrize("spec", MEASURES, ids=lambda s: s.window)
def test_summary_counts_match_the_hand_count_over_50_patients(spec: Any) -> None:
    persons = [PersonFacts(history(key, points), exclusions(key, points)) for key, points in population()]
    counts = population_counts(spec, persons, *PERIOD, AS_OF, RULES)
    assert counts.as_dict() == EXPECTED[spec.window]
    report = valid(summary_report(spec, counts, *PERIOD, "2027-01-01T00:00:00Z", "Riverside", "r1"))
    populations = {p["code"]["coding"][0]["code"]: p["count"] for p in report["group"][0]["population"]}
    assert populations == EXPECTED[spec.window]
    assert report["group"][0]["measureScore"]["value"] == measure_score(spec.window)
    assert report["status"] == "complete" and report["type"] == "summary"
    # without the exclusions the same histories count everyone
    plain = population_counts(spec, [p.scores for p in persons], *PERIOD, AS_OF, RULES)
    assert plain.excluded == 0 and plain.numerator > counts.numerator


def test_an_excluded_persons_individual_report() -> None:
    scores = history("p9", [(date(2025, 1, 5), 20), (date(2025, 6, 1), 3)])
    episode = evaluate_person(scores, date(2027, 1, 1)).of("phq-9")[0]
    bipolar = exclusion_of({"resourceType": "Condition", "id": "c1", "onsetDateTime": "2025-03-01",
                            "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "F31.0"}]}})
    assert bipolar is not None
    report = valid(individual_report(DRR_E_STYLE, episode, "Riverside", [bipolar]))
    counts = {p["code"]["coding"][0]["code"]: p["count"] for p in report["group"][0]["population"]}
    assert counts == {"initial-population": 1, "denominator": 1, "denominator-exclusion": 1, "numerator": 0}
    assert "measureScore" not in report["group"][0]
    assert {"reference": "Condition/c1"} in report["evaluatedResource"]
    later = Exclusion(date(2026, 6, 1), "death", "Patient/p9")  # after the DRR-E window: the remission counts
    kept = individual_report(DRR_E_STYLE, episode, "Riverside", [later])
    assert {p["id"]: p["count"] for p in kept["group"][0]["population"]}["numerator"] == 1


@pytest.mark.parametrize(("since", "excluded"), [(None, False), (date(2024, 12, 1), True), (date(2024, 12, 27), False)])
def test_hospice_counts_when_it_reaches_into_the_reports_period(since: date | None, excluded: bool) -> None:
    """A hospice stay that ended before the index date: not in the episode's own report (its period starts at the
    index); in a report of a measurement period that began while it lasted ($evaluate-measure's)."""
    scores = history("p8", [(date(2025, 1, 5), 20), (date(2025, 6, 1), 3)])
    episode = evaluate_person(scores, date(2027, 1, 1)).of("phq-9")[0]
    stay = Exclusion(date(2024, 12, 10), "palliative-or-hospice-care", "Encounter/e8", date(2024, 12, 26))
    report = individual_report(DRR_E_STYLE, episode, "Riverside", [stay], since)
    counts = {p["id"]: p["count"] for p in report["group"][0]["population"]}
    assert (counts["denominator-exclusion"], counts["numerator"]) == ((1, 0) if excluded else (0, 1))


def test_a_period_with_nobody_in_it_has_no_score() -> None:
    histories = [history(key, points) for key, points in population()]
    counts = population_counts(DRR_E_STYLE, histories, date(2020, 1, 1), date(2020, 12, 31), AS_OF, RULES)
    report = valid(summary_report(DRR_E_STYLE, counts, date(2020, 1, 1), date(2020, 12, 31), "2027-01-01", "o", "r"))
    assert "measureScore" not in report["group"][0]
    assert counts.initial_population == 0


def test_pending_while_windows_are_open() -> None:
    histories = [history(key, points) for key, points in population()]
    counts = population_counts(DRR_E_STYLE, histories, *PERIOD, PERIOD[1] + timedelta(days=30), RULES)
    assert counts.pending == counts.initial_population == 40


@pytest.mark.parametrize("spec", MEASURES, ids=lambda s: s.window)
@pytest.mark.parametrize("as_of", [PERIOD[1] + timedelta(days=100), AS_OF])
def test_the_fast_measure_path_agrees_with_the_full_evaluation(spec: Any, as_of: date) -> None:
    extra = [("several", [(date(2024, 12, 1), 15), (date(2025, 2, 1), 3), (date(2026, 3, 1), 20),
                          (date(2026, 9, 1), 2)])]
    for key, points in [*population(), *extra]:
        scores = history(key, points)
        full = index_episode(spec, evaluate_person(scores, as_of), *PERIOD)
        fast = index_window(RULES, scores, spec.window, *PERIOD, as_of)
        assert (full.window(spec.window) if full else None) == fast, key
