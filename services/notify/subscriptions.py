"""R4 Subscriptions (Subscriptions R5 Backport IG 1.1.0) in and out (pure): parse and validate what a client
POSTs, check its endpoint against the operator's allow-list, render what the API serves.

Validation errors are :class:`InvalidSubscription` naming the element (FHIRPath-like, e.g.
``Subscription.channel.endpoint``); the API answers them with an OperationOutcome whose issue carries it in
``expression``. Messages never repeat a value from the request (an endpoint or header may carry a secret).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal
from urllib.parse import urlsplit

from services.common.fhir.codesystems import V3_ACT_REASON
from services.notify.topics import BY_CANONICAL, Filter, Topic, parse_filter
from services.record.fhirdates import instant_ms

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
EXT_FILTER = BACKPORT + "backport-filter-criteria"
EXT_HEARTBEAT = BACKPORT + "backport-heartbeat-period"
EXT_TIMEOUT = BACKPORT + "backport-timeout"
EXT_MAX_COUNT = BACKPORT + "backport-max-count"
EXT_PAYLOAD_CONTENT = BACKPORT + "backport-payload-content"
PROFILE = BACKPORT + "backport-subscription"
# carebus's own: the HMAC-SHA256 signing secret (the client may choose it; else carebus makes one and returns it
# once, in the answer to the create)
EXT_SECRET = "https://carebus.dev/fhir/StructureDefinition/subscription-signing-secret"  # noqa: S105 - a URL
# carebus's own, served read-only: the recipient consent is decided for (from the creating token's grant)
EXT_RECIPIENT = "https://carebus.dev/fhir/StructureDefinition/subscription-recipient"

Status = Literal["requested", "active", "error", "off"]
Content = Literal["empty", "id-only", "full-resource"]
CONTENTS: tuple[Content, ...] = ("empty", "id-only", "full-resource")
Mime = Literal["application/fhir+json", "application/json"]  # Subscription.channel.payload
MIME_TYPES: tuple[Mime, ...] = ("application/fhir+json", "application/json")
RESERVED_HEADERS = frozenset({"content-type", "content-length", "host", "x-carebus-signature",
                              "x-carebus-subscription", "x-carebus-event-numbers", "transfer-encoding"})
MAX_TIMEOUT_S = 120
MAX_COUNT = 100
MIN_SECRET_LENGTH = 32


class InvalidSubscription(ValueError):
    """What is wrong, and where (``element``)."""

    def __init__(self, element: str, message: str) -> None:
        super().__init__(message)
        self.element = element
        self.message = message


@dataclass(frozen=True)
class SubscriptionDef:
    """One subscription as notify keeps it (services/notify/store.py persists every field)."""

    id: str
    client: str  # the token's client (its organization): the recipient consent reasons about
    clearances: int  # of the token that created it
    patient: str | None  # "Patient/<id>" of a patient-bound token
    status: Status
    topic: str  # canonical
    filters: tuple[Filter, ...]
    endpoint: str
    headers: tuple[str, ...]
    content: Content
    mime: Mime
    heartbeat_s: int | None
    timeout_s: int | None
    max_count: int
    secret: str = field(repr=False)
    end: str | None = None
    reason: str | None = None
    error: str | None = None  # why the status is error / off (set by notify)
    events_since_start: int = 0  # the numbering counter (internal: may include events not yet sent)
    # the highest event number the subscriber has been shown (a notification sent, ``$events`` served): what
    # ``events-since-subscription-start`` says, so it never goes down (services/notify/consent.py)
    told: int = 0
    # the recipient the disclosure decision is made for, from the creating token's grant (never from the body:
    # a subscriber cannot claim to act for an organization it does not): the organization and care teams it
    # acts for and its purpose of use (v3-ActReason)
    organization: str | None = None
    care_teams: tuple[str, ...] = ()
    purpose: str = "TREAT"

    @property
    def topic_def(self) -> Topic:
        return BY_CANONICAL[self.topic]


def endpoint_refusal(url: str, allowlist: Sequence[str]) -> str | None:
    """Why ``url`` may not be a channel endpoint, or None. https only, unless an ``http://`` prefix is listed;
    the URL must start with a listed prefix at a boundary (``/``, ``?`` or a port's ``:``;
    ``https://ehr.example`` does not admit ``https://ehr.example.evil``)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "is not a URL"
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return "must be an absolute https URL"
    if parts.username or parts.password:
        return "must not carry credentials (use channel.header)"
    if parts.fragment:
        return "must not have a fragment"
    for prefix in allowlist:
        if not url.startswith(prefix):
            continue
        if parts.scheme == "http" and not prefix.startswith("http://"):
            continue
        rest = url[len(prefix):]
        if prefix.endswith("/") or not rest or rest[0] in "/?:":
            return None
    if parts.scheme == "http":
        return "must use https (plain http only where the operator lists an http:// prefix)"
    return "is not in the operator's endpoint allow-list (CAREBUS_NOTIFY_ENDPOINT_ALLOWLIST)"


def _extensions(node: Mapping[str, Any], url: str, element: str) -> list[Mapping[str, Any]]:
    exts = node.get("extension") or []
    if not isinstance(exts, list):
        raise InvalidSubscription(f"{element}.extension", "extension must be a list")
    return [e for e in exts if isinstance(e, dict) and e.get("url") == url]


def _one_int(node: Mapping[str, Any], url: str, element: str, key: str, low: int, high: int) -> int | None:
    found = _extensions(node, url, element)
    if not found:
        return None
    if len(found) > 1:
        raise InvalidSubscription(f"{element}.extension", f"{url.rsplit('/', 1)[1]} may appear once")
    value = found[0].get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidSubscription(f"{element}.extension('{url.rsplit('/', 1)[1]}').{key}",
                                  f"must be an integer from {low} to {high}")
    return value


def parse_subscription(resource: Any, *, allowlist: Sequence[str], client: str, clearances: int,
                       patient: str | None, subscription_id: str | None = None, organization: str | None = None,
                       care_teams: Sequence[str] = (), purpose: str = "TREAT") -> SubscriptionDef:
    """Validate a posted R4 Subscription. Raises InvalidSubscription naming the element. The recipient
    (``organization``, ``care_teams``, ``purpose``) comes from the token; a body naming another one is refused."""
    if not isinstance(resource, dict) or resource.get("resourceType") != "Subscription":
        raise InvalidSubscription("Subscription", "the body must be a FHIR R4 Subscription resource")
    status = resource.get("status")
    if status not in ("requested", "active"):
        raise InvalidSubscription("Subscription.status", "must be requested (or active) when created")
    reason = resource.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidSubscription("Subscription.reason", "is required (R4: 1..1)")
    criteria = resource.get("criteria")
    if not isinstance(criteria, str) or not criteria:
        raise InvalidSubscription("Subscription.criteria", "must be the canonical URL of a carebus topic")
    topic = BY_CANONICAL.get(criteria)
    if topic is None:
        raise InvalidSubscription("Subscription.criteria",
                                  "is not a topic this server publishes (see the CapabilityStatement)")
    criteria_node = resource.get("_criteria") or {}
    if not isinstance(criteria_node, dict):
        raise InvalidSubscription("Subscription._criteria", "must be an object")
    filters: list[Filter] = []
    for i, ext in enumerate(_extensions(criteria_node, EXT_FILTER, "Subscription.criteria")):
        value = ext.get("valueString")
        element = f"Subscription.criteria.extension('backport-filter-criteria')[{i}]"
        if not isinstance(value, str):
            raise InvalidSubscription(element, "must have a valueString")
        try:
            filters.append(parse_filter(topic, value))
        except ValueError as exc:
            raise InvalidSubscription(element, str(exc)) from exc
    if patient is not None:
        named = {v for f in filters if f.name == "patient" for v in f.values}
        if named != {patient}:
            raise InvalidSubscription("Subscription.criteria.extension('backport-filter-criteria')",
                                      "a patient-bound token must filter on its own patient (patient=<id>)")
    end = resource.get("end")
    if end is not None:
        try:
            instant_ms(end)
        except (TypeError, ValueError) as exc:
            raise InvalidSubscription("Subscription.end", "must be a FHIR instant") from exc
    channel = resource.get("channel")
    if not isinstance(channel, dict):
        raise InvalidSubscription("Subscription.channel", "is required")
    if channel.get("type") != "rest-hook":
        raise InvalidSubscription("Subscription.channel.type", "only rest-hook is supported")
    endpoint = channel.get("endpoint")
    if not isinstance(endpoint, str) or not endpoint:
        raise InvalidSubscription("Subscription.channel.endpoint", "is required for rest-hook")
    refusal = endpoint_refusal(endpoint, allowlist)
    if refusal is not None:
        raise InvalidSubscription("Subscription.channel.endpoint", f"the endpoint {refusal}")
    headers = channel.get("header") or []
    if not isinstance(headers, list) or not all(isinstance(h, str) for h in headers):
        raise InvalidSubscription("Subscription.channel.header", "must be a list of 'Name: value' strings")
    for i, header in enumerate(headers):
        name, sep, value = header.partition(":")
        if not sep or not name.strip() or not value.strip() or any(c in header for c in "\r\n"):
            raise InvalidSubscription(f"Subscription.channel.header[{i}]", "must be 'Name: value'")
        if name.strip().lower() in RESERVED_HEADERS:
            raise InvalidSubscription(f"Subscription.channel.header[{i}]", "names a header carebus sets itself")
    mime = next((m for m in MIME_TYPES if m == (channel.get("payload") or "application/fhir+json")), None)
    if mime is None:
        raise InvalidSubscription("Subscription.channel.payload", "must be application/fhir+json")
    payload_node = channel.get("_payload") or {}
    contents = _extensions(payload_node, EXT_PAYLOAD_CONTENT, "Subscription.channel.payload") if isinstance(
        payload_node, dict) else []
    content: Content = "id-only"
    if contents:
        code = contents[0].get("valueCode")
        if code not in CONTENTS or len(contents) > 1:
            raise InvalidSubscription("Subscription.channel.payload.extension('backport-payload-content')",
                                      "must be one of empty, id-only, full-resource")
        content = code
    element = "Subscription.channel"
    heartbeat = _one_int(channel, EXT_HEARTBEAT, element, "valueUnsignedInt", 1, 86_400)
    timeout = _one_int(channel, EXT_TIMEOUT, element, "valueUnsignedInt", 1, MAX_TIMEOUT_S)
    max_count = _one_int(channel, EXT_MAX_COUNT, element, "valuePositiveInt", 1, MAX_COUNT) or 1
    for claimed in _extensions(resource, EXT_RECIPIENT, "Subscription"):
        if _recipient_extension(organization, care_teams, purpose) != claimed:
            raise InvalidSubscription("Subscription.extension('subscription-recipient')",
                                      "the recipient is the one the token acts for; it cannot be chosen here")
    secret_ext = _extensions(resource, EXT_SECRET, "Subscription")
    if secret_ext:
        secret = secret_ext[0].get("valueString")
        if not isinstance(secret, str) or len(secret) < MIN_SECRET_LENGTH:
            raise InvalidSubscription("Subscription.extension('subscription-signing-secret')",
                                      f"must be a string of at least {MIN_SECRET_LENGTH} characters")
    else:
        secret = secrets.token_hex(32)
    return SubscriptionDef(
        id=subscription_id or secrets.token_hex(16),
        client=client,
        clearances=clearances,
        patient=patient,
        status="requested",
        topic=topic.canonical,
        filters=tuple(filters),
        endpoint=endpoint,
        headers=tuple(h.strip() for h in headers),
        content=content,
        mime=mime,
        heartbeat_s=heartbeat,
        timeout_s=timeout,
        max_count=max_count,
        secret=secret,
        end=end,
        reason=reason.strip(),
        organization=organization,
        care_teams=tuple(care_teams),
        purpose=purpose,
    )


def _reference(name: str) -> dict[str, Any]:
    """A Reference for ``Type/id`` or ``system|value`` (how grants and consents name recipients)."""
    if "|" in name:
        system, _, value = name.partition("|")
        return {"identifier": {"system": system, "value": value} if system else {"value": value}}
    return {"reference": name}


def _recipient_extension(organization: str | None, care_teams: Sequence[str], purpose: str) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    if organization:
        parts.append({"url": "organization", "valueReference": _reference(organization)})
    parts.extend({"url": "careTeam", "valueReference": _reference(team)} for team in care_teams)
    parts.append({"url": "purposeOfUse", "valueCoding": {
        "system": V3_ACT_REASON, "code": purpose}})
    return {"url": EXT_RECIPIENT, "extension": parts}


def status_update(current: SubscriptionDef, resource: Any) -> SubscriptionDef:
    """A PUT of an existing subscription: only ``status`` (off / active / requested), ``end`` and ``reason``
    may change; anything else needs a new subscription."""
    if not isinstance(resource, dict) or resource.get("resourceType") != "Subscription":
        raise InvalidSubscription("Subscription", "the body must be a FHIR R4 Subscription resource")
    if resource.get("id") not in (None, current.id):
        raise InvalidSubscription("Subscription.id", "must match the id in the URL")
    status = resource.get("status")
    if status not in ("off", "active", "requested"):
        raise InvalidSubscription("Subscription.status", "can be set to off, active or requested")
    if resource.get("criteria") not in (None, current.topic):
        raise InvalidSubscription("Subscription.criteria", "cannot change: create a new subscription")
    channel = resource.get("channel")
    if isinstance(channel, dict) and channel.get("endpoint") not in (None, current.endpoint):
        raise InvalidSubscription("Subscription.channel.endpoint", "cannot change: create a new subscription")
    reason = resource.get("reason")
    return replace(current, status=status, end=resource.get("end", current.end),
                   reason=reason.strip() if isinstance(reason, str) and reason.strip() else current.reason,
                   error=None if status != "off" else current.error)


def render_subscription(sub: SubscriptionDef, *, include_secret: bool = False) -> dict[str, Any]:
    """The Subscription as served (header values and the signing secret are never served back; the secret is
    returned once, in the answer to the create, when carebus made it)."""
    criteria_ext = [{"url": EXT_FILTER, "valueString": f.text(sub.topic_def.resource_type)} for f in sub.filters]
    channel_ext: list[dict[str, Any]] = []
    if sub.heartbeat_s is not None:
        channel_ext.append({"url": EXT_HEARTBEAT, "valueUnsignedInt": sub.heartbeat_s})
    if sub.timeout_s is not None:
        channel_ext.append({"url": EXT_TIMEOUT, "valueUnsignedInt": sub.timeout_s})
    channel_ext.append({"url": EXT_MAX_COUNT, "valuePositiveInt": sub.max_count})
    channel: dict[str, Any] = {
        "extension": channel_ext,
        "type": "rest-hook",
        "endpoint": sub.endpoint,
        "payload": sub.mime,
        "_payload": {"extension": [{"url": EXT_PAYLOAD_CONTENT, "valueCode": sub.content}]},
    }
    if sub.headers:
        channel["header"] = [f"{h.partition(':')[0].strip()}: [redacted]" for h in sub.headers]
    resource: dict[str, Any] = {
        "resourceType": "Subscription",
        "id": sub.id,
        "meta": {"profile": [PROFILE]},
        "status": sub.status,
        "reason": sub.reason or "",
        "criteria": sub.topic,
        "channel": channel,
    }
    if criteria_ext:
        resource["_criteria"] = {"extension": criteria_ext}
    if sub.end:
        resource["end"] = sub.end
    if sub.error and sub.status in ("error", "off"):
        resource["error"] = sub.error
    resource["extension"] = [_recipient_extension(sub.organization, sub.care_teams, sub.purpose)]
    if include_secret:
        resource["extension"].append({"url": EXT_SECRET, "valueString": sub.secret})
    return resource
