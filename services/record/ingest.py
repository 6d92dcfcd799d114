"""From Kafka records to new resource versions (pure): parse, resolve references, hash, index, plan.

Versioning rules, which make a replay of the whole topic converge on exactly the same record:

* a resource whose content (everything but ``meta.versionId`` / ``meta.lastUpdated``) equals its current
  version makes no new version;
* a bundle already ingested (same event id and same content hash) is skipped as a whole, so re-delivered and
  replayed records - even ones that are older than the current version - change nothing;
* ``meta.lastUpdated`` is the Kafka record timestamp (never the wall clock), kept monotonic per resource;
* a record older than the one that made the current version (by offset within a partition, by timestamp across
  partitions - one resource sent under two keys, as in an HL7 A40 merge) does not overwrite it (``stale``); the
  consumer also feeds partitions to the store merged by record timestamp, so a replay applies them in the
  same order as the first time;
* ``meta.versionId`` counts the versions of one resource from 1.

References inside a bundle that name another entry's ``fullUrl`` (``urn:uuid:...``) are rewritten to
``Type/id``, as a FHIR server does when it processes a transaction. An entry with ``request.method`` DELETE
records a deletion. One malformed entry makes the whole bundle a :class:`BadBundle` (dead-lettered), so a
bundle is ingested whole or not at all; so does a string (key or value) holding a character FHIR text may not
contain (:class:`ForbiddenCharacter`): the C0 controls but tab, CR and LF (U+0000 among them, which PostgreSQL
cannot store) and the Unicode non-characters.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from services.common.fhir_text import forbidden_character
from services.common.topics import HEADER_EVENT_ID, HEADER_INBOUND_EVENT_ID
from services.record.errors import BadBundle, ForbiddenCharacter
from services.record.fhirdates import format_instant
from services.record.identity import (
    IdentityEvent,
    assertions_from_linkage,
    assertions_from_patient,
    registration_of,
)
from services.record.indexing import ResourceIndex, index_resource

_TYPE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_REFERENCE = re.compile(rb'"reference"\s*:\s*"((?:[^"\\]|\\.)*)"')
# JSON can carry those only as \u escapes (raw controls are not JSON) or as the UTF-8 of a non-character:
# the bytes are searched first (a substring test, and the regex only over text that is not all ASCII: an
# alternation is a slow scan, a tenth of the ingestor's time), the parsed strings only when one of these occurs
_NONCHARACTER_UTF8 = re.compile(rb"\xef\xb7[\x90-\xaf]|\xef\xbf[\xbe\xbf]|[\xf0-\xf4][\x8f\x9f\xaf\xbf]\xbf[\xbe\xbf]")


def _maybe_forbidden(raw: bytes) -> bool:
    return b"\\u" in raw or (not raw.isascii() and _NONCHARACTER_UTF8.search(raw) is not None)


@dataclass(frozen=True)
class InboundBundle:
    """One consumed Kafka record of the bundle topic (decoupled from kafka-python's type)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: str
    value: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PreparedResource:
    resource_type: str
    id: str
    content: dict[str, Any] | None  # None for a deletion
    content_hash: str
    index: ResourceIndex | None

    @property
    def key(self) -> tuple[str, str]:
        return self.resource_type, self.id


@dataclass(frozen=True)
class PreparedBundle:
    event_key: str
    bundle_hash: str
    timestamp_ms: int
    partition: int
    offset: int
    resources: tuple[PreparedResource, ...]


@dataclass(frozen=True, slots=True)
class CurrentVersion:
    version_id: int
    content_hash: str
    deleted: bool
    last_updated: int
    patient_ref: str | None = None
    restriction: int = 0
    source: tuple[int, int, int] | None = None  # (record timestamp, partition, offset) that made this version

    def newer_than_source(self, bundle: PreparedBundle) -> bool:
        """True when ``bundle`` is older than the record that made the current version: within a partition by
        offset (Kafka's order), across partitions by record timestamp (then partition, offset)."""
        if self.source is None:
            return False
        timestamp, partition, offset = self.source
        if bundle.partition == partition:
            return bundle.offset < offset
        return (bundle.timestamp_ms, bundle.partition, bundle.offset) < (timestamp, partition, offset)


@dataclass(frozen=True, slots=True)
class NewVersion:
    resource_type: str
    id: str
    version_id: int
    last_updated: int
    content_hash: str
    deleted: bool
    body: bytes | None  # the served JSON, meta.versionId/lastUpdated included
    index: ResourceIndex | None  # None for a deletion
    patient_ref: str | None  # a deletion keeps the patient and labels of the version it deletes
    restriction: int
    clinical_time: int | None  # ordering time: the clinical time, else lastUpdated; None for a Patient
    source: tuple[int, int, int]  # (record timestamp, partition, offset)


@dataclass
class WritePlan:
    versions: list[NewVersion] = field(default_factory=list)
    events: list[tuple[str, str, int, int, int]] = field(default_factory=list)  # key, hash, part, offset, ts
    identity: list[IdentityEvent] = field(default_factory=list)
    unchanged: int = 0
    skipped_bundles: int = 0
    stale: int = 0


def _hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _rewrite_references(value: Any, targets: Mapping[str, str]) -> None:
    if isinstance(value, dict):
        ref = value.get("reference")
        if isinstance(ref, str) and ref in targets:
            value["reference"] = targets[ref]
        for item in value.values():
            if isinstance(item, dict | list):
                _rewrite_references(item, targets)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict | list):
                _rewrite_references(item, targets)


def _content_of(resource: dict[str, Any]) -> dict[str, Any]:
    meta = resource.get("meta")
    if isinstance(meta, dict) and ("versionId" in meta or "lastUpdated" in meta):
        rest = {k: v for k, v in meta.items() if k not in ("versionId", "lastUpdated")}
        if rest:
            resource["meta"] = rest
        else:
            del resource["meta"]
    return resource


def _compared(content: dict[str, Any]) -> dict[str, Any]:
    """What decides whether a resource changed. A Provenance's ``recorded`` is left out: its id names one event
    of one sender, so a later copy of that event (a resend after a 503 or a lost ACK, a FHIR post that states no
    time and so carries its receipt) records the same activity, and the first copy's ``recorded`` stays."""
    if content.get("resourceType") == "Provenance" and "recorded" in content:
        return {k: v for k, v in content.items() if k != "recorded"}
    return content


def event_key_of(record: InboundBundle, bundle: Mapping[str, Any]) -> str:
    # the inbound event a bundle came from (older bundles carried it in ce_id)
    event_id = record.headers.get(HEADER_INBOUND_EVENT_ID) or record.headers.get(HEADER_EVENT_ID)
    if event_id:
        return f"event:{event_id}"
    bundle_id = bundle.get("id")
    if isinstance(bundle_id, str) and bundle_id:
        return f"bundle:{bundle_id}"
    return f"offset:{record.topic}/{record.partition}/{record.offset}"


def prepare_bundle(record: InboundBundle) -> PreparedBundle:
    """Parse and check one record. Raises BadBundle (no PHI in the message: positions and types only)."""
    try:
        bundle = orjson.loads(record.value)
    except orjson.JSONDecodeError as exc:
        raise BadBundle("record value is not JSON") from exc
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise BadBundle("record value is not a FHIR Bundle")
    if _maybe_forbidden(record.value):
        _refuse_forbidden_characters(bundle)
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise BadBundle("Bundle.entry is not a list")
    targets: dict[str, str] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise BadBundle(f"Bundle.entry[{i}] is not an object")
        resource = entry.get("resource")
        if isinstance(resource, dict):
            rtype, rid = resource.get("resourceType"), resource.get("id")
            if not isinstance(rtype, str) or not _TYPE.match(rtype):
                raise BadBundle(f"Bundle.entry[{i}].resource has no valid resourceType")
            if not isinstance(rid, str) or not _ID.match(rid):
                raise BadBundle(f"Bundle.entry[{i}].resource ({rtype}) has no valid id")
            full_url = entry.get("fullUrl")
            if isinstance(full_url, str) and full_url:
                targets[full_url] = f"{rtype}/{rid}"
    # walk the resources only when some reference names another entry (a regex over the raw bytes is cheap)
    rewrite = bool(targets) and any(
        b"\\" in ref or ref.decode(errors="replace") in targets for ref in _REFERENCE.findall(record.value)
    )
    prepared: list[PreparedResource] = []
    for i, entry in enumerate(entries):
        resource = entry.get("resource")
        request = entry.get("request")
        if resource is None and isinstance(request, dict) and request.get("method") == "DELETE":
            url = str(request.get("url", "")).split("?")[0].strip("/")
            parts = url.split("/")
            if len(parts) != 2 or not _TYPE.match(parts[0]) or not _ID.match(parts[1]):
                raise BadBundle(f"Bundle.entry[{i}].request.url is not Type/id")
            prepared.append(PreparedResource(parts[0], parts[1], None, "deleted", None))
            continue
        if not isinstance(resource, dict):
            raise BadBundle(f"Bundle.entry[{i}] has no resource")
        if rewrite:
            _rewrite_references(resource, targets)
        content = _content_of(resource)
        try:
            index = index_resource(content)
        except ValueError as exc:
            raise BadBundle(f"Bundle.entry[{i}] ({content['resourceType']}) has a malformed date") from exc
        digest = _hash(orjson.dumps(_compared(content), option=orjson.OPT_SORT_KEYS))
        prepared.append(PreparedResource(content["resourceType"], content["id"], content, digest, index))
    bundle_hash = _hash("\n".join(f"{r.resource_type}/{r.id}:{r.content_hash}" for r in prepared).encode())
    return PreparedBundle(
        event_key_of(record, bundle),
        bundle_hash,
        record.timestamp_ms,
        record.partition,
        record.offset,
        tuple(prepared),
    )


def _forbidden_in(value: Any) -> str | None:
    """The first forbidden character in any key or string of ``value``, as ``U+XXXX``."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            code_point = forbidden_character(item)
            if code_point:
                return code_point
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def _refuse_forbidden_characters(bundle: dict[str, Any]) -> None:
    """Raises ForbiddenCharacter naming where (entry and resource type) and which code point: never the text."""
    entries = bundle.get("entry")
    for i, entry in enumerate(entries if isinstance(entries, list) else ()):
        code_point = _forbidden_in(entry)
        if code_point:
            resource = entry.get("resource") if isinstance(entry, dict) else None
            rtype = resource.get("resourceType") if isinstance(resource, dict) else None
            what = f" ({rtype})" if isinstance(rtype, str) and _TYPE.match(rtype) else ""
            raise ForbiddenCharacter(f"Bundle.entry[{i}]{what} holds {code_point}, which FHIR text may not contain")
    code_point = _forbidden_in({k: v for k, v in bundle.items() if k != "entry"})
    if code_point:
        raise ForbiddenCharacter(f"the Bundle holds {code_point}, which FHIR text may not contain")


def served_body(content: Mapping[str, Any], version_id: int, last_updated: int) -> bytes:
    meta = content.get("meta")
    served_meta: dict[str, Any] = {"versionId": str(version_id), "lastUpdated": format_instant(last_updated)}
    if isinstance(meta, dict):
        served_meta.update(meta)
    served = dict(content)
    served["meta"] = served_meta
    return orjson.dumps(served)


def plan_versions(
    bundles: Sequence[PreparedBundle],
    current: dict[tuple[str, str], CurrentVersion],
    seen_events: dict[str, str],
) -> WritePlan:
    """Decide the new versions for a batch of bundles, in order. ``current`` and ``seen_events`` are updated
    in place as the plan goes (a resource may change twice in one batch)."""
    plan = WritePlan()
    for bundle in bundles:
        if seen_events.get(bundle.event_key) == bundle.bundle_hash:
            plan.skipped_bundles += 1
            continue
        seen_events[bundle.event_key] = bundle.bundle_hash
        plan.events.append((bundle.event_key, bundle.bundle_hash, bundle.partition, bundle.offset, bundle.timestamp_ms))
        source = (bundle.timestamp_ms, bundle.partition, bundle.offset)
        for resource in bundle.resources:
            cur = current.get(resource.key)
            if cur is not None and cur.newer_than_source(bundle):
                plan.stale += 1  # an older record of this resource, arriving late from another partition
                continue
            deleted = resource.content is None
            if deleted:
                if cur is None or cur.deleted:
                    plan.unchanged += 1
                    continue
            elif cur is not None and not cur.deleted and cur.content_hash == resource.content_hash:
                plan.unchanged += 1
                continue
            version_id = cur.version_id + 1 if cur else 1
            last_updated = max(bundle.timestamp_ms, cur.last_updated) if cur else bundle.timestamp_ms
            body = None if resource.content is None else served_body(resource.content, version_id, last_updated)
            index = resource.index
            if index is None:  # deletion
                patient_ref, restriction = (cur.patient_ref, cur.restriction) if cur else (None, 0)
                clinical_time: int | None = None
            else:
                patient_ref, restriction = index.patient_ref, index.restriction
                clinical_time = index.clinical_time
                if clinical_time is None and resource.resource_type != "Patient":
                    clinical_time = last_updated
            plan.versions.append(
                NewVersion(
                    resource.resource_type,
                    resource.id,
                    version_id,
                    last_updated,
                    resource.content_hash,
                    deleted,
                    body,
                    index,
                    patient_ref,
                    restriction,
                    clinical_time,
                    source,
                )
            )
            current[resource.key] = CurrentVersion(
                version_id, resource.content_hash, deleted, last_updated, patient_ref, restriction, source
            )
            plan.identity.extend(_identity_events(resource, version_id, last_updated))
    return plan


def _identity_events(resource: PreparedResource, version_id: int, last_updated: int) -> list[IdentityEvent]:
    events: list[IdentityEvent] = []
    if resource.resource_type == "Patient":
        patient = resource.content if resource.content is not None else {"id": resource.id}
        events.append(registration_of(patient, last_updated, resource.content_hash, resource.content is None))
        if resource.content is not None:
            events.extend(assertions_from_patient(resource.content, last_updated))
    elif resource.resource_type == "Linkage" and resource.content is not None:
        events.extend(assertions_from_linkage(resource.content, version_id, last_updated))
    return events
