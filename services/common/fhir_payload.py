"""What a FHIR payload from a sender is, checked before anything is accepted: one resource or an accepted
Bundle (transaction, batch, collection) whose every resource passes its R4B model, no psychotherapy note; and
the one rule for its ids and references (:class:`Rekeying`). Intake checks and keys a payload with these before
it answers; the mapper (services/mapper/fhir_in.py) checks again and maps."""

from __future__ import annotations

import re
from typing import Any

from services.common import security_labels
from services.common.errors import FieldProblem, MappingError, RefusedContent
from services.common.fhir_ids import resource_id
from services.common.fhir_validation import validate_resource

ACCEPTED_BUNDLE_TYPES = frozenset({"transaction", "batch", "collection"})


def resources_of(payload: dict[str, Any]) -> list[tuple[str | None, dict[str, Any]]]:
    """(fullUrl, resource) pairs of a resource or an accepted Bundle; raises MappingError otherwise."""
    if not isinstance(payload, dict) or not isinstance(payload.get("resourceType"), str):
        raise MappingError("not a FHIR resource", [FieldProblem("resourceType", "required", "no resourceType")])
    if payload["resourceType"] != "Bundle":
        return [(None, payload)]
    bundle_type = payload.get("type")
    if not isinstance(bundle_type, str) or bundle_type not in ACCEPTED_BUNDLE_TYPES:
        raise MappingError("unsupported Bundle type", [FieldProblem(
            "Bundle.type", "unsupported-bundle-type", "send a transaction, batch or collection Bundle")])
    entries = payload.get("entry") or []
    if not isinstance(entries, list):
        raise MappingError("Bundle.entry is not a list", [FieldProblem(
            "Bundle.entry", "list_type", "Bundle.entry is a list of entries")])
    out: list[tuple[str | None, dict[str, Any]]] = []
    for index, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            raise MappingError("entry without resource", [FieldProblem(
                f"Bundle.entry[{index}].resource", "required", "every entry needs a resource")])
        full_url = entry.get("fullUrl")
        if full_url is not None and not isinstance(full_url, str):
            raise MappingError("Bundle.entry.fullUrl is not a string", [FieldProblem(
                f"Bundle.entry[{index}].fullUrl", "string_type", "fullUrl is a uri (a string)")])
        out.append((full_url, resource))
    if not out:
        raise MappingError("empty Bundle", [FieldProblem("Bundle.entry", "required", "the Bundle has no entries")])
    return out


def check_resources(payload: dict[str, Any]) -> list[tuple[str | None, dict[str, Any]]]:
    """Validate every resource (R4B) and refuse psychotherapy notes: intake before accepting, the mapper before
    mapping. Returns the (fullUrl, resource) pairs of :func:`resources_of`."""
    found = resources_of(payload)
    for index, (_, resource) in enumerate(found):
        where = f"Bundle.entry[{index}].resource" if payload.get("resourceType") == "Bundle" else "resource"
        meta = resource.get("meta")  # not an object: the R4B check below refuses it, naming the element
        security = meta.get("security") if isinstance(meta, dict) else None
        labels_sent = ({c["code"] for c in security if isinstance(c, dict) and isinstance(c.get("code"), str)}
                       if isinstance(security, list) else set())
        if security_labels.is_psychotherapy_note(labels_sent):
            raise RefusedContent("psychotherapy notes are not accepted", [FieldProblem(
                f"{where}.meta.security", "psychotherapy-note-refused",
                "psychotherapy notes (HIPAA 45 CFR 164.501) need the patient's specific authorization and are "
                "kept out of the shared record")])
        validate_resource(resource, where)
    return found


_TYPED_REFERENCE = re.compile(
    r"^(?:https?://\S+/)?([A-Z][A-Za-z]{1,63})/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?$")


class Rekeying:
    """The one rule for ids and references of a payload from ``source``.

    A resource's source id is its ``id``; without one, the id in its ``fullUrl`` when that is a ``Type/id`` URL,
    else the fullUrl itself (``urn:uuid:...``). Its carebus id is ``resource_id(type, source, source id)``. A
    reference is rewritten to the carebus id of what it names: an entry's fullUrl -> that entry; ``Type/id``
    (relative, absolute ``http(s)://.../Type/id``, a ``/_history/n`` version dropped) -> ``resource_id(Type,
    source, id)``, whether the resource is in this payload, came earlier from the same source, or comes later.
    Contained (``#x``) references and other URIs are kept as sent."""

    def __init__(self, source: str, found: list[tuple[str | None, dict[str, Any]]]) -> None:
        self.source = source
        self.source_ids: list[str] = []
        self._full_urls: dict[str, tuple[str, str]] = {}  # fullUrl -> (type, source id)
        for index, (full_url, resource) in enumerate(found):
            resource_type = str(resource["resourceType"])
            source_id = self._own_id(resource_type, resource.get("id"), full_url) or f"entry-{index}"
            self.source_ids.append(source_id)
            if full_url:
                self._full_urls[full_url] = (resource_type, source_id)

    @staticmethod
    def _own_id(resource_type: str, own: object, full_url: str | None) -> str | None:
        if isinstance(own, str) and own:
            return own
        if full_url:
            match = _TYPED_REFERENCE.fullmatch(full_url)
            if match is not None and match.group(1) == resource_type:
                return match.group(2)
            return full_url
        return None

    def target(self, reference: str) -> tuple[str, str] | None:
        """(type, source id) that ``reference`` names, or None when it is not a reference carebus re-keys."""
        named = self._full_urls.get(reference)
        if named is not None:
            return named
        match = _TYPED_REFERENCE.fullmatch(reference)
        if match is None:
            return None
        return match.group(1), match.group(2)

    def new_id(self, resource_type: str, source_id: str) -> str:
        return resource_id(resource_type, self.source, source_id)

    def reference(self, reference: str) -> str:
        named = self.target(reference)
        if named is None:
            return reference
        return f"{named[0]}/{self.new_id(*named)}"

    def rewrite(self, value: Any) -> Any:
        """A copy of ``value`` with every ``reference`` rewritten (the sender's content otherwise as sent)."""
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for key, item in value.items():
                if key == "reference" and isinstance(item, str):
                    out[key] = self.reference(item)
                else:
                    out[key] = self.rewrite(item)
            return out
        if isinstance(value, list):
            return [self.rewrite(item) for item in value]
        return value

    def source_id_of(self, reference: Any, resource_type: str) -> str | None:
        """The sender's id of the ``resource_type`` a Reference names (None if it names something else)."""
        ref = reference.get("reference") if isinstance(reference, dict) else None
        named = self.target(ref) if isinstance(ref, str) else None
        return named[1] if named is not None and named[0] == resource_type else None
