"""Outcomes as FHIR R4 (pure): derived Observations, DEQM Individual and Summary MeasureReports, and the two
Measures they report on.

* Derived Observation (one per episode, id from the episode): code ``urn:carebus:codesystem:outcomes|phq-9-episode``
  (or ``gad-7-episode``), value = the episode state, ``derivedFrom`` -> every score it used, components: index
  score, latest score, reduction %, each window's result, follow-up due / overdue, and each outcome fact with its
  date. ``status`` preliminary while the episode runs, final after it.
* Individual MeasureReport (DEQM indv-measurereport-deqm), per PHQ-9 episode and measure: populations
  initial-population / denominator (1: the person has this index episode), denominator-exclusion (1 when a
  recorded fact excludes the person by the window's end, services/outcomes/exclusions.py; then numerator 0 and
  no measureScore), numerator (met or not); ``status`` pending while the window is open; ``date`` = the date of the
  latest evidence (deterministic: a recompute of the same history gives the same resource).
* Summary MeasureReport (DEQM summary-measurereport-deqm) from :func:`summary_report` over many persons: the
  denominator counts everyone in the initial population, the exclusions are counted beside it and left out of
  the numerator, and measureScore = numerator / (denominator - denominator-exclusion), as FHIR proportion
  measures score.

Every derived resource carries the union of its scores' labels and at least R + PSY. The MeasureReports have
the shape of DEQM 5.0.0's Individual / Summary profiles (every element those profiles require) but do not
claim them in ``meta.profile``: the project's reference validator (HAPI, R4 core + US Core 6.1.0) does not load
DEQM, and an unresolvable claimed profile is an error there. ``INDIVIDUAL_PROFILE`` / ``SUMMARY_PROFILE`` name
them for clients that want to check.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Final, Literal

from services.common.fhir.codesystems import (
    CAREBUS_ORGANIZATION,
    GENERATED_BY_CODES,
    MEASURE_IMPROVEMENT_NOTATION,
    MEASURE_POPULATION,
    MEASURE_SCORING,
    OBSERVATION_CATEGORY,
    OUTCOMES_CODES,
    OUTCOMES_EPISODE,
    UCUM,
)
from services.common.security_labels import PSYCHIATRIC, combine, meta_security
from services.outcomes.episodes import (
    Episode,
    InstrumentRules,
    PersonOutcomes,
    Score,
    WindowResult,
    index_window,
    outcome_id,
)
from services.outcomes.exclusions import Exclusion, excluding

DEQM: Final = "http://hl7.org/fhir/us/davinci-deqm/StructureDefinition/"
INDIVIDUAL_PROFILE: Final = DEQM + "indv-measurereport-deqm"
SUMMARY_PROFILE: Final = DEQM + "summary-measurereport-deqm"
MEASURE_VERSION: Final = "1.0.0"
GENERATED_TAG: Final = {"system": GENERATED_BY_CODES, "code": "carebus-outcomes",
                        "display": "derived by the carebus outcomes service"}

STATE_DISPLAY: Final = {
    "awaiting-follow-up": "Awaiting follow-up score",
    "no-response": "Not responding",
    "partial-response": "Partial response",
    "responding": "Responding",
    "remitted": "Remitted",
}
FACT_DISPLAY: Final = {
    "episode-started": "Episode started (elevated index score)",
    "response-reached": "Response reached",
    "partial-response-reached": "Partial response reached",
    "remission-reached": "Remission reached",
    "deterioration": "Deterioration",
    "follow-up-overdue": "Follow-up score overdue",
}


@dataclass(frozen=True)
class MeasureSpec:
    id: str
    name: str
    title: str
    description: str
    window: str  # the episode window the numerator is judged in
    numerator: Literal["remission-or-response", "remission"]
    source: str

    @property
    def url(self) -> str:
        return f"urn:carebus:measure:{self.id}"

    def met(self, result: WindowResult) -> bool:
        if self.numerator == "remission":
            return result.remission
        return result.remission or result.response


DRR_E_STYLE: Final = MeasureSpec(
    "carebus-phq9-remission-or-response-4-8-months",
    "CarebusPHQ9RemissionOrResponse4to8Months",
    "Depression remission or response at 4-8 months (DRR-E style)",
    "Persons with an index PHQ-9 episode (total > 9) in the measurement period whose most recent PHQ-9 120-240 "
    "days after the index date is < 5 (remission) or at least 50% below the index score (response).",
    "drr-e",
    "remission-or-response",
    "NCQA HEDIS Depression Remission or Response for Adolescents and Adults (DRR-E)",
)
CMS159_STYLE: Final = MeasureSpec(
    "carebus-phq9-remission-12-months",
    "CarebusPHQ9RemissionAt12Months",
    "Depression remission at 12 months (CMS159 style)",
    "Persons with an index PHQ-9 episode (total > 9) in the measurement period whose most recent PHQ-9 within "
    "12 months +/- 60 days after the index date is < 5.",
    "cms159",
    "remission",
    "CMS159v14 Depression Remission at Twelve Months",
)
MEASURES: Final = (DRR_E_STYLE, CMS159_STYLE)
# what ``GET /Measure`` searches by (services/record/outcomes_api.py) and the CapabilityStatement says: (name, type)
MEASURE_SEARCH_PARAMS: Final = (("_id", "token"), ("url", "uri"), ("version", "token"), ("name", "string"),
                                ("title", "string"), ("status", "token"))
MEASURES_BY_ID: Final = {m.id: m for m in MEASURES}

_POPULATIONS: Final = (
    ("initial-population", "Initial Population", "Persons with an index PHQ-9 (> 9) in the measurement period"),
    ("denominator", "Denominator", "Equals the initial population"),
    ("denominator-exclusion", "Denominator Exclusion",
     "Persons with bipolar disorder, personality disorder emotionally labile, schizophrenia or a psychotic "
     "disorder, or who died, by the end of the window; or who received hospice or palliative care (a "
     "diagnosis, an encounter or a discharge to hospice, a procedure, an order or an assessment) during the "
     "period up to the end of the window (CMS159v14 exclusions)"),
    ("numerator", "Numerator", "The measure's outcome was met in its window"),
)


def _concept(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    coding: dict[str, Any] = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding]}


def _labels(episode: Episode) -> list[dict[str, Any]]:
    return meta_security(combine(PSYCHIATRIC, *(s.labels for s in episode.scores)))


def _meta(episode: Episode) -> dict[str, Any]:
    return {"security": _labels(episode), "tag": [GENERATED_TAG]}


def _reduction_percent(episode: Episode) -> float:
    index = episode.index.total
    return round((index - episode.latest.total) * 100 / index, 1) if index else 0.0


def _window_code(result: WindowResult) -> str:
    if result.status != "measured":
        return result.status
    if result.remission:
        return "remission"
    if result.response:
        return "response"
    if result.partial_response:
        return "partial-response"
    return "no-response"


def derived_observation(episode: Episode) -> dict[str, Any]:
    """The episode's outcome as an Observation, ``derivedFrom`` -> the scores it used."""
    outcome = f"{episode.instrument}-episode"
    components: list[dict[str, Any]] = [
        {"code": _concept(OUTCOMES_CODES, "index-score", "Index score"), "valueInteger": episode.index.total},
        {"code": _concept(OUTCOMES_CODES, "latest-score", "Latest score"), "valueInteger": episode.latest.total},
        {"code": _concept(OUTCOMES_CODES, "reduction", "Reduction from the index score"),
         "valueQuantity": {"value": _reduction_percent(episode), "unit": "%", "system": UCUM, "code": "%"}},
    ]
    for result in episode.windows:
        components.append({
            "code": _concept(OUTCOMES_CODES, f"window-{result.window.name}", f"Window {result.window.name}"),
            "valueCodeableConcept": _concept(OUTCOMES_CODES, _window_code(result)),
        })
    components.append({"code": _concept(OUTCOMES_CODES, "follow-up-overdue", "Follow-up overdue"),
                       "valueBoolean": episode.follow_up_overdue})
    if episode.follow_up_due is not None:
        components.append({"code": _concept(OUTCOMES_CODES, "follow-up-due", "Follow-up due from"),
                           "valueDateTime": episode.follow_up_due.isoformat()})
    for fact in episode.facts:
        components.append({"code": _concept(OUTCOMES_CODES, fact.kind, FACT_DISPLAY[fact.kind]),
                           "valueDateTime": fact.when.isoformat()})
    return {
        "resourceType": "Observation",
        "id": outcome_id("observation", episode.id),
        "meta": _meta(episode),
        "identifier": [{"system": OUTCOMES_EPISODE, "value": episode.id}],
        "status": "preliminary" if episode.running else "final",
        "category": [_concept(OBSERVATION_CATEGORY, "survey", "Survey")],
        "code": {**_concept(OUTCOMES_CODES, outcome, f"{episode.instrument.upper()} episode outcome"),
                 "text": f"{episode.instrument.upper()} episode outcome"},
        "subject": {"reference": episode.index.patient},
        "effectivePeriod": {"start": episode.index.when.isoformat(), "end": episode.latest.when.isoformat()},
        "valueCodeableConcept": {**_concept(OUTCOMES_CODES, episode.state, STATE_DISPLAY[episode.state]),
                                 "text": STATE_DISPLAY[episode.state]},
        "derivedFrom": [{"reference": s.reference} for s in episode.scores],
        "component": components,
    }


def _reporter(organization: str) -> dict[str, Any]:
    return {"identifier": {"system": CAREBUS_ORGANIZATION, "value": organization}, "display": organization}


def _group(counts: dict[str, int], score: float | None) -> dict[str, Any]:
    group: dict[str, Any] = {
        "id": "group-1",
        "population": [{"id": code, "code": _concept(MEASURE_POPULATION, code, display), "count": counts[code]}
                       for code, display, _ in _POPULATIONS],
    }
    if score is not None:
        group["measureScore"] = {"value": score}
    return group


def individual_report(spec: MeasureSpec, episode: Episode, organization: str,
                      exclusions: Sequence[Exclusion] = (), since: date | None = None) -> dict[str, Any]:
    """DEQM Individual MeasureReport of one PHQ-9 episode for one measure (``exclusions``: the person's;
    ``since``: the start of the report's period, by default the index date: care over a time such as hospice
    excludes when it reaches into the period, services/outcomes/exclusions.py)."""
    result = episode.window(spec.window)
    excluded = excluding(exclusions, result.end, since or episode.index.when)
    met = spec.met(result) and excluded is None
    evidence = [s for s in episode.scores if s.when <= result.end]
    report_date = result.end if result.closed else evidence[-1].when
    counts = {"initial-population": 1, "denominator": 1, "denominator-exclusion": int(excluded is not None),
              "numerator": int(met)}
    return {
        "resourceType": "MeasureReport",
        "id": outcome_id("measurereport", spec.id, episode.id),
        "meta": _meta(episode),
        "status": "complete" if result.closed else "pending",
        "type": "individual",
        "measure": f"{spec.url}|{MEASURE_VERSION}",
        "subject": {"reference": episode.index.patient},
        "date": report_date.isoformat(),
        "reporter": _reporter(organization),
        "period": {"start": episode.index.when.isoformat(), "end": result.end.isoformat()},
        "improvementNotation": _concept(
            MEASURE_IMPROVEMENT_NOTATION, "increase", "Increased score indicates improvement"),
        "group": [_group(counts, None if excluded is not None else float(met))],
        "evaluatedResource": [{"reference": episode.index.reference},
                              *({"reference": s.reference} for s in result.scores),
                              *([{"reference": excluded.reference}] if excluded is not None else [])],
    }


@dataclass(frozen=True)
class PopulationCounts:
    initial_population: int = 0
    numerator: int = 0
    pending: int = 0  # counted persons whose window is still open (the result may still change)
    excluded: int = 0  # in the denominator, excluded (services/outcomes/exclusions.py); never in the numerator

    def as_dict(self) -> dict[str, int]:
        return {"initial-population": self.initial_population, "denominator": self.initial_population,
                "denominator-exclusion": self.excluded, "numerator": self.numerator}

    @property
    def score(self) -> float | None:
        """numerator / (denominator - denominator-exclusion); None when nobody is left to score."""
        scored = self.initial_population - self.excluded
        return self.numerator / scored if scored else None


@dataclass(frozen=True)
class PersonFacts:
    """What a population measure reads of one person: their scores and the exclusions recorded for them."""

    scores: Sequence[Score]
    exclusions: Sequence[Exclusion] = ()


def index_episode(spec: MeasureSpec, outcomes: PersonOutcomes, start: date, end: date) -> Episode | None:
    """The person's first PHQ-9 episode whose index date falls in the measurement period, if any."""
    return next((e for e in outcomes.of("phq-9") if start <= e.index.when <= end), None)


@dataclass(frozen=True)
class Judgement:
    """One person's standing in one measure window and period: their index window (None: not in the initial
    population) and the exclusion in force by its end, if any."""

    result: WindowResult | None
    exclusion: Exclusion | None = None


def judge(window: str, facts: PersonFacts, start: date, end: date, as_of: date, rules: InstrumentRules
          ) -> Judgement:
    """Where one person stands in the measure window ``window`` for the period ``start`` .. ``end`` (their first
    index episode in the period; the exclusions recorded by the end of its window)."""
    result = index_window(rules, facts.scores, window, start, end, as_of)
    if result is None or not facts.exclusions:
        return Judgement(result)
    return Judgement(result, excluding(facts.exclusions, result.end, start))


def count_judgements(spec: MeasureSpec, judgements: Iterable[Judgement]) -> PopulationCounts:
    """Population counts of one measure from its persons' judgements (each person counted once)."""
    initial = numerator = pending = excluded = 0
    for judgement in judgements:
        result = judgement.result
        if result is None:
            continue
        initial += 1
        pending += not result.closed
        if judgement.exclusion is not None:
            excluded += 1
            continue
        numerator += spec.met(result)
    return PopulationCounts(initial, numerator, pending, excluded)


def population_counts(spec: MeasureSpec, persons: Iterable[PersonFacts | Sequence[Score]], start: date, end: date,
                      as_of: date, rules: InstrumentRules) -> PopulationCounts:
    """Population counts of one measure over many persons (their PHQ-9 histories, with or without their
    exclusions; each person counted once: their first index episode in the measurement period)."""
    return count_judgements(spec, (
        judge(spec.window, p if isinstance(p, PersonFacts) else PersonFacts(p), start, end, as_of, rules)
        for p in persons))


def summary_report(spec: MeasureSpec, counts: PopulationCounts, start: date, end: date, generated: str,
                   organization: str, report_id: str) -> dict[str, Any]:
    """DEQM Summary MeasureReport (``generated``: the evaluation instant, ISO 8601)."""
    score = counts.score
    return {
        "resourceType": "MeasureReport",
        "id": report_id,
        "meta": {"tag": [GENERATED_TAG]},
        "status": "pending" if counts.pending else "complete",
        "type": "summary",
        "measure": f"{spec.url}|{MEASURE_VERSION}",
        "date": generated,
        "reporter": _reporter(organization),
        "period": {"start": start.isoformat(), "end": end.isoformat()},
        "improvementNotation": _concept(
            MEASURE_IMPROVEMENT_NOTATION, "increase", "Increased score indicates improvement"),
        "group": [_group(counts.as_dict(), None if score is None else round(score, 4))],
    }


def measure_resource(spec: MeasureSpec) -> dict[str, Any]:
    return {
        "resourceType": "Measure",
        "id": spec.id,
        "url": spec.url,
        "version": MEASURE_VERSION,
        "name": spec.name,
        "title": spec.title,
        "status": "active",
        "experimental": False,
        "date": "2026-12-02",
        "publisher": "carebus",
        "description": spec.description,
        "relatedArtifact": [{"type": "documentation", "display": f"Modelled on {spec.source}"}],
        "scoring": _concept(MEASURE_SCORING, "proportion", "Proportion"),
        "improvementNotation": _concept(
            MEASURE_IMPROVEMENT_NOTATION, "increase", "Increased score indicates improvement"),
        "group": [{
            "id": "group-1",
            "population": [
                {"id": code, "code": _concept(MEASURE_POPULATION, code, display), "description": text,
                 "criteria": {"language": "text/cql", "expression": display}}
                for code, display, text in _POPULATIONS
            ],
        }],
    }


def outcome_resources(outcomes: PersonOutcomes, organization: str,
                      exclusions: Sequence[Exclusion] = ()) -> list[dict[str, Any]]:
    """Every derived resource of one person: a derived Observation per episode and, per PHQ-9 episode, an
    Individual MeasureReport for each measure (``exclusions``: the person's denominator exclusions)."""
    resources: list[dict[str, Any]] = []
    for episode in outcomes.episodes:
        resources.append(derived_observation(episode))
        if episode.instrument == "phq-9":
            resources.extend(individual_report(spec, episode, organization, exclusions) for spec in MEASURES)
    return resources


def referenced_scores(resources: Sequence[dict[str, Any]]) -> set[str]:
    return {d["reference"] for r in resources for d in r.get("derivedFrom", ())}
