"""The main job: a local Kafka broker, every carebus service, and a sample care journey replayed through them.

    make demo          (or: .venv/bin/python -m devstack)

Uses the cluster in CAREBUS_KAFKA_BOOTSTRAP when that is set; otherwise provisions and starts one local broker
on CAREBUS_LOCAL_KAFKA_PORT (9092). Ctrl-C stops everything it started.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import os
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
from kafka import KafkaConsumer, TopicPartition

from devstack import consent_demo
from devstack.hospital_feed import admission_adt_a01, feed_times, gad7_bundle, send_mllp
from devstack.journey import PATIENT_IDS, PSYCHIATRY, sample_care_journey
from devstack.local_broker import LocalKafkaBroker
from devstack.webhook_receiver import WebhookReceiver
from services.common.fhir.codesystems import EMPI
from services.common.fhir_ids import resource_id
from services.common.hl7v2 import inspect_message
from services.common.kafka import client_config
from services.common.runtime import prepare_topics
from services.common.settings import Settings
from services.common.topics import DEAD_LETTERS, FHIR_BUNDLES, HEADER_INBOUND_EVENT_ID, SAFETY_ALERTS
from services.notify.subscriptions import EXT_FILTER, EXT_PAYLOAD_CONTENT, EXT_SECRET
from services.notify.topics import TOPIC_BASE

DEMO_TOKEN = "carebus-demo-token-not-for-production"  # noqa: S105 - a published demo credential
DEMO_GRANT = {"scopes": ["user/*.read"], "clearances": ["behavioral-health", "part2"], "label": "make demo",
              "organization": consent_demo.HOSPITAL_ORGANIZATION}
# the demo's subscriber: a therapy practice's EHR, cleared for behavioural-health data (not Part 2)
DEMO_SUBSCRIBER_TOKEN = "carebus-demo-therapy-ehr-not-for-production"  # noqa: S105 - a published demo credential
DEMO_SUBSCRIBER_GRANT = {"scopes": ["system/Subscription.write"], "clearances": ["behavioral-health"],
                         "label": "therapy practice EHR (demo)", "organization": consent_demo.THERAPY_ORGANIZATION}
WEBHOOK_PORT = 8090
DEMO_TOPICS = ("assessment-completed", "safety-alert-raised")
DEMO_SENDER_TOKEN = "carebus-demo-sender-not-for-production"  # noqa: S105 - a published demo credential
DEMO_SENDER = {"sources": ["*"], "label": "make demo"}


def say(message: str) -> None:
    print(f"carebus | {message}", flush=True)


class Stack:
    """The processes the demo started, stopped in reverse order."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.broker: LocalKafkaBroker | None = None

    def start_service(self, name: str, env: dict[str, str]) -> None:
        log_file = (self.log_dir / f"{name}.log").open("wb")
        process = subprocess.Popen(  # noqa: S603 - our own module
            [sys.executable, "-m", f"services.{name}"], env=env, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True)
        self.processes.append((name, process))

    def stop(self) -> None:
        for _name, process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for name, process in reversed(self.processes):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                say(f"{name} did not stop in time; killing it")
                process.kill()
        if self.broker is not None:
            self.broker.stop()


def wait_ready(url: str, name: str, process: subprocess.Popen[bytes], timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"carebus | {name} exited with {process.returncode}; see its log")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise SystemExit(f"carebus | {name} not ready after {timeout_s:.0f}s ({url})")


def read_topic(settings: Settings, topic: str, idle_s: float = 3.0) -> Iterator[Any]:
    consumer = KafkaConsumer(**client_config(settings, "carebus-demo-reader"), enable_auto_commit=False)
    partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    ends = consumer.end_offsets(partitions)
    deadline = time.monotonic() + idle_s
    while time.monotonic() < deadline and any(consumer.position(tp) < ends[tp] for tp in partitions):
        for records in consumer.poll(timeout_ms=300).values():
            yield from records
    consumer.close()


def psychiatry_patient_id() -> str:
    return resource_id("Patient", PSYCHIATRY, PATIENT_IDS[PSYCHIATRY])


def show_record(settings: Settings, start: datetime) -> None:
    """Ask the record API for the person the journey created: one person across every source."""
    base = f"http://{settings.http_host}:{settings.record_port}"
    headers = {"Authorization": f"Bearer {DEMO_TOKEN}", "Accept": "application/fhir+json"}
    deadline = time.monotonic() + 60
    total, patients, previous = 0, 0, (-1, -1)
    while time.monotonic() < deadline:  # until the record stops growing (the consumer has caught up)
        with contextlib.suppress(httpx.HTTPError, ValueError):
            everything = httpx.get(f"{base}/Patient/{psychiatry_patient_id()}/$everything", headers=headers,
                                   params={"_count": 1}, timeout=10).json()
            linked = httpx.get(f"{base}/Patient", headers=headers, timeout=10,
                               params={"identifier": f"{EMPI}|EMPI-8842-1170"}).json()
            total, patients = everything.get("total", 0), linked.get("total", 0)
            if total > 0 and (total, patients) == previous:
                break
            previous = (total, patients)
        time.sleep(2)
    say(f"record: {patients} source Patient records share the enterprise id and form one person; "
        f"Patient/$everything from psychiatry's record returns {total} resources across all sources")


def subscribe_demo_receiver(settings: Settings) -> WebhookReceiver:
    """Start the therapy EHR's webhook and subscribe it to the journey's patient (assessment completed and
    safety alert raised; full resources), with a signing secret the demo chose."""
    secret = secrets.token_hex(32)
    webhook = WebhookReceiver(WEBHOOK_PORT, secret, say).start()
    base = f"http://{settings.http_host}:{settings.record_port}"
    headers = {"Authorization": f"Bearer {DEMO_SUBSCRIBER_TOKEN}", "Content-Type": "application/fhir+json"}
    for topic in DEMO_TOPICS:
        subscription = {
            "resourceType": "Subscription", "status": "requested", "reason": f"therapy EHR: {topic}",
            "criteria": TOPIC_BASE + topic,
            "extension": [{"url": EXT_SECRET, "valueString": secret}],
            "_criteria": {"extension": [{"url": EXT_FILTER,
                                         "valueString": f"patient=Patient/{psychiatry_patient_id()}"}]},
            "channel": {"type": "rest-hook", "endpoint": f"http://127.0.0.1:{WEBHOOK_PORT}/therapy-ehr",
                        "payload": "application/fhir+json",
                        "_payload": {"extension": [{"url": EXT_PAYLOAD_CONTENT, "valueCode": "full-resource"}]}},
        }
        response = httpx.post(f"{base}/Subscription", content=orjson.dumps(subscription), headers=headers,
                              timeout=10)
        if response.status_code != 201:
            raise SystemExit(f"carebus | subscribing the demo webhook failed: {response.status_code} {response.text}")
        say(f"    Subscription/{response.json()['id']} {topic} -> http://127.0.0.1:{WEBHOOK_PORT}/therapy-ehr")
    return webhook


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-wait", action="store_true", help="stop after the journey instead of waiting")
    args = parser.parse_args(argv)

    settings = Settings()
    log_dir = settings.cache_dir / "demo" / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack(settings, log_dir)
    env = dict(os.environ)
    env.setdefault("CAREBUS_RECORD_TOKENS", orjson.dumps({
        hashlib.sha256(DEMO_TOKEN.encode()).hexdigest(): DEMO_GRANT,
        hashlib.sha256(DEMO_SUBSCRIBER_TOKEN.encode()).hexdigest(): DEMO_SUBSCRIBER_GRANT,
        hashlib.sha256(consent_demo.PARTNER_TOKEN.encode()).hexdigest(): consent_demo.PARTNER_GRANT,
        hashlib.sha256(consent_demo.PRIVACY_TOKEN.encode()).hexdigest(): consent_demo.PRIVACY_GRANT}).decode())
    env.setdefault("CAREBUS_NOTIFY_ENDPOINT_ALLOWLIST", f'["http://127.0.0.1:{WEBHOOK_PORT}/"]')
    env.setdefault("CAREBUS_INTAKE_TOKENS",
                   orjson.dumps({hashlib.sha256(DEMO_SENDER_TOKEN.encode()).hexdigest(): DEMO_SENDER}).decode())
    env.setdefault("CAREBUS_INTAKE_TOKEN", DEMO_SENDER_TOKEN)
    sender_headers = {"authorization": f"Bearer {env['CAREBUS_INTAKE_TOKEN']}"}
    services = ["intake", "mapper"] + (["record"] if importlib.util.find_spec("services.record") else [])
    if "record" in services and importlib.util.find_spec("services.notify"):
        services.append("notify")
    if "record" in services and importlib.util.find_spec("services.outcomes"):
        services.append("outcomes")
    webhook: WebhookReceiver | None = None
    services.append("general")
    steps = 5 + len(services) + ("notify" in services)
    step = 0

    def progress(message: str) -> None:
        nonlocal step
        step += 1
        say(f"[{step}/{steps}] {message}")

    try:
        if "CAREBUS_KAFKA_BOOTSTRAP" in os.environ:
            progress(f"using the configured Kafka cluster {settings.kafka_bootstrap}")
        else:
            progress(f"starting a local Kafka broker (KRaft) on 127.0.0.1:{settings.local_kafka_port} "
                     "(first run downloads it from Maven Central)")
            stack.broker = LocalKafkaBroker(settings.cache_dir, port=settings.local_kafka_port,
                                            workdir=settings.cache_dir / "kafka" / "demo")
            stack.broker.start()
            env["CAREBUS_KAFKA_BOOTSTRAP"] = stack.broker.bootstrap
            record_db = settings.cache_dir / "demo" / "record.db"
            if not stack.broker.reused:  # a new, empty broker: an empty store too, so it is exactly the topic's record
                for stale in record_db.parent.glob("record.db*"):
                    stale.unlink()
            env.setdefault("CAREBUS_RECORD_STORE_DSN", f"sqlite:///{record_db}")
            notify_db = settings.cache_dir / "demo" / "notify.db"  # and notify without old subscriptions
            for stale in notify_db.parent.glob("notify.db*"):
                stale.unlink()
            env.setdefault("CAREBUS_NOTIFY_STORE_DSN", f"sqlite:///{notify_db}")
            settings = Settings(kafka_bootstrap=stack.broker.bootstrap)
        progress("creating topics from the topic catalogue")
        prepare_topics(settings)
        ports = {"intake": settings.intake_port, "mapper": settings.mapper_port, "record": settings.record_port,
                 "notify": settings.notify_port, "outcomes": settings.outcomes_port,
                 "general": settings.general_port}
        for name in services:
            progress(f"starting {name} on :{ports[name]} (log: {log_dir / (name + '.log')})")
            stack.start_service(name, env)
        for name, process in stack.processes:
            wait_ready(f"http://{settings.http_host}:{ports[name]}/readyz", name, process)
        consent_subs: dict[str, list[str]] = {}
        if "notify" in services:
            webhook = subscribe_demo_receiver(settings)
            record_base = f"http://{settings.http_host}:{settings.record_port}"
            for who, token, path in (("therapy practice EHR", DEMO_SUBSCRIBER_TOKEN, "therapy-ehr"),
                                     ("partner clinic (Part 2)", consent_demo.PARTNER_TOKEN, "partner-clinic")):
                consent_subs[who] = consent_demo.subscribe(
                    record_base, token, who, f"http://127.0.0.1:{WEBHOOK_PORT}/{path}",
                    f"Patient/{psychiatry_patient_id()}", webhook.secret)
                say(f"    {who}: diagnoses and prescriptions of the patient -> http://127.0.0.1:{WEBHOOK_PORT}/{path}")

        start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=120)
        journey = sample_care_journey(start)
        progress(f"replaying a sample care journey: {len(journey)} events from 3 practices")
        intake = f"http://{settings.http_host}:{settings.intake_port}/events"
        with httpx.Client(timeout=30) as client:
            for index, event in enumerate(journey, start=1):
                response = client.post(intake, content=orjson.dumps(event),
                                       headers={"content-type": "application/cloudevents+json", **sender_headers})
                mark = "accepted" if response.status_code == 202 else f"REFUSED {response.status_code}"
                say(f"    {index:>3}/{len(journey)}  {event['type']:<48} {mark}")

        admitted, assessed = feed_times(start)
        progress("a hospital interface engine sends ADT^A01 over MLLP; a therapy platform posts FHIR")
        control_id = f"NGH{int(time.time())}"
        adt = admission_adt_a01(admitted, control_id)
        ack = send_mllp(settings.http_host, settings.mllp_port, adt)
        msa = next((seg for seg in ack.split("\r") if seg.startswith("MSA")), "MSA|?")
        say(f"    MLLP :{settings.mllp_port}  ADT^A01 {control_id:<20} ACK {msa}")
        fhir_event_id = f"calmly-gad7-{assessed:%Y%m%d}"
        with httpx.Client(timeout=30) as client:
            response = client.post(
                f"http://{settings.http_host}:{settings.intake_port}/fhir", content=orjson.dumps(gad7_bundle(assessed)),
                headers={"content-type": "application/fhir+json", "x-carebus-source": "urn:carebus:source:calmly-app",
                         **sender_headers,
                         "x-carebus-event-id": fhir_event_id})
        say(f"    POST /fhir  Bundle(Patient, QuestionnaireResponse GAD-7)   {response.status_code}")

        progress("waiting for the mapper to publish FHIR bundles")
        ids = {event["id"] for event in journey} | {inspect_message(adt).event_id, fhir_event_id}
        seen: set[str] = set()
        resources: Counter[str] = Counter()
        deadline = time.monotonic() + 60
        while seen != ids and time.monotonic() < deadline:
            for record in read_topic(settings, FHIR_BUNDLES.name(settings.topic_prefix)):
                event_id = dict(record.headers).get(HEADER_INBOUND_EVENT_ID, b"").decode()
                if event_id in ids and event_id not in seen:
                    seen.add(event_id)
                    for entry in orjson.loads(record.value).get("entry", []):
                        resources[entry["resource"]["resourceType"]] += 1
            time.sleep(0.5)
        alerts = sum(1 for _ in read_topic(settings, SAFETY_ALERTS.name(settings.topic_prefix), idle_s=1))
        dead = sum(1 for _ in read_topic(settings, DEAD_LETTERS.name(settings.topic_prefix), idle_s=1))
        say(f"{len(seen)}/{len(ids)} events became FHIR bundles; {alerts} safety alert(s); {dead} dead letter(s)")
        say("resources: " + ", ".join(f"{k} {v}" for k, v in sorted(resources.items())))
        if "record" in services:
            show_record(settings, start)
        if webhook is not None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and sum(len(v) for v in webhook.seen.values()) < len(DEMO_TOPICS):
                time.sleep(0.5)
            received = {sid: sorted(numbers) for sid, numbers in webhook.seen.items()}
            say(f"webhook: the therapy EHR received {sum(len(v) for v in received.values())} notification "
                f"event(s) on {len(received)} subscription(s), signatures verified")
        if webhook is not None and consent_subs:
            progress("consent decides: a Part 2 consent for the partner clinic, then F11.20 and buprenorphine")
            with httpx.Client(timeout=30) as client:
                for event in consent_demo.part2_episode(datetime.now(UTC).replace(microsecond=0)):
                    response = client.post(intake, content=orjson.dumps(event), headers={
                        "content-type": "application/cloudevents+json", **sender_headers})
                    mark = "accepted" if response.status_code == 202 else f"REFUSED {response.status_code}"
                    say(f"    {event['type']:<48} {mark}")
            hook = webhook
            consent_demo.report(say, f"http://{settings.http_host}:{settings.record_port}",
                                lambda sid: list(hook.bundles.get(sid, [])), consent_subs,
                                f"Patient/{psychiatry_patient_id()}")
        prefix = settings.topic_prefix
        bootstrap = env.get("CAREBUS_KAFKA_BOOTSTRAP", settings.kafka_bootstrap)
        say("where to look:")
        say(f"  Kafka {bootstrap}: {prefix}.events.inbound.v1, {prefix}.fhir.bundles.v1, "
            f"{prefix}.alerts.safety.v1, {prefix}.deadletter.v1, {prefix}.record.changes.v1")
        say(f"  operator CLI    export CAREBUS_KAFKA_BOOTSTRAP={bootstrap}; then .venv/bin/carebus status")
        say(f"  Kafka's tools   .venv/bin/carebus kafka console-consumer --topic {prefix}.fhir.bundles.v1 "
            "--from-beginning --property print.headers=true")
        say(f"  intake API      http://{settings.http_host}:{settings.intake_port}/docs  "
            "(POST /events, /hl7v2, /fhir)")
        say(f"  MLLP listener   {settings.http_host}:{settings.mllp_port}")
        if "record" in services:
            say(f"  FHIR record API http://{settings.http_host}:{settings.record_port}/metadata")
            say(f"    curl -H 'Authorization: Bearer {DEMO_TOKEN}' "
                f"'http://{settings.http_host}:{settings.record_port}/Patient/{psychiatry_patient_id()}/$everything'")
        if "outcomes" in services:
            page = f"http://{settings.http_host}:{settings.record_port}/Patient/{psychiatry_patient_id()}"
            say(f"  clinician page  {page}  (a browser's Accept: text/html, with the bearer token, e.g. "
                f"curl -H 'Accept: text/html' -H 'Authorization: Bearer {DEMO_TOKEN}' {page}); clinic view: "
                f"http://{settings.http_host}:{settings.record_port}/clinic")
            say(f"  outcomes        {settings.topic_prefix}.outcomes.v1; Task?status=requested; "
                f"Measure/carebus-phq9-remission-12-months/$evaluate-measure?periodStart=...&periodEnd=...")
        if webhook is not None:
            say(f"  subscriptions   curl -H 'Authorization: Bearer {DEMO_SUBSCRIBER_TOKEN}' "
                f"http://{settings.http_host}:{settings.record_port}/Subscription ; .venv/bin/carebus subscriptions "
                f"list (CAREBUS_NOTIFY_STORE_DSN={env.get('CAREBUS_NOTIFY_STORE_DSN', 'default')})")
        if consent_subs:
            record = f"http://{settings.http_host}:{settings.record_port}"
            say(f"  consent, audit  the accounting of disclosures: curl -H 'Authorization: Bearer "
                f"{consent_demo.PRIVACY_TOKEN}' '{record}/Patient/{psychiatry_patient_id()}/$disclosures' ; every "
                f"AuditEvent: {record}/AuditEvent?patient=Patient/{psychiatry_patient_id()} (same token); Kafka "
                f"{prefix}.audit.v1; vendors without clearance read {prefix}.fhir.bundles.general.v1")
        for name in services:
            say(f"  {name:<7} metrics http://{settings.http_host}:{ports[name]}/metrics")
        say(f"  service logs    {log_dir}")
        if not args.no_wait:
            say("running; Ctrl-C stops everything")
            signal.signal(signal.SIGTERM, _interrupt)
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        say("stopping")
        if webhook is not None:
            webhook.stop()
        stack.stop()


if __name__ == "__main__":
    main()
