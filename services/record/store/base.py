"""The record store's one interface (:class:`RecordStore`) and the plain types it speaks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from services.record.changes import OutboxRow
from services.record.identity import IdentityState, LinkAssertion, ReviewCandidate
from services.record.ingest import PreparedBundle
from services.record.search import SearchQuery


@dataclass(frozen=True, slots=True)
class StoredRow:
    """One version of one resource as stored. ``body`` is the served JSON (None when deleted)."""

    resource_type: str
    id: str
    version_id: int
    last_updated: int
    deleted: bool
    patient_ref: str | None
    restriction: int
    body: bytes | None


@dataclass(frozen=True)
class View:
    """What the caller may see: ``granted`` label-class bits (services/common/disclosure.py; its ORDINARY bit
    when unlabelled data may go) for every resource whose patient is not in ``by_patient``, which overrides them
    per Patient reference (what the patient's consents decide for this caller); and, for a patient-bound
    caller, the person's Patient references (None = any patient, or no patient at all)."""

    granted: int
    compartment: frozenset[str] | None = None
    by_patient: Mapping[str, int] = field(default_factory=dict)

    def mask_of(self, patient_ref: str | None) -> int:
        if patient_ref is None:
            return self.granted
        return self.by_patient.get(patient_ref, self.granted)


@dataclass
class Page:
    rows: list[StoredRow]
    total: int
    withheld: dict[int, int] = field(default_factory=dict)  # restriction bits -> matches not served
    withheld_patients: tuple[str, ...] = ()  # the patients of matches not served (for the denied attempts' audit)


@dataclass(frozen=True)
class HistoryQuery:
    resource_type: str
    resource_id: str | None  # None: history of the whole type
    since: int | None
    count: int
    offset: int


@dataclass(frozen=True)
class EverythingQuery:
    patient_refs: frozenset[str]  # the whole person
    types: frozenset[str] | None
    since: int | None
    count: int
    offset: int


@dataclass(frozen=True)
class Person:
    members: tuple[str, ...]  # "Patient/<id>", the person's Patient references, sorted
    pairs: dict[tuple[str, str], LinkAssertion]  # effective assertions among them


@dataclass(frozen=True)
class Refusal:
    """A bundle the store can never hold as sent (dead-lettered by the consumer). ``code`` names the database's
    rule (an SQLSTATE such as ``22021``, or an error class): never the value or the database's message."""

    partition: int
    offset: int
    event_key: str
    code: str


@dataclass(frozen=True)
class IngestReport:
    bundles: int
    skipped_bundles: int
    versions: int
    unchanged: int
    identity_events: int
    versions_by_type: dict[str, int] = field(default_factory=dict)
    stale: int = 0  # resources older than their current version (late from another partition): not applied
    refused: tuple[Refusal, ...] = ()  # bundles the store refused (nothing of them stored)


def merge_reports(first: IngestReport, second: IngestReport) -> IngestReport:
    by_type = dict(first.versions_by_type)
    for rtype, count in second.versions_by_type.items():
        by_type[rtype] = by_type.get(rtype, 0) + count
    return IngestReport(
        first.bundles + second.bundles,
        first.skipped_bundles + second.skipped_bundles,
        first.versions + second.versions,
        first.unchanged + second.unchanged,
        first.identity_events + second.identity_events,
        by_type,
        first.stale + second.stale,
        first.refused + second.refused,
    )


class RecordStore(Protocol):
    """Current and past versions of every resource, their search index and the identity state.

    ``ingest`` is one transaction. An outage stores nothing (StoreUnavailable: the caller retries the batch);
    bundles the database refuses as data (a value it cannot hold) are left out and listed in
    ``IngestReport.refused``, and the rest of the batch is stored.
    Implementations are safe to call from several threads.
    """

    def ingest(self, bundles: Sequence[PreparedBundle]) -> IngestReport: ...

    def pending_changes(self, limit: int = 1000, after_seq: int = 0) -> list[OutboxRow]: ...

    def forget_changes(self, up_to_seq: int) -> None: ...

    def read(self, resource_type: str, resource_id: str) -> StoredRow | None: ...

    def vread(self, resource_type: str, resource_id: str, version_id: int) -> StoredRow | None: ...

    def history(self, query: HistoryQuery, view: View) -> Page: ...

    def search(self, query: SearchQuery, view: View) -> Page: ...

    def everything(self, query: EverythingQuery, view: View) -> Page: ...

    def person(self, patient_ref: str) -> Person: ...

    def persons_of(self, patient_refs: Sequence[str]) -> dict[str, tuple[str, ...]]:
        """The Patient references of the person of each of these (one statement per chunk of them); a reference
        linked to nobody is absent (its person is itself)."""
        ...

    def consents(self, patient_refs: Sequence[str] | None) -> list[StoredRow]:
        """Current Consent resources of these patients (None: of every patient), whatever their labels."""
        ...

    def review_candidates(self) -> list[ReviewCandidate]: ...

    def identity_state(self) -> IdentityState: ...

    def stored_types(self) -> list[str]: ...

    def ping(self) -> None: ...

    def close(self) -> None: ...
