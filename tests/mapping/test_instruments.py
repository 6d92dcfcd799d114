"""Instrument scoring: PHQ-9, PHQ-2, GAD-7, C-SSRS screener, AUDIT-C (services/common/fhir/instruments.py)."""

from __future__ import annotations

import pytest

from services.common.errors import MappingError
from services.common.fhir.instruments import (
    INSTRUMENTS,
    InstrumentAnswerError,
    score_instrument,
)

PHQ9 = ["44250-9", "44255-8", "44259-0", "44254-1", "44251-7", "44258-2", "44252-5", "44253-3", "44260-8"]
GAD7 = ["69725-0", "68509-9", "69733-4", "69734-2", "69735-9", "69689-8", "69736-7"]
LA = {0: "LA6568-5", 1: "LA6569-3", 2: "LA6570-1", 3: "LA6571-9"}


def phq9(weights: list[int], *, loinc: bool = False) -> dict[str, int | str]:
    return {code: (LA[w] if loinc else w) for code, w in zip(PHQ9, weights, strict=True)}


@pytest.mark.parametrize(
    ("total", "band", "positive"),
    [
        (0, "minimal", False),
        (4, "minimal", False),
        (5, "mild", False),
        (9, "mild", False),
        (10, "moderate", True),
        (14, "moderate", True),
        (15, "moderately-severe", True),
        (19, "moderately-severe", True),
        (20, "severe", True),
        (27, "severe", True),
    ],
)
def test_phq9_band_edges(total: int, band: str, positive: bool) -> None:
    weights = [0] * 9
    remaining = total
    for i in range(8):  # keep item 9 at 0 so only the total varies
        weights[i] = min(3, remaining)
        remaining -= weights[i]
    weights[8] = remaining  # only non-zero for 25-27
    score = score_instrument("phq-9", phq9(weights))
    assert score.total == total
    assert score.band is not None and score.band.code == band
    assert score.positive is positive
    assert ("phq9-item9" in score.safety_alerts) is (weights[8] > 0)


def test_integer_loinc_digit_and_display_answers_score_the_same() -> None:
    weights = [2, 2, 2, 2, 1, 1, 2, 0, 0]
    as_int = score_instrument("phq-9", phq9(weights))
    as_loinc = score_instrument("phq-9", phq9(weights, loinc=True))
    as_digits = score_instrument("phq-9", {c: str(w) for c, w in zip(PHQ9, weights, strict=True)})
    displays = {0: "Not at all", 1: "Several days", 2: "More than half the days", 3: "Nearly every day"}
    as_display = score_instrument("phq-9", {c: displays[w] for c, w in zip(PHQ9, weights, strict=True)})
    assert as_int.total == as_loinc.total == as_digits.total == as_display.total == 12
    assert [i.answer_code for i in as_int.items] == [LA[w] for w in weights]


def test_link_ids_and_panel_code_are_accepted() -> None:
    answers = {f"/{code}": 1 for code in PHQ9}
    score = score_instrument("44249-1", answers)
    assert score.instrument.key == "phq-9"
    assert score.total == 9


@pytest.mark.parametrize("item9", [1, 2, 3])
def test_phq9_item9_above_zero_raises_safety_alert_whatever_the_total(item9: int) -> None:
    score = score_instrument("phq-9", phq9([0, 0, 0, 0, 0, 0, 0, 0, item9]))
    assert score.total == item9
    assert score.band is not None and score.band.code == "minimal"
    assert score.safety_alerts == ("phq9-item9",)


def test_phq9_item9_zero_raises_nothing() -> None:
    score = score_instrument("phq-9", phq9([3, 3, 3, 3, 3, 3, 3, 3, 0]))
    assert score.total == 24
    assert score.safety_alerts == ()


@pytest.mark.parametrize(
    "reported",
    ["12", 12, 12.0, {"value": 12, "unit": "{score}"}, {"value": "12"}],
)
def test_reported_total_that_agrees_in_any_form(reported: object) -> None:
    score = score_instrument("phq-9", phq9([2, 2, 2, 2, 1, 1, 2, 0, 0]), reported_total=reported)
    assert score.total == 12
    assert score.reported_total == 12
    assert score.data_quality == ()


@pytest.mark.parametrize("reported", ["10", 13, {"value": 27, "unit": "{score}"}])
def test_reported_total_mismatch_is_surfaced_not_overwritten(reported: object) -> None:
    score = score_instrument("phq-9", phq9([2, 2, 2, 2, 1, 1, 2, 0, 0]), reported_total=reported)
    assert score.total == 12  # computed from the items
    assert score.reported_total != 12  # the sender's value is kept as reported
    assert score.data_quality == ("reported-total-mismatch",)
    assert score.total_mismatch


def test_total_code_inside_answers_is_the_reported_total() -> None:
    answers: dict[str, int | str] = {**phq9([1] * 9), "44261-6": "8"}
    score = score_instrument("phq-9", answers)
    assert score.total == 9
    assert score.reported_total == 8
    assert "reported-total-mismatch" in score.data_quality


def test_unparseable_reported_total() -> None:
    score = score_instrument("phq-9", phq9([1] * 9), reported_total="twelve")
    assert score.data_quality == ("reported-total-unparseable",)
    assert score.total == 9


def test_missing_item_gives_no_total_but_still_alerts_on_item9() -> None:
    answers = phq9([3, 3, 3, 3, 3, 3, 3, 3, 2])
    del answers["44253-3"]
    score = score_instrument("phq-9", answers, reported_total=20)
    assert score.total is None and score.band is None and score.positive is None
    assert score.missing_items == ("44253-3",)
    assert "incomplete-answers" in score.data_quality
    assert "reported-total-mismatch" not in score.data_quality  # nothing to compare with
    assert score.safety_alerts == ("phq9-item9",)


def test_difficulty_item_is_recorded_but_not_scored() -> None:
    score = score_instrument("phq-9", {**phq9([1] * 9), "69722-7": "LA6573-5"})
    assert score.total == 9
    difficulty = next(i for i in score.items if i.loinc == "69722-7")
    assert not difficulty.scored and difficulty.answer_display == "Somewhat difficult"


@pytest.mark.parametrize(
    ("answers", "rule"),
    [
        ({"44250-9": 4}, "answer-not-in-list"),
        ({"44250-9": "LA33-6"}, "answer-not-in-list"),
        ({"44250-9": True}, "answer-type"),
        ({"12345-6": 1}, "item-not-in-instrument"),
        ({"44250-9": 1, "/44250-9": 2}, "duplicate-item"),
    ],
)
def test_bad_answers_raise_mapping_error_naming_item_not_value(
    answers: dict[str, int | str], rule: str
) -> None:
    with pytest.raises(InstrumentAnswerError) as caught:
        score_instrument("phq-9", answers)
    assert isinstance(caught.value, MappingError)
    assert caught.value.problems[0].rule == rule
    assert "LA33-6" not in str(caught.value) and "LA33-6" not in caught.value.problems[0].message


def test_unknown_instrument() -> None:
    with pytest.raises(InstrumentAnswerError) as caught:
        score_instrument("beck-depression-inventory", {})
    assert caught.value.problems[0].rule == "unknown-instrument"


def test_phq2() -> None:
    negative = score_instrument("phq-2", {"44250-9": 1, "44255-8": 1})
    positive = score_instrument("phq-2", {"44250-9": "LA6570-1", "44255-8": 1})
    assert (negative.total, negative.positive, negative.band and negative.band.code) == (2, False, "negative")
    assert (positive.total, positive.positive, positive.band and positive.band.code) == (3, True, "positive")
    with pytest.raises(InstrumentAnswerError):
        score_instrument("phq-2", {"44260-8": 1})  # item 9 is not part of the PHQ-2


@pytest.mark.parametrize(
    ("total", "band", "positive"),
    [
        (0, "minimal", False),
        (4, "minimal", False),
        (5, "mild", False),
        (9, "mild", False),
        (10, "moderate", True),
        (14, "moderate", True),
        (15, "severe", True),
        (21, "severe", True),
    ],
)
def test_gad7_bands(total: int, band: str, positive: bool) -> None:
    weights, remaining = [], total
    for _ in GAD7:
        weights.append(min(3, remaining))
        remaining -= weights[-1]
    score = score_instrument("gad-7", dict(zip(GAD7, weights, strict=True)))
    assert score.total == total
    assert score.band is not None and score.band.code == band
    assert score.positive is positive
    assert score.safety_alerts == ()


YES, NO = "LA33-6", "LA32-8"
CSSRS = ["93246-7", "93247-5", "93248-3", "93249-1", "93250-9", "93267-3", "93269-9"]


def cssrs(**yes: bool) -> dict[str, int | str]:
    named = dict(
        zip(["wish", "thoughts", "method", "intent", "plan", "lifetime", "recent"], CSSRS, strict=True)
    )
    return {code: (YES if yes.get(name) else NO) for name, code in named.items()}


@pytest.mark.parametrize(
    ("answers", "level"),
    [
        ({}, "none"),
        ({"wish": True}, "low"),
        ({"wish": True, "thoughts": True}, "low"),
        ({"thoughts": True, "method": True}, "moderate"),
        ({"lifetime": True}, "moderate"),
        ({"thoughts": True, "intent": True}, "high"),
        ({"plan": True}, "high"),
        ({"lifetime": True, "recent": True}, "high"),
    ],
)
def test_cssrs_risk_levels(answers: dict[str, bool], level: str) -> None:
    score = score_instrument("cssrs-screener", cssrs(**answers))
    assert score.risk_level == level
    assert score.total is None
    assert score.positive is (level != "none")
    assert ("cssrs-high-risk" in score.safety_alerts) is (level == "high")


def test_cssrs_accepts_integers_and_yes_no_text() -> None:
    score = score_instrument("cssrs-screener", {"93246-7": 1, "93247-5": "Yes", "93249-1": 0})
    assert score.risk_level == "low"
    assert "incomplete-answers" in score.data_quality  # items missing, but the yes answers still count


def test_cssrs_reported_level_mismatch() -> None:
    score = score_instrument("cssrs-screener", cssrs(plan=True), reported_total="low")
    assert score.risk_level == "high"
    assert "reported-total-mismatch" in score.data_quality
    agreeing = score_instrument("cssrs-screener", cssrs(plan=True), reported_total="High")
    assert "reported-total-mismatch" not in agreeing.data_quality


AUDIT = {"68518-0": "LA18927-6", "68519-8": "LA15694-5", "68520-6": "LA18937-5"}  # 2 + 0 + 1 = 3


@pytest.mark.parametrize(
    ("answers", "sex", "total", "positive"),
    [
        (AUDIT, "female", 3, True),
        (AUDIT, "male", 3, False),
        ({**AUDIT, "68519-8": "LA15695-2"}, "male", 4, True),
        ({"68518-0": 0, "68519-8": 0, "68520-6": 2}, "female", 2, False),
        ({"68518-0": 4, "68519-8": 4, "68520-6": "LA18934-2"}, "male", 12, True),
    ],
)
def test_audit_c_sex_specific_positivity(
    answers: dict[str, int | str], sex: str, total: int, positive: bool
) -> None:
    score = score_instrument("audit-c", answers, sex=sex)
    assert score.total == total
    assert score.positive is positive
    assert score.data_quality == ()


def test_audit_c_unknown_sex_uses_lower_cut_off_and_says_so() -> None:
    score = score_instrument("audit-c", AUDIT)
    assert score.positive is True
    assert score.data_quality == ("audit-c-sex-unknown",)


def test_audit_c_never_has_two_meanings_by_item() -> None:
    # LA6270-8 "Never" is the zero answer of both item 1 and item 3.
    score = score_instrument(
        "audit-c", {"68518-0": "LA6270-8", "68519-8": 0, "68520-6": "LA6270-8"}, sex="male"
    )
    assert score.total == 0
    with pytest.raises(InstrumentAnswerError):
        score_instrument("audit-c", {"68519-8": "LA6270-8"})  # not in item 2's list


def test_every_instrument_item_has_a_complete_answer_list() -> None:
    for spec in INSTRUMENTS.values():
        for item in spec.items:
            weights = [o.weight for o in item.options]
            assert weights == list(range(len(weights))), (spec.key, item.loinc)
            assert len({o.code for o in item.options}) == len(item.options)


def test_the_instrument_table_is_read_from_its_data_file_and_checked() -> None:
    from services.common.fhir.instruments import TABLE, load_instruments

    text = TABLE.read_text(encoding="utf-8")
    assert [spec.key for spec in load_instruments(text).values()] == list(INSTRUMENTS)
    assert INSTRUMENTS["phq-2"].items == INSTRUMENTS["phq-9"].items[:2]
    without_item9 = text.replace('- ["44260-8",', '- ["44260-0",')
    with pytest.raises(ValueError, match="44260-8"):
        load_instruments(without_item9)
    with pytest.raises(ValueError, match="InstrumentKey"):
        load_instruments(text.replace('key: "audit-c"', 'key: "audit-10"'))
