"""The pure parts of notify: which changes trigger which topics, filters, subscription validation and the
endpoint allow-list, the consent seam, and the notification Bundles (validated with the R4B models)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from fhir.resources.R4B import get_fhir_model_class

from services.common import part2
from services.common.disclosure import parse_consent
from services.notify.bundles import notification_bundle
from services.notify.consent import PART2_NOTICE, Recipient, decide
from services.notify.delivery import backoff_s, signature
from services.notify.routing import route
from services.notify.store import EventRow
from services.notify.subscriptions import (
    EXT_FILTER,
    EXT_MAX_COUNT,
    EXT_PAYLOAD_CONTENT,
    InvalidSubscription,
    endpoint_refusal,
    parse_subscription,
    render_subscription,
    status_update,
)
from services.notify.topics import (
    BY_CANONICAL,
    TOPIC_BASE,
    TOPICS,
    Change,
    MalformedChange,
    parse_change,
    parse_filter,
    state_of,
    triggered,
)
from tests.consent.consents import consent

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"


def change(resource: dict[str, Any], version: int = 1, kind: str = "created",
           members: tuple[str, ...] = ("Patient/p1",), restriction: int = 0) -> Change:
    return Change(resource["resourceType"], resource["id"], version, "2024-03-01T10:00:00.000Z",
                  kind,  # type: ignore[arg-type]
                  members[0] if members else None, "person-1", members, (), restriction, resource)


def enc(status: str, klass: str = "AMB") -> dict[str, Any]:
    return {"resourceType": "Encounter", "id": "e1", "status": status, "subject": {"reference": "Patient/p1"},
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": klass}}


def names(c: Change, previous: str | None) -> list[str]:
    return [t.name for t in triggered(c, previous)]


def test_every_topic_has_a_canonical_under_one_base_and_a_patient_filter() -> None:
    assert len(TOPICS) == 19
    assert all(t.canonical.startswith(TOPIC_BASE) for t in TOPICS)
    assert all(t.filter("patient") is not None for t in TOPICS)


def test_encounter_started_and_finished_fire_on_the_transition_only() -> None:
    assert names(change(enc("in-progress")), None) == ["encounter-started"]
    assert names(change(enc("in-progress"), 2, "updated"), "in-progress") == []  # updated while in progress
    assert names(change(enc("finished"), 2, "updated"), "in-progress") == ["encounter-finished"]
    assert names(change(enc("finished")), None) == ["encounter-finished"]  # sent once, already finished
    assert names(change(enc("finished"), 3, "updated"), "finished") == []
    assert names(change(enc("planned")), None) == []


def test_assessment_completed_fires_for_instrument_totals_not_items_or_other_observations() -> None:
    total = {"resourceType": "Observation", "id": "o1", "status": "final",
             "code": {"coding": [{"system": LOINC, "code": "44261-6"}]}, "valueQuantity": {"value": 14}}
    item = {**total, "id": "o2", "code": {"coding": [{"system": LOINC, "code": "44260-8"}]}}
    weight = {**total, "id": "o3", "code": {"coding": [{"system": LOINC, "code": "29463-7"}]}}
    assert names(change(total), None) == ["assessment-completed"]
    assert names(change(total, 2, "updated"), "final") == []  # a correction of a completed one
    assert names(change(item), None) == [] and names(change(weight), None) == []
    assert names(change({**total, "status": "preliminary"}), None) == []


def test_safety_alert_and_medication_topics() -> None:
    flag = {"resourceType": "Flag", "id": "f1", "status": "active",
            "code": {"coding": [{"system": SNOMED, "code": "225444004"}]}}
    assert names(change(flag), None) == ["safety-alert-raised"]
    assert names(change({**flag, "code": {"coding": [{"system": SNOMED, "code": "1234"}]}}), None) == []
    rx = {"resourceType": "MedicationRequest", "id": "m1", "status": "active",
          "medicationCodeableConcept": {"coding": [{"system": "rxnorm", "code": "36437"}]}}
    assert names(change(rx), None) == ["medication-prescribed"]
    assert names(change(rx, 2, "updated"), "active") == ["medication-changed"]
    assert names(change({**rx, "id": "m2", "priorPrescription": {"reference": "MedicationRequest/m1"}}),
                 None) == ["medication-changed"]
    assert names(change({**rx, "status": "stopped"}, 3, "updated"), "active") == ["medication-stopped"]


def test_referral_diagnosis_note_care_plan_and_merge_topics() -> None:
    sr = {"resourceType": "ServiceRequest", "id": "s1", "status": "active"}
    assert names(change(sr), None) == ["referral-created"]
    assert names(change({**sr, "status": "completed"}, 2, "updated"), "active") == ["referral-closed"]
    cond = {"resourceType": "Condition", "id": "c1", "code": {"coding": [{"code": "F33.1"}]}}
    assert names(change(cond), None) == ["diagnosis-recorded"]
    assert names(change(cond, 2, "updated"), "") == []
    note = {"resourceType": "DocumentReference", "id": "d1", "status": "current", "docStatus": "final"}
    assert names(change(note), None) == ["note-signed"]
    assert names(change({**note, "docStatus": "preliminary"}), None) == []
    assert names(change({**note, "docStatus": "final"}, 2, "updated"), "current/preliminary") == ["note-signed"]
    assert names(change({**note, "docStatus": "amended"}, 3, "updated"), "current/final") == []
    assert names(change({"resourceType": "CarePlan", "id": "cp", "status": "active"}, 2, "updated"),
                 "active") == ["care-plan-updated"]
    retired = {"resourceType": "Patient", "id": "p1", "link": [{"type": "replaced-by",
                                                               "other": {"reference": "Patient/p2"}}]}
    assert names(change(retired, 2, "updated"), "active") == ["patient-merged"]
    assert state_of(change(retired)) == "merged"
    assert names(change(retired, 3, "updated"), "merged") == []


def test_filters_parse_and_match_patient_through_the_person_and_codes() -> None:
    topic = BY_CANONICAL[TOPIC_BASE + "assessment-completed"]
    total = {"resourceType": "Observation", "id": "o1", "status": "final",
             "code": {"coding": [{"system": LOINC, "code": "44261-6"}]}}
    linked = change(total, members=("Patient/p1", "Patient/p9"))
    sub = _sub(topic.canonical, [parse_filter(topic, "Observation?patient=p9"),
                                 parse_filter(topic, f"code={LOINC}|44261-6")])
    assert [r.subscription_id for r in route(linked, None, [sub], 0)] == ["s1"]
    other = _sub(topic.canonical, [parse_filter(topic, "patient=Patient/p2")])
    assert route(linked, None, [other], 0) == []
    gad = _sub(topic.canonical, [parse_filter(topic, "code=70274-6")])
    assert route(linked, None, [gad], 0) == []
    with pytest.raises(ValueError, match="supports the filters patient, code"):
        parse_filter(topic, "status=final")
    with pytest.raises(ValueError, match="are on Observation"):
        parse_filter(topic, "Encounter?patient=p1")


def test_consent_seam_withholds_uncleared_labels_and_other_compartments_and_notices_part2() -> None:
    psy = change({"resourceType": "Flag", "id": "f"}, restriction=1)
    sud = change({"resourceType": "Flag", "id": "f"}, restriction=2)
    assert decide(Recipient("clinic", 0), psy).outcome == "withhold"
    assert decide(Recipient("clinic", 1), psy).outcome == "deliver"
    assert decide(Recipient("clinic", 1), sud).outcome == "withhold"
    # Part 2 data needs a consent naming the recipient (the disclosure engine), a clearance is not enough
    assert decide(Recipient("clinic", 3), sud).outcome == "withhold"
    partner = "http://hl7.org/fhir/sid/us-npi|1999999984"
    granted = parse_consent(consent("c1", "Patient/p1", org=partner, covered=("SUD", "42CFRPart2")))
    with_notice = decide(Recipient("clinic", 3, organization=partner), sud, [granted])
    assert with_notice.outcome == "deliver-with-notice" and with_notice.notice is not None
    assert with_notice.notice.startswith(PART2_NOTICE) and "Consent/c1" in with_notice.notice
    revoked = parse_consent(consent("c1", "Patient/p1", org=partner, covered=("SUD", "42CFRPart2"),
                                    status="inactive", end="2026-04-01T00:00:00Z"))
    assert decide(Recipient("clinic", 3, organization=partner), sud, [revoked]).outcome == "withhold"
    denied = parse_consent(consent("c2", "Patient/p1", "deny", org=None, covered=("PSY",), purposes=()))
    assert decide(Recipient("clinic", 1), psy, [denied]).outcome == "withhold"  # a deny consent wins
    assert decide(Recipient("app", 1, "Patient/p2"), psy).outcome == "withhold"
    assert decide(Recipient("app", 1, "Patient/p1"), psy).outcome == "deliver"


ALLOW = ["https://ehr.example.org/hooks", "http://127.0.0.1:9999/"]


@pytest.mark.parametrize(("url", "refused"), [
    ("https://ehr.example.org/hooks", None),
    ("https://ehr.example.org/hooks/therapy?x=1", None),
    ("https://ehr.example.org/hooksevil", "allow-list"),
    ("https://ehr.example.org.evil.net/hooks", "allow-list"),
    ("http://ehr.example.org/hooks", "https"),
    ("http://127.0.0.1:9999/receiver", None),
    ("http://127.0.0.1:8082/Patient", "https"),
    ("https://user:pw@ehr.example.org/hooks", "credentials"),
    ("ftp://ehr.example.org/hooks", "https URL"),
    ("https://kafka.internal.svc:9092/", "allow-list"),
])
def test_endpoint_allow_list(url: str, refused: str | None) -> None:
    reason = endpoint_refusal(url, ALLOW)
    assert (reason is None) if refused is None else (reason is not None and refused in reason)


def subscription_resource(**channel: Any) -> dict[str, Any]:
    return {
        "resourceType": "Subscription", "status": "requested", "reason": "therapy EHR",
        "criteria": TOPIC_BASE + "safety-alert-raised",
        "_criteria": {"extension": [{"url": EXT_FILTER, "valueString": "Flag?patient=Patient/p1"}]},
        "channel": {"type": "rest-hook", "endpoint": "https://ehr.example.org/hooks",
                    "payload": "application/fhir+json",
                    "_payload": {"extension": [{"url": EXT_PAYLOAD_CONTENT, "valueCode": "full-resource"}]},
                    "extension": [{"url": EXT_MAX_COUNT, "valuePositiveInt": 5}], **channel},
    }


def test_a_valid_subscription_round_trips_and_renders_as_valid_fhir() -> None:
    sub = parse_subscription(subscription_resource(header=["Authorization: Bearer abc"]), allowlist=ALLOW,
                             client="clinic", clearances=1, patient=None)
    assert sub.status == "requested" and sub.content == "full-resource" and sub.max_count == 5
    served = render_subscription(sub)
    get_fhir_model_class("Subscription").model_validate(served)
    assert served["channel"]["header"] == ["Authorization: [redacted]"]
    # the secret is served only once, in the create's answer
    assert not any("signing-secret" in e["url"] for e in served["extension"])
    assert render_subscription(sub, include_secret=True)["extension"][-1]["valueString"] == sub.secret
    off = status_update(sub, {"resourceType": "Subscription", "status": "off"})
    assert off.status == "off" and off.endpoint == sub.endpoint


@pytest.mark.parametrize(("change_to", "element"), [
    ({"criteria": "https://carebus.dev/fhir/SubscriptionTopic/nope"}, "Subscription.criteria"),
    ({"status": "active", "reason": ""}, "Subscription.reason"),
    ({"channel": {"type": "websocket"}}, "Subscription.channel.type"),
    ({"channel": {"type": "rest-hook", "endpoint": "https://elsewhere.example/"}}, "Subscription.channel.endpoint"),
    ({"channel": {"type": "rest-hook", "endpoint": "https://ehr.example.org/hooks", "header": ["Host: x"]}},
     "Subscription.channel.header[0]"),
    ({"channel": {"type": "rest-hook", "endpoint": "https://ehr.example.org/hooks",
                  "_payload": {"extension": [{"url": EXT_PAYLOAD_CONTENT, "valueCode": "everything"}]}}},
     "Subscription.channel.payload.extension('backport-payload-content')"),
    ({"end": "not-a-date"}, "Subscription.end"),
])
def test_invalid_subscriptions_name_the_element(change_to: dict[str, Any], element: str) -> None:
    resource = {**subscription_resource(), **change_to}
    with pytest.raises(InvalidSubscription) as info:
        parse_subscription(resource, allowlist=ALLOW, client="c", clearances=0, patient=None)
    assert info.value.element == element


def test_a_patient_bound_token_may_only_subscribe_to_its_own_patient() -> None:
    with pytest.raises(InvalidSubscription, match="its own patient"):
        parse_subscription(subscription_resource(), allowlist=ALLOW, client="app", clearances=1,
                           patient="Patient/p2")
    assert parse_subscription(subscription_resource(), allowlist=ALLOW, client="app", clearances=1,
                              patient="Patient/p1").patient == "Patient/p1"


def _sub(topic: str, filters: list[Any], content: str = "id-only") -> Any:
    sub = parse_subscription({**subscription_resource(), "criteria": topic, "_criteria": {}}, allowlist=ALLOW,
                             client="clinic", clearances=7, patient=None, subscription_id="s1")
    from dataclasses import replace

    return replace(sub, status="active", filters=tuple(filters), content=content)  # type: ignore[arg-type]


@pytest.mark.parametrize("content", ["empty", "id-only", "full-resource"])
def test_notification_bundles_are_valid_r4_history_bundles_with_the_status_first(content: str) -> None:
    sub = _sub(TOPIC_BASE + "safety-alert-raised", [], content)
    events = [EventRow("s1", n, "Flag", f"f{n}", 1, "created", "2024-03-01T10:00:00.000Z", "pending", 0, None,
                       None, PART2_NOTICE if n == 2 else None, 0, None) for n in (1, 2)]
    flag = {"resourceType": "Flag", "id": "f1", "status": "active", "code": {"text": "risk"},
            "subject": {"reference": "Patient/p1"}}
    notice = part2.disclosure_notice(part2.notice_id("s1", "2"), "2024-03-01T10:00:01.000Z", ["Flag/f2"],
                                     ["Consent/c1"], "https://fhir.example/r4", "TREAT")
    bundle = notification_bundle(sub, "https://fhir.example/r4", "event-notification", events,
                                 "2024-03-01T10:00:01.000Z", lambda e: flag if e.resource_id == "f1" else None,
                                 notice)
    get_fhir_model_class("Bundle").model_validate(bundle)
    assert bundle["entry"][-1]["resource"] == notice  # the 42 CFR 2.32 notice travels as a Provenance entry
    assert part2.STATEMENT_1[:60] in notice["text"]["div"]
    assert bundle["type"] == "history"
    status = bundle["entry"][0]["resource"]
    assert status["resourceType"] == "Parameters"
    by_name = [p["name"] for p in status["parameter"]]
    assert by_name[:5] == ["subscription", "topic", "status", "type", "events-since-subscription-start"]
    numbers = [next(part["valueString"] for part in p["part"] if part["name"] == "event-number")
               for p in status["parameter"] if p["name"] == "notification-event"]
    assert numbers == ["1", "2"]
    focus_entries = bundle["entry"][1:-1]
    if content == "empty":
        assert focus_entries == []
    else:
        assert [e["fullUrl"] for e in focus_entries] == ["https://fhir.example/r4/Flag/f1",
                                                         "https://fhir.example/r4/Flag/f2"]
        assert ("resource" in focus_entries[0]) == (content == "full-resource")
        assert "resource" not in focus_entries[1]  # not visible any more: id-only
    assert bundle["meta"]["security"][0]["code"] == "NORDSCLCD"


def test_signature_and_backoff() -> None:
    assert signature("s" * 32, b"{}") == signature("s" * 32, b"{}") != signature("t" * 32, b"{}")
    assert signature("s" * 32, b"{}").startswith("sha256=")
    delays = [backoff_s(n, 1.0, 600.0, lambda: 1.0) for n in range(1, 13)]
    assert delays[:4] == [1.0, 2.0, 4.0, 8.0] and delays[-1] == 600.0
    assert backoff_s(3, 1.0, 600.0, lambda: 0.0) == 2.0  # jitter: between half and all of the ceiling


@pytest.mark.parametrize("kind", ["created", "updated", "deleted"])
def test_a_change_of_each_kind_is_read(kind: str) -> None:
    value = orjson.dumps({"resourceType": "Observation", "id": "o1", "versionId": 2,
                          "lastUpdated": "2026-01-01T00:00:00Z", "change": kind})
    assert parse_change(value).kind == kind


def test_a_change_of_an_unknown_kind_is_malformed_not_passed_on() -> None:
    value = orjson.dumps({"resourceType": "Observation", "id": "o1", "versionId": 2,
                          "lastUpdated": "2026-01-01T00:00:00Z", "change": "patched"})
    with pytest.raises(MalformedChange):
        parse_change(value)


def test_outcome_topics_fire_once_per_new_fact() -> None:
    outcomes = "urn:carebus:codesystem:outcomes"

    def episode(version: int, *facts: str) -> Change:
        components = [{"code": {"coding": [{"system": outcomes, "code": "follow-up-overdue"}]}, "valueBoolean": False}]
        components += [{"code": {"coding": [{"system": outcomes, "code": f}]}, "valueDateTime": f"2025-0{n + 1}-01"}
                       for n, f in enumerate(facts)]
        return change({"resourceType": "Observation", "id": "ep", "status": "preliminary",
                       "code": {"coding": [{"system": outcomes, "code": "phq-9-episode"}]}, "component": components},
                      version, "created" if version == 1 else "updated")

    started = episode(1, "episode-started")
    assert names(started, None) == ["outcome-changed"]
    responding = episode(2, "episode-started", "partial-response-reached", "response-reached")
    assert names(responding, state_of(started)) == ["outcome-changed", "outcome-response-reached"]
    assert names(episode(3, "episode-started", "partial-response-reached", "response-reached"),
                 state_of(responding)) == ["outcome-changed"]  # a recompute with the same facts
    worse = episode(4, "episode-started", "response-reached", "deterioration")
    assert names(worse, state_of(responding)) == ["outcome-changed", "outcome-deterioration"]
    again = episode(5, "episode-started", "response-reached", "deterioration", "deterioration", "follow-up-overdue",
                    "remission-reached")
    assert names(again, state_of(worse)) == ["outcome-changed", "outcome-remission-reached", "outcome-deterioration",
                                             "outcome-follow-up-overdue"]
    assert state_of(again) == ("outcome:deterioration=2,episode-started=1,follow-up-overdue=1,"
                               "remission-reached=1,response-reached=1")
    first_seen = episode(1, "episode-started", "remission-reached")  # a history that arrived at once
    assert "outcome-remission-reached" in names(first_seen, None)
    score = {"resourceType": "Observation", "id": "o1", "status": "final",
             "code": {"coding": [{"system": LOINC, "code": "44261-6"}]}}
    assert state_of(change(score)) == "final"  # other Observations keep their status as state
