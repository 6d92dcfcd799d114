"""Mutated schema examples: every event the contracts accept is written by intake and mapped (or refused with a
reason) by the mapper; none crashes either (a TypeError once dead-lettered accepted medication and lab events as
``unexpected-error``: whole floats beyond 2^63 and integers beyond 64 bits)."""

from __future__ import annotations

import copy
import random
from typing import Any

import orjson

from services.common.errors import InvalidInput
from services.common.events import parse_event
from services.intake.app import event_record
from services.mapper.pipeline import InboundRecord, Pipeline, TopicNames
from tests.intake.helpers import example, schema_examples

ODD_VALUES: list[Any] = [
    None, "", " ", 0, -1, 0.5, -0.0, 1e-300, 1e300, 1e308, 10**30, 2**63, True, False, [], {}, [1], {"a": 1},
    ["x"], [{}], "x" * 300, "\u0000", "NaN", "2026-13-45", "2026-01-01", "2026-01-01T10:00:00",
    "2026-01-01T10:00:00+14:00", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "1911111Zyxqvortle",
]


def _places(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path] if path else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _places(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            out += _places(value, (*path, index))
    return out


def mutate(event: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    mutant = copy.deepcopy(event)
    for _ in range(rng.randint(1, 3)):
        places = _places(mutant["data"])
        if not places:
            break
        place = rng.choice(places)
        parent = mutant["data"]
        for key in place[:-1]:
            parent = parent[key]
        if rng.random() < 0.15 and isinstance(parent, dict):
            del parent[place[-1]]
        else:
            parent[place[-1]] = copy.deepcopy(rng.choice(ODD_VALUES))
    return mutant


def test_accepted_mutants_are_written_and_mapped_without_a_crash() -> None:
    pipeline = Pipeline(TopicNames("bundles", "alerts", "deadletters"))
    rng = random.Random(20261203)  # noqa: S311 - a reproducible mutation stream
    examples = schema_examples()
    accepted = 0
    crashes: list[str] = []
    for offset in range(6000):
        mutant = mutate(rng.choice(examples), rng)
        try:
            event = parse_event(mutant)
        except InvalidInput:
            continue
        accepted += 1
        try:
            record = event_record("inbound", event, "fuzz")  # intake's write: must never raise (it would be a 500)
        except Exception as exc:
            crashes.append(f"intake {event.type}: {type(exc).__name__}")
            continue
        outcome = pipeline.process(InboundRecord(
            "inbound", 0, offset, 1767225600000, record.key.encode(), record.value,
            tuple((name, value.encode()) for name, value in record.headers.items())))
        if outcome.dead_letter_reason == "unexpected-error":
            crashes.append(f"mapper {event.type}")
    assert crashes == []
    assert accepted > 300  # not vacuous: many mutants pass the contracts


def test_the_numbers_that_crashed_the_mapper_are_refused_by_the_contract() -> None:
    for event_type, path in [("medication.changed", ("dose", "value")), ("medication.discontinued",
                             ("frequency", "period")), ("lab.resulted", ("value", "value"))]:
        event = copy.deepcopy(example(event_type))
        node = event["data"]
        for key in path[:-1]:
            node = node[key]
        if path[-1] not in node:
            continue
        node[path[-1]] = 1e300
        try:
            parse_event(orjson.dumps(event))
        except InvalidInput as exc:
            assert exc.problems[0].rule == "less_than_equal"
        else:
            raise AssertionError(f"{event_type} {'.'.join(path)} = 1e300 accepted")
