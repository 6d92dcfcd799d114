"""What whole-population work reads from the record (``$evaluate-measure``, the clinic view), kept between calls.

Incremental state: every instrument total and every resource that may state a denominator exclusion (Condition,
Patient, Encounter, Procedure, ServiceRequest, the hospice / palliative assessment Observations:
services/outcomes/exclusions.py) is parsed once per stored version and kept in memory. A call reads only
``(person, id, version, patient, labels)`` of the current rows (an index-only query, no bodies) and the bodies of
versions it has not parsed yet; deleted or superseded rows drop out, and the person of each row is the record's
at that moment (identity links followed as the API shows them). So an evaluation over 10,000 patients costs one
cheap query per resource type and the counting, not 120,000 JSON parses. :class:`Warmup` does the first of
these reads at start-up.

Per person (:meth:`PopulationIndex.persons`): the facts grouped by the person they belong to, kept until the
store's change marker (its version counts of the types read here) moves; on a move the regrouping keeps the entry
of every person whose facts are unchanged, with what was judged of it. A person's judgements (their standing in
a measure window for a period, services/outcomes/fhir.py) are kept on its entry, keyed by the exact set of
``(patient, restriction)`` pairs the caller may see: so an evaluation of an unchanged record is a check of each
person's few pairs against the caller's grants and a lookup, and a changed person is judged again. Access is
decided per call by the caller (labels, consent grants, compartment), never cached: only what a given visible
set of facts yields is.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, Protocol, TypeVar

import orjson

from services.outcomes.episodes import Score
from services.outcomes.exclusions import (
    EXCLUSION_OBSERVATION_CODES,
    EXCLUSIONS_READ,
    STANDARD_CODES,
    Exclusion,
    HospiceCodes,
    exclusion_of,
)
from services.outcomes.fhir import PersonFacts
from services.outcomes.history import GAD7_TOTAL, PHQ9_TOTAL, TOTAL_CODES, score_of

T = TypeVar("T")
R = TypeVar("R")
Pair = tuple[str | None, int]  # (patient reference, restriction bits): what access is decided on
_READ_TYPES = ("Observation", "Condition", "Patient", "Linkage", "Encounter", "Procedure", "ServiceRequest")
_KEPT_JUDGEMENTS = 64  # per person: a few measures x periods x callers' visible sets
_BODY_CHUNK = 20_000  # bodies read and parsed per step (a warm-up logs its progress after each)


class BulkStore(Protocol):
    def current_versions(self, resource_type: str, param: str | None = None, codes: Sequence[str] = ()
                         ) -> list[tuple[str, str, int, str | None, int]]: ...

    def current_bodies(self, resource_type: str, ids: Sequence[str]) -> dict[str, tuple[int, bytes]]: ...

    def version_counts(self, resource_types: Sequence[str]) -> tuple[int, ...]: ...


@dataclass(frozen=True, slots=True)
class Fact(Generic[T]):
    """One parsed current resource: whose it is, its labels' restriction bits, and what it says."""

    person: str
    patient_ref: str | None
    restriction: int
    value: T


class _Parsed(Generic[T]):
    """The current facts of one resource type (id -> Fact), refreshed from the store's current rows: only new
    versions' bodies are read and parsed. Each refresh that changes something is one generation; ``touched``
    tells a reader which persons changed since the generation it last saw (their rows appeared, changed version,
    person, patient or labels, or went away)."""

    _LOG = 1000  # generations remembered; a reader further behind rebuilds everything

    def __init__(self, resource_type: str, param: str | None, codes: Sequence[str],
                 parse: Callable[[dict[str, Any]], T | None]) -> None:
        self.resource_type, self.param, self.codes, self.parse = resource_type, param, tuple(codes), parse
        self._rows: dict[str, tuple[str, str, int, str | None, int]] = {}
        self._values: dict[str, tuple[int, T | None]] = {}
        self._current: dict[str, Fact[T]] = {}
        self._by_person: dict[str, set[str]] = {}
        self.generation = 0
        self._log: list[tuple[int, set[str]]] = []
        self._lock = threading.Lock()

    def refresh(self, store: BulkStore, progress: Callable[[int, int], None] | None = None) -> None:
        """Catch up with the store's current rows (``progress(parsed, to_parse)`` after each chunk of bodies)."""
        rows = {r[1]: r for r in store.current_versions(self.resource_type, self.param, self.codes)}
        with self._lock:
            old_rows, values = self._rows, self._values
            changed = [rid for rid, row in rows.items() if old_rows.get(rid) != row]
            gone = [rid for rid in old_rows if rid not in rows]
            if not changed and not gone:
                return
            stale = [rid for rid in changed if values.get(rid, (None,))[0] != rows[rid][2]]
            for start in range(0, len(stale), _BODY_CHUNK):
                for rid, (version, body) in store.current_bodies(
                        self.resource_type, stale[start:start + _BODY_CHUNK]).items():
                    values[rid] = (version, self.parse(orjson.loads(body)))
                if progress is not None:
                    progress(min(start + _BODY_CHUNK, len(stale)), len(stale))
            touched: set[str] = set()
            for rid in (*changed, *gone):
                before = self._current.pop(rid, None)
                if before is not None:
                    touched.add(before.person)
                    mine = self._by_person.get(before.person)
                    if mine is not None:
                        mine.discard(rid)
                        if not mine:
                            del self._by_person[before.person]
                row = rows.get(rid)
                kept = values.get(rid) if row is not None else None
                if row is not None and kept is not None and kept[0] == row[2] and kept[1] is not None:
                    person, _, _, patient_ref, restriction = row
                    self._current[rid] = Fact(person, patient_ref, restriction, kept[1])
                    self._by_person.setdefault(person, set()).add(rid)
                    touched.add(person)
            for rid in gone:
                values.pop(rid, None)
            self._rows = rows
            self.generation += 1
            self._log.append((self.generation, touched))
            del self._log[:-self._LOG]

    def touched(self, since: int) -> set[str] | None:
        """The persons changed after generation ``since`` (None: too long ago to tell; rebuild everything)."""
        with self._lock:
            if since == self.generation:
                return set()
            if not self._log or self._log[0][0] > since + 1:
                return None
            return {p for generation, persons in self._log if generation > since for p in persons}

    def facts(self, store: BulkStore | None = None) -> list[Fact[T]]:
        """Every current fact (refreshed first when ``store`` is given)."""
        if store is not None:
            self.refresh(store)
        with self._lock:
            return list(self._current.values())

    def of_person(self, person: str) -> list[Fact[T]]:
        with self._lock:
            return [self._current[rid] for rid in self._by_person.get(person, ())]


class PersonEntry:
    """One person's current scores and exclusions, and what has been judged of them (see the module doc)."""

    def __init__(self, person: str, scores: tuple[Fact[Score], ...], exclusions: tuple[Fact[Exclusion], ...]
                 ) -> None:
        self.person, self.scores, self.exclusions = person, scores, exclusions
        self.score_pairs: frozenset[Pair] = frozenset((f.patient_ref, f.restriction) for f in scores)
        self.pairs: frozenset[Pair] = self.score_pairs | {(f.patient_ref, f.restriction) for f in exclusions}
        self.patients: frozenset[str | None] = frozenset(p for p, _ in self.pairs)
        self._judged: dict[tuple[Any, ...], Any] = {}
        self._lock = threading.Lock()

    def facts(self, seen: frozenset[Pair]) -> PersonFacts:
        """The scores and exclusions of the pairs ``seen`` (the ones the caller may see)."""
        if seen == self.pairs:
            return PersonFacts([f.value for f in self.scores], [f.value for f in self.exclusions])
        return PersonFacts([f.value for f in self.scores if (f.patient_ref, f.restriction) in seen],
                           [f.value for f in self.exclusions if (f.patient_ref, f.restriction) in seen])

    def judged(self, seen: frozenset[Pair], key: tuple[Any, ...], judge: Callable[[PersonFacts], R]) -> R:
        """``judge`` of the facts ``seen``, computed once per (``seen``, ``key``): ``key`` names everything else
        the judgement depends on (measure window, period, evaluation date)."""
        full = (seen, *key)
        with self._lock:
            if full in self._judged:
                return self._judged[full]  # type: ignore[no-any-return]
        value = judge(self.facts(seen))
        with self._lock:
            if len(self._judged) >= _KEPT_JUDGEMENTS:
                self._judged.clear()
            self._judged[full] = value
        return value


class PopulationIndex:
    """The record's scores and exclusions for population measures, one instance per record API process."""

    def __init__(self, store: BulkStore, hospice_codes: HospiceCodes = STANDARD_CODES) -> None:
        """``hospice_codes``: what states hospice or palliative care (a site's local codes added, as the outcomes
        service reads them: ``HospiceCodes.with_local(settings.outcomes_local_hospice_codings)``)."""
        self.store = store
        self._scores = {code: _Parsed[Score]("Observation", "code", (code,), score_of) for code in TOTAL_CODES}
        # every resource that may state an exclusion (Observations: only the hospice / palliative assessments)
        self._exclusions = tuple(
            _Parsed[Exclusion](rtype, "code" if rtype == "Observation" else None,
                               EXCLUSION_OBSERVATION_CODES if rtype == "Observation" else (),
                               partial(exclusion_of, codes=hospice_codes))
            for rtype in EXCLUSIONS_READ)
        self._persons: dict[tuple[str, ...], _Grouped] = {}
        self._persons_lock = threading.Lock()

    def warm(self, progress: Callable[[str], None] | None = None) -> None:
        """Parse every current score and exclusion and group them by person, as the first ``$evaluate-measure``
        and the first clinic view would (:class:`Warmup` runs this at start-up). ``progress`` gets a line per
        step: what was read, how many bodies of how many were parsed."""
        def step(name: str) -> Callable[[int, int], None] | None:
            if progress is None:
                return None
            return lambda done, total: progress(f"{name}: {done:,} of {total:,} versions parsed")
        for code, scores in self._scores.items():
            scores.refresh(self.store, step(f"scores {code}"))
        for source in self._exclusions:
            source.refresh(self.store, step(f"exclusions {source.resource_type}"))
        for codes in WARM_GROUPINGS:
            found = self.persons(codes)
            if progress is not None:
                progress(f"grouped {len(found):,} persons with {' or '.join(codes)} totals")

    def scores(self, codes: Sequence[str] = tuple(TOTAL_CODES)) -> list[Fact[Score]]:
        """Every current instrument total of ``codes`` (LOINC; default PHQ-9 and GAD-7)."""
        return [fact for code in codes for fact in self._scores[code].facts(self.store)]

    def exclusions(self) -> list[Fact[Exclusion]]:
        """Every stored exclusion (Conditions with an excluding code, deceased Patients)."""
        return [fact for source in self._exclusions for fact in source.facts(self.store)]

    def persons(self, codes: Sequence[str] = tuple(TOTAL_CODES)) -> list[PersonEntry]:
        """Every person with a current total of ``codes``, their scores and exclusions grouped (see the module
        doc: kept while the store's change marker stands; on a move only the changed persons are regrouped)."""
        key = tuple(codes)
        sources: list[_Parsed[Any]] = [*(self._scores[c] for c in codes), *self._exclusions]
        with self._persons_lock:
            marker = self.store.version_counts(_READ_TYPES)
            kept = self._persons.get(key)
            if kept is not None and kept.marker == marker:
                return list(kept.entries.values())
            for source in sources:
                source.refresh(self.store)
            touched: set[str] | None = set()
            if kept is None:
                touched = None
            else:
                for source, seen in zip(sources, kept.generations, strict=True):
                    found = source.touched(seen)
                    if found is None or touched is None:
                        touched = None
                    else:
                        touched |= found
            if touched is None:  # the first call, or too far behind: group every person
                entries: dict[str, PersonEntry] = {}
                touched = {f.person for c in codes for f in self._scores[c].facts()}
            else:
                entries = dict(kept.entries) if kept is not None else {}
            for person in touched:
                scores = tuple(sorted((f for c in codes for f in self._scores[c].of_person(person)),
                                      key=_fact_order))
                if not scores:
                    entries.pop(person, None)
                    continue
                exclusions = tuple(sorted((f for source in self._exclusions for f in source.of_person(person)),
                                          key=_exclusion_order))
                old = entries.get(person)
                if old is None or old.scores != scores or old.exclusions != exclusions:
                    entries[person] = PersonEntry(person, scores, exclusions)
            self._persons[key] = _Grouped(marker, tuple(s.generation for s in sources), entries)
            return list(entries.values())


# the groupings the API asks for: $evaluate-measure (PHQ-9 totals) and the clinic view (PHQ-9 and GAD-7)
WARM_GROUPINGS: tuple[tuple[str, ...], ...] = ((PHQ9_TOTAL,), (PHQ9_TOTAL, GAD7_TOTAL))


class _Stopped(Exception):
    """The warm-up was asked to stop."""


class Warmup:
    """Warms a :class:`PopulationIndex` at start-up in a background thread, so the first ``$evaluate-measure``
    after a start costs what any later one does.

    Why in the background, with readiness waiting for it (services/record/service.py): the record's consumer
    must start ingesting at once (a warm-up is a read and must never hold back writes), while a client routed to
    a cold process would wait for the whole parse inside its request. So the process starts everything, reports
    not-ready ("warming ...", with the step it is at) until the warm-up is done, and logs each step with its
    counts and the time taken. A warm-up that fails is logged and the process becomes ready anyway: a cold index
    is only slower (the first call parses what it needs), never wrong."""

    def __init__(self, index: PopulationIndex, log: logging.Logger | None = None) -> None:
        self.index = index
        self.log = log or logging.getLogger(__name__)
        self.done = threading.Event()
        self._stopping = threading.Event()
        self.step = "not started"
        self.seconds: float | None = None
        self._thread = threading.Thread(target=self._run, name="outcomes-warmup", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wait(self, timeout_s: float | None = None) -> bool:
        return self.done.wait(timeout_s)

    def stop(self) -> None:
        """Ask a running warm-up to end at its next step (a process stopping during it; joined briefly)."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    @property
    def reason(self) -> str:
        return "ready" if self.done.is_set() else f"warming the outcome measures' state ({self.step})"

    def _progress(self, line: str) -> None:
        if self._stopping.is_set():
            raise _Stopped
        self.step = line
        self.log.info("outcomes warm-up", extra={"step": line})

    def _run(self) -> None:
        started = time.monotonic()
        try:
            self.index.warm(self._progress)
            self.seconds = time.monotonic() - started
            self.log.info("outcomes warm-up done", extra={"seconds": round(self.seconds, 2)})
        except _Stopped:
            self.log.info("outcomes warm-up stopped (the process is stopping)")
        except Exception:  # a cold index is only slower: log and let the process become ready
            if self._stopping.is_set():
                self.log.info("outcomes warm-up stopped (the process is stopping)")
            else:
                self.log.exception("outcomes warm-up failed; measures will be computed on first use")
        finally:
            self.step = "done"
            self.done.set()


@dataclass(frozen=True)
class _Grouped:
    marker: tuple[int, ...]
    generations: tuple[int, ...]
    entries: dict[str, PersonEntry]


def _fact_order(fact: Fact[Score]) -> tuple[Any, ...]:
    return (fact.value, fact.patient_ref or "", fact.restriction)


def _exclusion_order(fact: Fact[Exclusion]) -> tuple[Any, ...]:
    return (fact.value.reference, fact.value.reason, fact.patient_ref or "", fact.restriction)
