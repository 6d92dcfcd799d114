"""Who may read what (pure): bearer tokens, SMART-style scopes, patient compartments, and the recipient the
disclosure decision is made for.

Tokens are configured by the operator in ``Settings.record_tokens``: sha256(token) hex -> grant with
``scopes`` (``system|user|patient`` / ``<ResourceType>|*`` . ``read|write|*`` or SMART v2 ``rs``/``cruds``),
an optional ``patient`` (a ``patient/`` token sees only that person's compartment, linked identities
included), ``clearances`` for labelled data, and the recipient it acts for: ``organization``, ``care_teams``
and ``purpose_of_use``.

Recipients are known: every token that is not patient-bound must name the ``organization`` it acts for
(``Organization/<id>`` or ``<identifier system URI>|<value>``, as consents name their actors), so that the
disclosure decision is made for that organization and not for a clearance list alone; a patient-bound token
acts for its patient and needs none. ``purpose_of_use`` defaults to TREAT (PATRQT for a patient-bound token),
the purpose of nearly every clinical exchange; a token for anything else (research HRESCH, payment HPAYMT,
operations HOPERAT, ...) must say so. A grant that breaks one of these rules stops the start with a ValueError
naming the token's label (or its digest prefix), never the token.

Which labelled data a token receives is decided by services/common/disclosure.py (label classes, the
baseline policy and the patient's consents); this module only turns a grant into an :class:`Access`.
AuditEvent is readable only with a scope naming it (``user/AuditEvent.read``, the privacy officer's), never
through ``*``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from services.common import disclosure
from services.common.disclosure import Recipient
from services.common.fhir.codesystems import V3_OBSERVATION_VALUE
from services.common.settings import RecordTokenGrant
from services.record.errors import Forbidden, NotAuthenticated

BEHAVIORAL_HEALTH = disclosure.BEHAVIORAL_HEALTH
PART2 = disclosure.PART2
PSYCHOTHERAPY_NOTES = disclosure.PSYCHOTHERAPY_NOTES
SUBSTANCE_USE = disclosure.SUBSTANCE_USE
ALL_CLEARANCES = disclosure.ALL_CLASSES | disclosure.ORDINARY  # a View that sees everything
CLEARANCE_BITS: Mapping[disclosure.Clearance, int] = disclosure.CLEARANCE_CLASSES
restriction_of = disclosure.restriction_of
describe_restriction = disclosure.describe
PRIVATE_TYPES = frozenset({"AuditEvent"})  # not covered by a "*" scope

_SCOPE = re.compile(r"^(patient|user|system)/(\*|[A-Z][A-Za-z]+)\.(read|write|\*|c?r?u?d?s?)$")
_SYSTEM = re.compile(r"^(urn:[A-Za-z0-9][A-Za-z0-9\-]{0,31}:\S+|[a-z][a-z0-9+.\-]*://\S+)$")  # an absolute URI

# v3-ObservationValue REDACTED: put on a Bundle's meta.security when a cleared caller is told what was withheld.
REDACTED_TAG = {
    "system": V3_OBSERVATION_VALUE,
    "code": "REDACTED",
    "display": "redacted",
}


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Scope:
    context: Literal["patient", "user", "system"]
    resource_type: str  # "*" for all
    read: bool
    write: bool


def parse_scope(text: str) -> Scope:
    match = _SCOPE.match(text)
    if match is None or match.group(3) == "":
        raise ValueError(f"not a supported scope: {text!r}")
    context, rtype, perm = match.group(1), match.group(2), match.group(3)
    read = perm in ("read", "*") or (perm not in ("write",) and ("r" in perm or "s" in perm))
    write = perm in ("write", "*") or (perm not in ("read",) and any(p in perm for p in "cud"))
    return Scope(context, rtype, read, write)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Access:
    """What the caller of one request may see. ``patient`` binds the caller to one person's compartment;
    ``recipient`` and ``purpose`` are what the disclosure decision is made for."""

    scopes: tuple[Scope, ...]
    clearances: int
    patient: str | None  # Patient id of a patient-bound token
    label: str = ""
    recipient: Recipient = field(default_factory=Recipient)
    purpose: str = "TREAT"
    client: str = ""  # a short, stable, non-secret id of the token (digest prefix), for audit

    def may_read(self, resource_type: str) -> bool:
        if resource_type in PRIVATE_TYPES:
            return any(s.read and s.resource_type == resource_type and s.context != "patient" for s in self.scopes)
        return any(s.read and s.resource_type in ("*", resource_type) for s in self.scopes)

    def may_write(self, resource_type: str) -> bool:
        return any(s.write and s.context != "patient" and s.resource_type in ("*", resource_type) for s in self.scopes)

    def require_read(self, resource_type: str) -> None:
        if not self.may_read(resource_type):
            raise Forbidden(f"the token has no read scope for {resource_type}")

    def require_write(self, resource_type: str) -> None:
        if self.patient is not None or not self.may_write(resource_type):
            raise Forbidden(f"the token has no system/user write scope for {resource_type}")

    def cleared_for(self, classes: int) -> bool:
        """True when the token holds the clearance of every class in ``classes`` (ORDINARY never is: a
        withholding for a reason other than labels is not explained)."""
        return classes & disclosure.ORDINARY == 0 and classes & ~self.clearances == 0


def _token_name(grant: RecordTokenGrant, digest: str) -> str:
    """How an error names a grant: its label, else the prefix of its digest (both non-secret)."""
    if grant.label:
        return f"record token {grant.label!r}"
    return f"record token sha256 {digest[:12]}..." if digest else "a record token without label"


def _check_recipient_name(name: str, resource_type: str) -> bool:
    """True for ``<resource_type>/<id>`` or ``<absolute system URI>|<value>``."""
    if "|" in name:
        system, _, value = name.partition("|")
        return bool(_SYSTEM.match(system)) and bool(value.strip()) and "|" not in value
    return bool(re.fullmatch(rf"{resource_type}/[A-Za-z0-9\-.]{{1,64}}", name))


def grant_access(grant: RecordTokenGrant, digest: str = "") -> Access:
    """Validate one configured grant. Raises ValueError (at start-up) for a grant that makes no sense, naming
    the token by its label (never the token): unknown scopes, patient/ scopes without a patient, a token that
    is not patient-bound without the organization it acts for, a malformed organization or care team."""
    name = _token_name(grant, digest)
    try:
        scopes = tuple(parse_scope(s) for s in grant.scopes)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    if any(s.context == "patient" for s in scopes) and not grant.patient:
        raise ValueError(f"{name}: a token with patient/ scopes must name its patient")
    patient = grant.patient.removeprefix("Patient/") if grant.patient else None
    if patient is None and not grant.organization:
        raise ValueError(f"{name}: a token that is not patient-bound must name the organization it acts for "
                         "('organization': 'Organization/<id>' or '<identifier system>|<value>')")
    if grant.organization and not _check_recipient_name(grant.organization, "Organization"):
        raise ValueError(f"{name}: 'organization' must be 'Organization/<id>' or '<identifier system URI>|<value>'")
    if any(not _check_recipient_name(team, "CareTeam") for team in grant.care_teams):
        raise ValueError(f"{name}: each of 'care_teams' must be 'CareTeam/<id>' or '<identifier system URI>|<value>'")
    bits = 0
    for clearance in grant.clearances:
        bits |= CLEARANCE_BITS[clearance]
    recipient = Recipient(
        organization=grant.organization,
        care_teams=tuple(grant.care_teams),
        clearances=bits,
        patient_access=patient is not None,
        label=grant.label,
    )
    purpose = grant.purpose_of_use or ("PATRQT" if patient is not None else "TREAT")
    return Access(scopes, bits, patient, grant.label, recipient, purpose, digest[:12])


class TokenRegistry:
    """Looks bearer tokens up by their sha256; built once from the settings."""

    def __init__(self, grants: Mapping[str, RecordTokenGrant]) -> None:
        self._by_digest = {digest.lower(): grant_access(grant, digest.lower()) for digest, grant in grants.items()}

    def authenticate(self, authorization: str | None) -> Access:
        if not authorization:
            raise NotAuthenticated("a bearer token is required")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise NotAuthenticated("a bearer token is required")
        access = self._by_digest.get(token_digest(token.strip()))
        if access is None:
            raise NotAuthenticated("unknown or revoked token")
        return access
