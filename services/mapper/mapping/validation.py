"""validate_bundle (fhir.resources R4B models) and serialize (orjson): the checks and bytes at the end of
the hot path.

Every entry's resource is validated by its R4B model, and the Bundle shell by the Bundle model (without the
resources, so nothing is validated twice). A failure raises MappingError whose problems name
``entry[<index>].resource(<ResourceType>).<path>`` and the rule (pydantic / FHIR error type), never a value.

Speed: building fhir.resources models costs far more than building the dicts, because every complex element
is a model with Python-level hooks. Most complex elements repeat from resource to resource and event to event
(meta with profile and labels, categories, the practitioner, LOINC codes, answer codings, identifier types
...), while others embed an id and are new every time (the subject reference, Provenance.target, the
sender's identifiers). So every complex element, at every depth, is validated by its own R4B element model
once and memoized by (model, JSON bytes of the element); the validated instance is handed to the parent
model, which accepts instances of its element types as they are. An element seen for the first time is thus
validated as a shell around its already validated children: an Identifier with a new value but the usual
type and assigner costs one small model, not four. Validating an element does not depend on where it sits,
so the result is the same as validating the whole resource from scratch, and the resource-level rules
(required elements, choice types [x], extra elements, primitive formats) run on every resource.

Within one validate_bundle (or validate_resource) call every validated element is reused (the subject
reference of each resource, say). Across calls, the memo admits an element on its second sighting in a later
call: the first time only a hash of its key is remembered (no model instance is kept), so elements embedding
ids (new every event, never seen again) neither flush the recurring ones nor pile up as long-lived objects
for the garbage collector; a recurring element is validated twice, then served from the memo. Both the memo
and the hashes are bounded and cleared when full.
The R4B models are FHIR 4.3; carebus emits only elements that exist in R4 4.0.1.
"""

from __future__ import annotations

import threading
import typing
from functools import cache
from typing import Any, Final

import orjson
from fhir.resources.R4B import get_fhir_model_class
from fhir_core.fhirabstractmodel import FHIRAbstractModel
from pydantic import ValidationError

from services.common.errors import FieldProblem, MappingError

ELEMENT_CACHE_SIZE: Final = 8192  # validated elements kept (seen at least twice)
SEEN_SIZE: Final = 65536  # hashes of elements seen once

_Key = tuple[type[FHIRAbstractModel], bytes]
_Local = dict[_Key, FHIRAbstractModel]  # what one call validated
_cache: dict[_Key, FHIRAbstractModel] = {}
_seen: set[int] = set()
_cache_lock = threading.Lock()


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _problems(where: str, error: ValidationError) -> list[FieldProblem]:
    problems = []
    for item in error.errors(include_url=False, include_input=False, include_context=False):
        path = _path(tuple(item["loc"]))
        location = f"{where}.{path}" if path else where
        rule = str(item["type"])
        problems.append(FieldProblem(location, rule, f"breaks the FHIR R4 rule '{rule}'"))
    return problems


def _element_class(annotation: Any) -> type[FHIRAbstractModel] | None:
    """The R4B element model behind a field annotation such as ``list[CodeableConceptType] | None``."""
    get_model = getattr(annotation, "get_model_klass", None)
    if get_model is not None:
        klass = get_model()
        return klass if isinstance(klass, type) and issubclass(klass, FHIRAbstractModel) else None
    for arg in typing.get_args(annotation):
        found = _element_class(arg)
        if found is not None:
            return found
    return None


@cache
def _complex_fields(model: type[FHIRAbstractModel]) -> dict[str, type[FHIRAbstractModel]]:
    """JSON name -> element model, for the fields of ``model`` whose values are complex elements."""
    out: dict[str, type[FHIRAbstractModel]] = {}
    for name, field in model.model_fields.items():
        element = _element_class(field.annotation)
        if element is not None and element.__resource_type__ != "Resource":
            out[field.alias or name] = element
    return out


def _element(klass: type[FHIRAbstractModel], value: dict[str, Any], parent: str, name: str,
             index: int | None, local: _Local) -> FHIRAbstractModel:
    """``value`` (at ``parent.name[index]``) validated by ``klass``, memoized by content (module docstring)."""
    key = (klass, orjson.dumps(value))
    found = _cache.get(key)
    if found is None:
        found = local.get(key)
    if found is not None:
        return found
    where = f"{parent}.{name}" if index is None else f"{parent}.{name}[{index}]"
    try:
        instance = klass.model_validate(_prepared(klass, value, where, local))
    except ValidationError as exc:
        raise MappingError("an element breaks FHIR R4", _problems(where, exc)) from None
    local[key] = instance
    sighting = hash(key)
    with _cache_lock:
        if sighting in _seen:  # seen in an earlier call: worth keeping
            if len(_cache) >= ELEMENT_CACHE_SIZE:
                _cache.clear()
            _cache[key] = instance
        else:
            if len(_seen) >= SEEN_SIZE:
                _seen.clear()
            _seen.add(sighting)
    return instance


def _prepared(model: type[FHIRAbstractModel], data: dict[str, Any], where: str, local: _Local) -> dict[str, Any]:
    """``data`` with each complex element replaced by its validated (memoized) instance."""
    fields = _complex_fields(model)
    if fields.keys().isdisjoint(data):
        return data
    prepared: dict[str, Any] = {}
    for name, value in data.items():
        klass = fields.get(name)
        if klass is None:
            prepared[name] = value
        elif type(value) is dict:
            prepared[name] = _element(klass, value, where, name, None, local)
        elif type(value) is list:
            prepared[name] = _elements(klass, value, where, name, local)
        else:
            prepared[name] = value  # the model validates it as it is (and reports a wrong shape)
    return prepared


def _elements(klass: type[FHIRAbstractModel], value: list[Any], where: str, name: str, local: _Local) -> list[Any]:
    """A list of complex elements, each validated (memoized); a list holding anything but dicts is left to the
    model as it is (it reports the wrong shape)."""
    out: list[Any] = []
    for index, item in enumerate(value):
        if type(item) is not dict:
            return value
        out.append(_element(klass, item, where, name, index, local))
    return out


def validate_resource(resource: dict[str, Any], where: str = "resource", local: _Local | None = None) -> None:
    """Validate one resource (a plain dict) with its R4B model; MappingError names what broke. ``local``: the
    elements validated so far in the same call (validate_bundle's), for reuse."""
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str):
        raise MappingError(
            "no resourceType", [FieldProblem(where, "missing-resource-type", "no resourceType")]
        )
    try:
        model = get_fhir_model_class(resource_type)
    except ValueError:
        raise MappingError(
            "unknown resource type", [FieldProblem(where, "unknown-resource-type", "not an R4 resource")]
        ) from None
    prepared = _prepared(model, resource, where, {} if local is None else local)
    try:
        model.model_validate(prepared)
    except ValidationError as exc:
        raise MappingError(f"{resource_type} breaks FHIR R4", _problems(where, exc)) from None


def validate_bundle(bundle: dict[str, Any]) -> None:
    """Validate every resource of a Bundle with the R4B models; raise MappingError naming what broke."""
    if bundle.get("resourceType") != "Bundle":
        raise MappingError(
            "not a Bundle", [FieldProblem("resourceType", "not-a-bundle", "expected a Bundle")]
        )
    entries = bundle.get("entry") or []
    shell = {**bundle, "entry": [{"fullUrl": entry.get("fullUrl")} for entry in entries]}
    local: _Local = {}
    validate_resource(shell, "Bundle", local)
    for index, entry in enumerate(entries):
        resource = entry.get("resource")
        resource_type = resource.get("resourceType") if isinstance(resource, dict) else None
        where = f"entry[{index}].resource({resource_type})"
        if not isinstance(resource, dict):
            raise MappingError(
                "an entry has no resource", [FieldProblem(where, "missing-resource", "entry has no resource")]
            )
        validate_resource(resource, where, local)


def serialize(bundle: dict[str, Any]) -> bytes:
    """The Bundle as compact JSON bytes (orjson), ready for Kafka."""
    return orjson.dumps(bundle)
