"""Everything the pipeline emits, gathered once per test session and run through the HL7 validator once.

What goes in, through the real services (intake's HTTP API -> the real broker -> the mapper service -> the bundle
topic), as a hospital runs them: one intake and one mapper for every sender, in sequence:
  - every schema example (schemas/events/*.schema.json) and the sample care journey (devstack/journey.py),
  - the demo's hospital feed (an ADT A01 and a FHIR GAD-7 from devstack/hospital_feed.py),
  - every HL7 v2 sample (tests/samples/hl7v2) to /hl7v2, every FHIR sample (tests/samples/fhir) to /fhir.
An HL7 v2 sample that intake acknowledges but that yields no bundle (issue 10 item 1: the resend memory drops a
message that reuses another's MSH-4 + MSH-10) is mapped in process by the same mapper pipeline instead, so its
content is validated all the same; ``Gathered.dropped`` names them and a test keeps that list narrow.

Each distinct resource (same content emitted by many bundles counts once) is written to a folder, with a few
known-bad control resources that prove the validator finds errors; one JVM validates the folder. The same folder
holds what the other emitting suites build (``EXTRA_SETS``: the disclosure side's AuditEvents, Part 2 notice and
notifications, tests/consent/test_validation.py; the outcomes work's resources, tests/outcomes/test_hapi_outcomes.py)
and, per set, one broken copy of its first resource that must fail, so that no suite starts a JVM of its own
(tests/validation/test_emitted_sets.py checks them).

The bundles also go into a record service (the real one: consumer on the bundle topic, SQLite store, API under
uvicorn on a loopback port), and the same JVM first runs the HAPI FHIR generic client against that live API
(tests/validation/hapi.py ``ClientCheck``): read, search paged to the end, history since, conditional read,
every answer parsed strictly. ``Gathered.client`` holds what it saw and what the API answers to a plain client.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from devstack.hospital_feed import admission_adt_a01, feed_times, gad7_bundle
from devstack.journey import sample_care_journey
from services.common.hl7v2 import inspect_message
from services.common.kafka import RecordProducer
from services.common.metrics import Metrics
from services.common.runtime import prepare_topics
from services.common.settings import REPO_ROOT, RecordTokenGrant, Settings
from services.common.topics import FHIR_BUNDLES, INBOUND_EVENTS
from services.intake.app import create_app
from services.mapper.pipeline import Pipeline, TopicNames
from services.record.service import build_service
from services.record.store import identity_policy, open_store
from tests.consent.test_validation import emitted as disclosure_resources
from tests.fhir_in.test_fidelity import mixed_post, sdc_phq9
from tests.hl7v2.test_validation_once import inbound
from tests.integration.test_pipeline import mapper, run_until, schema_examples
from tests.kafka_helpers import header, read_all
from tests.outcomes.test_hapi_outcomes import resources as outcome_resources
from tests.record.conftest import HOSPITAL_ORG, ServerThread
from tests.senders import TEST_INTAKE_GRANTS, TEST_INTAKE_HEADERS
from tests.validation.hapi import ClientCheck, Result, validate_folder

SAMPLES = REPO_ROOT / "tests" / "samples"
FHIR_SOURCE = "urn:carebus:source:fhir-samples"
JOURNEY_START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
CLIENT_TOKEN = "validation-hapi-client-token"  # noqa: S105 - a test token
CLIENT_GRANT = RecordTokenGrant(scopes=["system/*.read"],
                                clearances=["behavioral-health", "part2", "psychotherapy-notes"],
                                organization=HOSPITAL_ORG, label="HAPI client check")

# Resources that must fail validation: if the validator stops finding these, it is not checking anything.
CONTROLS: dict[str, dict[str, Any]] = {
    "control-bad-gender": {"resourceType": "Patient", "id": "control-1", "gender": "woman"},
    "control-unknown-profile": {
        "resourceType": "Patient", "id": "control-2",
        "meta": {"profile": ["http://example.org/StructureDefinition/no-such-profile"]}},
    "control-us-core-unmet": {  # us-core-patient needs identifier and name
        "resourceType": "Patient", "id": "control-3", "gender": "female",
        "meta": {"profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient|6.1.0"]}},
    "control-v2-table-code": {  # a code that is not in an HL7 code system
        "resourceType": "Encounter", "id": "control-4", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v2-0004", "code": "FF"}},
}


def _outcome_set() -> dict[str, dict[str, Any]]:
    return {f"{n:03d}-{r['resourceType']}": r for n, r in enumerate(outcome_resources())}


# What other suites emit, validated in this run: set name -> its resources by name.
EXTRA_SETS: dict[str, Callable[[], dict[str, dict[str, Any]]]] = {
    "disclosure": disclosure_resources,
    "outcomes": _outcome_set,
}
BROKEN = "broken"  # per set: its first resource with an element FHIR R4 does not have (the validator must say so)


def broken_copy(resource: dict[str, Any]) -> dict[str, Any]:
    return {**resource, "carebusNotAnElement": True}


@dataclass
class ExtraSet:
    """One suite's resources as validated here: what was written (by name) and the validator's result of each,
    and of the broken copy."""

    resources: dict[str, dict[str, Any]]
    results: dict[str, Result] = field(default_factory=dict)
    broken: Result | None = None


@dataclass
class Emitted:
    """One distinct resource the pipeline emitted, and where it came from (e.g. ``hl7v2/ADT-A01-01.hl7``)."""

    resource: dict[str, Any]
    sources: list[str]
    result: Result | None = None


@dataclass
class ClientRun:
    """The HAPI generic client's run against the live record API, and the API's answer to a plain client."""

    results: dict[str, Any]  # CarebusClientCheck.java's client.json
    patient_id: str
    page_size: int
    expected_ids: list[str]  # Observation?patient=<id> with one big page, by httpx


@dataclass
class Gathered:
    emitted: list[Emitted]
    controls: dict[str, Result]
    sources_sent: list[str]  # every input that was accepted
    sources_with_bundle: set[str]
    dropped: list[str]  # HL7 samples acknowledged but without a bundle from the topic (mapped in process)
    refused: dict[str, int] = field(default_factory=dict)  # inputs intake refused: source -> HTTP status
    client: ClientRun | None = None
    extras: dict[str, ExtraSet] = field(default_factory=dict)


@dataclass
class _Input:
    source: str
    path: str  # intake route
    body: bytes
    content_type: str
    event_ids: list[str]
    headers: dict[str, str] = field(default_factory=dict)


def _inputs() -> list[_Input]:
    out: list[_Input] = []
    for example in schema_examples():
        out.append(_Input(f"schema-example/{example['type']}", "/events", orjson.dumps(example),
                          "application/cloudevents+json", [example["id"]]))
    journey = sample_care_journey(JOURNEY_START)
    out.append(_Input("journey", "/events", orjson.dumps(journey), "application/cloudevents-batch+json",
                      [event["id"] for event in journey]))
    admitted, assessed = feed_times(JOURNEY_START)
    adt = admission_adt_a01(admitted, "NGH-VALIDATION-1")
    out.append(_Input("demo/hospital-adt-a01", "/hl7v2", adt.encode(), "x-application/hl7-v2+er7",
                      [inspect_message(adt).event_id]))
    out.append(_Input("demo/gad7-bundle", "/fhir", orjson.dumps(gad7_bundle(assessed)), "application/fhir+json",
                      ["demo-gad7"], {"x-carebus-source": "urn:carebus:source:calmly-app",
                                      "x-carebus-event-id": "demo-gad7"}))
    for path in sorted((SAMPLES / "hl7v2").glob("*.hl7")):
        text = path.read_bytes().decode("utf-8")
        out.append(_Input(f"hl7v2/{path.name}", "/hl7v2", text.encode(), "x-application/hl7-v2+er7",
                          [inspect_message(text).event_id]))
    for path in sorted((SAMPLES / "fhir").glob("*.json")):
        event_id = f"fhir-sample-{path.stem}"
        out.append(_Input(f"fhir/{path.name}", "/fhir", path.read_bytes(), "application/fhir+json", [event_id],
                          {"x-carebus-source": FHIR_SOURCE, "x-carebus-event-id": event_id}))
    # FHIR-in as issue 10 items 3-5 need it: the SDC PHQ-9 made R4 (the form's own linkIds, item 9 positive:
    # scored, Flag), and a post naming its patient by fullUrl, Type/id, absolute and versioned references
    for name, payload in (("fhir-in/sdc-phq9-r4", sdc_phq9()), ("fhir-in/mixed-references", mixed_post())):
        event_id = name.replace("/", "-")
        out.append(_Input(name, "/fhir", orjson.dumps(payload), "application/fhir+json", [event_id],
                          {"x-carebus-source": FHIR_SOURCE, "x-carebus-event-id": event_id}))
    return out


async def _send(settings: Settings, inputs: list[_Input]) -> tuple[list[_Input], dict[str, int]]:
    producer = RecordProducer(settings, "validation-intake")
    app = create_app(settings, producer, Metrics(), lambda: (True, "ok"))
    accepted: list[_Input] = []
    refused: dict[str, int] = {}
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://intake") as client:
            for item in inputs:
                response = await client.post(item.path, content=item.body, headers={
                    "content-type": item.content_type, **TEST_INTAKE_HEADERS, **item.headers})
                ok = response.status_code == 202 or (item.path == "/hl7v2" and "MSA|AA" in response.text)
                if ok:
                    accepted.append(item)
                else:
                    refused[item.source] = response.status_code
    finally:
        producer.close()
    return accepted, refused


def _gather(settings: Settings, workdir: Path) -> Gathered:
    prepare_topics(settings)
    accepted, refused = asyncio.run(_send(settings, _inputs()))
    written = read_all(settings, INBOUND_EVENTS.name(settings.topic_prefix), timeout_s=20)
    service = mapper(settings)
    try:
        run_until(service, len(written), max_polls=400)
    finally:
        service.close()
    records = read_all(settings, FHIR_BUNDLES.name(settings.topic_prefix),
                       until=lambda rs: len(rs) >= service.stats.bundles, timeout_s=20)
    # several inputs may share an event id (HL7 v2: sender + MSH-10): their bundles, in order, go to them in order
    bundles: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        bundles[header(record, "ce_carebuseventid") or ""].append(orjson.loads(record.value))

    by_content: dict[bytes, Emitted] = {}

    def emit(bundle: dict[str, Any], source: str) -> None:
        for entry in bundle.get("entry", []):
            resource = entry["resource"]
            key = orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)
            if key in by_content:
                if source not in by_content[key].sources:
                    by_content[key].sources.append(source)
            else:
                by_content[key] = Emitted(resource, [source])

    with_bundle: set[str] = set()
    dropped: list[str] = []
    topics = TopicNames.for_prefix(settings.topic_prefix)
    pipeline = Pipeline(topics)
    for item in accepted:
        found = [bundles[event_id].pop(0) for event_id in item.event_ids if bundles.get(event_id)]
        if found:
            with_bundle.add(item.source)
        elif item.path == "/hl7v2":
            dropped.append(item.source)
            outcome = pipeline.process(inbound(item.body.decode("utf-8")))
            found = [orjson.loads(r.value) for r in outcome.records if r.topic == topics.bundles]
        for bundle in found:
            emit(bundle, item.source)

    emitted = list(by_content.values())
    folder = workdir / "resources"
    folder.mkdir()
    names: dict[str, Emitted] = {}
    for index, item in enumerate(emitted):
        tag = item.sources[0].replace("/", "_")
        name = f"{index:05d}-{tag}-{item.resource['resourceType']}.json"
        (folder / name).write_text(json.dumps(item.resource), encoding="utf-8")
        names[name] = item
    for name, resource in CONTROLS.items():
        (folder / f"zz-{name}.json").write_text(json.dumps(resource), encoding="utf-8")
    extras: dict[str, ExtraSet] = {}
    extra_files: dict[str, tuple[str, str]] = {}  # file -> (set, resource name or BROKEN)
    for set_name, build in EXTRA_SETS.items():
        extra = extras[set_name] = ExtraSet(build())
        for name, resource in [*extra.resources.items(), (BROKEN, broken_copy(next(iter(extra.resources.values()))))]:
            file = f"xs-{set_name}-{name}.json"
            (folder / file).write_text(json.dumps(resource), encoding="utf-8")
            extra_files[file] = (set_name, name)
    controls: dict[str, Result] = {}
    client, results = _validate_with_client(settings, records, workdir, folder)
    for result in results:
        if result.file in names:
            names[result.file].result = result
        elif result.file in extra_files:
            set_name, name = extra_files[result.file]
            if name == BROKEN:
                extras[set_name].broken = result
            else:
                extras[set_name].results[name] = result
        else:
            controls[result.file.removeprefix("zz-").removesuffix(".json")] = result
    return Gathered(emitted=emitted, controls=controls, sources_sent=[item.source for item in accepted],
                    sources_with_bundle=with_bundle, dropped=dropped, refused=refused, client=client, extras=extras)


def _most_observed_patient(records: list[Any]) -> str:
    counts: Counter[str] = Counter()
    for record in records:
        for entry in orjson.loads(record.value).get("entry", []):
            resource = entry.get("resource", {})
            if resource.get("resourceType") == "Observation":
                counts[str(resource.get("subject", {}).get("reference", "")).removeprefix("Patient/")] += 1
    counts.pop("", None)
    return counts.most_common(1)[0][0]


def _validate_with_client(settings: Settings, records: list[Any], workdir: Path, folder: Path
                          ) -> tuple[ClientRun, list[Result]]:
    """The record service on the bundle topic, then one JVM: the HAPI client against it, then the validator."""
    store = open_store(f"sqlite:///{workdir}/record.db", identity_policy(settings))
    service = build_service(settings, store=store)
    service.start()
    http = ServerThread(service.app).start()
    try:
        assert service.ingestor.wait_for([(r.partition, r.offset) for r in records], timeout_s=120)
        patient = _most_observed_patient(records)
        expected: list[str] = []
        with httpx.Client(base_url=http.base_url, timeout=30,
                          headers={"Authorization": f"Bearer {CLIENT_TOKEN}"}) as plain:
            url: str | None = f"/Observation?patient={patient}&_count=1000"
            while url:
                page = plain.get(url).raise_for_status().json()
                expected += [e["resource"]["id"] for e in page.get("entry", [])
                             if e["resource"]["resourceType"] == "Observation"]
                url = next((link["url"] for link in page.get("link", []) if link["relation"] == "next"), None)
        page_size = max(1, len(expected) // 3)
        check = ClientCheck(http.base_url, CLIENT_TOKEN, patient, page_size, workdir / "client.json")
        results = validate_folder(folder, REPO_ROOT / ".cache", client=check)
        run = ClientRun(json.loads(check.out.read_text(encoding="utf-8")), patient, page_size, expected)
    finally:
        http.stop()
        service.stop()
    return run, results


@pytest.fixture(scope="session")
def gathered(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gathered]:
    settings = Settings(kafka_bootstrap=kafka_bootstrap, topic_prefix=f"validation{uuid.uuid4().hex[:8]}",
                        kafka_topic_partitions=3, kafka_request_timeout_s=10.0, intake_tokens=TEST_INTAKE_GRANTS,
                        record_tokens={hashlib.sha256(CLIENT_TOKEN.encode()).hexdigest(): CLIENT_GRANT},
                        disclosure_policy={"part2": "clearance"}, record_group_id=f"validation-{uuid.uuid4().hex[:8]}")
    yield _gather(settings, tmp_path_factory.mktemp("validation"))
