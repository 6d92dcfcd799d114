"""Every field of every event contract is either mapped or listed as knowingly ignored
(services/mapper/mapping/unmapped.py).

A field counts as mapped when changing its value (to another value the contract accepts) changes the mapped
Bundle or its safety alerts. The events are the published schema examples, with the optional fields they leave
out filled in below (FILLED), so every field of every contract is changed once. A new contract field that the
mapping ignores fails here until it is mapped or listed, with its reason.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any, Literal

import orjson
import pytest
from pydantic import BaseModel

from services.common.errors import InvalidInput
from services.common.events import EVENT_TYPES, parse_event
from services.common.events.examples import EXAMPLES
from services.common.fhir.codesystems import ICD10CM, NPI
from services.mapper.mapping import map_event
from services.mapper.mapping.unmapped import IGNORED
from services.mapper.result import MappingContext

CONTEXT = MappingContext(received_at=dt.datetime(2026, 1, 5, tzinfo=dt.UTC))
_NPI = "1245319599"
_EXCEPTION = {"labels_covered": ["SUD"], "purposes": ["TREAT"], "recipient": {
    "kind": "organization", "name": "Harbor Recovery Program",
    "identifier": {"system": NPI, "value": "1093817465", "assigner": "NPPES"}}}
_AUDIT_C = [{"code": "68518-0", "answer": 1}, {"code": "68519-8", "answer": 1}, {"code": "68520-6", "answer": 1}]
_REASON = {"system": ICD10CM, "code": "F32.1", "display": "Major depressive disorder, single episode, moderate"}

# Values for the optional fields a published example leaves out (merged into a copy of the example).
FILLED: dict[str, dict[str, Any]] = {
    "patient.registered": {"name": {"prefix": "Ms.", "suffix": "Jr."}, "contact": {"address": {"country": "US"}}},
    "patient.updated": {"name": {"prefix": "Ms.", "suffix": "Jr."}, "contact": {"address": {
        "line": ["3 Birch Lane"], "city": "Springfield", "state": "IL", "postal_code": "62701", "country": "US"}}},
    "appointment.booked": {"practitioner": {"npi": _NPI}},
    "appointment.cancelled": {"practitioner": {"npi": _NPI}},
    "appointment.noshow": {"practitioner": {"npi": _NPI}},
    "session.completed": {"practitioner": {"npi": _NPI}, "add_on_cpt_codes": ["90785"]},
    "assessment.completed": {"patient_gender": "female"},
    "diagnosis.recorded": {"sensitivity": "psychiatric"},
    "diagnosis.resolved": {"sensitivity": "psychiatric"},
    "medication.prescribed": {"as_needed": True, "sensitivity": "psychiatric", "reason_codes": [_REASON]},
    "medication.changed": {"as_needed": True, "sensitivity": "psychiatric", "reason_codes": [_REASON]},
    "medication.discontinued": {"as_needed": True, "sensitivity": "psychiatric", "reason_codes": [_REASON],
                                "reason": {"display": "Adverse reaction"}},
    "note.signed": {"content_type": "text/markdown"},
    "careplan.updated": {"author": {"npi": _NPI}, "addresses_diagnosis_ids": ["DX-3390"]},
    "consent.granted": {"recipient": {"identifier": {"assigner": "NPPES"}}, "exceptions": [_EXCEPTION]},
    "consent.revoked": {"recipient": {"identifier": {"assigner": "NPPES"}}, "exceptions": [_EXCEPTION]},
    "lab.resulted": {"order_id": "ORD-2025-0412"},
    "risk.flagged": {"flagged_by": {"npi": _NPI}},
}
# Fields that exist in one variant of a payload only: checked on another event of that variant.
VARIANTS: dict[str, list[Callable[[dict[str, Any]], None]]] = {
    "assessment.completed": [
        lambda data: data.update(reported_total={"value": 12}),
        lambda data: data.update(instrument="audit-c", items=_AUDIT_C, reported_total=None),  # sex-specific cut-off
        lambda data: data["items"][0].update(code=None, link_id="/44250-9"),
    ],
    "careplan.updated": [lambda data: data["goals"][0].update(status="on-hold")],
    "lab.resulted": [lambda data: data.update(value=None, value_text="positive", reference_range={"text": "negative"})],
}


# Fields whose value the contract fixes, or which name another part of the payload (an item's code is the
# item): no other value is accepted on their own, so there is nothing to change. Mapped all the same.
FIXED: dict[str, str] = {
    "reported_total.unit": "always {score}",
    "medication.system": "always RxNorm",
    "code.system": "always LOINC",
    "instrument": "decides which items the payload must hold",
    "items[].code": "names the item (the instrument's LOINC item codes)",
    "items[].link_id": "names the item (its number)",
}


def short(event_type: str) -> str:
    return event_type.removeprefix("org.carebus.").removesuffix(".v1")


def _model(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The contract model inside an annotation (Optional, list, Annotated, union), and whether in a list."""
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    if origin in (list, tuple):
        return _model(typing.get_args(annotation)[0])[0], True
    if origin is Literal:
        return None, False
    for arg in typing.get_args(annotation):
        model, in_list = _model(arg)
        if model is not None:
            return model, in_list
    return None, False


def field_paths(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for name, info in model.model_fields.items():
        nested, in_list = _model(info.annotation)
        path = prefix + name + ("[]" if in_list else "")
        if nested is not None:
            yield from field_paths(nested, path + ".")
        else:
            yield path, info.annotation


def _literals(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) is Literal:
        return list(typing.get_args(annotation))
    found = []
    for arg in typing.get_args(annotation):
        if arg is not type(None) and not isinstance(arg, types.EllipsisType):
            found += _literals(arg)
    return found


def _merge(base: Any, extra: Any) -> Any:
    if isinstance(base, dict) and isinstance(extra, dict):
        out = dict(base)
        for key, value in extra.items():
            out[key] = _merge(base.get(key), value) if value is not None else None
        return {k: v for k, v in out.items() if v is not None}
    return copy.deepcopy(extra)


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _without_npis(event: dict[str, Any]) -> dict[str, Any]:
    """The event with its practitioners named by their source ids only (an NPI, when given, is used instead)."""
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if not (k == "npi" and "id" in value)}
        return [strip(v) for v in value] if isinstance(value, list) else value
    return strip(event)  # type: ignore[no-any-return]


def events_of(event_type: str) -> list[dict[str, Any]]:
    name = short(event_type)
    event = copy.deepcopy(EXAMPLES[event_type])
    event["data"] = _merge(event["data"], FILLED.get(name, {}))
    variants = [copy.deepcopy(EXAMPLES[event_type]), event, _without_npis(event)]
    for change in VARIANTS.get(name, []):
        variant = copy.deepcopy(event)
        change(variant["data"])
        variant["data"] = _without_nulls(variant["data"])
        variants.append(variant)
    return variants


def _locate(data: dict[str, Any], path: str) -> tuple[Any, Any] | None:
    """(container, key) of the value at ``path`` (the first item of every list), or None when it is absent."""
    node: Any = data
    parts = path.split(".")
    for i, part in enumerate(parts):
        key = part.removesuffix("[]")
        if not isinstance(node, dict) or node.get(key) is None:
            return None
        if i == len(parts) - 1:
            return (node[key], 0) if part.endswith("[]") and node[key] else (node, key) if not part.endswith("[]") \
                else None
        node = node[key][0] if part.endswith("[]") else node[key]
        if part.endswith("[]") and not isinstance(node, dict):
            return None
    return None


def _candidates(value: Any, annotation: Any) -> list[Any]:
    others = [v for v in _literals(annotation) if v != value]
    if others:
        return others
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int | float):
        return [value + 1, value - 1]
    if isinstance(value, str):
        for parse in (dt.date.fromisoformat, dt.datetime.fromisoformat):
            try:
                moment = parse(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            step = dt.timedelta(minutes=5) if isinstance(moment, dt.datetime) else dt.timedelta(days=1)
            return [(moment - step).isoformat(), (moment + step).isoformat()]
        swapped = value[:-1] + ("2" if value[-1] != "2" else "3")
        return [swapped, value + "1", value + "x", "x" + value]
    return []


def _mapped(event: dict[str, Any]) -> bytes:
    mapped = map_event(parse_event(orjson.dumps(event)), CONTEXT)
    alerts = [{f.name: getattr(alert, f.name) for f in dataclasses.fields(alert)} for alert in mapped.alerts]
    return orjson.dumps([mapped.bundle, alerts], default=str)


def changes_the_output(event: dict[str, Any], path: str, annotation: Any) -> bool | None:
    """True/False: whether some accepted change of the field at ``path`` changes the output; None when the
    events hold no value there or no change of it is accepted."""
    base = _mapped(event)
    located = _locate(event["data"], path)
    if located is None:
        return None
    container, key = located
    tried = False
    for candidate in _candidates(container[key], annotation):
        changed = copy.deepcopy(event)
        target = _locate(changed["data"], path)
        assert target is not None
        target[0][target[1]] = candidate
        try:
            output = _mapped(changed)
        except InvalidInput:
            continue  # not a value the contract (or its mapping) accepts here: try another
        tried = True
        if output != base:
            return True
    return False if tried else None


CASES = [(event_type, path, annotation)
         for event_type, cls in EVENT_TYPES.items()
         for path, annotation in field_paths(_model(cls.model_fields["data"].annotation)[0])]  # type: ignore[arg-type]


@pytest.mark.parametrize(("event_type", "path", "annotation"), CASES,
                         ids=[f"{short(t)}:{p}" for t, p, _ in CASES])
def test_every_contract_field_is_mapped_or_knowingly_ignored(event_type: str, path: str, annotation: Any) -> None:
    verdicts = [changes_the_output(event, path, annotation) for event in events_of(event_type)]
    ignored = IGNORED.get(short(event_type), {})
    if path in ignored:
        assert True not in verdicts, f"{path} is listed as ignored ({ignored[path]}) but the mapping uses it"
        return
    if verdicts == [None] * len(verdicts) and path in FIXED:
        return
    assert verdicts != [None] * len(verdicts), f"no event sets {path}: give it a value in FILLED or VARIANTS"
    assert True in verdicts, f"{short(event_type)}'s {path} changes nothing in FHIR: map it or list it in IGNORED"


def test_the_ignored_list_names_real_fields() -> None:
    known = {(short(t), p) for t, p, _ in CASES}
    assert [(t, p) for t, fields in IGNORED.items() for p in fields if (t, p) not in known] == []
