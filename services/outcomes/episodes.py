"""Episodes and outcomes over one person's assessment history (pure: no I/O, no clock; ``as_of`` is passed in).

Definitions (sources: NCQA HEDIS DRR-E, CMS159v14, MBHR2; see the README "Outcomes" section):

* A **score** is one instrument total (PHQ-9 44261-6, GAD-7 70274-6) with its clinical date. The value used is
  the one carebus computed from the item answers (a sender's disagreeing total stays on the QuestionnaireResponse
  and is never used here).
* An **episode** starts at an *index* score: a score ``>= index_at_least`` (PHQ-9: > 9, i.e. 10) when the person
  has no episode of that instrument running. It runs until the end of its last measure window (PHQ-9: 12 months
  + 60 days after the index); the next elevated score after that starts a new episode.
* **Windows** (inclusive, in days after the index date): DRR-E 120-240 days; CMS159 12 calendar months +/- 60
  days; GAD-7 6 months +/- 60 days. In each window the *most recent* score decides:
  - **remission**: that score ``< remission_below`` (5);
  - **response**: a reduction from the index of at least ``response_percent`` (PHQ-9 50 %, GAD-7 25 % by default);
  - **partial response**: a reduction of at least ``partial_response_percent`` (25 %) but short of response.
* **Deterioration**: a score ``deterioration_points`` (5) or more above the previous score of the same instrument.
* **Follow-up due / overdue**: a follow-up score is due when a window opens; it is **overdue**
  ``overdue_after_days`` (30) later if no score has come since the window opened, for as long as the episode runs.
* The facts "reached" (response, partial response, remission) are dated at the first score after the index that
  meets them, whatever the window; the window results are what the measures count.

Percentages are compared in integers (``(index - score) * 100 >= percent * index``): exactly 50 % is a response.
"""

from __future__ import annotations

import calendar
import itertools
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Literal

from services.common.topics import EpisodeState, OutcomeChangeKind, TrackedInstrument

Instrument = TrackedInstrument
FactKind = OutcomeChangeKind
WindowStatus = Literal["not-open", "awaiting", "measured", "missed"]

OUTCOMES_NAMESPACE = uuid.UUID("5d0b7a4e-2c54-4d8e-9d7e-6f3f2b1c0a15")


def outcome_id(*parts: str) -> str:
    """A deterministic resource / fact id: the same history always gives the same ids."""
    return str(uuid.uuid5(OUTCOMES_NAMESPACE, "|".join(parts)))


def add_months(day: date, months: int) -> date:
    """Calendar months later; the 29-31st of a month that is shorter becomes its last day (29 Feb -> 28 Feb)."""
    month_index = day.month - 1 + months
    year, month = day.year + month_index // 12, month_index % 12 + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


@dataclass(frozen=True, order=True, slots=True)
class Score:
    """One computed instrument total. Ordered by date, then reference (a deterministic order for one day)."""

    when: date
    reference: str  # "Observation/<id>" of the total
    total: int
    instrument: Instrument
    patient: str = ""  # "Patient/<id>" of the source record it came from
    labels: tuple[str, ...] = field(default=(), compare=False)  # meta.security codes of the score


@dataclass(frozen=True)
class Window:
    """A follow-up window after the index date: ``months`` calendar months (0: none) then ``start_days`` ..
    ``end_days`` days around that point, both ends included."""

    name: str
    months: int
    start_days: int
    end_days: int

    def bounds(self, index: date) -> tuple[date, date]:
        anchor = add_months(index, self.months)
        return anchor + timedelta(days=self.start_days), anchor + timedelta(days=self.end_days)


DRR_E_WINDOW = Window("drr-e", 0, 120, 240)
CMS159_WINDOW = Window("cms159", 12, -60, 60)
ANXIETY_6M_WINDOW = Window("anxiety-6m", 6, -60, 60)


@dataclass(frozen=True)
class InstrumentRules:
    instrument: Instrument
    index_at_least: int
    response_percent: int
    partial_response_percent: int
    remission_below: int
    deterioration_points: int
    overdue_after_days: int
    windows: tuple[Window, ...]

    def __post_init__(self) -> None:
        if not 0 < self.partial_response_percent <= self.response_percent <= 100:
            raise ValueError("need 0 < partial_response_percent <= response_percent <= 100")
        if not self.windows:
            raise ValueError("an instrument needs at least one follow-up window")

    def reduction_at_least(self, index: int, score: int, percent: int) -> bool:
        return index > 0 and (index - score) * 100 >= percent * index


def phq9_rules(index_at_least: int = 10, deterioration_points: int = 5, overdue_after_days: int = 30
               ) -> InstrumentRules:
    return InstrumentRules("phq-9", index_at_least, 50, 25, 5, deterioration_points, overdue_after_days,
                           (DRR_E_WINDOW, CMS159_WINDOW))


def gad7_rules(index_at_least: int = 8, response_percent: int = 25, deterioration_points: int = 5,
               overdue_after_days: int = 30) -> InstrumentRules:
    partial = min(25, response_percent)  # equal to the response cut-off: no partial response
    return InstrumentRules("gad-7", index_at_least, response_percent, partial, 5, deterioration_points,
                           overdue_after_days, (ANXIETY_6M_WINDOW,))


@dataclass(frozen=True)
class OutcomeRules:
    phq9: InstrumentRules = field(default_factory=phq9_rules)
    gad7: InstrumentRules = field(default_factory=gad7_rules)

    def for_instrument(self, instrument: Instrument) -> InstrumentRules:
        return self.phq9 if instrument == "phq-9" else self.gad7


@dataclass(frozen=True)
class WindowResult:
    window: Window
    start: date
    end: date
    status: WindowStatus
    scores: tuple[Score, ...]  # the scores in the window, oldest first
    remission: bool
    response: bool
    partial_response: bool

    @property
    def latest(self) -> Score | None:
        return self.scores[-1] if self.scores else None

    closed: bool  # as_of is past the window: its result can no longer change


@dataclass(frozen=True)
class Fact:
    """One outcome change, with a deterministic id (a replay or a recompute gives the same id)."""

    id: str
    kind: FactKind
    instrument: Instrument
    episode_id: str
    when: date
    score: str | None  # "Observation/<id>" that made it true (None for follow-up-overdue)
    value: int | None = None  # the score's total


@dataclass(frozen=True)
class Episode:
    id: str
    instrument: Instrument
    index: Score
    end: date  # last day of the last window
    scores: tuple[Score, ...]  # index first, then every score of the episode up to as_of
    windows: tuple[WindowResult, ...]
    facts: tuple[Fact, ...]
    state: EpisodeState
    follow_up_due: date | None  # when the next follow-up is due (the open/next window's start), None: done
    follow_up_overdue: bool
    running: bool  # as_of <= end

    @property
    def latest(self) -> Score:
        return self.scores[-1]

    def window(self, name: str) -> WindowResult:
        for result in self.windows:
            if result.window.name == name:
                return result
        raise KeyError(name)


@dataclass(frozen=True)
class PersonOutcomes:
    """Every episode of one person, per instrument, and the deteriorations outside any episode."""

    episodes: tuple[Episode, ...]
    facts: tuple[Fact, ...]  # every fact, ordered by date then id

    def of(self, instrument: Instrument) -> tuple[Episode, ...]:
        return tuple(e for e in self.episodes if e.instrument == instrument)

    def current(self, instrument: Instrument) -> Episode | None:
        episodes = self.of(instrument)
        return episodes[-1] if episodes else None


def _window_result(rules: InstrumentRules, window: Window, index: Score, scores: Sequence[Score], as_of: date
                   ) -> WindowResult:
    start, end = window.bounds(index.when)
    inside = tuple(s for s in scores if start <= s.when <= end and s.when <= as_of)
    latest = inside[-1] if inside else None
    if latest is not None:
        status: WindowStatus = "measured"
    elif as_of < start:
        status = "not-open"
    elif as_of <= end:
        status = "awaiting"
    else:
        status = "missed"
    remission = latest is not None and latest.total < rules.remission_below
    response = latest is not None and rules.reduction_at_least(index.total, latest.total, rules.response_percent)
    partial = (latest is not None and not response
               and rules.reduction_at_least(index.total, latest.total, rules.partial_response_percent))
    return WindowResult(window, start, end, status, inside, remission, response, partial, as_of > end)


def _state(rules: InstrumentRules, index: Score, latest: Score) -> EpisodeState:
    if latest is index:
        return "awaiting-follow-up"
    if latest.total < rules.remission_below:
        return "remitted"
    if rules.reduction_at_least(index.total, latest.total, rules.response_percent):
        return "responding"
    if rules.reduction_at_least(index.total, latest.total, rules.partial_response_percent):
        return "partial-response"
    return "no-response"


def _episode(rules: InstrumentRules, index: Score, scores: Sequence[Score], as_of: date) -> Episode:
    episode_id = outcome_id("episode", rules.instrument, index.reference)
    windows = tuple(_window_result(rules, w, index, scores, as_of) for w in rules.windows)
    end = max(w.end for w in windows)
    facts: list[Fact] = [Fact(outcome_id(episode_id, "episode-started"), "episode-started", rules.instrument,
                              episode_id, index.when, index.reference, index.total)]
    reached: set[str] = set()
    for score in scores[1:]:
        checks: list[tuple[FactKind, bool]] = [
            ("remission-reached", score.total < rules.remission_below),
            ("response-reached", rules.reduction_at_least(index.total, score.total, rules.response_percent)),
            ("partial-response-reached",
             rules.reduction_at_least(index.total, score.total, rules.partial_response_percent)),
        ]
        for kind, met in checks:
            if met and kind not in reached:
                reached.add(kind)
                facts.append(Fact(outcome_id(episode_id, kind), kind, rules.instrument, episode_id, score.when,
                                  score.reference, score.total))
    # follow-up: due when a window opens; overdue `overdue_after_days` later without a score since it opened
    due: date | None = None
    overdue = False
    running = as_of <= end
    for result in windows:
        if result.status == "measured":
            continue
        later = [s for s in scores if s.when >= result.start]
        if later:
            continue
        due = result.start if due is None else min(due, result.start)
        overdue_from = result.start + timedelta(days=rules.overdue_after_days)
        if running and as_of >= overdue_from and not overdue:
            overdue = True
            facts.append(Fact(outcome_id(episode_id, "follow-up-overdue", result.window.name), "follow-up-overdue",
                              rules.instrument, episode_id, overdue_from, None))
    if not running:
        due = None
    return Episode(episode_id, rules.instrument, index, end, tuple(scores), windows, tuple(facts),
                   _state(rules, index, scores[-1]), due, overdue, running)


def evaluate_instrument(rules: InstrumentRules, history: Iterable[Score], as_of: date) -> tuple[list[Episode],
                                                                                                 list[Fact]]:
    """Episodes of one instrument, and its deteriorations (each a fact; attached to the episode it falls in)."""
    scores = sorted({s.reference: s for s in history
                     if s.instrument == rules.instrument and s.when <= as_of}.values())
    episodes: list[Episode] = []
    current: list[Score] = []
    current_end: date | None = None
    spans: list[tuple[str, date, date]] = []

    def close() -> None:
        if current:
            episode = _episode(rules, current[0], current, as_of)
            episodes.append(episode)
            spans.append((episode.id, episode.index.when, episode.end))

    for score in scores:
        if current_end is not None and score.when <= current_end:
            current.append(score)
            continue
        close()
        current, current_end = [], None
        if score.total >= rules.index_at_least:
            current = [score]
            current_end = max(w.bounds(score.when)[1] for w in rules.windows)
    close()
    deteriorations: list[Fact] = []
    for previous, score in itertools.pairwise(scores):
        if score.total - previous.total >= rules.deterioration_points:
            episode_id = next((eid for eid, start, end in spans if start <= score.when <= end), "")
            deteriorations.append(Fact(outcome_id("deterioration", rules.instrument, score.reference),
                                       "deterioration", rules.instrument, episode_id, score.when, score.reference,
                                       score.total))
    return episodes, deteriorations


def index_window(rules: InstrumentRules, history: Iterable[Score], window_name: str, start: date, end: date,
                 as_of: date) -> WindowResult | None:
    """The ``window_name`` result of the person's first episode whose index date is in ``start`` .. ``end``
    (None: no such episode). The same episode segmentation as :func:`evaluate_instrument`, without building the
    facts and states: what a population measure needs, fast."""
    window = next(w for w in rules.windows if w.name == window_name)
    scores = sorted({s.reference: s for s in history
                     if s.instrument == rules.instrument and s.when <= as_of}.values())
    current_end: date | None = None
    for n, score in enumerate(scores):
        if current_end is not None and score.when <= current_end:
            continue
        current_end = None
        if score.total < rules.index_at_least:
            continue
        if score.when > end:
            return None
        episode_end = max(w.bounds(score.when)[1] for w in rules.windows)
        if score.when >= start:
            inside = [s for s in scores[n:] if s.when <= episode_end]
            return _window_result(rules, window, score, inside, as_of)
        current_end = episode_end
    return None


def evaluate_person(history: Iterable[Score], as_of: date, rules: OutcomeRules | None = None) -> PersonOutcomes:
    """Every episode and outcome fact of one person (all their linked source records' scores together)."""
    rules = rules or OutcomeRules()
    scores = list(history)
    episodes: list[Episode] = []
    facts: list[Fact] = []
    for instrument_rules in (rules.phq9, rules.gad7):
        found, deteriorations = evaluate_instrument(instrument_rules, scores, as_of)
        episodes.extend(found)
        facts.extend(f for e in found for f in e.facts)
        facts.extend(deteriorations)
    facts.sort(key=lambda f: (f.when, f.kind, f.id))
    return PersonOutcomes(tuple(episodes), tuple(facts))
