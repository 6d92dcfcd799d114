"""HL7 v2 bundles are validated exactly once on their way through the mapper: by the pipeline's validate_bundle
(the mapping itself does not validate), every resource with its R4B model."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from services.common import fhir_validation as validation
from services.common.errors import MappingError
from services.common.hl7v2 import inspect_message
from services.common.topics import HL7V2_MESSAGE_EVENT_TYPE
from services.mapper import pipeline as pipeline_module
from services.mapper.hl7v2 import map_hl7v2_message
from services.mapper.pipeline import InboundRecord, Pipeline, TopicNames
from tests.hl7v2.helpers import HL7_SAMPLES, context, sample

SAMPLE_NAMES = [path.name for path in HL7_SAMPLES]


def inbound(text: str) -> InboundRecord:
    summary = inspect_message(text)
    event = {"specversion": "1.0", "id": summary.event_id, "source": summary.source,
             "type": HL7V2_MESSAGE_EVENT_TYPE, "time": "2024-05-01T12:00:00+00:00",
             "datacontenttype": "application/hl7-v2+er7", "data": text}
    return InboundRecord(topic="carebus.inbound", partition=0, offset=7, timestamp_ms=1_714_564_800_000,
                         key=summary.key.encode(), value=orjson.dumps(event))


def validated_so_far() -> int:
    """Resources validate_resource has validated in this process (the Bundle shell included)."""
    return validation.COUNTS.known_shape + validation.COUNTS.full


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_the_pipeline_validates_each_resource_of_an_hl7_message_once(name: str) -> None:
    before = validated_so_far()
    outcome = Pipeline(TopicNames.for_prefix("t")).process(inbound(sample(name)))
    assert outcome.dead_letter_reason is None and outcome.mapped is not None
    assert validated_so_far() - before == 1 + len(outcome.mapped.resources)  # the shell + each resource


def test_the_mapping_alone_validates_nothing() -> None:
    before = validated_so_far()
    assert map_hl7v2_message(sample("ADT-A01-01.hl7"), context()).bundle["entry"]
    assert validated_so_far() == before


def test_an_invalid_mapped_resource_is_dead_lettered_by_the_pipeline() -> None:
    # no message is known to map to an invalid resource (fuzzing looks for one): break one after mapping
    real = pipeline_module.MAPPERS_BY_TYPE[HL7V2_MESSAGE_EVENT_TYPE]

    def breaking(envelope: dict[str, Any], context: Any) -> Any:
        mapped = real(envelope, context)
        patient = next(e["resource"] for e in mapped.bundle["entry"] if e["resource"]["resourceType"] == "Patient")
        patient["birthDate"] = "1980-13-45"
        return mapped

    mappers = {**pipeline_module.MAPPERS_BY_TYPE, HL7V2_MESSAGE_EVENT_TYPE: breaking}
    outcome = Pipeline(TopicNames.for_prefix("t"), mappers=mappers).process(inbound(sample("ADT-A08-01.hl7")))
    assert outcome.dead_letter_reason == MappingError.reason
    letter = orjson.loads(outcome.records[0].value)
    assert letter["problems"][0]["location"].endswith("resource(Patient).birthDate")
    assert "1980-13-45" not in outcome.records[0].value.decode()
