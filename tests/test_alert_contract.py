"""The alert topic's contract (schemas/asyncapi.yaml) describes every record the topic carries: the mapper's
safety alerts of every kind it raises, made by the real pipeline, and the outcomes service's escalation, made by
the real escalation code. A new kind, a new field or a changed shape on either side fails here."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema
import orjson
import yaml
from cloudevents.core.bindings import kafka as ce_kafka

from services.common.asyncapi import ASYNCAPI_PATH
from services.common.topics import ESCALATION_ALERT_KIND, MAPPER_ALERT_KINDS, SAFETY_ALERTS
from services.mapper.instrument_resources import ALERT_DETAILS
from services.mapper.pipeline import InboundRecord, Pipeline, TopicNames
from services.outcomes.tasks import Alert, escalate, escalation_event, new_task
from tests.mapping.helpers import example

RECEIVED_MS = 1_767_600_000_000
CHAIN = ["CareTeam/on-call", "Organization/crisis-line"]


def alert_schema() -> dict[str, Any]:
    document = yaml.safe_load(ASYNCAPI_PATH.read_text())
    channel = next(c for c in document["channels"].values() if c["address"].endswith(SAFETY_ALERTS.suffix))
    name = channel["messages"]["record"]["$ref"].rsplit("/", 1)[-1]
    payload: dict[str, Any] = document["components"]["messages"][name]["payload"]
    return payload


def kinds_in(schema: dict[str, Any]) -> set[str]:
    found: set[str] = set()
    for shape in schema["oneOf"]:
        kind = shape["properties"]["kind"]
        found |= set(kind.get("enum", [])) | ({kind["const"]} if "const" in kind else set())
    return found


def mapper_alerts() -> list[dict[str, Any]]:
    """One event per kind the mapper raises, through the pipeline as the mapper service runs it."""
    cssrs = [{"code": "93246-7", "answer": "LA33-6"}, {"code": "93247-5", "answer": "LA33-6"},
             *({"code": c, "answer": "LA32-8"} for c in ("93248-3", "93250-9", "93267-3", "93269-9")),
             {"code": "93249-1", "answer": 1}]
    phq9 = example("assessment.completed")
    for item in phq9["data"]["items"]:
        if item["code"] == "44260-8":
            item["answer"] = "LA6569-3"
    events = [phq9, example("assessment.completed", instrument="cssrs-screener", items=cssrs, reported_total=None),
              example("risk.flagged")]
    pipeline = Pipeline(TopicNames.for_prefix("carebus"))
    records = []
    for offset, event in enumerate(events):
        outcome = pipeline.process(InboundRecord(
            topic="carebus.events.inbound.v1", partition=0, offset=offset, timestamp_ms=RECEIVED_MS, key=b"k",
            value=orjson.dumps(event), headers=(("ce_id", str(event["id"]).encode()),
                                                ("ce_type", str(event["type"]).encode()))))
        assert outcome.dead_letter_reason is None, outcome.dead_letter_reason
        records += [r for r in outcome.records if r.topic == "carebus.alerts.safety.v1"]
    for record in records:  # each is a CloudEvent of the alert type, whatever its kind
        cloudevent = ce_kafka.from_kafka_event(ce_kafka.KafkaMessage(
            headers={k: v.encode() for k, v in record.headers.items()}, key=b"k", value=record.value))
        assert cloudevent.get_type() == "org.carebus.safety.alert.v1"
    return [orjson.loads(r.value) for r in records]


def an_escalation() -> dict[str, Any]:
    raised = datetime(2026, 1, 5, 8, tzinfo=UTC)
    alert = Alert("phq9-item9", "Patient/p1", "Flag/f1", "e1", raised, "urn:carebus:source:x", ("R", "PSY"))
    task = new_task(alert, CHAIN, {"phq9-item9": 30})
    escalated = escalate(task, CHAIN, raised + timedelta(minutes=31), {"phq9-item9": 30})
    assert escalated is not None
    return escalation_event(escalated, raised + timedelta(minutes=31))


def test_the_schema_names_exactly_the_kinds_the_code_raises() -> None:
    assert set(ALERT_DETAILS) == set(MAPPER_ALERT_KINDS)  # every kind the mapper can raise (instrument_resources.py)
    assert an_escalation()["kind"] == ESCALATION_ALERT_KIND
    assert kinds_in(alert_schema()) == {*MAPPER_ALERT_KINDS, ESCALATION_ALERT_KIND}


def test_every_alert_record_satisfies_exactly_one_shape_of_the_contract() -> None:
    schema = alert_schema()
    shapes = [jsonschema.Draft202012Validator(shape) for shape in schema["oneOf"]]
    alerts = mapper_alerts()
    assert {a["kind"] for a in alerts} == set(MAPPER_ALERT_KINDS)
    for record in [*alerts, an_escalation()]:
        jsonschema.validate(record, schema)
        assert sum(shape.is_valid(record) for shape in shapes) == 1, record["kind"]


def test_the_contract_refuses_what_the_topic_never_carries() -> None:
    schema = alert_schema()
    escalation, alert = an_escalation(), mapper_alerts()[0]
    bad = [{**alert, "kind": "epds-item10"}, {**alert, "note": "free text"},
           {k: v for k, v in escalation.items() if k != "task"}, {**escalation, "level": 0},
           {**alert, "kind": ESCALATION_ALERT_KIND}]
    for record in bad:
        assert not jsonschema.Draft202012Validator(schema).is_valid(record), record
