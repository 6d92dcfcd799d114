"""Every answer intake gives, over HTTP, for JSON events, HL7 v2 and FHIR: in process, with the fake producer.

What was written is read back from the fake producer: a refusal writes nothing, an acceptance writes exactly
the events acknowledged.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from services.common.log import json_formatter
from tests.intake.helpers import (
    HL7_SENDER,
    PRIMARY_CARE,
    PRIMARY_CARE_TOKEN,
    PSYCHIATRY,
    PSYCHIATRY_TOKEN,
    Intake,
    example,
    hl7_sample,
    intake_settings,
    msa,
    schema_examples,
)


@pytest.fixture
async def intake() -> AsyncIterator[Intake]:
    async with Intake() as running:
        yield running


def note(note_type: str) -> dict[str, Any]:
    event = copy.deepcopy(example("note.signed"))
    event["data"]["note_type"] = note_type
    return event


def rejected(intake: Intake, reason: str, channel: str = "http") -> float:
    return float(intake.metrics.events_rejected.labels(reason=reason, channel=channel)._value.get())


# ------------------------------------------------------------------------------------------------- /events


async def test_events_202_after_the_write_with_each_position(intake: Intake) -> None:
    examples = schema_examples()
    response = await intake.events(examples, content_type="application/cloudevents-batch+json")
    assert response.status_code == 202
    body = response.json()
    assert body["accepted"] == len(examples) == len(intake.producer.sent)
    assert [e["id"] for e in body["events"]] == [e["id"] for e in examples]
    assert [orjson.loads(r.value)["id"] for r in intake.producer.sent] == [e["id"] for e in examples]
    first = body["events"][0]
    assert first["partition"] == intake.producer.partition_of(intake.producer.sent[0].key)
    single = await intake.events(examples[0])
    assert single.status_code == 202 and single.json()["accepted"] == 1


@pytest.mark.parametrize("note_type", ["psychotherapy_note", "sud_counseling_note"])
async def test_events_refused_notes_are_422_refused_content_not_500(intake: Intake, note_type: str) -> None:
    response = await intake.events(note(note_type))
    assert response.status_code == 422
    body = response.json()
    assert body["type"].endswith("/refused-content")
    assert body["errors"] and all(e["rule"].endswith("-refused") for e in body["errors"])
    assert "event_index" not in body["errors"][0]
    batch = await intake.events([example("patient.registered"), note(note_type)],
                                content_type="application/cloudevents-batch+json")
    assert batch.status_code == 422
    assert batch.json()["type"].endswith("/refused-content")
    assert {e["event_index"] for e in batch.json()["errors"]} == {1}
    assert intake.producer.sent == []
    assert rejected(intake, "refused-content") == 2


async def test_events_422_for_a_broken_contract_names_index_field_and_rule(intake: Intake) -> None:
    broken = copy.deepcopy(example("assessment.completed"))
    del broken["data"]["patient_id"]
    response = await intake.events([example("patient.registered"), broken])
    assert response.status_code == 422
    body = response.json()
    assert body["type"].endswith("/invalid-event")
    assert [(e["event_index"], e["location"], e["rule"]) for e in body["errors"]] == [
        (1, "data.patient_id", "missing")]
    assert intake.producer.sent == []


async def test_events_400_413_415(intake: Intake) -> None:
    malformed = await intake.events(None, raw=b"{nope")
    assert malformed.status_code == 400 and malformed.json()["type"].endswith("/malformed-json")
    empty = await intake.events([])
    assert empty.status_code == 400 and empty.json()["type"].endswith("/empty-batch")
    media = await intake.events(example("patient.registered"), content_type="text/plain")
    assert media.status_code == 415 and media.json()["type"].endswith("/unsupported-media-type")
    assert intake.producer.sent == []


async def test_events_413_for_a_large_batch_and_a_large_body_read_no_further_than_the_limit() -> None:
    async with Intake(intake_settings(max_batch_events=2, max_body_bytes=4096)) as intake:
        batch = await intake.events(schema_examples()[:3])
        assert batch.status_code == 413 and batch.json()["type"].endswith("/batch-too-large")
        declared = await intake.events(None, raw=b"[" + b" " * 10_000 + b"]")
        assert declared.status_code == 413 and declared.json()["type"].endswith("/too-large")

        sent = 0

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit holds while reading
            nonlocal sent
            for _ in range(64):
                sent += 1024
                yield b" " * 1024

        streamed = await intake.client.post("/events", content=chunks(), headers={
            "content-type": "application/json", "authorization": "Bearer test-relay-token"})
        assert streamed.status_code == 413
        assert sent == 64 * 1024  # read on (and dropped) so the sender gets the answer, not a reset
        assert intake.producer.sent == []


async def test_events_503_with_retry_after_when_kafka_does_not_acknowledge(intake: Intake) -> None:
    intake.producer.go_down()
    response = await intake.events(example("patient.registered"))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json()["type"].endswith("/kafka-unavailable")
    intake.producer.come_back()
    assert (await intake.events(example("patient.registered"))).status_code == 202
    assert len(intake.producer.sent) == 1


async def test_events_503_after_a_partial_write_then_the_resend_is_accepted(intake: Intake) -> None:
    examples = schema_examples()[:4]
    intake.producer.fail_after(2)
    assert (await intake.events(examples)).status_code == 503
    assert (await intake.events(examples)).status_code == 202
    ids = [orjson.loads(r.value)["id"] for r in intake.producer.sent]
    assert ids == [e["id"] for e in examples[:2]] + [e["id"] for e in examples]  # the resend converges downstream


# ------------------------------------------------------------------------------------------------- authentication


async def test_writes_need_a_known_bearer_token(intake: Intake) -> None:
    for token in (None, "not-a-known-token"):
        events = await intake.events(example("patient.registered"), token=token)
        assert events.status_code == 401
        assert events.headers["www-authenticate"].startswith("Bearer")
        assert events.json()["type"].endswith("/unauthenticated")
        fhir = await intake.fhir({"resourceType": "Patient", "id": "p1"}, token=token)
        assert fhir.status_code == 401 and fhir.json()["issue"][0]["code"] == "login"
        hl7 = await intake.hl7(hl7_sample(), token=token)
        assert hl7.status_code == 401 and msa(hl7)[1] == "AR"
    basic = await intake.client.post("/events", content=b"{}", headers={
        "content-type": "application/json", "authorization": "Basic dGVzdDp0ZXN0"})
    assert basic.status_code == 401
    assert intake.producer.sent == []


async def test_a_sender_writes_only_for_its_own_sources(intake: Intake) -> None:
    psychiatry_event = example("medication.prescribed")
    assert psychiatry_event["source"] == PSYCHIATRY
    forged = await intake.events(psychiatry_event, token=PRIMARY_CARE_TOKEN)
    assert forged.status_code == 403
    assert forged.json()["type"].endswith("/source-not-permitted")
    # one forged event in a batch refuses the batch: nothing written
    own = example("patient.registered")
    assert own["source"] == PRIMARY_CARE
    batch = await intake.events([own, psychiatry_event], token=PRIMARY_CARE_TOKEN)
    assert batch.status_code == 403 and "[1].source" in batch.json()["detail"]
    assert (await intake.events(own, token=PRIMARY_CARE_TOKEN)).status_code == 202
    assert (await intake.events(psychiatry_event, token=PSYCHIATRY_TOKEN)).status_code == 202

    fhir = await intake.fhir({"resourceType": "Patient", "id": "p1"}, token=PRIMARY_CARE_TOKEN, source=PSYCHIATRY)
    assert fhir.status_code == 403 and fhir.json()["issue"][0]["code"] == "forbidden"
    assert (await intake.fhir({"resourceType": "Patient", "id": "p1"}, token=PSYCHIATRY_TOKEN)).status_code == 202

    hl7 = await intake.hl7(hl7_sample(), token=PRIMARY_CARE_TOKEN)
    assert hl7.status_code == 403
    assert msa(hl7)[1:3] == ["AR", "MSG00001"]
    assert "source-not-permitted" in hl7.text
    assert (await intake.hl7(hl7_sample(), token=PSYCHIATRY_TOKEN)).status_code == 200
    assert [r.headers["ce_source"] for r in intake.producer.sent] == [PRIMARY_CARE, PSYCHIATRY, PSYCHIATRY,
                                                                       HL7_SENDER]


async def test_no_tokens_configured_refuses_every_write_and_the_development_switch_opens_it() -> None:
    async with Intake(intake_settings(intake_tokens={})) as closed:
        response = await closed.events(example("patient.registered"))
        assert response.status_code == 401
        assert "CAREBUS_INTAKE_TOKENS" in response.json()["detail"]
    async with Intake(intake_settings(intake_tokens={}, intake_allow_anonymous=True)) as open_:
        assert (await open_.events(example("patient.registered"), token=None)).status_code == 202


# ------------------------------------------------------------------------------------------------- /hl7v2


def with_msh9(er7: str, message_type: str) -> str:
    segments = er7.split("\r")
    fields = segments[0].split("|")
    fields[8] = message_type
    segments[0] = "|".join(fields)
    return "\r".join(segments)


async def test_hl7v2_answers(intake: Intake) -> None:
    accepted = await intake.hl7(hl7_sample())
    assert accepted.status_code == 200 and msa(accepted)[1:3] == ["AA", "MSG00001"]
    assert len(intake.producer.sent) == 1

    no_patient = "\r".join(s for s in hl7_sample().split("\r") if not s.startswith("PID"))
    content_error = await intake.hl7(no_patient.replace("MSG00001", "MSG00002"))
    assert content_error.status_code == 400 and msa(content_error)[1] == "AE"

    unsupported = await intake.hl7(with_msh9(hl7_sample(), "ZZZ^Z99").replace("MSG00001", "MSG00003"))
    assert unsupported.status_code == 422  # permanent: an HTTP sender must not retry it
    assert msa(unsupported)[1] == "AR" and "retry-after" not in unsupported.headers

    media = await intake.hl7(hl7_sample(), content_type="application/json")
    assert media.status_code == 415 and msa(media)[1] == "AR"

    intake.producer.go_down()
    down = await intake.hl7(hl7_sample().replace("MSG00001", "MSG00004"))
    assert down.status_code == 503 and down.headers["retry-after"] == "5" and msa(down)[1:3] == ["AR", "MSG00004"]
    assert len(intake.producer.sent) == 1


async def test_hl7v2_413_beyond_the_frame_limit() -> None:
    async with Intake(intake_settings(mllp_max_frame_bytes=2048)) as intake:
        big = hl7_sample() + "NTE|1||" + "x" * 4096 + "\r"
        response = await intake.hl7(big)
        assert response.status_code == 413 and msa(response)[1] == "AR"
        assert intake.producer.sent == []


# ------------------------------------------------------------------------------------------------- /fhir


async def test_fhir_answers(intake: Intake) -> None:
    patient = {"resourceType": "Patient", "id": "p1", "gender": "female"}
    accepted = await intake.fhir(patient)
    assert accepted.status_code == 202 and accepted.json()["issue"][0]["code"] == "informational"
    assert len(intake.producer.sent) == 1
    assert (await intake.fhir(None, raw=b"{nope")).status_code == 400
    missing = await intake.fhir(patient, source=None)
    assert missing.status_code == 400 and missing.json()["issue"][0]["code"] == "structure"
    assert (await intake.fhir(patient, content_type="text/plain")).status_code == 415
    invalid = await intake.fhir({"resourceType": "Condition", "onsetDateTime": "yesterday"})
    assert invalid.status_code == 422 and invalid.json()["issue"][0]["code"] == "invalid"
    note = {"resourceType": "DocumentReference", "status": "current", "meta": {"security": [
        {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSYTHPN"}]},
        "content": [{"attachment": {"contentType": "text/plain"}}]}
    refused = await intake.fhir(note)
    assert refused.status_code == 422 and refused.json()["issue"][0]["code"] == "security"
    intake.producer.go_down()
    down = await intake.fhir(patient)
    assert down.status_code == 503 and down.headers["retry-after"] == "5"
    assert len(intake.producer.sent) == 1


async def test_fhir_413_read_no_further_than_the_limit() -> None:
    async with Intake(intake_settings(max_body_bytes=2048)) as intake:
        response = await intake.fhir({"resourceType": "Patient", "id": "p1", "text": {"div": "x" * 4096}})
        assert response.status_code == 413 and response.json()["issue"][0]["code"] == "too-costly"


@pytest.mark.parametrize("meta", ["a string", 7, 1.5, ["a", "list"], True])
async def test_fhir_meta_of_the_wrong_type_is_422_naming_meta(intake: Intake, meta: Any) -> None:
    response = await intake.fhir({"resourceType": "Patient", "id": "p1", "meta": meta})
    assert response.status_code == 422
    assert any("meta" in expression for issue in response.json()["issue"] for expression in issue.get("expression", []))


@pytest.mark.parametrize("bundle", [
    {"resourceType": "Bundle", "type": ["collection"], "entry": []},
    {"resourceType": "Bundle", "type": {"x": 1}},
    {"resourceType": "Bundle", "type": "collection", "entry": 5},
    {"resourceType": "Bundle", "type": "collection", "entry": [{"fullUrl": ["x"], "resource": {
        "resourceType": "Patient", "id": "p1"}}]},
])
async def test_fhir_malformed_bundles_are_4xx_naming_the_rule(intake: Intake, bundle: dict[str, Any]) -> None:
    response = await intake.fhir(bundle)
    assert response.status_code == 422
    assert response.json()["issue"][-1]["expression"][0].startswith("Bundle.")


async def test_fhir_required_binding_is_checked(intake: Intake) -> None:
    response = await intake.fhir({"resourceType": "Patient", "id": "p1", "gender": "Zyxqvortle"})
    assert response.status_code == 422
    assert any(i["diagnostics"].startswith("required-binding") and i["expression"] == ["resource.gender"]
               for i in response.json()["issue"][1:])
    assert "Zyxqvortle" not in response.text
    assert (await intake.fhir({"resourceType": "Patient", "id": "p1", "gender": "other"})).status_code == 202


async def test_fhir_422_does_not_echo_an_unknown_element_name(intake: Intake) -> None:
    response = await intake.fhir({"resourceType": "Patient", "id": "p1", "JaneQDoe19800101": {"x": 1}})
    assert response.status_code == 422
    assert "JaneQDoe" not in response.text
    assert response.json()["issue"][1]["expression"] == ["resource"]


async def test_hl7v2_pid7_must_be_an_hl7_datetime(intake: Intake) -> None:
    segments = hl7_sample().split("\r")
    index = next(i for i, s in enumerate(segments) if s.startswith("PID|"))
    fields = segments[index].split("|")
    fields[7] = "1911111Zyxqvortle"
    segments[index] = "|".join(fields)
    response = await intake.hl7("\r".join(segments))
    assert response.status_code == 400 and msa(response)[1] == "AE"
    err = next(s for s in response.text.replace("\r\n", "\r").split("\r") if s.startswith("ERR"))
    assert "PID^1^7" in err and "invalid-datetime" in err and "Zyxqvortle" not in response.text
    assert intake.producer.sent == []


async def test_a_bug_is_a_plain_500_and_its_message_is_never_logged(intake: Intake,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    async def broken(records: object) -> object:
        raise ValueError("QZCANARY Jane Doe 1980-02-03")  # a bug whose message holds the input's values

    intake.producer.send_all_async = broken  # type: ignore[method-assign,assignment]
    response = await intake.events(example("patient.registered"))
    assert response.status_code == 500
    assert response.json()["type"].endswith("/internal-error")
    assert "QZCANARY" not in response.text
    lines = [json_formatter("intake").format(record) for record in caplog.records]
    assert any('"error":"ValueError"' in line for line in lines)
    assert not any("QZCANARY" in line for line in lines)
