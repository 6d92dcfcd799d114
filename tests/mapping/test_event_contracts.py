"""Inbound event contracts: parse_event, error reporting without values, the content policy, patient keys,
and the JSON Schemas checked in under schemas/events/."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonschema
import orjson
import pytest

from services.common.errors import EventValidationError, InvalidInput, RefusedContent
from services.common.events import (
    EVENT_TYPES,
    AssessmentCompleted,
    NoteSigned,
    parse_event,
    patient_key,
)
from services.common.events.examples import EXAMPLES
from services.common.events.export import SCHEMA_DIR, drift, render
from services.common.events.parsing import INSTRUMENT_ITEMS
from services.common.fhir.instruments import INSTRUMENTS
from services.common.fhir_ids import patient_key as raw_patient_key
from services.mapper.mapping import map_event, validate_bundle
from tests.mapping.helpers import CONTEXT, example

PHI_NAME = "Zebediah Quarrington-Vale"


def problems_of(raw: Any) -> list[tuple[str, str]]:
    with pytest.raises(EventValidationError) as caught:
        parse_event(raw)
    return [(p.location, p.rule) for p in caught.value.problems]


def test_every_event_type_has_a_worked_example_that_parses_from_bytes_and_dict() -> None:
    assert set(EXAMPLES) == set(EVENT_TYPES)
    assert len(EVENT_TYPES) == 22
    for event_type, raw in EXAMPLES.items():
        from_dict = parse_event(raw)
        from_bytes = parse_event(orjson.dumps(raw))
        from_text = parse_event(json.dumps(raw))
        assert type(from_dict) is EVENT_TYPES[event_type]
        assert from_dict == from_bytes == from_text


def test_patient_key_is_source_and_source_patient_id() -> None:
    event = parse_event(EXAMPLES["org.carebus.assessment.completed.v1"])
    assert patient_key(event) == "urn:carebus:source:riverside-primary-care|RPC-004711"
    assert patient_key(event) == raw_patient_key(event.source, event.data.patient_id)
    for raw in EXAMPLES.values():
        parsed = parse_event(raw)
        assert patient_key(parsed) == f"{raw['source']}|{raw['data']['patient_id']}"


def test_nested_field_error_names_location_and_rule() -> None:
    event = example("assessment.completed")
    event["data"]["items"][2]["answer"] = 9
    assert problems_of(event) == [("data.items[2].answer", "answer_out_of_range")]


def test_several_problems_are_all_reported() -> None:
    event = example("session.completed")
    del event["data"]["start"]
    event["data"]["duration_minutes"] = 0
    event["data"]["cpt_code"] = "ninety"
    found = problems_of(event)
    assert ("data.start", "missing") in found
    assert ("data.duration_minutes", "greater_than_equal") in found
    assert ("data.cpt_code", "string_pattern_mismatch") in found


def test_errors_never_echo_the_value() -> None:
    event = example("patient.registered")
    event["data"]["gender"] = PHI_NAME
    event["data"]["birth_date"] = PHI_NAME
    event["data"]["name"]["family"] = {"nested": PHI_NAME}
    event["data"]["identifiers"][0]["value"] = ""
    with pytest.raises(EventValidationError) as caught:
        parse_event(orjson.dumps(event))
    error = caught.value
    locations = {p.location for p in error.problems}
    assert {"data.gender", "data.birth_date", "data.name.family", "data.identifiers[0].value"} <= locations
    everything = " ".join(
        [str(error), error.message, *(f"{p.location} {p.rule} {p.message}" for p in error.problems)]
    )
    assert "Zebediah" not in everything
    assert error.__cause__ is None and error.__suppress_context__  # pydantic's text (with values) not chained


def test_unknown_and_missing_type() -> None:
    event = example("patient.registered")
    event["type"] = f"org.carebus.{PHI_NAME}.v1"
    with pytest.raises(EventValidationError) as caught:
        parse_event(event)
    assert [(p.location, p.rule) for p in caught.value.problems] == [("type", "union_tag_invalid")]
    assert "Zebediah" not in caught.value.problems[0].message
    del event["type"]
    assert problems_of(event) == [("type", "union_tag_not_found")]


@pytest.mark.parametrize("raw", [b"{not json", b"", "[1, 2", b"\xff\xfe"])
def test_malformed_json_is_an_event_validation_error(raw: bytes | str) -> None:
    found = problems_of(raw)
    assert found and all(rule == "json_invalid" for _, rule in found)


def test_malformed_json_says_so_in_its_reason() -> None:
    with pytest.raises(EventValidationError) as caught:
        parse_event(b"{not json")
    assert caught.value.reason == "malformed-json"
    with pytest.raises(EventValidationError) as caught:
        parse_event(b"[1, 2, 3]")  # JSON, but not an event
    assert caught.value.reason == "schema-violation"


def test_not_an_object() -> None:
    assert problems_of(b"[1, 2, 3]")[0][0] == "$"


def test_envelope_rules() -> None:
    base = example("lab.resulted")
    assert problems_of({**base, "specversion": "0.3"}) == [("specversion", "literal_error")]
    assert problems_of({**base, "id": ""}) == [("id", "string_too_short")]
    assert problems_of({**base, "time": "2025-06-03T14:00:00"}) == [("time", "timezone_aware")]
    assert problems_of({**base, "datacontenttype": "text/xml"}) == [("datacontenttype", "literal_error")]
    assert problems_of({**base, "partitionkey": "x"}) == [("partitionkey", "extra_forbidden")]
    assert parse_event({**base, "correlationid": "c-1", "subject": "lab/LAB-88120"}).correlationid == "c-1"


def test_payload_rules() -> None:
    wrong_end = example("appointment.booked", end="2025-03-11T15:00:00Z")
    assert problems_of(wrong_end) == [("data", "value_error")]
    therapy_without_modality = example("session.completed", modality=None)
    assert problems_of(therapy_without_modality) == [("data", "value_error")]
    diagnosis = example("diagnosis.recorded")
    diagnosis["data"]["code"]["system"] = "http://example.org/local-codes"
    assert problems_of(diagnosis) == [("data.code.system", "literal_error")]
    lab = example("lab.resulted", value_text="normal")
    assert problems_of(lab) == [("data", "value_error")]
    extra = example("risk.flagged", comment="free text")
    assert problems_of(extra) == [("data.comment", "extra_forbidden")]


def test_reported_total_forms_and_a_bad_one() -> None:
    for total in ("12", 12, {"value": 12, "unit": "{score}"}):
        event = parse_event(example("assessment.completed", reported_total=total))
        assert isinstance(event, AssessmentCompleted)
    bad = example("assessment.completed", reported_total={"value": 12, "unit": "points"})
    assert problems_of(bad) == [("data.reported_total.unit", "literal_error")]
    not_a_total = example("assessment.completed", reported_total=[12])
    assert problems_of(not_a_total) == [("data.reported_total", "union_no_match")]


@pytest.mark.parametrize(
    ("index", "item", "location", "rule"),
    [
        (10, {"code": "12345-6", "answer": 1}, "data.items[10].code", "item-not-in-instrument"),
        (10, {"link_id": "/44250-9", "answer": 1}, "data.items[10].link_id", "duplicate-item"),
        (9, {"code": "69722-7", "answer": 4}, "data.items[9].answer", "answer-out-of-range"),
        (9, {"code": "69722-7", "answer": "LA33-6"}, "data.items[9].answer", "answer-not-in-list"),
    ],
)
def test_assessment_items_checked_against_the_instrument(
    index: int, item: dict[str, Any], location: str, rule: str
) -> None:
    event = example("assessment.completed")
    items = event["data"]["items"]
    assert len(items) == 10
    if index < len(items):
        items[index] = item
    else:
        items.append(item)
    assert problems_of(event) == [(location, rule)]


def test_cssrs_answer_list_is_enforced_at_intake() -> None:
    event = example(
        "assessment.completed",
        instrument="cssrs-screener",
        items=[{"code": "93246-7", "answer": "LA6570-1"}, {"code": "93247-5", "answer": 2}],
        reported_total=None,
    )
    assert problems_of(event) == [
        ("data.items[0].answer", "answer-not-in-list"),
        ("data.items[1].answer", "answer-out-of-range"),
    ]


def test_link_id_or_code_but_not_both() -> None:
    event = example("assessment.completed")
    event["data"]["items"][0] = {"code": "44250-9", "link_id": "/44250-9", "answer": 1}
    assert problems_of(event) == [("data.items[0]", "value_error")]


def test_the_contract_check_reads_the_instrument_table() -> None:
    """The contract's item codes, answer weights and answer lists are the scoring table's (one table)."""
    assert set(INSTRUMENT_ITEMS) == set(INSTRUMENTS)
    phq9_codes, phq9_max, phq9_answers = INSTRUMENT_ITEMS["phq-9"]
    assert len(phq9_codes) == 10 and "69722-7" in phq9_codes  # nine scored items and the difficulty item
    assert phq9_max == 3 and {"LA6568-5", "LA6571-9", "LA6575-0"} <= phq9_answers
    assert INSTRUMENT_ITEMS["phq-2"][0] == {"44250-9", "44255-8"}
    assert INSTRUMENT_ITEMS["cssrs-screener"][1] == 1 and INSTRUMENT_ITEMS["audit-c"][1] == 4
    assert len(INSTRUMENT_ITEMS["gad-7"][0]) == 7


@pytest.mark.parametrize(
    ("note_type", "rule", "citation"),
    [
        ("psychotherapy_note", "psychotherapy-note-refused", "45 CFR 164.501"),
        ("sud_counseling_note", "sud-counseling-note-refused", "42 CFR Part 2"),
    ],
)
def test_psychotherapy_and_sud_counseling_notes_are_refused(note_type: str, rule: str, citation: str) -> None:
    event = example("note.signed", note_type=note_type, text=f"Session content about {PHI_NAME}")
    with pytest.raises(RefusedContent) as caught:
        parse_event(orjson.dumps(event))
    error = caught.value
    assert not isinstance(error, EventValidationError)
    assert isinstance(error, InvalidInput) and error.reason == "refused-content"
    assert [(p.location, p.rule) for p in error.problems] == [("data.note_type", rule)]
    assert citation in error.message
    assert "Zebediah" not in str(error)


def test_mapping_refuses_a_psychotherapy_note_built_in_code() -> None:
    note = parse_event(example("note.signed"))
    assert isinstance(note, NoteSigned)
    forged = note.model_copy(
        update={"data": note.data.model_copy(update={"note_type": "psychotherapy_note"})}
    )
    with pytest.raises(RefusedContent):
        map_event(forged, CONTEXT)


# --- JSON Schemas -------------------------------------------------------------------------------------------


def test_checked_in_schemas_match_the_models() -> None:
    assert drift() == [], "run: python -m services.common.events.export"


def test_one_schema_per_event_type_plus_the_envelope_each_with_an_example() -> None:
    files = sorted(p.name for p in SCHEMA_DIR.glob("*.schema.json"))
    assert files == sorted([*(f"{t}.schema.json" for t in EVENT_TYPES), "cloudevent.schema.json"])
    for name in files:
        schema = json.loads((SCHEMA_DIR / name).read_text(encoding="utf-8"))
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["examples"], name


def test_drift_is_detected(tmp_path: Any) -> None:
    for name, text in render().items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    assert drift(tmp_path) == []
    target = tmp_path / "org.carebus.note.signed.v1.schema.json"
    target.write_text(target.read_text(encoding="utf-8").replace("psychotherapy_note", "x"), encoding="utf-8")
    (tmp_path / "org.carebus.retired.v1.schema.json").write_text("{}", encoding="utf-8")
    assert drift(tmp_path) == ["org.carebus.note.signed.v1.schema.json", "org.carebus.retired.v1.schema.json"]


def test_every_schema_example_goes_through_parse_map_and_validate() -> None:
    for path in sorted(SCHEMA_DIR.glob("*.schema.json")):
        schema = json.loads(path.read_text(encoding="utf-8"))
        for raw in schema["examples"]:
            event = parse_event(orjson.dumps(raw))
            result = map_event(event, CONTEXT)
            validate_bundle(result.bundle)
            assert result.bundle["entry"][-1]["resource"]["resourceType"] == "Provenance", path.name


def test_examples_are_not_mutated_by_parsing() -> None:
    before = copy.deepcopy(EXAMPLES)
    for raw in EXAMPLES.values():
        parse_event(raw)
    assert before == EXAMPLES


def test_published_schemas_accept_their_examples_and_reject_broken_events() -> None:
    envelope = json.loads((SCHEMA_DIR / "cloudevent.schema.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(envelope)
    union = jsonschema.Draft202012Validator(envelope)
    for event_type in EVENT_TYPES:
        schema = json.loads((SCHEMA_DIR / f"{event_type}.schema.json").read_text(encoding="utf-8"))
        validator = jsonschema.Draft202012Validator(schema)
        for raw in schema["examples"]:
            assert list(validator.iter_errors(raw)) == [], event_type
            assert list(union.iter_errors(raw)) == [], event_type
    broken = example("assessment.completed")
    broken["data"]["items"][0]["answer"] = 9
    del broken["data"]["patient_id"]
    assert len(list(union.iter_errors(broken))) >= 1
    assert list(union.iter_errors({**example("lab.resulted"), "type": "org.carebus.nope.v1"}))
