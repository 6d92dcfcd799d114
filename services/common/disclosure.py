"""The disclosure decision (pure): may this resource go to this recipient, for this purpose, at this time?

One engine for every exit (record API, subscriptions, the general Kafka topic). Its inputs are plain values:
the resource's ``meta.security`` codes, the patient's consents (FHIR R4 ``Consent`` resources, parsed by
:func:`parse_consent`), the recipient (:class:`Recipient`: the organization or care team a token or subscription
acts for, and its clearances), the purpose of use (v3-ActReason) and the time. Its answer is a
:class:`Decision`: permit, deny, or permit with obligations (the 42 CFR 2.32 notice, no redisclosure).

Label classes (``meta.security`` codes, any system) - the bits are also the record store's ``restriction``:

=====================  ===============================  ====  ==========================================
class                  codes                            bit   baseline rule (:data:`DEFAULT_POLICY`)
=====================  ===============================  ====  ==========================================
ordinary               (none of the codes below)        -     ``treatment``
behavioral-health      PSY, MH, BH                      1     ``clearance`` (behavioral-health)
part2                  SUD, 42CFRPart2                  2     ``consent``
psychotherapy-notes    PSYTHPN                          4     ``never``
substance-use          ETHUD, OPIOIDUD, ETH             8     ``clearance`` (part2)
=====================  ===============================  ====  ==========================================

(SUD counseling notes are refused at intake, like psychotherapy-note content, so they are never stored.)
An unlabelled resource is decided by the ``ordinary`` rule; a labelled one is disclosed only when each of its
label classes is permitted. Rules, per class (configurable: ``CAREBUS_DISCLOSURE_POLICY``):

============  ===============================================================================================
rule          permitted when
============  ===============================================================================================
treatment     the purpose of use is treatment, payment or operations (``treatment_purposes``), or a consent
              permits it
clearance     the purpose is one of ``treatment_purposes`` and the recipient holds the class's clearance, or a
              consent permits it
consent       an applicable consent permits it: names this recipient (or names no actor), covers the class
              (``securityLabel``; none = every class), the purpose (none = any), and the time is in its period
never         never, whatever a consent says
============  ===============================================================================================

Consents, for each class (:func:`consent_verdict`):

==================================================  =========================================================
consent state                                       effect
==================================================  =========================================================
none                                                the baseline rule alone
active, permit, names the recipient, in period      permits the class (the consent is cited in the notice)
active, permit, names someone else                  no effect
deny provision that applies (actor, purpose, time)  denies the class: **deny wins over every permit**, in the
                                                    same consent or another, and over the baseline
expired (time outside ``provision.period``)         no effect
revoked (``status`` inactive, period ended at the   no effect from the revocation time on; before it (an
revocation time)                                    earlier decision replayed), as while it was active
other statuses (draft, proposed, rejected, ...)     no effect
==================================================  =========================================================

Inside one consent the **most specific provision wins**: a nested provision (an exception) that matches
overrides the provision it is nested in; a nested provision without ``type`` is the opposite of its parent;
among matching siblings, deny wins. Conditions this engine does not evaluate (``class``, ``code``, ``data``,
``dataPeriod``) make a *permit* provision inapplicable and a *deny* provision apply as if they were absent:
what cannot be checked never widens a disclosure. A provision's ``action`` (if any) must include disclose,
access or use.

A patient-bound recipient (``patient_access``: the patient, e.g. through a portal) is not restricted by
consents - they govern disclosures to others; ``consent`` classes are decided by its clearances instead, and
``never`` stays never (HIPAA gives no right of access to psychotherapy notes).

Obligations of a permitted disclosure: ``part2-notice`` when it carries Part 2 data (42 CFR 2.32: the notice and
a reference to the permitting consent travel with it, see services/common/part2.py); ``no-redisclosure`` when
it carries NORDSCLCD or Part 2 data. Labels are always carried forward (DS4P).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

from services.common.fhir.codesystems import CONSENT_SCOPE

Rule = Literal["treatment", "clearance", "consent", "never"]
RULES: Final[tuple[Rule, ...]] = ("treatment", "clearance", "consent", "never")
# the classes a policy names (CLASS_NAMES), and the clearances a record token may hold (CLEARANCE_CLASSES)
ClassName = Literal["ordinary", "behavioral-health", "part2", "psychotherapy-notes", "substance-use"]
Clearance = Literal["behavioral-health", "part2", "psychotherapy-notes"]

BEHAVIORAL_HEALTH: Final = 1
PART2: Final = 2
PSYCHOTHERAPY_NOTES: Final = 4
SUBSTANCE_USE: Final = 8
ALL_CLASSES: Final = BEHAVIORAL_HEALTH | PART2 | PSYCHOTHERAPY_NOTES | SUBSTANCE_USE
ORDINARY: Final = 16  # not a label class: "the data is PHI at all" (never stored in ``restriction``)

CLASS_CODES: Final[Mapping[str, int]] = {
    "PSY": BEHAVIORAL_HEALTH,
    "MH": BEHAVIORAL_HEALTH,
    "BH": BEHAVIORAL_HEALTH,
    "SUD": PART2,
    "42CFRPart2": PART2,
    "PSYTHPN": PSYCHOTHERAPY_NOTES,
    "ETHUD": SUBSTANCE_USE,
    "OPIOIDUD": SUBSTANCE_USE,
    "ETH": SUBSTANCE_USE,
}
CLASS_NAMES: Final[Mapping[int, ClassName]] = {
    ORDINARY: "ordinary",
    BEHAVIORAL_HEALTH: "behavioral-health",
    PART2: "part2",
    PSYCHOTHERAPY_NOTES: "psychotherapy-notes",
    SUBSTANCE_USE: "substance-use",
}
CLASS_BY_NAME: Final[Mapping[str, int]] = {name: bit for bit, name in CLASS_NAMES.items()}
CLASS_DESCRIPTIONS: Final[Mapping[int, str]] = {
    BEHAVIORAL_HEALTH: "behavioural-health (PSY/MH/BH)",
    PART2: "42 CFR Part 2 substance-use (SUD)",
    PSYCHOTHERAPY_NOTES: "psychotherapy notes (PSYTHPN)",
    SUBSTANCE_USE: "substance-use (ETHUD/OPIOIDUD)",
}
# Token clearances -> the classes they clear. ``part2`` clears substance-use information; Part 2 records
# themselves need a consent under the default policy, whatever the clearance.
CLEARANCE_CLASSES: Final[Mapping[Clearance, int]] = {
    "behavioral-health": BEHAVIORAL_HEALTH,
    "part2": PART2 | SUBSTANCE_USE,
    "psychotherapy-notes": PSYCHOTHERAPY_NOTES,
}
TREATMENT_PURPOSES: Final = frozenset({"TREAT", "ETREAT", "HPAYMT", "HOPERAT", "CAREMGT", "PATRQT"})
NO_REDISCLOSURE_CODES: Final = frozenset({"NORDSCLCD"})
PART2_NOTICE: Final = "part2-notice"
NO_REDISCLOSURE: Final = "no-redisclosure"

_DISCLOSING_ACTIONS = frozenset({"disclose", "access", "use"})


def restriction_of(security_codes: Iterable[str]) -> int:
    """The label-class bits of a resource with these ``meta.security`` codes."""
    bits = 0
    for code in security_codes:
        bits |= CLASS_CODES.get(code, 0)
    return bits


def classes_of(bits: int) -> list[int]:
    return [bit for bit in (BEHAVIORAL_HEALTH, PART2, PSYCHOTHERAPY_NOTES, SUBSTANCE_USE) if bits & bit]


def describe(bits: int) -> list[str]:
    return [CLASS_DESCRIPTIONS[bit] for bit in classes_of(bits)]


# --- policy -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """The baseline: a rule per class, and which purposes of use count as treatment/payment/operations."""

    rules: Mapping[int, Rule]
    treatment_purposes: frozenset[str] = TREATMENT_PURPOSES

    def rule(self, class_bit: int) -> Rule:
        return self.rules.get(class_bit, "never")


DEFAULT_RULES: Final[Mapping[int, Rule]] = {
    ORDINARY: "treatment",
    BEHAVIORAL_HEALTH: "clearance",
    SUBSTANCE_USE: "clearance",
    PART2: "consent",
    PSYCHOTHERAPY_NOTES: "never",
}
DEFAULT_POLICY: Final = Policy(DEFAULT_RULES)


def policy_from_settings(rules: Mapping[ClassName, Rule], treatment_purposes: Iterable[str] | None = None) -> Policy:
    """``rules``: class name -> rule, overriding the default ones (raises ValueError on unknown names)."""
    merged: dict[int, Rule] = dict(DEFAULT_RULES)
    for name, rule in rules.items():
        if name not in CLASS_BY_NAME:
            raise ValueError(f"unknown label class {name!r} in the disclosure policy")
        if rule not in RULES:  # a caller that did not come through Settings
            raise ValueError(f"unknown disclosure rule {rule!r} for {name}")
        merged[CLASS_BY_NAME[name]] = rule
    purposes = frozenset(treatment_purposes) if treatment_purposes is not None else TREATMENT_PURPOSES
    return Policy(merged, purposes)


# --- recipients -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipient:
    """Who receives: the organization (``Organization/<id>`` or ``<system>|<value>``) and care teams it acts
    for, the classes it is cleared for, and whether it is the patient themself."""

    organization: str | None = None
    care_teams: tuple[str, ...] = ()
    clearances: int = 0
    patient_access: bool = False
    label: str = ""

    @property
    def names(self) -> frozenset[str]:
        return frozenset(n for n in (self.organization, *self.care_teams) if n)

    def cleared_for(self, bits: int) -> bool:
        return bits & ~self.clearances == 0


# --- consents ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Provision:
    type: Literal["permit", "deny"] | None
    start_ms: int | None = None
    end_ms: int | None = None
    actors: frozenset[str] = frozenset()  # references / system|value identifiers; empty = anyone
    purposes: frozenset[str] = frozenset()  # v3-ActReason codes; empty = any purpose
    classes: int | None = None  # class bits covered (ORDINARY for "N"); None = every class
    disclosing: bool = True  # action absent or includes disclose / access / use
    unevaluated: bool = False  # class / code / data / dataPeriod conditions this engine does not check
    children: tuple[Provision, ...] = ()


@dataclass(frozen=True)
class ConsentDirective:
    reference: str  # "Consent/<id>"
    patient: str | None  # "Patient/<id>"
    status: str
    privacy: bool  # scope patient-privacy
    provision: Provision | None


def _instant_ms(text: Any, end: bool = False) -> int | None:
    """A FHIR date / dateTime / instant in ms since the epoch (a date or a time without zone is taken as UTC;
    an end date means the end of that day)."""
    if not isinstance(text, str) or not text:
        return None
    value = text.replace("Z", "+00:00")
    try:
        if len(value) == 4:
            moment = datetime.fromisoformat(f"{value}-12-31" if end else f"{value}-01-01")
        elif len(value) == 7:
            year, month = int(value[:4]), int(value[5:7])
            if end:
                month, year = (1, year + 1) if month == 12 else (month + 1, year)
                return int(datetime.fromisoformat(f"{year:04d}-{month:02d}-01T00:00:00+00:00").timestamp() * 1000)
            moment = datetime.fromisoformat(f"{value}-01")
        else:
            moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    ms = int(moment.timestamp() * 1000)
    if end and len(value) == 10:
        ms += 24 * 3600 * 1000
    return ms


def _actor_names(actors: Any) -> frozenset[str]:
    names: set[str] = set()
    for actor in actors or ():
        ref = actor.get("reference") if isinstance(actor, dict) else None
        if not isinstance(ref, dict):
            continue
        if isinstance(ref.get("reference"), str):
            names.add(ref["reference"])
        ident = ref.get("identifier")
        if isinstance(ident, dict) and isinstance(ident.get("value"), str):
            names.add(f"{ident.get('system') or ''}|{ident['value']}")
    return frozenset(names)


def _label_classes(labels: Any) -> int | None:
    if not labels:
        return None
    bits = 0
    for label in labels:
        code = label.get("code") if isinstance(label, dict) else None
        if code == "N":
            bits |= ORDINARY
        elif isinstance(code, str):
            bits |= CLASS_CODES.get(code, 0)
    return bits or None  # only confidentiality / handling codes: every class


def _provision(data: Any) -> Provision:
    if not isinstance(data, dict):
        return Provision(None)
    period = data.get("period") or {}
    kind = data.get("type")
    actions = {c.get("code") for a in data.get("action") or () for c in (a.get("coding") or ()) if isinstance(c, dict)}
    return Provision(
        type=kind if kind in ("permit", "deny") else None,
        start_ms=_instant_ms(period.get("start")),
        end_ms=_instant_ms(period.get("end"), end=True),
        actors=_actor_names(data.get("actor")),
        purposes=frozenset(p["code"] for p in data.get("purpose") or () if isinstance(p, dict) and "code" in p),
        classes=_label_classes(data.get("securityLabel")),
        disclosing=not actions or bool(actions & _DISCLOSING_ACTIONS),
        unevaluated=any(data.get(k) for k in ("class", "code", "data", "dataPeriod")),
        children=tuple(_provision(child) for child in data.get("provision") or ()),
    )


def parse_consent(resource: Mapping[str, Any]) -> ConsentDirective:
    """A FHIR R4 Consent (a dict) as the engine sees it. Tolerant: what it cannot read it leaves out."""
    scope = resource.get("scope") or {}
    privacy = any(
        c.get("code") == "patient-privacy" and c.get("system") in (None, CONSENT_SCOPE)
        for c in scope.get("coding") or ()
        if isinstance(c, dict)
    )
    patient = (resource.get("patient") or {}).get("reference")
    return ConsentDirective(
        reference=f"Consent/{resource.get('id')}",
        patient=patient if isinstance(patient, str) else None,
        status=str(resource.get("status") or ""),
        privacy=privacy,
        provision=_provision(resource["provision"]) if isinstance(resource.get("provision"), dict) else None,
    )


# --- the decision --------------------------------------------------------------------------------------------


def _matches(p: Provision, class_bit: int, recipient: Recipient, purpose: str, at_ms: int) -> bool:
    if p.actors and not p.actors & recipient.names:
        return False
    if p.purposes and purpose not in p.purposes:
        return False
    if p.classes is not None and not p.classes & class_bit:
        return False
    if p.start_ms is not None and at_ms < p.start_ms:
        return False
    if p.end_ms is not None and at_ms >= p.end_ms:
        return False
    return p.disclosing


def _evaluate(
    p: Provision, parent: str | None, class_bit: int, recipient: Recipient, purpose: str, at_ms: int
) -> str | None:
    """The type of the most specific matching provision under (and including) ``p``; None if none matches."""
    own = p.type or ({"permit": "deny", "deny": "permit"}[parent] if parent else None)
    if not _matches(p, class_bit, recipient, purpose, at_ms):
        return None
    if p.unevaluated and own == "permit":
        return None
    found = {r for child in p.children if (r := _evaluate(child, own, class_bit, recipient, purpose, at_ms))}
    if found:
        return "deny" if "deny" in found else "permit"
    return own


def _applies(consent: ConsentDirective, at_ms: int) -> bool:
    if not consent.privacy or consent.provision is None:
        return False
    if consent.status == "active":
        return True
    # revoked: inactive from the end of its period (the revocation time) on
    end = consent.provision.end_ms
    return consent.status == "inactive" and end is not None and at_ms < end


@dataclass(frozen=True)
class ConsentVerdict:
    effect: Literal["permit", "deny"] | None
    consents: tuple[str, ...] = ()  # the consents that permit (effect permit) or deny


def consent_verdict(
    consents: Sequence[ConsentDirective], class_bit: int, recipient: Recipient, purpose: str, at_ms: int
) -> ConsentVerdict:
    """What the patient's consents say about one class for this recipient, purpose and time."""
    permits: list[str] = []
    denies: list[str] = []
    for consent in consents:
        if not _applies(consent, at_ms):
            continue
        assert consent.provision is not None
        effect = _evaluate(consent.provision, None, class_bit, recipient, purpose, at_ms)
        if effect == "deny":
            denies.append(consent.reference)
        elif effect == "permit":
            permits.append(consent.reference)
    if denies:
        return ConsentVerdict("deny", tuple(sorted(denies)))
    if permits:
        return ConsentVerdict("permit", tuple(sorted(permits)))
    return ConsentVerdict(None)


def class_permitted(
    class_bit: int,
    consents: Sequence[ConsentDirective],
    recipient: Recipient,
    purpose: str,
    at_ms: int,
    policy: Policy = DEFAULT_POLICY,
) -> ConsentVerdict:
    """Permit (with the consents that permit it, if any) or deny one class; effect None means deny."""
    rule = policy.rule(class_bit)
    if rule == "never":
        return ConsentVerdict(None)
    treatment = purpose in policy.treatment_purposes
    cleared = class_bit == ORDINARY or recipient.cleared_for(class_bit)
    if recipient.patient_access:
        baseline = cleared
        return ConsentVerdict("permit") if baseline else ConsentVerdict(None)
    verdict = consent_verdict(consents, class_bit, recipient, purpose, at_ms)
    if verdict.effect == "deny":
        return ConsentVerdict(None, verdict.consents)
    if verdict.effect == "permit":
        return verdict
    if treatment and (rule == "treatment" or (rule == "clearance" and cleared)):
        return ConsentVerdict("permit")
    return ConsentVerdict(None)


@dataclass(frozen=True)
class Grant:
    """What one recipient may receive of one person's data now: ``classes`` (label-class bits, ORDINARY
    when unlabelled data may go) and the consents that permit the Part 2 class."""

    classes: int
    part2_consents: tuple[str, ...] = ()
    denied_by_consent: bool = False  # some class is withheld because a consent denies it

    def permits(self, restriction: int) -> bool:
        if restriction == 0:
            return bool(self.classes & ORDINARY)
        return restriction & ~self.classes == 0

    def withheld(self, restriction: int) -> int:
        """The classes of ``restriction`` not permitted (ORDINARY for unlabelled data that may not go)."""
        if restriction == 0:
            return 0 if self.classes & ORDINARY else ORDINARY
        return restriction & ~self.classes


def grant(
    consents: Sequence[ConsentDirective],
    recipient: Recipient,
    purpose: str,
    at_ms: int,
    policy: Policy = DEFAULT_POLICY,
) -> Grant:
    """Every class decided at once (the record store filters with the result)."""
    classes = 0
    part2: tuple[str, ...] = ()
    denied = False
    for class_bit in (ORDINARY, BEHAVIORAL_HEALTH, PART2, PSYCHOTHERAPY_NOTES, SUBSTANCE_USE):
        verdict = class_permitted(class_bit, consents, recipient, purpose, at_ms, policy)
        if verdict.effect == "permit":
            classes |= class_bit
            if class_bit == PART2:
                part2 = verdict.consents
        elif verdict.consents:
            denied = True
    return Grant(classes, part2, denied)


@dataclass(frozen=True)
class Decision:
    """The answer for one resource: ``permit`` with ``obligations`` and the consents relied on, or not."""

    permit: bool
    obligations: tuple[str, ...] = ()
    consents: tuple[str, ...] = ()
    withheld: int = 0  # classes not permitted (ORDINARY: unlabelled data that may not go)

    @property
    def outcome(self) -> Literal["permit", "deny", "permit-with-obligations"]:
        if not self.permit:
            return "deny"
        return "permit-with-obligations" if self.obligations else "permit"


def decide_with(grant_: Grant, security_codes: Iterable[str]) -> Decision:
    """The decision for one resource under a grant already computed for its person."""
    codes = tuple(security_codes)
    restriction = restriction_of(codes)
    if not grant_.permits(restriction):
        return Decision(False, withheld=grant_.withheld(restriction))
    return Decision(True, obligations_of(codes), grant_.part2_consents if restriction & PART2 else ())


def decide(
    security_codes: Iterable[str],
    consents: Sequence[ConsentDirective],
    recipient: Recipient,
    purpose: str,
    at_ms: int,
    policy: Policy = DEFAULT_POLICY,
) -> Decision:
    """Permit / deny / permit-with-obligations for one resource (see the tables above)."""
    return decide_with(grant(consents, recipient, purpose, at_ms, policy), security_codes)


def obligations_of(security_codes: Iterable[str]) -> tuple[str, ...]:
    codes = set(security_codes)
    found: list[str] = []
    if restriction_of(codes) & PART2:
        found.append(PART2_NOTICE)
    if codes & NO_REDISCLOSURE_CODES or restriction_of(codes) & PART2:
        found.append(NO_REDISCLOSURE)
    return tuple(found)

