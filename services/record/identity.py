"""Patient identity (pure): which Patient resources from different systems are one person.

Inputs are events, and the grouping is a function of the *set* of events, not of their order, so replays,
re-deliveries and out-of-order partitions all converge on the same persons:

* :class:`Registration` - what a Patient version says about itself (identifiers, demographic match key).
  Last-writer-wins per Patient on ``(asserted_at, tiebreak)``.
* :class:`LinkAssertion` - an explicit statement about a pair of Patients: ``link``, ``merge`` (with a
  survivor; from HL7 A40 / Patient.link replaced-by|replaces) or ``unlink``. One assertion id keeps the
  earliest time it was seen (a re-sent Patient.link is not a new statement); per pair the assertion with the
  greatest ``(asserted_at, assertion_id)`` is in effect.

Two Patients are directly connected when
  (a) they share an identifier whose system is an enterprise/shared assigner (policy), or
  (b) the operator's demographic rule is on and their demographic keys match, or
  (c) the effective assertion for the pair is ``link`` or ``merge``,
unless the effective assertion for the pair is ``unlink`` (which removes that direct connection, however it
arose). A person is a connected component. Demographics alone never connect anyone unless the operator
configured a rule; a same-name-and-birth-date pair in different persons, not unlinked, is a review candidate.
An unlink removes one direct connection: if the two remain connected through a third record they stay one
person (the admin API reports that).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from services.common.fhir.codesystems import EMPI
from services.common.settings import DemographicRule
from services.record.indexing import items_of, normalize_text, patient_id_of

LinkKind = Literal["link", "merge", "unlink"]


@dataclass(frozen=True)
class IdentityPolicy:
    enterprise_systems: frozenset[str] = frozenset({EMPI})
    demographic_rule: DemographicRule = "none"

    def fingerprint(self) -> str:
        text = "|".join(sorted(self.enterprise_systems)) + "#" + self.demographic_rule
        return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Registration:
    """One Patient version's identity facts. ``demographics`` is a hash (no PHI in identity tables)."""

    patient: str  # "Patient/<id>"
    identifiers: frozenset[tuple[str, str]]
    demographics: str | None  # sha256 of normalized family|given|birthDate
    gender: str | None
    asserted_at: int
    tiebreak: str
    active: bool = True  # False once the Patient is deleted

    def order_key(self) -> tuple[int, str, bool, tuple[tuple[str, str], ...], str, str]:
        """A total order: time, then content (so equal times still converge whatever the arrival order)."""
        return (
            self.asserted_at,
            self.tiebreak,
            self.active,
            tuple(sorted(self.identifiers)),
            self.demographics or "",
            self.gender or "",
        )

    def newer_than(self, other: Registration) -> bool:
        return self.order_key() > other.order_key()


@dataclass(frozen=True)
class LinkAssertion:
    assertion_id: str
    patients: tuple[str, str]  # sorted pair of "Patient/<id>"
    kind: LinkKind
    survivor: str | None
    asserted_at: int

    @staticmethod
    def of(
        assertion_id: str, a: str, b: str, kind: LinkKind, asserted_at: int, survivor: str | None = None
    ) -> LinkAssertion:
        first, second = sorted((a, b))
        return LinkAssertion(assertion_id, (first, second), kind, survivor if kind == "merge" else None, asserted_at)

    def order_key(self) -> tuple[int, str]:
        return self.asserted_at, self.assertion_id

    def first_seen_key(self) -> tuple[int, str, str, tuple[str, str]]:
        """Among copies of one assertion id the earliest wins (ties broken by content, so order is free)."""
        return self.asserted_at, self.kind, self.survivor or "", self.patients


IdentityEvent = Registration | LinkAssertion


@dataclass(frozen=True)
class ReviewCandidate:
    """Two Patients in different persons with the same name and birth date, not linked or unlinked."""

    patients: tuple[str, str]
    basis: str = "name+birthdate"


def demographic_key(resource: Mapping[str, Any]) -> str | None:
    """Hash of normalized (family, first given, birthDate) of the first usable name, or None."""
    birth = resource.get("birthDate")
    if not isinstance(birth, str):
        return None
    for name in items_of(resource.get("name")):
        if not isinstance(name, dict):
            continue
        family = name.get("family")
        given = [g for g in items_of(name.get("given")) if isinstance(g, str)]
        if isinstance(family, str) and given:
            text = f"{normalize_text(family)}|{normalize_text(given[0])}|{birth}"
            return hashlib.sha256(text.encode()).hexdigest()
    return None


def registration_of(patient: Mapping[str, Any], asserted_at: int, tiebreak: str, deleted: bool = False) -> Registration:
    ref = f"Patient/{patient['id']}"
    if deleted:
        return Registration(ref, frozenset(), None, None, asserted_at, tiebreak, active=False)
    identifiers = frozenset(
        (str(i.get("system", "")), i["value"])
        for i in items_of(patient.get("identifier"))
        if isinstance(i, dict) and isinstance(i.get("value"), str)
    )
    gender = patient.get("gender")
    return Registration(
        ref,
        identifiers,
        demographic_key(patient),
        gender if isinstance(gender, str) else None,
        asserted_at,
        tiebreak,
    )


def assertions_from_patient(patient: Mapping[str, Any], asserted_at: int) -> list[LinkAssertion]:
    """Patient.link entries to other Patients as assertions; ids are stable across versions of the Patient."""
    me = f"Patient/{patient['id']}"
    out: list[LinkAssertion] = []
    for link in items_of(patient.get("link")):
        if not isinstance(link, dict) or not isinstance(link.get("other"), dict):
            continue
        other_id = patient_id_of(link["other"].get("reference"))
        link_type = link.get("type")
        if not other_id or f"Patient/{other_id}" == me or not isinstance(link_type, str):
            continue
        other = f"Patient/{other_id}"
        assertion_id = f"{me}#link:{link_type}:{other}"
        if link_type == "replaced-by":
            out.append(LinkAssertion.of(assertion_id, me, other, "merge", asserted_at, survivor=other))
        elif link_type == "replaces":
            out.append(LinkAssertion.of(assertion_id, me, other, "merge", asserted_at, survivor=me))
        elif link_type in ("seealso", "refer"):
            out.append(LinkAssertion.of(assertion_id, me, other, "link", asserted_at))
    return out


def assertions_from_linkage(linkage: Mapping[str, Any], version_id: int, asserted_at: int) -> list[LinkAssertion]:
    """A Linkage version: active -> link (historical items: merged into the source), inactive -> unlink."""
    items: list[tuple[str, str]] = []
    for item in items_of(linkage.get("item")):
        if isinstance(item, dict) and isinstance(item.get("resource"), dict):
            pid = patient_id_of(item["resource"].get("reference"))
            if pid and isinstance(item.get("type"), str):
                items.append((item["type"], f"Patient/{pid}"))
    patients = sorted({ref for _, ref in items})
    if len(patients) < 2:
        return []
    active = linkage.get("active", True) is not False
    source = next((ref for t, ref in items if t == "source"), patients[0])
    base = f"Linkage/{linkage['id']}/_history/{version_id}"
    out: list[LinkAssertion] = []
    if not active:
        for i, a in enumerate(patients):
            for b in patients[i + 1 :]:
                out.append(LinkAssertion.of(f"{base}#{a}|{b}", a, b, "unlink", asserted_at))
        return out
    for item_type, ref in items:
        if ref == source:
            continue
        kind: LinkKind = "merge" if item_type == "historical" else "link"
        out.append(LinkAssertion.of(f"{base}#{ref}", source, ref, kind, asserted_at, survivor=source))
    return out


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if rb < ra:
                ra, rb = rb, ra
            self.parent[rb] = ra


@dataclass
class IdentityState:
    """The reduced event set. ``apply`` is commutative, associative and idempotent."""

    registrations: dict[str, Registration] = field(default_factory=dict)
    assertions: dict[str, LinkAssertion] = field(default_factory=dict)

    def apply(self, event: IdentityEvent) -> None:
        if isinstance(event, Registration):
            current = self.registrations.get(event.patient)
            if current is None or event.newer_than(current):
                self.registrations[event.patient] = event
            return
        existing = self.assertions.get(event.assertion_id)
        if existing is None or event.first_seen_key() < existing.first_seen_key():
            self.assertions[event.assertion_id] = event

    def apply_all(self, events: Iterable[IdentityEvent]) -> IdentityState:
        for event in events:
            self.apply(event)
        return self

    def effective_pairs(self) -> dict[tuple[str, str], LinkAssertion]:
        return effective_pairs(self.assertions.values())

    def nodes(self) -> set[str]:
        nodes = set(self.registrations)
        for assertion in self.assertions.values():
            nodes.update(assertion.patients)
        return nodes

    def persons(self, policy: IdentityPolicy) -> dict[str, str]:
        """Every known Patient -> its person id (the smallest member reference, so it is order-free)."""
        return persons(self.registrations.values(), self.assertions.values(), policy)

    def review_candidates(self, policy: IdentityPolicy) -> list[ReviewCandidate]:
        return review_candidates(self.registrations.values(), self.persons(policy), self.effective_pairs())


def effective_pairs(assertions: Iterable[LinkAssertion]) -> dict[tuple[str, str], LinkAssertion]:
    best: dict[tuple[str, str], LinkAssertion] = {}
    for assertion in assertions:
        current = best.get(assertion.patients)
        if current is None or assertion.order_key() > current.order_key():
            best[assertion.patients] = assertion
    return best


def _pairs(members: list[str]) -> Iterator[tuple[str, str]]:
    ordered = sorted(members)
    for i, a in enumerate(ordered):
        for b in ordered[i + 1 :]:
            yield a, b


def persons(
    registrations: Iterable[Registration], assertions: Iterable[LinkAssertion], policy: IdentityPolicy
) -> dict[str, str]:
    regs = [r for r in registrations]
    pairs = effective_pairs(assertions)
    unlinked = {pair for pair, a in pairs.items() if a.kind == "unlink"}
    uf = _UnionFind()
    for reg in regs:
        uf.find(reg.patient)
    for pair in pairs:
        uf.find(pair[0])
        uf.find(pair[1])

    groups: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for reg in regs:
        if not reg.active:
            continue
        for system, value in reg.identifiers:
            if system in policy.enterprise_systems:
                groups[("id", system, value)].append(reg.patient)
        if policy.demographic_rule != "none" and reg.demographics:
            gender = reg.gender if policy.demographic_rule == "name-birthdate-gender" else ""
            if policy.demographic_rule == "name-birthdate" or gender:
                groups[("demo", reg.demographics, gender or "")].append(reg.patient)
    for members in groups.values():
        if len(members) < 2:
            continue
        for a, b in _pairs(members):
            if (a, b) not in unlinked:
                uf.union(a, b)
    for pair, assertion in pairs.items():
        if assertion.kind != "unlink":
            uf.union(*pair)
    return {node: uf.find(node) for node in uf.parent}


def review_candidates(
    registrations: Iterable[Registration],
    person_of: Mapping[str, str],
    pairs: Mapping[tuple[str, str], LinkAssertion],
) -> list[ReviewCandidate]:
    by_key: dict[str, list[str]] = defaultdict(list)
    for reg in registrations:
        if reg.active and reg.demographics:
            by_key[reg.demographics].append(reg.patient)
    out: list[ReviewCandidate] = []
    for members in by_key.values():
        for a, b in _pairs(members):
            if person_of.get(a, a) == person_of.get(b, b):
                continue
            assertion = pairs.get((a, b))
            if assertion is not None and assertion.kind == "unlink":
                continue  # an operator already decided these are different people
            out.append(ReviewCandidate((a, b)))
    return sorted(out, key=lambda c: c.patients)


def served_links(
    patient: str, members: Iterable[str], pairs: Mapping[tuple[str, str], LinkAssertion]
) -> list[dict[str, Any]]:
    """Patient.link entries of one Patient from its person: replaced-by/replaces for merges, else seealso."""
    out: list[dict[str, Any]] = []
    for other in sorted(set(members) - {patient}):
        key = (patient, other) if patient < other else (other, patient)
        assertion = pairs.get(key)
        link_type = "seealso"
        if assertion is not None and assertion.kind == "merge" and assertion.survivor:
            link_type = "replaced-by" if assertion.survivor == other else "replaces"
        out.append({"other": {"reference": other}, "type": link_type})
    return out


def overlay_links(
    resource: dict[str, Any], members: Iterable[str], pairs: Mapping[tuple[str, str], LinkAssertion]
) -> dict[str, Any]:
    """The served form of a Patient: identity links replace stored Patient-to-Patient identity links."""
    me = f"Patient/{resource['id']}"
    kept = [
        link
        for link in items_of(resource.get("link"))
        if not (
            isinstance(link, dict)
            and link.get("type") in ("replaced-by", "replaces", "seealso")
            and patient_id_of((link.get("other") or {}).get("reference"))
        )
    ]
    links = kept + served_links(me, members, pairs)
    served = dict(resource)
    if links:
        served["link"] = links
    else:
        served.pop("link", None)
    return served
