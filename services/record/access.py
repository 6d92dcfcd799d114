"""Who may read what (pure): bearer tokens, SMART-style scopes, patient compartments and security labels.

Tokens are configured by the operator in ``Settings.record_tokens``: sha256(token) hex -> grant with
``scopes`` (``system|user|patient`` / ``<ResourceType>|*`` . ``read|write|*`` or SMART v2 ``rs``/``cruds``),
an optional ``patient`` (a ``patient/`` token sees only that person's compartment, linked identities
included) and ``clearances`` for labelled data.

Labels (``meta.security`` codes, any system) decide which clearance a resource needs:

=====================  =========================================  =====================
clearance              codes                                      bit
=====================  =========================================  =====================
behavioral-health      PSY, MH, BH                                1
part2                  SUD, ETHUD, OPIOIDUD, ETH, 42CFRPart2      2
psychotherapy-notes    PSYTHPN                                    4
=====================  =========================================  =====================

A resource is served only when the token holds every clearance its labels need; what is withheld is stated in
the response (OperationOutcome + REDACTED tag), never silently dropped.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from services.common.settings import RecordTokenGrant
from services.record.errors import Forbidden, NotAuthenticated

Clearance = Literal["behavioral-health", "part2", "psychotherapy-notes"]

BEHAVIORAL_HEALTH = 1
PART2 = 2
PSYCHOTHERAPY_NOTES = 4
ALL_CLEARANCES = BEHAVIORAL_HEALTH | PART2 | PSYCHOTHERAPY_NOTES

CLEARANCE_BITS: dict[str, int] = {
    "behavioral-health": BEHAVIORAL_HEALTH,
    "part2": PART2,
    "psychotherapy-notes": PSYCHOTHERAPY_NOTES,
}
_CODE_BITS: dict[str, int] = {
    "PSY": BEHAVIORAL_HEALTH,
    "MH": BEHAVIORAL_HEALTH,
    "BH": BEHAVIORAL_HEALTH,
    "SUD": PART2,
    "ETHUD": PART2,
    "OPIOIDUD": PART2,
    "ETH": PART2,
    "42CFRPart2": PART2,
    "PSYTHPN": PSYCHOTHERAPY_NOTES,
}
CLASS_NAMES: dict[int, str] = {
    BEHAVIORAL_HEALTH: "behavioural-health (PSY/MH/BH)",
    PART2: "42 CFR Part 2 substance-use (SUD)",
    PSYCHOTHERAPY_NOTES: "psychotherapy notes (PSYTHPN)",
}

_SCOPE = re.compile(r"^(patient|user|system)/(\*|[A-Z][A-Za-z]+)\.(read|write|\*|c?r?u?d?s?)$")

# v3-ObservationValue REDACTED: put on a Bundle's meta.security when anything was withheld.
REDACTED_TAG = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "REDACTED",
    "display": "redacted",
}


def restriction_of(security_codes: Iterable[str]) -> int:
    """The clearance bits a resource with these ``meta.security`` codes needs."""
    bits = 0
    for code in security_codes:
        bits |= _CODE_BITS.get(code, 0)
    return bits


def describe_restriction(bits: int) -> list[str]:
    return [name for bit, name in CLASS_NAMES.items() if bits & bit]


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
    """What the caller of one request may see. ``patient`` binds the caller to one person's compartment."""

    scopes: tuple[Scope, ...]
    clearances: int
    patient: str | None  # Patient id of a patient-bound token
    label: str = ""

    def may_read(self, resource_type: str) -> bool:
        return any(s.read and s.resource_type in ("*", resource_type) for s in self.scopes)

    def may_write(self, resource_type: str) -> bool:
        return any(s.write and s.context != "patient" and s.resource_type in ("*", resource_type) for s in self.scopes)

    def require_read(self, resource_type: str) -> None:
        if not self.may_read(resource_type):
            raise Forbidden(f"the token has no read scope for {resource_type}")

    def require_write(self, resource_type: str) -> None:
        if self.patient is not None or not self.may_write(resource_type):
            raise Forbidden(f"the token has no system/user write scope for {resource_type}")

    def allows(self, restriction: int) -> bool:
        return restriction & ~self.clearances == 0


def grant_access(grant: RecordTokenGrant) -> Access:
    """Validate one configured grant. Raises ValueError (at start-up) for a grant that makes no sense."""
    scopes = tuple(parse_scope(s) for s in grant.scopes)
    if any(s.context == "patient" for s in scopes) and not grant.patient:
        raise ValueError("a token with patient/ scopes must name its patient")
    bits = 0
    for clearance in grant.clearances:
        bits |= CLEARANCE_BITS[clearance]
    patient = grant.patient.removeprefix("Patient/") if grant.patient else None
    return Access(scopes, bits, patient, grant.label)


class TokenRegistry:
    """Looks bearer tokens up by their sha256; built once from the settings."""

    def __init__(self, grants: Mapping[str, RecordTokenGrant]) -> None:
        self._by_digest = {digest.lower(): grant_access(grant) for digest, grant in grants.items()}

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
