"""What the disclosure side emits validates: the AuditEvents (API access, refused attempt, push disclosure), the
42 CFR 2.32 notice Provenance, a notification Bundle carrying it, an ``$events`` answer reporting a withheld
number alone and a served Subscription naming its recipient, with the R4B models here and with the HL7 validator
(R4 core + US Core 6.1.0: 0 errors) in the session's one validator run, which validates :func:`emitted`
(tests/validation/conftest.py ``EXTRA_SETS``, checked by tests/validation/test_emitted_sets.py)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson
import pytest
from fhir.resources.R4B import get_fhir_model_class

from services.common import audit, disclosure, part2, security_labels
from services.notify.bundles import notification_bundle
from services.notify.delivery import Screened, part2_notice
from services.notify.store import EventRow
from services.notify.subscriptions import EXT_FILTER, SubscriptionDef, parse_subscription, render_subscription
from services.notify.topics import TOPIC_BASE
from services.record import render
from services.record.store.base import Page, StoredRow

BASE = "https://record.example.org/fhir"
REQUESTER = audit.Requester("a1b2c3d4e5f6", "partner clinic", "http://hl7.org/fhir/sid/us-npi|1999999984", "TREAT")


def emitted() -> dict[str, dict[str, Any]]:
    recorded = "2026-05-01T10:00:00.000Z"
    return {
        "audit-read": audit.api_access_event(
            audit.disclosure_id("t", "1"), recorded, "read", REQUESTER, BASE, "Patient/p1",
            ["Condition/c1"], ["Consent/k1"]),
        "audit-search": audit.api_access_event(
            audit.disclosure_id("t", "2"), recorded, "search-type", REQUESTER, BASE, "Patient/p1",
            ["Condition/c1", "Condition/c2"], query="patient=p1&_count=10"),
        "audit-denied": audit.api_access_event(
            audit.disclosure_id("t", "3"), recorded, "read", REQUESTER, BASE, "Patient/p1", ["Condition/c3"],
            denied=True),
        "audit-push": audit.push_disclosure_event(
            audit.disclosure_id("sub-1", "7"), recorded, REQUESTER, BASE, "Patient/p1", ["Condition/c1"],
            ["Consent/k1"]),
        "audit-push-denied": audit.push_disclosure_event(
            audit.disclosure_id("notify-withheld", "sub-1", "Condition/c3", "1"), recorded, REQUESTER, BASE,
            "Patient/p1", ["Condition/c3"], denied=True),
        "part2-notice": part2.disclosure_notice(
            part2.notice_id("t", "4"), recorded, ["Condition/c1", "MedicationRequest/m1"], ["Consent/k1"], BASE,
            "TREAT", REQUESTER.organization),
        "notification-part2": _notification(recorded),
        "events-withheld-number": _events_answer(recorded),
        "notification-handshake": notification_bundle(replace(_subscription(), status="requested"), BASE,
                                                      "handshake", [], recorded),
        "notification-heartbeat": notification_bundle(_subscription(), BASE, "heartbeat", [], recorded),
        "status-answer": notification_bundle(_subscription(), BASE, "query-status", [], recorded),
        **_api_answers(recorded),
        "subscription": render_subscription(_subscription()),
    }


def _subscription() -> SubscriptionDef:
    resource = {"resourceType": "Subscription", "status": "requested", "reason": "partner clinic: diagnoses",
                "criteria": TOPIC_BASE + "diagnosis-recorded",
                "_criteria": {"extension": [{"url": EXT_FILTER, "valueString": "patient=Patient/p1"}]},
                "channel": {"type": "rest-hook", "endpoint": "https://partner.example.org/hook",
                            "payload": "application/fhir+json"}}
    sub = parse_subscription(resource, allowlist=["https://partner.example.org/"], client="partner clinic",
                             clearances=0, patient=None, subscription_id="sub-1",
                             organization=REQUESTER.organization, purpose="TREAT")
    return replace(sub, status="active", events_since_start=7)


def _part2_condition() -> dict[str, Any]:
    return {"resourceType": "Condition", "id": "c1",
            "meta": {"security": security_labels.meta_security(security_labels.PART2)},
            "clinicalStatus": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
            "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "F11.20",
                                 "display": "Opioid dependence, uncomplicated"}]},
            "subject": {"reference": "Patient/p1"}}


def _api_answers(recorded: str) -> dict[str, dict[str, Any]]:
    """Record API answers as the disclosure side shapes them: a search disclosing Part 2 data (the notice as an
    include entry) to an uncleared caller (the generic notice), the same as history, and a search telling a
    cleared caller what was withheld (counts and classes, the REDACTED tag)."""
    body = orjson.dumps(_part2_condition())
    row = StoredRow("Condition", "c1", 1, 1_777_000_000_000, False, "Patient/p1", disclosure.PART2, body)
    notice = part2.disclosure_notice(part2.notice_id("t", "5"), recorded, ["Condition/c1"], ["Consent/k1"], BASE,
                                     "TREAT", REQUESTER.organization)
    page = Page([row], 1)
    now = 1_777_000_000_000
    bundle_id = "0b6c3c1e-4e3f-4c39-9d0e-3f6d1b0f2a11"
    searched = render.searchset(BASE, "Condition", [("patient", "p1")], page, 10, 0, lambda r: body, bundle_id,
                                now, {}, True, [notice])
    history = render.history(BASE, "Condition/c1/_history", [], page, 10, 0, bundle_id, now, {}, True, [notice])
    told = render.searchset(BASE, "Condition", [("patient", "p1")], Page([], 0, {disclosure.PART2: 2}), 10, 0,
                            lambda r: body, bundle_id, now)
    return {"api-search-part2": orjson.loads(searched), "api-history-part2": orjson.loads(history),
            "api-search-told-withheld": orjson.loads(told)}


def _notification(recorded: str) -> dict[str, Any]:
    """A delivered notification of a Part 2 diagnosis, as notify sends it (full resource, the notice)."""
    sub = replace(_subscription(), content="full-resource")
    event = EventRow("sub-1", 7, "Condition", "c1", 1, "created", recorded, "pending", 0, None, None, None, 0, None)
    condition = _part2_condition()
    screened = Screened((), (event,), {7: "Patient/p1"}, {7: ("Consent/k1",)})
    notice = part2_notice(sub, BASE, screened, recorded)
    return notification_bundle(sub, BASE, "event-notification", [event], recorded, lambda e: condition, notice)


def _events_answer(recorded: str) -> dict[str, Any]:
    """An ``$events`` answer reporting number 6 alone (withheld after a failed attempt) and number 7 in full."""
    sub = replace(_subscription(), content="id-only")
    event = EventRow("sub-1", 7, "Condition", "c1", 1, "created", recorded, "delivered", 1, None, None, None, 0, 0)
    return notification_bundle(sub, BASE, "query-event", [event], recorded, withheld=[6])


@pytest.mark.parametrize("name", sorted(emitted()))
def test_r4_models_accept_them(name: str) -> None:
    resource = emitted()[name]
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)
