"""The sample care journey (devstack/journey.py) is valid end to end and tells the story it claims."""

from __future__ import annotations

import datetime as dt
import itertools
from collections import Counter

import pytest

from devstack.journey import (
    EMPI,
    PRIMARY_CARE,
    PSYCHIATRY,
    THERAPY,
    distinct_people_events,
    people,
    person_journey,
    sample_care_journey,
)
from services.common.events import parse_event, patient_key
from services.mapper.result import SafetyAlert
from tests.mapping.helpers import mapped, one, resources

START = dt.datetime(2025, 3, 3, 15, 0, tzinfo=dt.UTC)


def test_every_journey_event_parses_maps_and_validates() -> None:
    events = sample_care_journey(START)
    results = [mapped(event) for event in events]
    assert len(results) == len(events) >= 40
    assert len({event["id"] for event in events}) == len(events)


def test_three_sources_one_person() -> None:
    events = sample_care_journey(START)
    registrations = [e for e in events if e["type"] == "org.carebus.patient.registered.v1"]
    assert {e["source"] for e in registrations} == {PRIMARY_CARE, THERAPY, PSYCHIATRY}
    assert len({e["data"]["patient_id"] for e in registrations}) == 3
    for registration in registrations:
        assert EMPI in registration["data"]["identifiers"]
        patient = one(mapped(registration), "Patient")
        assert {"system": EMPI["system"], "value": EMPI["value"]} in patient["identifier"]
    keys = {patient_key(parse_event(e)) for e in events}
    assert len(keys) == 3  # one Kafka key per source patient


def test_the_story() -> None:
    events = sample_care_journey(START)
    types = Counter(e["type"].removeprefix("org.carebus.").removesuffix(".v1") for e in events)
    assert types["referral.created"] == 2 and types["referral.closed"] == 1
    for needed in (
        "careplan.updated",
        "consent.granted",
        "lab.resulted",
        "note.signed",
        "medication.changed",
    ):
        assert types[needed] >= 1, needed
    assessments = [e for e in events if e["type"] == "org.carebus.assessment.completed.v1"]
    by_source = Counter((e["source"], e["data"]["instrument"]) for e in assessments)
    assert by_source[(PRIMARY_CARE, "phq-9")] == 1
    assert by_source[(THERAPY, "phq-9")] >= 6 and by_source[(THERAPY, "gad-7")] >= 3
    cbt = [
        e for e in events if e["type"].endswith("session.completed.v1") and e["data"].get("modality") == "cbt"
    ]
    starts = sorted(dt.datetime.fromisoformat(e["data"]["start"]) for e in cbt)
    assert len(cbt) >= 6 and all((b - a).days == 7 for a, b in itertools.pairwise(starts))
    evaluation = [e for e in events if e["data"].get("kind") == "psychiatric-evaluation"]
    assert len(evaluation) == 1 and evaluation[0]["source"] == PSYCHIATRY
    diagnosis = [
        e for e in events if e["type"].endswith("diagnosis.recorded.v1") and e["source"] == PSYCHIATRY
    ]
    assert diagnosis[0]["data"]["code"]["code"].startswith("F32")
    prescriptions = [
        e for e in events if e["type"].endswith(("medication.prescribed.v1", "medication.changed.v1"))
    ]
    assert [p["data"]["medication"]["code"] for p in prescriptions] == ["36437", "36437"]
    assert [p["data"]["dose"]["value"] for p in prescriptions] == [50, 100]


def test_exactly_one_phq9_with_positive_item9_raises_the_alert() -> None:
    alerts: list[SafetyAlert] = []
    for event in sample_care_journey(START):
        if event["type"].endswith("assessment.completed.v1"):
            result = mapped(event)
            alerts.extend(result.alerts)
            if result.alerts:
                assert one(result, "Flag")["id"] == result.alerts[0].flag_id
    assert [a.kind for a in alerts] == ["phq9-item9"]


def test_reported_totals_agree_with_the_items() -> None:
    for event in sample_care_journey(START):
        if event["type"].endswith("assessment.completed.v1"):
            result = mapped(event)
            assert result.data_quality == (), event["id"]
            assert len(resources(result, "Observation")) >= 8


def test_chronological_and_deterministic() -> None:
    events = sample_care_journey(START)
    times = [dt.datetime.fromisoformat(e["time"]) for e in events]
    assert times == sorted(times)
    assert sample_care_journey(START) == events
    later = sample_care_journey(START + dt.timedelta(days=30))
    assert [e["id"] for e in later] == [e["id"] for e in events]
    assert dt.datetime.fromisoformat(later[0]["time"]) - times[0] == dt.timedelta(days=30)


def test_other_timezones_are_fine_and_naive_start_is_refused() -> None:
    eastern = dt.timezone(dt.timedelta(hours=-5))
    for event in sample_care_journey(dt.datetime(2025, 3, 3, 10, 0, tzinfo=eastern))[:5]:
        mapped(event)
    with pytest.raises(ValueError, match="timezone"):
        sample_care_journey(dt.datetime(2025, 3, 3, 10, 0))


def test_distinct_people_have_their_own_ids_demographics_and_resources() -> None:
    crowd = people(300, seed=7)
    assert crowd == people(300, seed=7) and crowd != people(300, seed=8)  # deterministic from the seed
    assert len({p.empi for p in crowd}) == 300
    assert len({(p.family, p.given, p.birth_date) for p in crowd}) >= 295  # a few namesakes, as in life
    assert len({p.gender for p in crowd}) >= 2 and len({p.birth_date[:3] for p in crowd}) >= 6

    journeys = [person_journey(p, START) for p in crowd[:3]]
    resource_ids: list[set[str]] = []
    for events in journeys:
        assert [e["type"] for e in events] == [e["type"] for e in sample_care_journey(START)]
        registered = [e["data"] for e in events if e["type"] == "org.carebus.patient.registered.v1"]
        assert len({tuple(sorted(i["value"] for i in r["identifiers"])) for r in registered}) == 3  # one per source
        ids = set()
        for event in events:
            bundle = mapped(event).bundle
            ids.update(f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle["entry"])
        resource_ids.append(ids)
    assert not resource_ids[0] & resource_ids[1] and not resource_ids[1] & resource_ids[2]
    events = distinct_people_events(100, START)
    assert len(events) == 100 and len({e["id"] for e in events}) == 100
