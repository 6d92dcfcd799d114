"""Key facts of our mapping agree with Microsoft FHIR-Converter's published output for the same messages
(tests/samples/expected): patient identifiers and names, birth date, gender, encounter class and period,
observation codes and values. The expected files are reference facts, not byte-exact golden output."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest

from tests.hl7v2.helpers import SAMPLES, codes, mapped, one, resources, sample


def expected(name: str) -> list[dict[str, Any]]:
    bundle = json.loads((SAMPLES / "expected" / name).read_text(encoding="utf-8"))
    return [entry["resource"] for entry in bundle["entry"]]


def segment_fields(text: str, segment: str) -> list[str]:
    line = next(line for line in text.replace("\r", "\n").split("\n") if line.startswith(segment + "|"))
    return line.split("|")


def instant(value: str) -> datetime:
    return datetime.fromisoformat(value)


CASES = [("ADT-A08-01.hl7", "ADT-A08-01-expected.json"), ("ORU-R01-01.hl7", "ORU-R01-01-expected.json")]


@pytest.mark.parametrize(("message", "reference"), CASES)
def test_patient_identifiers_match(message: str, reference: str) -> None:
    text = sample(message)
    pid = segment_fields(text, "PID")
    pid_values = {rep.split("^")[0] for n in (2, 3, 4) if n < len(pid) for rep in pid[n].split("~")}
    theirs = one_of(expected(reference), "Patient")
    ours = one(mapped(text), "Patient")
    compared = 0
    for identifier in theirs["identifier"]:
        if identifier.get("value") not in pid_values:
            continue  # their Patient also carries identifiers from NK1/GT1/IN1 segments
        match = [i for i in ours["identifier"] if i.get("value") == identifier["value"]]
        assert match, f"identifier from PID missing: type {codes(identifier.get('type'))}"
        if "type" in identifier:
            assert any(codes(i.get("type")) == codes(identifier["type"]) for i in match)
        compared += 1
    assert compared >= 1


@pytest.mark.parametrize(("message", "reference"), CASES)
def test_patient_names_birth_date_and_gender_match(message: str, reference: str) -> None:
    text = sample(message)
    pid_names = segment_fields(text, "PID")[5]
    theirs = one_of(expected(reference), "Patient")
    ours = one(mapped(text), "Patient")
    from_pid = [n for n in theirs["name"] if n.get("family") and n["family"] in pid_names]
    assert from_pid
    for name in from_pid:
        same = [n for n in ours["name"] if n.get("family") == name["family"]]
        assert same, "family name missing"
        assert same[0].get("given", [None])[0] == name.get("given", [None])[0]
        assert same[0].get("use") == name.get("use")
    assert ours["birthDate"] == theirs["birthDate"]
    assert ours["gender"] == theirs["gender"]


def test_encounter_class_and_period_match() -> None:
    theirs = one_of(expected("ADT-A08-01-expected.json"), "Encounter")
    ours = one(mapped(sample("ADT-A08-01.hl7")), "Encounter")
    assert ours["class"]["code"] == theirs["class"]["code"]
    assert ours["class"]["system"] == theirs["class"]["system"]
    assert instant(ours["period"]["start"]) == instant(theirs["period"]["start"])
    assert instant(ours["period"]["end"]) == instant(theirs["period"]["end"])
    assert ours["status"] == theirs["status"]


@pytest.mark.parametrize(("message", "reference"), CASES)
def test_observation_codes_and_values_match(message: str, reference: str) -> None:
    theirs = [r for r in expected(reference) if r["resourceType"] == "Observation"]
    ours = resources(mapped(sample(message)), "Observation")
    assert theirs
    for observation in theirs:
        same = [o for o in ours if codes(o["code"]) == codes(observation["code"])
                and _value(o) == _value(observation)]
        assert same, f"no observation {codes(observation['code'])} with value {_value(observation)}"
        if observation.get("status") != "unknown":
            assert same[0]["status"] == observation["status"]


def _value(observation: dict[str, Any]) -> Any:
    if "valueCodeableConcept" in observation:
        return ("coded", frozenset(codes(observation["valueCodeableConcept"])))
    if "valueQuantity" in observation:
        return ("quantity", observation["valueQuantity"]["value"])
    if "valueString" in observation:
        return ("string", observation["valueString"])
    if "component" in observation:
        return ("components", tuple(_value(c) for c in observation["component"]))
    return None


def one_of(found: list[dict[str, Any]], resource_type: str) -> dict[str, Any]:
    matching = [r for r in found if r["resourceType"] == resource_type]
    assert len(matching) == 1
    return matching[0]
