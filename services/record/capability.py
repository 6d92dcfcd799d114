"""The CapabilityStatement (pure): built from the same search-parameter table the indexer and the query
parser use, plus the resource types actually stored, so it states what the server really does."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from services.notify.topics import TOPICS
from services.outcomes.fhir import MEASURE_SEARCH_PARAMS
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
    "linked to that person). Each token names the organization it acts for and its purpose of use; every "
    "read, search, $everything and notification is decided for that recipient by one disclosure engine "
    "(security labels in meta.security x the patient's Consents x the baseline policy): PSY/MH/BH data to "
    "recipients cleared for behavioural health or named by a permitting Consent; 42 CFR Part 2 (SUD) data "
    "only to a recipient named by an active permitting Consent, with the 42 CFR 2.32 notice (a Provenance); "
    "psychotherapy notes never. Totals and paging count only what the caller may see; a caller not cleared "
    "for a class is never told that anything of it was withheld (a withheld read answers 404). Every "
    "disclosure is audited (AuditEvent, IHE BALP; readable with an AuditEvent scope). No OAuth endpoints are "
    "offered."
)
DISCLOSURES_DEFINITION = "https://carebus.dev/fhir/OperationDefinition/Patient-disclosures"

# The operations the API serves, per resource type (tests/consent/test_capability.py checks them against the
# routes): name -> (definition, documentation)
OPERATIONS: dict[str, dict[str, tuple[str, str]]] = {
    "Patient": {
        "everything": (
            "http://hl7.org/fhir/OperationDefinition/Patient-everything",
            "The whole record of the person across linked source records, ordered by clinical time (Patients "
            "first), paged with _count/_offset; supports _type and _since. Referenced resources outside the "
            "patient compartment are not added. Decided and audited like a search.",
        ),
        "disclosures": (
            DISCLOSURES_DEFINITION,
            "The accounting of disclosures (HIPAA 45 CFR 164.528, 42 CFR 2.24): a searchset of the AuditEvents of "
            "every disclosure of this person's data (API reads, searches, $everything, notifications), newest "
            "first, optionally between start and end (FHIR dates or instants), paged with _count/_offset: who "
            "received what, when, for which purpose and under which Consent. Needs an AuditEvent read scope "
            "(the privacy officer) or the patient's own token.",
        ),
    },
    "Measure": {
        "evaluate-measure": (
            "http://hl7.org/fhir/OperationDefinition/Measure-evaluate-measure",
            "periodStart, periodEnd (required), reportType population | subject, subject=Patient/<id>: a "
            "DEQM Summary or Individual MeasureReport computed from the PHQ-9 totals the token may see.",
        ),
    },
    "Subscription": {
        "status": (
            "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-status",
            "The subscription's status Bundle (type query-status): status, events-since-subscription-start.",
        ),
        "events": (
            "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-events",
            "Past events (eventsSinceNumber, eventsUntilNumber, content), decided again now for the "
            "subscription's recipient, as a delivery would be.",
        ),
    },
}


def _operations(rtype: str) -> list[dict[str, Any]]:
    return [{"name": name, "definition": definition, "documentation": doc}
            for name, (definition, doc) in OPERATIONS.get(rtype, {}).items()]


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
    if rtype in OPERATIONS:
        entry["operation"] = _operations(rtype)
    if rtype == "Task":
        entry["interaction"].append({"code": "update", "documentation": "A care team acknowledges or closes a "
                                     "safety Task: only status (and businessStatus, note) may change; If-Match "
                                     "honoured."})
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
        "operation": _operations("Subscription"),
    }


def measure_capability() -> dict[str, Any]:
    """Measure (served by services/record/outcomes_api.py): the carebus measures and $evaluate-measure."""
    return {
        "type": "Measure",
        "interaction": [{"code": c} for c in ("read", "search-type")],
        "searchParam": [{"name": name, "type": kind} for name, kind in MEASURE_SEARCH_PARAMS],
        "operation": _operations("Measure"),
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
                "resource": [*(_resource(t) for t in types if t != "Measure"), measure_capability(),
                             subscription_capability()],
            }
        ],
    }
