"""What whole-population work reads from the record (``$evaluate-measure``, the clinic view), kept between calls.

Incremental state: every instrument total, exclusion Condition and Patient is parsed once per stored version and
kept in memory. A call reads only ``(person, id, version, patient, labels)`` of the current rows (an index-only
query, no bodies) and the bodies of versions it has not parsed yet; deleted or superseded rows drop out, and the
person of each row is the record's at that moment (identity links followed as the API shows them). So an
evaluation over 10,000 patients costs one cheap query per resource type and the counting, not 120,000 JSON
parses. Access is decided per row by the caller (labels, consent grants, compartment), never cached.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import orjson

from services.outcomes.episodes import Score
from services.outcomes.exclusions import Exclusion, exclusion_of
from services.outcomes.history import TOTAL_CODES, score_of

T = TypeVar("T")


class BulkStore(Protocol):
    def current_versions(self, resource_type: str, param: str | None = None, codes: Sequence[str] = ()
                         ) -> list[tuple[str, str, int, str | None, int]]: ...

    def current_bodies(self, resource_type: str, ids: Sequence[str]) -> dict[str, tuple[int, bytes]]: ...


@dataclass(frozen=True)
class Fact(Generic[T]):
    """One parsed current resource: whose it is, its labels' restriction bits, and what it says."""

    person: str
    patient_ref: str | None
    restriction: int
    value: T


class _Parsed(Generic[T]):
    """id -> (version, parsed value or None) of one resource type, refreshed from the store's current rows."""

    def __init__(self, resource_type: str, param: str | None, codes: Sequence[str],
                 parse: Callable[[dict[str, Any]], T | None]) -> None:
        self.resource_type, self.param, self.codes, self.parse = resource_type, param, tuple(codes), parse
        self._values: dict[str, tuple[int, T | None]] = {}
        self._lock = threading.Lock()

    def facts(self, store: BulkStore) -> list[Fact[T]]:
        rows = store.current_versions(self.resource_type, self.param, self.codes)
        with self._lock:
            values = self._values
            stale = [rid for _, rid, version, _, _ in rows if values.get(rid, (None,))[0] != version]
            if stale:
                for rid, (version, body) in store.current_bodies(self.resource_type, stale).items():
                    values[rid] = (version, self.parse(orjson.loads(body)))
            if len(values) > 2 * len(rows) + 1000:  # forget deleted / no longer matching rows now and then
                current = {rid for _, rid, _, _, _ in rows}
                self._values = values = {rid: v for rid, v in values.items() if rid in current}
            found: list[Fact[T]] = []
            for person, rid, version, patient_ref, restriction in rows:
                kept = values.get(rid)
                if kept is not None and kept[0] == version and kept[1] is not None:
                    found.append(Fact(person, patient_ref, restriction, kept[1]))
            return found


class PopulationIndex:
    """The record's scores and exclusions for population measures, one instance per record API process."""

    def __init__(self, store: BulkStore) -> None:
        self.store = store
        self._scores = {code: _Parsed[Score]("Observation", "code", (code,), score_of) for code in TOTAL_CODES}
        self._conditions = _Parsed[Exclusion]("Condition", None, (), exclusion_of)
        self._patients = _Parsed[Exclusion]("Patient", None, (), exclusion_of)

    def scores(self, codes: Sequence[str] = tuple(TOTAL_CODES)) -> list[Fact[Score]]:
        """Every current instrument total of ``codes`` (LOINC; default PHQ-9 and GAD-7)."""
        return [fact for code in codes for fact in self._scores[code].facts(self.store)]

    def exclusions(self) -> list[Fact[Exclusion]]:
        """Every stored exclusion (Conditions with an excluding code, deceased Patients)."""
        return [*self._conditions.facts(self.store), *self._patients.facts(self.store)]
