"""The general bundle topic: the filter (pure) and the service through the real broker (same keys, same
per-key order, no labelled content, nothing that says something was removed)."""

from __future__ import annotations

import threading
from typing import Any

import orjson
import pytest

from services.common.event_headers import parse_security_header
from services.common.kafka import RecordProducer, build_consumer, ensure_topics
from services.common.metrics import Metrics
from services.common.settings import Settings
from services.common.topics import CATALOGUE, FHIR_BUNDLES, GENERAL_BUNDLES, HEADER_SECURITY
from services.general.filter import general_bundle
from services.general.service import GeneralTopicService
from tests.consent.consents import LABEL_SETS, consent_state
from tests.consent.test_decision import STATES
from tests.consent.test_record_enforcement import _labelled
from tests.kafka_helpers import header, read_all
from tests.record.conftest import validate_fhir
from tests.record.fhir_data import (
    CLINIC,
    SUD_PROGRAM,
    T0,
    Event,
    body_weight,
    depression_condition,
    iso,
    opioid_use_condition,
    patient,
    patient_id,
    unique,
)

RESTRICTED = {"PSY", "MH", "BH", "SUD", "42CFRPart2", "ETHUD", "OPIOIDUD", "ETH", "PSYTHPN"}


def _provenance(targets: list[dict[str, Any]], labels: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Provenance", "id": unique("prov-"), "meta": {"security": labels},
            "target": [{"reference": f"{t['resourceType']}/{t['id']}"} for t in targets],
            "recorded": "2025-01-01T00:00:00Z",
            "agent": [{"who": {"display": "carebus mapper"}}]}


def mixed_event(source: Any = CLINIC) -> tuple[Event, dict[str, dict[str, Any]]]:
    mrn = unique("gen-")
    pid = patient_id(source, mrn)
    resources = {
        "patient": patient(source, mrn),
        "weight": body_weight(source, pid, f"{mrn}-w", iso(T0), 70.0),
        "dx": depression_condition(source, pid, f"{mrn}-dx", iso(T0)),
        "oud": opioid_use_condition(source, pid, f"{mrn}-oud", iso(T0)),
    }
    labels = [c for r in resources.values() for c in r.get("meta", {}).get("security", [])]
    unique_labels = list({c["code"]: c for c in labels}.values())
    resources["provenance"] = _provenance(list(resources.values()), unique_labels)
    return Event(source, mrn, list(resources.values())), resources


def test_filter_keeps_ordinary_data_only_and_says_nothing_about_the_rest() -> None:
    event, resources = mixed_event()
    value, security = general_bundle(orjson.dumps(event.bundle()))
    bundle = orjson.loads(value)
    validate_fhir(bundle)
    kept = {e["resource"]["id"] for e in bundle["entry"]}
    assert kept == {resources["patient"]["id"], resources["weight"]["id"], resources["provenance"]["id"]}
    provenance = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Provenance")
    assert {t["reference"] for t in provenance["target"]} == {
        f"Patient/{resources['patient']['id']}", f"Observation/{resources['weight']['id']}"}
    text = value.decode()
    assert resources["dx"]["id"] not in text and resources["oud"]["id"] not in text
    assert not RESTRICTED & {code for _, code in parse_security_header(security)} and "REDACTED" not in text
    assert not any(c["code"] in RESTRICTED for c in bundle.get("meta", {}).get("security", []))


@pytest.mark.parametrize("label_class", sorted(LABEL_SETS))
def test_matrix_exit_general_topic(label_class: str) -> None:
    """The consent matrix's general-topic column: the topic is shared by every vendor without clearance, so no
    one recipient's consent applies to it - whatever the consent state, a resource of any label class is removed,
    and only unlabelled data goes (tests/consent/test_decision.py has the other exits)."""
    mrn = unique("genm-")
    pid = patient_id(CLINIC, mrn)
    resource = _labelled(body_weight(CLINIC, pid, f"{mrn}-{label_class}", iso(T0), 70.0), LABEL_SETS[label_class])
    value, security = general_bundle(orjson.dumps(Event(CLINIC, mrn, [patient(CLINIC, mrn), resource]).bundle()))
    kept = {e["resource"]["id"] for e in orjson.loads(value).get("entry", [])}
    assert (resource["id"] in kept) is (label_class == "none"), label_class
    assert patient_id(CLINIC, mrn) in kept
    assert not RESTRICTED & {code for _, code in parse_security_header(security)}


def test_filter_of_a_part2_program_bundle_leaves_an_empty_collection() -> None:
    event, _ = mixed_event(SUD_PROGRAM)  # every resource of a Part 2 program is Part 2 data
    value, security = general_bundle(orjson.dumps(event.bundle()))
    bundle = orjson.loads(value)
    validate_fhir(bundle)
    assert "entry" not in bundle and security == "[]"
    with pytest.raises(ValueError):
        general_bundle(b'{"resourceType":"Patient"}')


def matrix_cells() -> dict[tuple[str, str], tuple[Event, str]]:
    """One patient per cell of the matrix's general-topic column (label class x consent state): the patient's
    consents of that state and one resource of that label class, in one bundle; the resource's id."""
    cells: dict[tuple[str, str], tuple[Event, str]] = {}
    for label_class in sorted(LABEL_SETS):
        for state in STATES:
            mrn = unique("genc-")
            pid = patient_id(CLINIC, mrn)
            consents = [{**c, "id": f"{c['id']}-{mrn}"} for c in consent_state(state, label_class, f"Patient/{pid}")]
            resource = _labelled(body_weight(CLINIC, pid, f"{mrn}-{label_class}", iso(T0), 70.0),
                                 LABEL_SETS[label_class])
            cells[label_class, state] = Event(CLINIC, mrn, [patient(CLINIC, mrn), *consents, resource]), resource["id"]
    return cells


@pytest.mark.integration
def test_service_keeps_keys_and_order(settings: Settings) -> None:
    """Through the real broker and service: the same keys and per-key order as the full topic, no labelled
    content, and the matrix's general-topic column (whatever the consent state, only unlabelled data goes)."""
    ensure_topics(settings, CATALOGUE)
    events = []
    for _ in range(3):  # three patients, four bundles each, interleaved
        first, _ = mixed_event()
        events.append([first] + [Event(CLINIC, first.mrn, first.resources[:2]) for _ in range(3)])
    cells = matrix_cells()
    interleaved = [e for group in zip(*events, strict=True) for e in group] + [e for e, _ in cells.values()]
    producer = RecordProducer(settings, "test-general-source")
    try:
        producer.send_all_and_wait([e.record(settings.topic_prefix) for e in interleaved])
    finally:
        producer.close()
    source, target = FHIR_BUNDLES.name(settings.topic_prefix), GENERAL_BUNDLES.name(settings.topic_prefix)
    consumer = build_consumer(settings, "test-general", f"general-{settings.topic_prefix}", [source])
    service = GeneralTopicService(consumer, RecordProducer(settings, "test-general"), target, Metrics())
    stop = threading.Event()
    worker = threading.Thread(target=service.run, args=(stop,), daemon=True)
    worker.start()
    try:
        out = read_all(settings, target, until=lambda rs: len(rs) >= len(interleaved))
    finally:
        stop.set()
        worker.join(timeout=30)
        service.close()
    full = read_all(settings, source, until=lambda rs: len(rs) >= len(interleaved))
    assert len(out) == len(full) == len(interleaved)
    by_partition_out = sorted((r.partition, r.offset, r.key, header(r, "ce_id")) for r in out)
    by_partition_in = sorted((r.partition, r.offset, r.key, header(r, "ce_id")) for r in full)
    assert [(p, k, i) for p, _, k, i in by_partition_out] == [(p, k, i) for p, _, k, i in by_partition_in]
    for record in out:
        assert not RESTRICTED & set((header(record, HEADER_SECURITY) or "").split(","))
        assert b"F11.20" not in record.value  # the opioid-use diagnosis code never appears
    kept = {e["resource"]["id"] for r in out for e in orjson.loads(r.value).get("entry", [])}
    outcomes = {cell: resource_id in kept for cell, (_event, resource_id) in cells.items()}
    assert outcomes == {(label_class, state): label_class == "none" for label_class, state in cells}
    assert all(patient_id(CLINIC, event.mrn) in kept for event, _ in cells.values())
