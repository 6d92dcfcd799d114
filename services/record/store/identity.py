# ruff: noqa: S608 -- SQL is assembled from fixed fragments and placeholders; every value is a bound parameter
"""The identity graph in the store: registrations, identifiers, link assertions and the person each Patient
belongs to (``identity_member``), kept current by recomputing only the part of the graph an ingest touched.
The rules that decide who is one person are services/record/identity.py (pure); this module reads and writes
their state."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from services.common.sql import Connection, Database, chunks, marks
from services.record.identity import (
    IdentityPolicy,
    IdentityState,
    LinkAssertion,
    Registration,
    ReviewCandidate,
    effective_pairs,
    persons,
    review_candidates,
)
from services.record.ingest import WritePlan
from services.record.store.base import Person


def apply(db: Database, conn: Connection, plan: WritePlan, policy: IdentityPolicy) -> None:
    """Store the identity events of ``plan`` (the newest registration per Patient, the first sighting of each
    assertion) and recompute the persons of the part of the graph they touch."""
    latest: dict[str, Registration] = {}
    earliest: dict[str, LinkAssertion] = {}
    for event in plan.identity:
        if isinstance(event, Registration):
            if event.patient not in latest or event.newer_than(latest[event.patient]):
                latest[event.patient] = event
        elif (
            event.assertion_id not in earliest
            or event.first_seen_key() < earliest[event.assertion_id].first_seen_key()
        ):
            earliest[event.assertion_id] = event
    affected: set[str] = set()
    existing_regs = load_registrations(db, conn, latest)
    changed_regs: list[Registration] = []
    for ref, reg in latest.items():
        old = existing_regs.get(ref)
        if old is not None and not reg.newer_than(old):
            continue
        changed_regs.append(reg)
        if old is None or (old.identifiers, old.demographics, old.gender, old.active) != (
            reg.identifiers,
            reg.demographics,
            reg.gender,
            reg.active,
        ):
            affected.add(ref)
    if changed_regs:
        db.many(
            conn,
            "INSERT INTO identity_registration (patient_ref, identifiers, demographics, gender, "
            "asserted_at, tiebreak, active) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (patient_ref) DO UPDATE SET identifiers = excluded.identifiers, "
            "demographics = excluded.demographics, gender = excluded.gender, "
            "asserted_at = excluded.asserted_at, tiebreak = excluded.tiebreak, "
            "active = excluded.active",
            [
                (
                    r.patient,
                    orjson.dumps(sorted(r.identifiers)).decode(),
                    r.demographics,
                    r.gender,
                    r.asserted_at,
                    r.tiebreak,
                    int(r.active),
                )
                for r in changed_regs
            ],
        )
        db.many(
            conn,
            "DELETE FROM identity_identifier WHERE patient_ref = ?",
            [(r.patient,) for r in changed_regs],
        )
        db.many(
            conn,
            "INSERT INTO identity_identifier (patient_ref, system, value) VALUES (?, ?, ?)",
            [(r.patient, s, v) for r in changed_regs if r.active for s, v in sorted(r.identifiers)],
        )
    ids = sorted(earliest)
    known: dict[str, LinkAssertion] = {}
    for chunk in chunks(ids):
        rows = db.all(
            conn,
            "SELECT assertion_id, ref_a, ref_b, kind, survivor, asserted_at FROM identity_assertion "
            f"WHERE assertion_id IN ({marks(len(chunk))})",
            chunk,
        )
        known.update({r[0]: _assertion(r) for r in rows})
    new_assertions = [
        a
        for a in earliest.values()
        if a.assertion_id not in known or a.first_seen_key() < known[a.assertion_id].first_seen_key()
    ]
    if new_assertions:
        db.many(
            conn,
            "INSERT INTO identity_assertion (assertion_id, ref_a, ref_b, kind, survivor, "
            "asserted_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (assertion_id) DO UPDATE SET "
            "ref_a = excluded.ref_a, ref_b = excluded.ref_b, kind = excluded.kind, "
            "survivor = excluded.survivor, asserted_at = excluded.asserted_at",
            [
                (a.assertion_id, a.patients[0], a.patients[1], a.kind, a.survivor, a.asserted_at)
                for a in new_assertions
            ],
        )
        for a in new_assertions:
            affected.update(a.patients)
    if affected:
        recompute_persons(db, conn, affected, policy)


def load_registrations(db: Database, conn: Connection, refs: Iterable[str]) -> dict[str, Registration]:
    out: dict[str, Registration] = {}
    for chunk in chunks(sorted(refs)):
        rows = db.all(
            conn,
            "SELECT patient_ref, identifiers, demographics, gender, asserted_at, tiebreak, "
            f"active FROM identity_registration WHERE patient_ref IN ({marks(len(chunk))})",
            chunk,
        )
        out.update({r[0]: _registration(r) for r in rows})
    return out


def assertions_touching(db: Database, conn: Connection, refs: Iterable[str]) -> list[LinkAssertion]:
    out: dict[str, LinkAssertion] = {}
    for chunk in chunks(sorted(refs)):
        listed = marks(len(chunk))
        rows = db.all(
            conn,
            "SELECT assertion_id, ref_a, ref_b, kind, survivor, asserted_at "
            f"FROM identity_assertion WHERE ref_a IN ({listed}) OR ref_b IN ({listed})",
            (*chunk, *chunk),
        )
        out.update({r[0]: _assertion(r) for r in rows})
    return list(out.values())


def members_of_persons_of(db: Database, conn: Connection, refs: Iterable[str]) -> set[str]:
    found: set[str] = set()
    for chunk in chunks(sorted(refs)):
        rows = db.all(
            conn,
            "SELECT m.patient_ref FROM identity_member m WHERE m.person_id IN "
            "(SELECT person_id FROM identity_member "
            f"WHERE patient_ref IN ({marks(len(chunk))}))",
            chunk,
        )
        found.update(r[0] for r in rows)
    return found


def recompute_persons(db: Database, conn: Connection, seed: set[str], policy: IdentityPolicy) -> None:
    """Recompute persons over the closure of ``seed``: every Patient that is, or was, or could be
    connected
    to it. Components outside the closure cannot have changed."""
    nodes: set[str] = set()
    frontier = set(seed)
    registrations: dict[str, Registration] = {}
    assertions: dict[str, LinkAssertion] = {}
    while frontier:
        nodes |= frontier
        found = members_of_persons_of(db, conn, frontier)
        regs = load_registrations(db, conn, frontier)
        registrations.update(regs)
        values = sorted({v for r in regs.values() for s, v in r.identifiers if s in policy.enterprise_systems})
        for chunk in chunks(values):
            rows = db.all(
                conn,
                f"SELECT patient_ref, system FROM identity_identifier WHERE value IN ({marks(len(chunk))})",
                chunk,
            )
            found.update(r[0] for r in rows if r[1] in policy.enterprise_systems)
        if policy.demographic_rule != "none":
            keys = sorted({r.demographics for r in regs.values() if r.demographics})
            for chunk in chunks(keys):
                rows = db.all(
                    conn,
                    f"SELECT patient_ref FROM identity_registration WHERE demographics IN ({marks(len(chunk))})",
                    chunk,
                )
                found.update(r[0] for r in rows)
        for a in assertions_touching(db, conn, frontier):
            assertions[a.assertion_id] = a
            found.update(a.patients)
        frontier = found - nodes
    mapping = persons(registrations.values(), assertions.values(), policy)
    for ref in nodes:
        mapping.setdefault(ref, ref)
    write_members(db, conn, mapping)


def write_members(db: Database, conn: Connection, mapping: dict[str, str]) -> None:
    rows = sorted(mapping.items())
    db.many(conn, "DELETE FROM identity_member WHERE patient_ref = ?", [(ref,) for ref, _ in rows])
    db.many(conn, "INSERT INTO identity_member (patient_ref, person_id) VALUES (?, ?)", rows)


def rebuild_persons(db: Database, conn: Connection, policy: IdentityPolicy) -> None:
    """Recompute every person (the identity policy changed since they were stored)."""
    state = read_state(db, conn)
    conn.execute("DELETE FROM identity_member")
    mapping = state.persons(policy)
    write_members(db, conn, mapping)


def read_state(db: Database, conn: Connection) -> IdentityState:
    state = IdentityState()
    for r in db.all(
        conn,
        "SELECT patient_ref, identifiers, demographics, gender, asserted_at, tiebreak, "
        "active FROM identity_registration",
    ):
        state.apply(_registration(r))
    for r in db.all(
        conn, "SELECT assertion_id, ref_a, ref_b, kind, survivor, asserted_at FROM identity_assertion"
    ):
        state.apply(_assertion(r))
    return state


def members_of(db: Database, conn: Connection, patient_ref: str) -> list[str]:
    rows = db.all(
        conn,
        "SELECT m.patient_ref FROM identity_member m WHERE m.person_id = "
        "(SELECT person_id FROM identity_member WHERE patient_ref = ?)",
        (patient_ref,),
    )
    members = sorted(r[0] for r in rows)
    return members or [patient_ref]


def persons_of(db: Database, patient_refs: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Each reference's person (its members, sorted), in one statement per chunk; unlinked references absent."""
    found: dict[str, list[str]] = defaultdict(list)
    with db.connection() as conn:
        for chunk in chunks(sorted(set(patient_refs))):
            rows = db.all(
                conn,
                "SELECT q.patient_ref, m.patient_ref FROM identity_member q "
                f"JOIN identity_member m ON m.person_id = q.person_id WHERE q.patient_ref IN ({marks(len(chunk))})",
                chunk,
            )
            for ref, member in rows:
                found[ref].append(member)
    return {ref: tuple(sorted(members)) for ref, members in found.items()}


def person(db: Database, patient_ref: str) -> Person:
    with db.connection() as conn:
        members = members_of(db, conn, patient_ref)
        pairs: dict[tuple[str, str], LinkAssertion] = {}
        if len(members) > 1:
            member_set = set(members)
            touching = assertions_touching(db, conn, members)
            pairs = effective_pairs(a for a in touching if set(a.patients) <= member_set)
        return Person(tuple(members), pairs)


def candidates_for_review(db: Database) -> list[ReviewCandidate]:
    with db.connection() as conn:
        keys = [
            r[0]
            for r in db.all(
                conn,
                "SELECT demographics FROM identity_registration "
                "WHERE demographics IS NOT NULL AND active = 1 "
                "GROUP BY demographics HAVING COUNT(*) > 1",
            )
        ]
        regs: list[Registration] = []
        for chunk in chunks(keys):
            rows = db.all(
                conn,
                "SELECT patient_ref, identifiers, demographics, gender, asserted_at, "
                "tiebreak, active FROM identity_registration "
                f"WHERE demographics IN ({marks(len(chunk))})",
                chunk,
            )
            regs.extend(_registration(r) for r in rows)
        refs = sorted(r.patient for r in regs)
        person_of: dict[str, str] = {}
        for chunk in chunks(refs):
            rows = db.all(
                conn,
                f"SELECT patient_ref, person_id FROM identity_member WHERE patient_ref IN ({marks(len(chunk))})",
                chunk,
            )
            person_of.update({r[0]: r[1] for r in rows})
        pairs = effective_pairs(assertions_touching(db, conn, refs))
        return review_candidates(regs, person_of, pairs)


def _registration(r: Sequence[Any]) -> Registration:
    identifiers = frozenset((s, v) for s, v in orjson.loads(r[1]))
    return Registration(r[0], identifiers, r[2], r[3], int(r[4]), r[5], bool(r[6]))


def _assertion(r: Sequence[Any]) -> LinkAssertion:
    return LinkAssertion(r[0], (r[1], r[2]), r[3], r[4], int(r[5]))
