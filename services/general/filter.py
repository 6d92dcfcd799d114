"""From a bundle of ``fhir.bundles.v1`` to the bundle of ``fhir.bundles.general.v1`` (pure).

What the general topic carries: the disclosure engine's baseline (services/common/disclosure.py) for a
recipient with no clearance and no consent, purpose treatment: unlabelled (ordinary) resources only.

=============================================  ==============================================================
entry                                          on the general topic
=============================================  ==============================================================
resource without a label class                 kept as it is
resource labelled PSY/MH/BH, SUD/42CFRPart2,   removed (nothing says it was there: no count, no tag)
ETHUD/OPIOIDUD/ETH or PSYTHPN
carebus's Provenance of the event              kept with ``target`` limited to the kept resources and its
                                               labels recomputed from them; removed when none is left
DELETE entry (``request.method``)              kept only when the bundle carries no label class (it could
                                               name a labelled resource otherwise)
=============================================  ==============================================================

``Bundle.meta.security`` and the ``carebus_security`` header are recomputed from what is kept. A bundle with
nothing left is still written (an empty collection) so that keys, partitions and order are those of the full
topic and every event's position has its counterpart.
"""

from __future__ import annotations

from typing import Any

import orjson

from services.common import security_labels
from services.common.disclosure import restriction_of
from services.common.event_headers import security_header


def _codes(resource: dict[str, Any]) -> list[str]:
    meta = resource.get("meta") or {}
    return [c["code"] for c in meta.get("security") or () if isinstance(c, dict) and isinstance(c.get("code"), str)]


def _with_labels(resource: dict[str, Any], codes: set[str]) -> dict[str, Any]:
    meta = {k: v for k, v in (resource.get("meta") or {}).items() if k != "security"}
    if codes:
        meta["security"] = security_labels.meta_security(codes)
    out = {k: v for k, v in resource.items() if k != "meta"}
    if meta:
        out["meta"] = meta
    return out


def general_bundle(value: bytes) -> tuple[bytes, str]:
    """The general form of one bundle record value and its ``carebus_security`` header. Raises ValueError when
    the value is not a FHIR Bundle (such a record is not forwarded)."""
    bundle = orjson.loads(value)
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise ValueError("not a FHIR Bundle")
    entries = [e for e in bundle.get("entry") or () if isinstance(e, dict)]
    restricted_bundle = restriction_of(_codes(bundle)) != 0
    kept: list[dict[str, Any]] = []
    provenances: list[dict[str, Any]] = []
    kept_refs: set[str] = set()
    kept_urls: set[str] = set()
    for entry in entries:
        resource = entry.get("resource")
        if not isinstance(resource, dict):
            if not restricted_bundle:
                kept.append(entry)
            continue
        if resource.get("resourceType") == "Provenance":
            provenances.append(entry)
            continue
        if restriction_of(_codes(resource)) == 0:
            kept.append(entry)
            kept_refs.add(f"{resource.get('resourceType')}/{resource.get('id')}")
            if isinstance(entry.get("fullUrl"), str):
                kept_urls.add(entry["fullUrl"])
    labels: set[str] = set()
    for entry in kept:
        if isinstance(entry.get("resource"), dict):
            labels.update(_codes(entry["resource"]))
    for entry in provenances:
        provenance = entry["resource"]
        if restriction_of(_codes(provenance)) == 0:
            kept.append(entry)
            continue
        targets = [t for t in provenance.get("target") or ()
                   if isinstance(t, dict) and (t.get("reference") in kept_refs or t.get("reference") in kept_urls)]
        if targets:
            kept.append({**entry, "resource": _with_labels({**provenance, "target": targets}, labels)})
    out = {k: v for k, v in bundle.items() if k not in ("entry", "meta")}
    meta = {k: v for k, v in (bundle.get("meta") or {}).items() if k != "security"}
    if labels:
        meta["security"] = security_labels.meta_security(labels)
    if meta:
        out["meta"] = meta
    if kept:
        out["entry"] = kept
    return orjson.dumps(out), security_header(labels)
