"""Outcome rules on constructed histories (table-driven): index thresholds, response at exactly 50 %, remission
at 4 vs 5, the DRR-E window edges (day 119/120/240/241), the CMS159 window edges (12 months -61/-60/+60/+61
days), several episodes, a merge joining two histories, a replay, GAD-7's own thresholds, deterioration,
follow-up overdue, and the reported-total-mismatch case (the computed total is used)."""

from __future__ import annotations

import copy
import random
from datetime import UTC, date, datetime, timedelta

import pytest

from services.common.events import parse_event
from services.common.events.examples import EXAMPLES
from services.mapper.mapping import map_event
from services.mapper.result import MappingContext
from services.outcomes.episodes import (
    OutcomeRules,
    Score,
    add_months,
    evaluate_person,
    gad7_rules,
    phq9_rules,
)
from services.outcomes.history import score_of, scores_of

INDEX_DAY = date(2025, 3, 10)
_ref = iter(range(1, 1_000_000))


def phq9(day: int | date, total: int, patient: str = "Patient/a") -> Score:
    when = day if isinstance(day, date) else INDEX_DAY + timedelta(days=day)
    return Score(when, f"Observation/s{next(_ref):06d}", total, "phq-9", patient)


def gad7(day: int, total: int) -> Score:
    return Score(INDEX_DAY + timedelta(days=day), f"Observation/g{next(_ref):06d}", total, "gad-7", "Patient/a")


FAR = INDEX_DAY + timedelta(days=800)


@pytest.mark.parametrize(("first", "episodes"), [(10, 1), (9, 0), (27, 1), (0, 0)])
def test_index_needs_an_elevated_score(first: int, episodes: int) -> None:
    result = evaluate_person([phq9(0, first), phq9(30, first)], FAR)
    assert len(result.of("phq-9")) == episodes


def test_index_threshold_is_configurable() -> None:
    rules = OutcomeRules(phq9=phq9_rules(index_at_least=15))
    assert evaluate_person([phq9(0, 14)], FAR, rules).episodes == ()
    assert len(evaluate_person([phq9(0, 15)], FAR, rules).episodes) == 1


@pytest.mark.parametrize(
    ("index", "follow_up", "response", "partial", "remission"),
    [
        (20, 10, True, False, False),  # exactly 50 %: a response
        (20, 11, False, True, False),  # 45 %: partial response
        (20, 15, False, True, False),  # exactly 25 %: partial response
        (20, 16, False, False, False),  # 20 %
        (21, 10, True, False, False),  # 52 %
        (10, 5, True, False, False),  # 50 % but not < 5: response, not remission
        (10, 4, True, False, True),  # remission at 4
        (27, 5, True, False, False),  # 5 is not a remission
        (27, 4, True, False, True),
    ],
)
def test_response_partial_response_and_remission(index: int, follow_up: int, response: bool, partial: bool,
                                                 remission: bool) -> None:
    episode = evaluate_person([phq9(0, index), phq9(180, follow_up)], FAR).of("phq-9")[0]
    window = episode.window("drr-e")
    assert (window.response, window.partial_response, window.remission) == (response, partial, remission)
    kinds = {f.kind for f in episode.facts}
    assert ("response-reached" in kinds) == response
    assert ("remission-reached" in kinds) == remission


@pytest.mark.parametrize(("day", "counted"), [(119, False), (120, True), (240, True), (241, False)])
def test_drr_e_follow_up_window_edges(day: int, counted: bool) -> None:
    episode = evaluate_person([phq9(0, 20), phq9(day, 3)], FAR).of("phq-9")[0]
    window = episode.window("drr-e")
    assert (window.start, window.end) == (INDEX_DAY + timedelta(days=120), INDEX_DAY + timedelta(days=240))
    assert window.status == ("measured" if counted else "missed")
    assert window.remission is counted


@pytest.mark.parametrize(("offset", "counted"), [(-61, False), (-60, True), (60, True), (61, False)])
def test_cms159_twelve_months_plus_minus_60_days(offset: int, counted: bool) -> None:
    anniversary = date(2026, 3, 10)
    episode = evaluate_person([phq9(0, 18), phq9(anniversary + timedelta(days=offset), 2)], FAR).of("phq-9")[0]
    window = episode.window("cms159")
    assert window.remission is counted
    assert window.status == ("measured" if counted else "missed")


def test_twelve_months_are_calendar_months() -> None:
    assert add_months(date(2024, 2, 29), 12) == date(2025, 2, 28)
    assert add_months(date(2025, 8, 31), 6) == date(2026, 2, 28)
    assert add_months(date(2025, 3, 10), 12) == date(2026, 3, 10)


def test_the_most_recent_score_in_the_window_decides() -> None:
    episode = evaluate_person([phq9(0, 20), phq9(130, 3), phq9(200, 12)], FAR).of("phq-9")[0]
    window = episode.window("drr-e")
    assert not window.remission and not window.response and window.partial_response
    # remission was reached once (day 130) even though the window's result is not a remission
    assert [f.when for f in episode.facts if f.kind == "remission-reached"] == [INDEX_DAY + timedelta(days=130)]
    assert episode.state == "partial-response"


def test_several_episodes() -> None:
    history = [phq9(0, 20), phq9(150, 4), phq9(300, 6),
               phq9(430, 8),  # after the first episode ended (12 months + 60 days), not elevated: no episode
               phq9(500, 16), phq9(650, 9), phq9(940, 22)]
    episodes = evaluate_person(history, INDEX_DAY + timedelta(days=1000)).of("phq-9")
    assert [e.index.total for e in episodes] == [20, 16, 22]
    first, second, third = episodes
    assert first.end == date(2026, 5, 9) and not first.running
    assert [s.total for s in first.scores] == [20, 4, 6]
    assert first.window("drr-e").remission and not first.window("cms159").remission
    assert [s.total for s in second.scores] == [16, 9]
    assert second.window("drr-e").response is False and second.window("drr-e").partial_response
    assert third.running and third.state == "awaiting-follow-up"
    assert len({e.id for e in episodes}) == 3


def test_a_merge_joins_two_histories() -> None:
    clinic = [phq9(0, 19, "Patient/clinic")]
    hospital = [phq9(170, 3, "Patient/hospital"), phq9(370, 2, "Patient/hospital")]
    alone = evaluate_person(clinic, FAR).of("phq-9")[0]
    assert alone.window("drr-e").status == "missed" and alone.follow_up_overdue is False  # episode over
    assert evaluate_person(hospital, FAR).episodes == ()
    merged = evaluate_person(clinic + hospital, FAR).of("phq-9")[0]
    assert merged.id == alone.id  # same index: same episode id
    assert merged.window("drr-e").remission and merged.window("cms159").remission
    assert merged.state == "remitted"


def test_a_replay_gives_the_same_outcomes_and_ids() -> None:
    history = [phq9(0, 20), phq9(40, 14), phq9(130, 9), phq9(200, 4), phq9(500, 17), gad7(0, 12), gad7(180, 6)]
    first = evaluate_person(history, FAR)
    shuffled = history + history[:3]  # redelivered scores, in another order
    random.Random(7).shuffle(shuffled)  # noqa: S311 - a fixed test order
    second = evaluate_person(copy.deepcopy(shuffled), FAR)
    assert first == second
    assert [f.id for f in first.facts] == [f.id for f in second.facts]


def test_deterioration_is_a_rise_of_five_points_from_the_previous_score() -> None:
    history = [phq9(0, 12), phq9(30, 8), phq9(60, 13), phq9(90, 17), phq9(120, 22)]
    facts = [f for f in evaluate_person(history, FAR).facts if f.kind == "deterioration"]
    assert [f.value for f in facts] == [13, 22]  # +5 and +5; +4 is not
    assert all(f.episode_id for f in facts)
    rules = OutcomeRules(phq9=phq9_rules(deterioration_points=4))
    assert len([f for f in evaluate_person(history, FAR, rules).facts if f.kind == "deterioration"]) == 3


@pytest.mark.parametrize(("as_of_day", "overdue"), [(149, False), (150, True), (400, True)])
def test_follow_up_overdue_30_days_after_the_window_opened(as_of_day: int, overdue: bool) -> None:
    episode = evaluate_person([phq9(0, 20), phq9(60, 15)], INDEX_DAY + timedelta(days=as_of_day)).of("phq-9")[0]
    assert episode.follow_up_due == INDEX_DAY + timedelta(days=120)
    assert episode.follow_up_overdue is overdue
    assert any(f.kind == "follow-up-overdue" for f in episode.facts) is overdue


def test_a_follow_up_clears_overdue_until_the_next_window() -> None:
    history = [phq9(0, 20), phq9(125, 9)]
    episode = evaluate_person(history, INDEX_DAY + timedelta(days=200)).of("phq-9")[0]
    assert not episode.follow_up_overdue
    assert episode.follow_up_due == date(2026, 3, 10) - timedelta(days=60)  # the CMS159 window is next
    later = evaluate_person(history, date(2026, 3, 10) - timedelta(days=30)).of("phq-9")[0]
    assert later.follow_up_overdue


def test_scores_in_the_future_of_as_of_are_not_used() -> None:
    episode = evaluate_person([phq9(0, 20), phq9(180, 2)], INDEX_DAY + timedelta(days=100)).of("phq-9")[0]
    assert len(episode.scores) == 1 and episode.window("drr-e").status == "not-open"


@pytest.mark.parametrize(
    ("index_at_least", "response_percent", "index", "follow_up", "episode", "response"),
    [
        (8, 25, 8, 6, True, True),  # MBHR2: index >= 8, response >= 25 %
        (8, 25, 7, 2, False, False),
        (10, 25, 8, 6, False, False),
        (10, 50, 12, 7, True, False),  # 41 %
        (10, 50, 12, 6, True, True),
    ],
)
def test_gad7_has_its_own_thresholds(index_at_least: int, response_percent: int, index: int, follow_up: int,
                                     episode: bool, response: bool) -> None:
    rules = OutcomeRules(gad7=gad7_rules(index_at_least=index_at_least, response_percent=response_percent))
    result = evaluate_person([gad7(0, index), gad7(182, follow_up)], FAR, rules)
    episodes = result.of("gad-7")
    assert bool(episodes) is episode
    assert result.of("phq-9") == ()
    if episodes:
        assert episodes[0].window("anxiety-6m").response is response


def _assessment(assessment_id: str, authored: str, answers: list[int], reported: str | None) -> dict[str, object]:
    event = copy.deepcopy(EXAMPLES["org.carebus.assessment.completed.v1"])
    codes = ["44250-9", "44255-8", "44259-0", "44254-1", "44251-7", "44258-2", "44252-5", "44253-3", "44260-8"]
    event["id"] = f"evt-{assessment_id}"
    event["data"].update(assessment_id=assessment_id, authored=authored, reported_total=reported,
                         items=[{"code": c, "answer": a} for c, a in zip(codes, answers, strict=True)])
    return event


def test_reported_total_mismatch_uses_the_computed_total() -> None:
    context = MappingContext(received_at=datetime(2025, 9, 1, tzinfo=UTC))
    index = map_event(parse_event(_assessment("A1", "2025-03-10T10:00:00Z", [2, 2, 2, 2, 2, 2, 2, 2, 0], None)),
                      context)
    # items add up to 3 (a remission); the sender reported 15
    follow = map_event(parse_event(_assessment("A2", "2025-08-01T10:00:00Z", [1, 1, 1, 0, 0, 0, 0, 0, 0], "15")),
                       context)
    assert "reported-total-mismatch" in follow.data_quality
    resources = [e["resource"] for m in (index, follow) for e in m.bundle["entry"]]
    scores = scores_of(resources)
    assert [s.total for s in scores] == [16, 3]
    assert all(score_of(r) is None for r in resources if r["resourceType"] != "Observation")
    episode = evaluate_person(scores, FAR).of("phq-9")[0]
    assert episode.window("drr-e").remission and episode.state == "remitted"
