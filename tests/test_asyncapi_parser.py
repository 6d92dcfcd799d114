"""schemas/asyncapi.yaml loads in the official AsyncAPI parser (@asyncapi/parser, the one @asyncapi/cli uses;
installed by deploy/local/tools.sh), offline; and what carebus really writes matches it: every inbound event
matches exactly one branch of the inbound payload, and the mapper's bundle and alert records match their payload
and header schemas."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from services.common.asyncapi import ASYNCAPI_PATH
from services.common.events.examples import EXAMPLES
from services.common.hl7v2 import inspect_message
from services.common.settings import REPO_ROOT
from services.intake.hl7v2_acceptor import cloud_event
from services.mapper.pipeline import InboundRecord, Pipeline, TopicNames
from tests.conftest import SAMPLES
from tests.tools import asyncapi_parser

PARSE = REPO_ROOT / "deploy" / "local" / "asyncapi" / "parse.cjs"
Obj = dict[str, Any]


def parse(document: Path) -> tuple[int, Obj]:
    node = shutil.which("node")
    assert node is not None, "Node.js is needed for the AsyncAPI parser"
    result = subprocess.run(  # noqa: S603  # node from PATH, the project's own script
        [node, str(PARSE), str(asyncapi_parser()), str(document)], capture_output=True, text=True, timeout=120,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def test_the_official_parser_loads_the_document_without_errors_or_warnings() -> None:
    code, out = parse(ASYNCAPI_PATH)
    assert out["errors"] == [] and code == 0
    assert out["warnings"] == []
    doc = yaml.safe_load(ASYNCAPI_PATH.read_text())
    assert out["channels"] == [channel["address"] for channel in doc["channels"].values()]
    assert out["messages"] == list(doc["components"]["messages"])


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        # what the document had before: an OpenAPI discriminator object, a remote $ref (no network here)
        (lambda d: d["components"]["schemas"]["FhirBundle"].update(discriminator={"propertyName": "type"}),
         "discriminator"),
        (lambda d: d["components"]["messages"]["FhirBundles"].update(
            payload={"$ref": "https://hl7.org/fhir/R4/bundle.schema.json"}), "hl7.org"),
    ],
)
def test_the_parser_reports_what_it_cannot_load(tmp_path: Path, breakage: Any, message: str) -> None:
    doc = yaml.safe_load(ASYNCAPI_PATH.read_text())
    breakage(doc)
    shutil.copytree(ASYNCAPI_PATH.parent / "events", tmp_path / "events")
    (tmp_path / "asyncapi.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    code, out = parse(tmp_path / "asyncapi.yaml")
    assert code == 1
    assert any(message in error["message"] for error in out["errors"]), out["errors"]


# ------------------------------------------------------------------------ records against the document


@cache
def _document() -> Obj:
    return yaml.safe_load(ASYNCAPI_PATH.read_text())


def _validator(schema: Obj) -> jsonschema.protocols.Validator:
    """A validator for a schema of the document: '#/components/...' and './events/*.schema.json' resolve."""
    doc = _document()
    registry: Registry = Registry().with_resource("urn:carebus:asyncapi", Resource.from_contents(
        doc, default_specification=DRAFT202012))
    for path in sorted((ASYNCAPI_PATH.parent / "events").glob("*.schema.json")):
        registry = registry.with_resource(f"urn:carebus:asyncapi:events/{path.name}", Resource.from_contents(
            json.loads(path.read_text())))
    text = json.dumps(schema).replace('"#/components/', '"urn:carebus:asyncapi#/components/').replace(
        '"./events/', '"urn:carebus:asyncapi:events/')
    return jsonschema.Draft202012Validator(json.loads(text), registry=registry,
                                           format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def _inbound_events() -> list[Obj]:
    er7 = (SAMPLES / "hl7v2" / sorted(p.name for p in (SAMPLES / "hl7v2").glob("*.hl7"))[0]).read_text()
    hl7 = cloud_event(inspect_message(er7), er7, datetime(2026, 11, 3, tzinfo=UTC))
    fhir = {"specversion": "1.0", "id": "e-1", "source": "urn:carebus:source:calmly-app",
            "type": "org.carebus.fhir.resource.v1", "time": "2026-11-03T09:00:00+00:00",
            "datacontenttype": "application/fhir+json", "data": {"resourceType": "Patient", "id": "p1"}}
    return [*EXAMPLES.values(), hl7, fhir]


@pytest.mark.parametrize("event", _inbound_events(), ids=lambda e: str(e["type"]))
def test_every_inbound_event_matches_exactly_one_branch_of_the_inbound_payload(event: Obj) -> None:
    payload = _document()["components"]["messages"]["EventsInbound"]["payload"]
    matching = [branch for branch in payload["oneOf"] if _validator(branch).is_valid(event)]
    assert len(matching) == 1, matching
    _validator(payload).validate(event)


def _headers_schema(message: str) -> Obj:
    headers = _document()["components"]["messages"][message]["headers"]
    schema = dict(headers, required=list(headers["properties"]), additionalProperties=False)
    return schema


@pytest.mark.parametrize("event_type", sorted(EXAMPLES))
def test_mapper_records_match_their_payload_and_header_schemas(event_type: str) -> None:
    pipeline = Pipeline(TopicNames.for_prefix("carebus"))
    outcome = pipeline.process(InboundRecord(
        "carebus.events.inbound.v1", 0, 7, 1_767_600_000_000, b"src|p1", orjson.dumps(EXAMPLES[event_type]),
        (("ce_type", event_type.encode()), ("ce_id", str(EXAMPLES[event_type]["id"]).encode()))))
    assert outcome.dead_letter_reason is None
    messages = {"carebus.fhir.bundles.v1": "FhirBundles", "carebus.alerts.safety.v1": "AlertsSafety"}
    for record in outcome.records:
        message = _document()["components"]["messages"][messages[record.topic]]
        _validator(message["payload"]).validate(orjson.loads(record.value))
        _validator(_headers_schema(messages[record.topic])).validate(record.headers)
        security = message["headers"]["properties"]["carebus_security"]
        _validator(security["contentSchema"]).validate(json.loads(record.headers["carebus_security"]))
