"""The record's change feed (pure): one message per new resource version, for ``<prefix>.record.changes.v1``.

Durability: the store writes the messages of an ingest into its ``change_outbox`` table in the same transaction
as the versions (services/record/store/outbox.py). The bundle consumer publishes the outbox (acks=all) after the
store commit and before it commits the bundle offsets, then forgets what Kafka acknowledged. A crash anywhere
in between leaves the rows in the outbox, and they are published at the next start: a change is never lost, and
may be published twice, so consumers de-duplicate on (resourceType, id, versionId), which never changes meaning.

Key: the person the resource's patient belongs to at commit time (else ``<type>/<id>``), so one person's
changes stay in commit order on one partition. ``members`` are every Patient of that person: a subscriber
filtering on any of a person's Patient ids (before or after a merge or an EMPI link) is matched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from services.common.event_headers import security_header
from services.common.kafka import OutboundRecord
from services.common.topics import HEADER_CONTENT_TYPE, HEADER_SECURITY, ChangeKind
from services.record.fhirdates import format_instant
from services.record.ingest import NewVersion


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One change waiting in the store's outbox: its Kafka key, labels header and JSON value."""

    seq: int
    key: str
    security: str
    value: bytes


def change_kind(version: NewVersion) -> ChangeKind:
    if version.deleted:
        return "deleted"
    return "created" if version.version_id == 1 else "updated"


def change_message(
    version: NewVersion, person: str | None, members: Sequence[str]
) -> tuple[str, str, bytes]:
    """(key, security header, value) of the change message for one new version."""
    security = list(version.index.security) if version.index is not None else []
    message = {
        "resourceType": version.resource_type,
        "id": version.id,
        "versionId": version.version_id,
        "lastUpdated": format_instant(version.last_updated),
        "change": change_kind(version),
        "patient": version.patient_ref,
        "person": person,
        "members": sorted(members),
        "security": security,
        "restriction": version.restriction,
        "resource": orjson.Fragment(version.body) if version.body is not None else None,
    }
    key = person or f"{version.resource_type}/{version.id}"
    return key, security_header(security), orjson.dumps(message)


def change_records(topic: str, rows: Sequence[OutboxRow]) -> list[OutboundRecord]:
    return [
        OutboundRecord(
            topic=topic,
            key=row.key,
            value=row.value,
            headers={HEADER_SECURITY: row.security, HEADER_CONTENT_TYPE: "application/json"},
        )
        for row in rows
    ]
