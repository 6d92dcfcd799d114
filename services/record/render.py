"""FHIR responses built as plain dicts and serialized once (pure; the clock and ids are passed in).

Stored bodies are already the served JSON, so they are embedded as ``orjson.Fragment`` without re-parsing;
only Patients are parsed, to carry their identity links.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

import orjson

from services.record.access import REDACTED_TAG, describe_restriction
from services.record.fhirdates import format_instant
from services.record.store.base import Page, StoredRow

FHIR_JSON = "application/fhir+json; fhirVersion=4.0"


def operation_outcome(severity: str, code: str, diagnostics: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }


GENERIC_NOTICE = "Results may be limited by the disclosure policy (consent and security labels)."


def withheld_outcome(withheld: Mapping[int, int], generic: bool = False) -> dict[str, Any] | None:
    """States what was withheld and why, to a caller cleared for it (counts and label classes only: never ids
    or content); ``generic``: the data-independent notice for a caller who may not be told."""
    issues: list[dict[str, Any]] = []
    for missing, count in sorted(withheld.items()):
        classes = " and ".join(describe_restriction(missing)) or "restricted"
        noun = "resource was" if count == 1 else "resources were"
        issues.append(
            {
                "severity": "warning",
                "code": "suppressed",
                "details": {
                    "text": f"{count} matching {noun} withheld: {classes} data goes to this recipient only as its "
                    "clearances, the patient's consent and the disclosure policy allow."
                },
            }
        )
    if generic:
        issues.append({"severity": "information", "code": "informational", "details": {"text": GENERIC_NOTICE}})
    if not issues:
        return None
    return {"resourceType": "OperationOutcome", "issue": issues}


def serialize(resource: Mapping[str, Any]) -> bytes:
    return orjson.dumps(resource)


def url(base: str, path: str, params: Sequence[tuple[str, str]]) -> str:
    query = urlencode(list(params))
    return f"{base}/{path}" + (f"?{query}" if query else "")


def _links(
    base: str, path: str, echo: Sequence[tuple[str, str]], count: int, offset: int, total: int
) -> list[dict[str, str]]:
    def at(position: int) -> str:
        return url(base, path, [*echo, ("_count", str(count)), ("_offset", str(position))])

    links = [{"relation": "self", "url": at(offset)}, {"relation": "first", "url": at(0)}]
    if count > 0 and offset > 0:
        links.append({"relation": "previous", "url": at(max(0, offset - count))})
    if count > 0 and offset + count < total:
        links.append({"relation": "next", "url": at(offset + count)})
    if count > 0 and total > 0:
        links.append({"relation": "last", "url": at(((total - 1) // count) * count)})
    return links


BodyOf = Callable[[StoredRow], bytes]


def _outcome_id(bundle_id: str) -> str:
    return str(uuid.uuid5(uuid.UUID(bundle_id), "outcome"))


def searchset(
    base: str,
    path: str,
    echo: Sequence[tuple[str, str]],
    page: Page,
    count: int,
    offset: int,
    body_of: BodyOf,
    bundle_id: str,
    now_ms: int,
    told: Mapping[int, int] | None = None,
    generic: bool = False,
    included: Sequence[Mapping[str, Any]] = (),
) -> bytes:
    """A searchset Bundle. ``told``: the withheld counts the caller may be told (default: ``page.withheld``),
    stated by an OperationOutcome entry (search.mode outcome) and a REDACTED tag on the Bundle's meta.security;
    ``generic``: the data-independent policy notice; ``included``: resources added with search.mode include
    (the Part 2 notice)."""
    # the entries are joined as bytes: stored bodies are served JSON already, and ids and types are
    # [A-Za-z0-9.-] (checked at ingest), so only the base URL needs JSON escaping
    prefix = b'{"fullUrl":' + orjson.dumps(base)[:-1] + b"/"
    parts = [
        prefix
        + f"{row.resource_type}/{row.id}".encode()
        + b'","resource":'
        + body_of(row)
        + b',"search":{"mode":"match"}}'
        for row in page.rows
    ]
    for resource in included:
        parts.append(
            orjson.dumps({"fullUrl": f"urn:uuid:{resource['id']}", "resource": resource, "search": {"mode": "include"}})
        )
    meta: dict[str, Any] = {"lastUpdated": format_instant(now_ms)}
    stated = page.withheld if told is None else told
    outcome = withheld_outcome(stated, generic)
    if outcome is not None:
        parts.append(
            orjson.dumps(
                {
                    "fullUrl": f"urn:uuid:{_outcome_id(bundle_id)}",
                    "resource": outcome,
                    "search": {"mode": "outcome"},
                }
            )
        )
    if stated:
        meta["security"] = [REDACTED_TAG]
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": bundle_id,
        "meta": meta,
        "type": "searchset",
        "total": page.total,
        "link": _links(base, path, echo, count, offset, page.total),
    }
    head = orjson.dumps(bundle)
    if not parts:
        return head
    return head[:-1] + b',"entry":[' + b",".join(parts) + b"]}"


def history(
    base: str,
    path: str,
    echo: Sequence[tuple[str, str]],
    page: Page,
    count: int,
    offset: int,
    bundle_id: str,
    now_ms: int,
    told: Mapping[int, int] | None = None,
    generic: bool = False,
    included: Sequence[Mapping[str, Any]] = (),
) -> bytes:
    """A history Bundle: newest first, each entry with the request that made the version and its response;
    ``told`` / ``generic`` / ``included`` as for :func:`searchset`."""
    entries: list[dict[str, Any]] = []
    for row in page.rows:
        entry: dict[str, Any] = {"fullUrl": f"{base}/{row.resource_type}/{row.id}"}
        if row.deleted:
            entry["request"] = {"method": "DELETE", "url": f"{row.resource_type}/{row.id}"}
            status = "204 No Content"
        else:
            assert row.body is not None
            entry["resource"] = orjson.Fragment(row.body)
            if row.version_id == 1:
                entry["request"] = {"method": "POST", "url": row.resource_type}
                status = "201 Created"
            else:
                entry["request"] = {"method": "PUT", "url": f"{row.resource_type}/{row.id}"}
                status = "200 OK"
        entry["response"] = {
            "status": status,
            "etag": f'W/"{row.version_id}"',
            "lastModified": format_instant(row.last_updated),
        }
        entries.append(entry)
    for resource in included:
        entries.append(
            {
                "fullUrl": f"urn:uuid:{resource['id']}",
                "resource": resource,
                "request": {"method": "GET", "url": f"{resource['resourceType']}/{resource['id']}"},
                "response": {"status": "200 OK"},
            }
        )
    meta: dict[str, Any] = {"lastUpdated": format_instant(now_ms)}
    stated = page.withheld if told is None else told
    if stated:
        meta["security"] = [REDACTED_TAG]
    outcome = withheld_outcome(stated, generic)
    if outcome is not None:
        entries.append(
            {
                "fullUrl": f"urn:uuid:{_outcome_id(bundle_id)}",
                "resource": outcome,
                "request": {"method": "GET", "url": path},
                "response": {"status": "200 OK"},
            }
        )
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": bundle_id,
        "meta": meta,
        "type": "history",
        "total": page.total,
        "link": _links(base, path, echo, count, offset, page.total),
    }
    if entries:
        bundle["entry"] = entries
    return orjson.dumps(bundle)
