"""How the record API applies the disclosure decision (services/common/disclosure.py) to one request: the
caller's grant for each person whose consents change it, the store :class:`View` that filters with them (so
totals and paging count only what the caller may see), what the caller may be told about what was withheld,
the Part 2 notice of what was disclosed, and the AuditEvents of the response.

What a caller is told (no side channel for an uncleared caller: nothing here depends on withheld data):

=======================================  ====================================================================
caller                                   told
=======================================  ====================================================================
cleared for the withheld class           as before: an OperationOutcome entry with counts and label classes
                                         (never ids) and a REDACTED tag; a direct read answers 403
not cleared (or withheld by a consent's  nothing data-dependent: searches always carry the same generic
deny, or unlabelled data)                "results may be limited by policy" issue when the token is not
                                         cleared for behavioural-health and substance-use data (whether or not
                                         anything was withheld); a direct read answers 404 with the same
                                         text as for a resource that does not exist
=======================================  ====================================================================
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from services.common import audit, disclosure, part2
from services.common.disclosure import Grant, Policy
from services.common.kafka import OutboundRecord
from services.record.access import Access
from services.record.fhirdates import format_instant
from services.record.store.base import RecordStore, StoredRow, View


@dataclass(frozen=True)
class CallerGrants:
    """One caller's grants at one moment: ``baseline`` for every person without a consent that changes it."""

    baseline: Grant
    by_patient: Mapping[str, Grant] = field(default_factory=dict)

    def grant_of(self, patient_ref: str | None) -> Grant:
        if patient_ref is None:
            return self.baseline
        return self.by_patient.get(patient_ref, self.baseline)

    def view(self, compartment: frozenset[str] | None) -> View:
        return View(
            self.baseline.classes, compartment, {ref: g.classes for ref, g in self.by_patient.items()}
        )


PARSED_CONSENTS = 50_000  # Consent versions kept parsed (then the cache starts again)


class DisclosureGate:
    """Decides for the record API. ``now_ms`` is the clock of decisions (consent periods, revocations)."""

    def __init__(self, store: RecordStore, policy: Policy, now_ms: Callable[[], int]) -> None:
        self._store = store
        self._policy = policy
        self._now_ms = now_ms
        self._consents: dict[tuple[str, int], disclosure.ConsentDirective] = {}

    def grants(self, access: Access, patients: Iterable[str] | None) -> CallerGrants:
        """The caller's grants for requests about ``patients`` (Patient references; None: any patient)."""
        now = self._now_ms()
        baseline = disclosure.grant((), access.recipient, access.purpose, now, self._policy)
        if access.recipient.patient_access:  # the patient themself: consents govern disclosures to others
            return CallerGrants(baseline)
        members_of: dict[str, tuple[str, ...]] = {}
        if patients is not None:
            refs = sorted(set(patients))
            rows = self._store.consents(refs)
            # the persons of the patients asked about, looked up whether or not they have consents: the work does
            # not tell an uncleared caller that a patient has one (a Part 2 consent says there is Part 2 data)
            members_of = self._store.persons_of(refs)
        else:
            rows = self._store.consents(None)
        if not rows:
            return CallerGrants(baseline)
        by_person: dict[tuple[str, ...], list[disclosure.ConsentDirective]] = defaultdict(list)
        for row in rows:
            if row.body is None or row.patient_ref is None:
                continue
            if row.patient_ref not in members_of:
                members = (row.patient_ref,) if patients is not None else self._store.person(row.patient_ref).members
                members_of.update(dict.fromkeys(members, members))
            by_person[members_of[row.patient_ref]].append(self._parsed(row))
        by_patient: dict[str, Grant] = {}
        for members, consents in by_person.items():
            person_grant = disclosure.grant(consents, access.recipient, access.purpose, now, self._policy)
            if person_grant != baseline:
                by_patient.update(dict.fromkeys(members, person_grant))
        return CallerGrants(baseline, by_patient)

    def _parsed(self, row: StoredRow) -> disclosure.ConsentDirective:
        """A Consent version as the engine reads it, parsed once (versions never change)."""
        key = (row.id, row.version_id)
        found = self._consents.get(key)
        if found is None:
            assert row.body is not None
            if len(self._consents) >= PARSED_CONSENTS:
                self._consents.clear()
            found = self._consents[key] = disclosure.parse_consent(orjson.loads(row.body))
        return found

    def person_grants(self, access: Access, patient_ref: str | None) -> CallerGrants:
        """The grants for one resource's patient (its whole person: consents of linked records count)."""
        if patient_ref is None:
            return self.grants(access, ())
        return self.grants(access, self._store.person(patient_ref).members)


# --- what the caller is told -----------------------------------------------------------------------------------


GENERIC_NOTICE = "Results may be limited by the disclosure policy (consent and security labels)."


def told_withheld(access: Access, withheld: Mapping[int, int]) -> dict[int, int]:
    """The withheld counts this caller may be told: only classes it holds the clearance for."""
    return {missing: n for missing, n in withheld.items() if access.cleared_for(missing)}


NOTICED_CLASSES = disclosure.BEHAVIORAL_HEALTH | disclosure.SUBSTANCE_USE | disclosure.PART2


def generic_notice(access: Access) -> bool:
    """Whether responses carry the generic notice: a property of the token alone, never of the data (a token
    not cleared for behavioural-health or substance-use data always gets it)."""
    return not access.cleared_for(NOTICED_CLASSES)


# --- the Part 2 package ----------------------------------------------------------------------------------------


def part2_notice(
    access: Access, grants: CallerGrants, rows: Sequence[StoredRow], base_url: str, now_ms: int
) -> dict[str, Any] | None:
    """The Provenance with the 42 CFR 2.32 notice for the Part 2 resources among ``rows`` (None: none)."""
    targets = [f"{r.resource_type}/{r.id}" for r in rows if r.restriction & disclosure.PART2 and not r.deleted]
    if not targets:
        return None
    consents: list[str] = []
    for row in rows:
        if row.restriction & disclosure.PART2:
            consents.extend(c for c in grants.grant_of(row.patient_ref).part2_consents if c not in consents)
    return part2.disclosure_notice(
        str(uuid.uuid4()),
        format_instant(now_ms),
        targets,
        consents,
        base_url,
        access.purpose,
        access.recipient.organization,
    )


def part2_consents_of(grants: CallerGrants, row: StoredRow) -> tuple[str, ...]:
    return grants.grant_of(row.patient_ref).part2_consents if row.restriction & disclosure.PART2 else ()


# --- audit ---------------------------------------------------------------------------------------------------


def requester(access: Access) -> audit.Requester:
    return audit.Requester(access.client, access.label, access.recipient.organization, access.purpose)


def access_events(
    access: Access,
    grants: CallerGrants,
    interaction: audit.Interaction,
    rows: Sequence[StoredRow],
    base_url: str,
    now_ms: int,
    query: str | None,
) -> list[dict[str, Any]]:
    """One AuditEvent per patient whose data ``rows`` disclose (rows without a patient are not audited)."""
    by_patient: dict[str, list[StoredRow]] = defaultdict(list)
    for row in rows:
        if row.patient_ref is not None:
            by_patient[row.patient_ref].append(row)
    recorded = format_instant(now_ms)
    events = []
    for patient_ref, patient_rows in sorted(by_patient.items()):
        consents: list[str] = []
        for row in patient_rows:
            consents.extend(c for c in part2_consents_of(grants, row) if c not in consents)
        events.append(
            audit.api_access_event(
                str(uuid.uuid4()),
                recorded,
                interaction,
                requester(access),
                base_url,
                patient_ref,
                [f"{r.resource_type}/{r.id}" for r in patient_rows],
                consents,
                query,
            )
        )
    return events


@dataclass(frozen=True)
class DeniedAttempt:
    """The facts of one answer's denied attempts: what :func:`denied_events` builds its AuditEvents from, kept in
    the journal until they are on the audit topic (services/record/denials.py). Every answer makes one, with
    ``withheld`` empty when it withheld nothing. References, codes and the query only - never content.

    ``attempt`` is a random id of the answer: the AuditEvents' ids derive from it, so building them again from
    the same facts (a crash between the write and the journal's delete) gives the same AuditEvents."""

    attempt: str
    recorded_ms: int
    client: str
    label: str
    organization: str | None
    purpose: str
    interaction: audit.Interaction
    base_url: str
    query: str | None = None
    # one denied AuditEvent per entry: the patient, and the withheld resources it names (none for a query: the
    # answer never looked them up)
    withheld: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def to_json(self) -> bytes:
        return orjson.dumps(self)

    @classmethod
    def from_json(cls, data: bytes) -> DeniedAttempt:
        facts = orjson.loads(data)
        facts["withheld"] = tuple((patient, tuple(resources)) for patient, resources in facts["withheld"])
        return cls(**facts)


def denied_attempt(
    access: Access,
    interaction: audit.Interaction,
    base_url: str,
    now_ms: int,
    withheld: Iterable[tuple[str, Sequence[str]]] = (),
    query: str | None = None,
) -> DeniedAttempt:
    """The denied-attempt facts of one answer (``withheld`` empty: it withheld nothing)."""
    return DeniedAttempt(
        str(uuid.uuid4()), now_ms, access.client, access.label, access.recipient.organization, access.purpose,
        interaction, base_url, query, tuple((patient, tuple(resources)) for patient, resources in withheld),
    )


def denied_read(
    access: Access, interaction: audit.Interaction, row: StoredRow, base_url: str, now_ms: int
) -> DeniedAttempt:
    """A refused read of a patient's resource: one denied attempt naming it (none for a resource without a
    patient)."""
    withheld = [] if row.patient_ref is None else [(row.patient_ref, (f"{row.resource_type}/{row.id}",))]
    return denied_attempt(access, interaction, base_url, now_ms, withheld)


def denied_query(
    access: Access,
    interaction: audit.Interaction,
    patients: Sequence[str],
    base_url: str,
    now_ms: int,
    query: str | None,
) -> DeniedAttempt:
    """A search, history or $everything whose matches the disclosure policy filtered: one denied PatientQuery
    per patient whose matches were withheld, with the query; the withheld resources are not named (the answer
    never looked them up). The caller is told nothing of it."""
    return denied_attempt(access, interaction, base_url, now_ms, [(p, ()) for p in patients], query)


def denied_events(attempt: DeniedAttempt) -> list[dict[str, Any]]:
    """The AuditEvents (outcome 4) of one answer's denied attempts, the same every time they are built: ids
    from the attempt and the patient (UUIDv5), the recorded time the attempt's."""
    recorded = format_instant(attempt.recorded_ms)
    who = audit.Requester(attempt.client, attempt.label, attempt.organization, attempt.purpose)
    return [
        audit.api_access_event(
            audit.disclosure_id("denied", attempt.attempt, patient_ref), recorded, attempt.interaction, who,
            attempt.base_url, patient_ref, list(resources), query=attempt.query, denied=True,
        )
        for patient_ref, resources in attempt.withheld
    ]


AuditSink = Callable[[Sequence[OutboundRecord]], Any]


def audit_records(events: Iterable[dict[str, Any]], topic_prefix: str) -> list[OutboundRecord]:
    return [audit.audit_record(e, topic_prefix) for e in events]
