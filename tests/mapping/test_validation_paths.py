"""validate_resource's two paths give one verdict: the known-shape path (key sets the R4B models have passed,
values checked by the models' own field types) never passes what ``Model.model_validate`` would reject.

The corpus is carebus's own output (every event example, the sample care journey, every HL7 v2 sample) plus
the published FHIR examples; the mutants change one to three places of a corpus resource the way a faulty
mapping or a sender would: a wrong value, a wrong JSON type, a null, an empty string or list, a missing or
extra element, a second choice of a value[x].
"""

from __future__ import annotations

import copy
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from fhir_core.fhirabstractmodel import FHIRAbstractModel
from pydantic import ValidationError

from devstack.journey import sample_care_journey
from services.common import fhir_validation as validation
from services.common.errors import MappingError
from services.common.events import parse_event
from services.common.events.examples import EXAMPLES
from services.mapper.hl7v2 import map_hl7v2_message
from services.mapper.mapping import map_event
from tests.hl7v2.helpers import sample as hl7_sample
from tests.mapping.helpers import CONTEXT, SAMPLES, sample

ODD_VALUES: tuple[Any, ...] = (
    "", " ", " x", "x ", "a  b", "tab\there", "\u00a0", "x\u2003y", "2026-13-45", "2026-01-05T25:00:00Z",
    "2026-01-05T09:00:00", "2026-02-30", "20260105", "1.5", "-0", "01", "A" * 65, "bad id!", "Patient/x y",
    "urn:uuid:", "http://x y", 0, -1, 1, 2**40, 1.5, float("nan"), True, False, None, [], {}, [None], ["x"],
    [1], {"x": 1}, {"text": "x"}, [{"text": "x"}],
)  # fmt: skip


def _corpus() -> list[dict[str, Any]]:
    bundles = [map_event(parse_event(copy.deepcopy(event)), CONTEXT).bundle for event in EXAMPLES.values()]
    journey = sample_care_journey(datetime(2026, 1, 5, 9, 0, tzinfo=UTC) - timedelta(days=1))
    bundles += [map_event(parse_event(event), CONTEXT).bundle for event in journey]
    hl7_dir = Path(__file__).resolve().parent.parent / "samples" / "hl7v2"
    bundles += [map_hl7v2_message(hl7_sample(path.name), CONTEXT).bundle for path in sorted(hl7_dir.glob("*.hl7"))]
    out = [entry["resource"] for bundle in bundles for entry in bundle["entry"]]
    out += [sample(path.name) for path in sorted(SAMPLES.glob("*.json"))]
    return [resource for resource in out if _model_passes(resource)]  # one SDC example breaks R4B: left out


def _model_passes(resource: dict[str, Any]) -> bool:
    """The R4B model's verdict, plus the required bindings the models list (``enum_values``) but do not check."""
    try:
        instance = get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    except (ValidationError, TypeError, AttributeError):  # fhir_core trips over some wrong JSON types
        return False
    return _codes_in_their_value_sets(instance)


def _codes_in_their_value_sets(instance: FHIRAbstractModel) -> bool:
    for name, field in type(instance).model_fields.items():
        value = getattr(instance, name, None)
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        codes = extra.get("enum_values")
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, FHIRAbstractModel) and not _codes_in_their_value_sets(item):
                return False
            if isinstance(item, str) and isinstance(codes, list) and "+" not in codes and item not in codes:
                return False
    return True


CORPUS = _corpus()


def _places(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside ``node`` (dict keys and list indexes)."""
    out = []
    if isinstance(node, dict):
        for key, value in node.items():
            out.append((*path, key))
            out.extend(_places(value, (*path, key)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            out.append((*path, index))
            out.extend(_places(value, (*path, index)))
    return out


def _mutate(resource: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    mutant = copy.deepcopy(resource)
    for _ in range(rng.randint(1, 3)):
        places = [p for p in _places(mutant) if p[0] != "resourceType"]
        if not places:
            break
        path = rng.choice(places)
        parent: Any = mutant
        for part in path[:-1]:
            parent = parent[part]
        last = path[-1]
        value = parent[last]
        operation = rng.randrange(8)
        if operation == 0 and isinstance(parent, dict):
            del parent[last]
        elif operation == 1 and isinstance(parent, dict):
            parent[rng.choice(["bogus", "valueString", "valueQuantity", "valueBoolean", "_status", "id",
                               "extension", "text", "code"])] = rng.choice(ODD_VALUES)
        elif operation == 2 and isinstance(value, str):
            parent[last] = rng.choice([value + " ", " " + value, value.upper(), value[:-1], value + value,
                                       value.replace("-", ""), value.replace(":", " "), value + "Z"])
        elif operation == 3:
            parent[last] = [value]
        elif operation == 4 and isinstance(value, list) and value:
            parent[last] = value[0]
        elif operation == 5 and isinstance(value, list):
            value.append(rng.choice([None, copy.deepcopy(value[0]) if value else "x", {}]))
        else:
            parent[last] = copy.deepcopy(rng.choice(ODD_VALUES))
    return mutant


def test_every_corpus_resource_passes_and_then_takes_the_known_shape_path() -> None:
    unknown_after_learning = []
    for resource in CORPUS:
        validation.validate_resource(copy.deepcopy(resource))
        if not validation._known_resource(copy.deepcopy(resource)):
            unknown_after_learning.append(resource["resourceType"])
    # the published examples hold nulls or _primitive extensions now and then (always the full path)
    own_output = len(CORPUS) - len(list(SAMPLES.glob("*.json")))
    assert len(unknown_after_learning) <= len(list(SAMPLES.glob("*.json"))), unknown_after_learning
    assert own_output > 300


def test_the_known_shape_path_never_passes_what_the_model_rejects() -> None:
    for resource in CORPUS:
        validation.validate_resource(copy.deepcopy(resource))  # learn the corpus shapes
    rng = random.Random(20261125)  # noqa: S311 - a reproducible mutation stream, not a secret
    disagreements: list[str] = []
    known_count = rejected = 0
    for _ in range(4000):
        resource = rng.choice(CORPUS)
        mutant = _mutate(resource, rng)
        model_verdict = _model_passes(mutant)
        known = validation._known_resource(copy.deepcopy(mutant))
        try:
            validation.validate_resource(copy.deepcopy(mutant))
            ours = True
        except MappingError:
            ours = False
        if (known and not model_verdict) or ours != model_verdict:
            disagreements.append(f"{resource['resourceType']}: known={known} ours={ours} model={model_verdict}")
        known_count += known
        rejected += not model_verdict
    assert disagreements == []
    # the comparison is not vacuous: many mutants take the known-shape path, many are rejected
    assert known_count > 400, known_count
    assert rejected > 1000, rejected


@pytest.mark.parametrize("value", ["", " x", "2026-13-45", "2026-01-05T09:00", True, None, [], {}])
def test_a_bad_value_in_a_known_shape_is_reported_with_its_path(value: Any) -> None:
    good = {"resourceType": "Flag", "id": "f1", "status": "active", "code": {"text": "x"},
            "subject": {"reference": "Patient/p1"}, "period": {"start": "2026-01-05"}}
    validation.validate_resource(copy.deepcopy(good))
    assert validation._known_resource(copy.deepcopy(good))
    bad = copy.deepcopy(good)
    bad["period"]["start"] = value
    if value is None:  # a null primitive is simply absent for the model
        validation.validate_resource(bad)
        return
    with pytest.raises(MappingError) as caught:
        validation.validate_resource(bad)
    assert caught.value.problems[0].location.startswith("resource.period")


def test_memories_are_bounded() -> None:
    validation.validate_resource(copy.deepcopy(CORPUS[0]))  # every rule below exists
    flag_rules = validation._resource_rules("Flag")
    assert flag_rules is not None
    saved = flag_rules.key_set_limit, {kind: kind.limit for kind in validation._primitive_types.values()}
    flag_rules.key_set_limit = 3
    for kind in validation._primitive_types.values():
        kind.passed.clear()
        kind.limit = 10
    for number in range(50):
        flag = {"resourceType": "Flag", "id": f"f{number}", "status": "active", "code": {"text": f"t{number}"},
                "subject": {"reference": f"Patient/p{number}"}}
        if number % 2:
            flag["period"] = {"start": "2026-01-05"}
        flag[["category", "encounter", "author", "identifier"][number % 4]] = (
            {"reference": "Encounter/e"} if number % 4 in (1, 2) else [{"text": "c"}] if number % 4 == 0
            else [{"value": "v"}])
        validation.validate_resource(flag)
    try:
        assert len(flag_rules.key_sets) <= 3
        assert all(len(kind.passed) <= 10 for kind in validation._primitive_types.values())
    finally:
        flag_rules.key_set_limit = saved[0]
        for kind, limit in saved[1].items():
            kind.limit = limit
