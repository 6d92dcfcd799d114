"""Who may write to intake (pure): sender bearer tokens and the sources each may write for.

Tokens are configured by the operator in ``Settings.intake_tokens`` (``CAREBUS_INTAKE_TOKENS``), the record
API's shape: sha256(token) hex -> ``{"sources": [...], "label": "..."}``. A request to /events, /hl7v2 or /fhir
carries ``Authorization: Bearer <token>``; a token writes only for its registered sources (``"*"``: any), and
every source a request names is checked: each event of a batch, the FHIR ``X-Carebus-Source``, the HL7 v2
sending facility (``urn:carebus:hl7v2:<facility>``). No tokens configured: every write is refused (said at
start-up), unless ``intake_allow_anonymous`` (development only) turns the check off.

MLLP has no bearer token: its senders are admitted by mutual TLS (``CAREBUS_MLLP_TLS_CLIENT_CAFILE``) and the
network policy (deploy/k8s/README.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from services.common.settings import IntakeSenderGrant
from services.intake.errors import NotAuthenticated, SourceNotPermitted

ANY_SOURCE = "*"


@dataclass(frozen=True)
class Sender:
    """The authenticated caller of one request."""

    label: str
    sources: frozenset[str]

    def may_write(self, source: str) -> bool:
        return ANY_SOURCE in self.sources or source in self.sources

    def require(self, source: str, location: str) -> None:
        """Raise SourceNotPermitted unless this sender may write for ``source`` (named at ``location``)."""
        if not self.may_write(source):
            raise SourceNotPermitted(f"the token is not registered for the source named in {location}", location)


ANONYMOUS = Sender("anonymous (development)", frozenset({ANY_SOURCE}))


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SenderRegistry:
    """Looks sender tokens up by their sha256; built once from the settings."""

    def __init__(self, grants: Mapping[str, IntakeSenderGrant], *, allow_anonymous: bool = False) -> None:
        self._by_digest = {digest.lower(): Sender(grant.label, frozenset(grant.sources))
                           for digest, grant in grants.items()}
        self.allow_anonymous = allow_anonymous

    @property
    def refuses_everything(self) -> bool:
        """True when no request can ever be authenticated (no tokens, anonymous writes not allowed)."""
        return not self._by_digest and not self.allow_anonymous

    def authenticate(self, authorization: str | None) -> Sender:
        if self.allow_anonymous:
            return ANONYMOUS
        if not self._by_digest:
            raise NotAuthenticated("intake has no sender tokens configured (CAREBUS_INTAKE_TOKENS): "
                                   "every write is refused")
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise NotAuthenticated("send Authorization: Bearer <token>")
        sender = self._by_digest.get(token_digest(token.strip()))  # a digest's timing tells nothing of a token
        if sender is None:
            raise NotAuthenticated("unknown or revoked token")
        return sender
