"""The CapabilityStatement (pure): built from the same search-parameter table the indexer and the query
parser use, plus the resource types actually stored, so it states what the server really does."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from services.notify.topics import TOPICS
from services.record.indexing import COMMON_PARAMETERS, SEARCH_PARAMETERS, SearchParam

TOPIC_CANONICAL_EXTENSION = (
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/capabilitystatement-subscriptiontopic-canonical"
)

SOFTWARE_VERSION = "0.1.0"
PUBLISHED = "2025-01-01"
ADMIN_TYPES = ("Linkage",)

SECURITY_DESCRIPTION = (
    "Bearer tokens issued by the operator (configured as sha256 digests). Scopes follow SMART App Launch "
    "syntax: system/*.read, user/<Type>.read, patient/*.read (bound to one patient and every record "
    "linked to that person). Security labels (meta.security) are enforced on every read: PSY/MH/BH data "
    "needs a behavioral-health clearance, SUD/42CFRPart2 data a part2 clearance, PSYTHPN a "
    "psychotherapy-notes "
    "clearance. Withheld matches are stated by an OperationOutcome entry and a REDACTED tag, never dropped "
    "silently. No OAuth endpoints are offered."
)


def _param(p: SearchParam) -> dict[str, Any]:
    return {"name": p.name, "definition": p.definition, "type": p.kind, "documentation": p.documentation}


def _resource(rtype: str) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "type": rtype,
        "interaction": [{"code": c} for c in ("read", "vread", "history-instance", "history-type", "search-type")],
        "versioning": "versioned",
        "readHistory": True,
        "updateCreate": False,
        "searchParam": [_param(p) for p in (*COMMON_PARAMETERS, *SEARCH_PARAMETERS.get(rtype, ()))],
    }
    if rtype == "Patient":
        entry["operation"] = [
            {
                "name": "everything",
                "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                "documentation": "The whole record of the person across linked source records, ordered by "
                "clinical time (Patients first), paged with _count/_offset; supports _type and "
                "_since. Referenced resources outside the patient compartment are not added.",
            }
        ]
    if rtype == "Linkage":
        entry["documentation"] = (
            "Identity links between Patient records (written through the admin API or the "
            "bundle topic; an inactive Linkage unlinks)."
        )
    return entry


def subscription_capability() -> dict[str, Any]:
    """Subscription (Backport IG 1.1.0): every topic carebus publishes, by canonical URL."""
    return {
        "extension": [{"url": TOPIC_CANONICAL_EXTENSION, "valueCanonical": t.canonical} for t in TOPICS],
        "type": "Subscription",
        "supportedProfile": ["http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription"],
        "documentation": "Topic-based subscriptions (rest-hook): criteria = a topic canonical below; filters with "
        "backport-filter-criteria (patient, and code / category / class where the topic lists them). " + " ".join(
            f"{t.canonical}: {t.title} ({t.resource_type}; filters {', '.join(f.name for f in t.filters)})."
            for t in TOPICS),
        "interaction": [{"code": c} for c in ("create", "read", "update", "delete", "search-type")],
        "searchParam": [{"name": "status", "type": "token"}, {"name": "url", "type": "uri"}],
        "operation": [
            {"name": "status",
             "definition": "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-status"},
            {"name": "events",
             "definition": "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-events"},
        ],
    }


def capability_statement(base_url: str, stored_types: Iterable[str]) -> dict[str, Any]:
    types = sorted({*SEARCH_PARAMETERS, *ADMIN_TYPES, *stored_types})
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": PUBLISHED,
        "publisher": "carebus",
        "kind": "instance",
        "software": {"name": "carebus record service", "version": SOFTWARE_VERSION},
        "implementation": {
            "description": "carebus record: one patient, one record (read-only FHIR R4 API)",
            "url": base_url,
        },
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                "documentation": "Read-only: resources arrive from the carebus FHIR bundle topic. "
                "Paging uses "
                "_count and _offset; _sort supports date, -date, _lastUpdated, -_lastUpdated, "
                "_id, -_id on every type. Unknown parameters are refused (400) unless the request "
                "carries 'Prefer: handling=lenient'.",
                "security": {"cors": False, "description": SECURITY_DESCRIPTION},
                "resource": [*(_resource(t) for t in types), subscription_capability()],
            }
        ],
    }
