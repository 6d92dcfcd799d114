"""validate_bundle (fhir.resources R4B models) and serialize (orjson): the checks and bytes at the end of
the hot path.

Every entry's resource is validated by its R4B model, and the Bundle shell by the Bundle model (without the
resources, so nothing is validated twice). A failure raises MappingError whose problems name
``entry[<index>].resource(<ResourceType>).<path>`` and the rule (pydantic / FHIR error type), never a value.

Speed: building fhir.resources models costs far more than building the dicts, because every complex element
is a model with Python-level hooks. Most complex elements repeat from resource to resource and event to event
(meta with profile and labels, categories, the subject reference, the practitioner, LOINC codes, answer
codings ...). So each top-level complex element of a resource is validated by its own R4B element model
once, memoized by (model, JSON bytes) in a bounded cache, and the validated instance is handed to the
resource model, which accepts instances of its element types as they are. Validating an element does not
depend on where it sits, so the result is the same as validating the whole resource from scratch; the
resource-level rules (required elements, choice types [x], extra elements) still run on every resource.
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

ELEMENT_CACHE_SIZE: Final = 8192

_cache: dict[tuple[type[FHIRAbstractModel], bytes], FHIRAbstractModel] = {}
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


def _element(klass: type[FHIRAbstractModel], value: dict[str, Any], where: str) -> FHIRAbstractModel:
    key = (klass, orjson.dumps(value))
    found = _cache.get(key)
    if found is not None:
        return found
    try:
        instance = klass.model_validate(value)
    except ValidationError as exc:
        raise MappingError("an element breaks FHIR R4", _problems(where, exc)) from None
    with _cache_lock:
        if len(_cache) >= ELEMENT_CACHE_SIZE:
            _cache.clear()
        _cache[key] = instance
    return instance


def validate_resource(resource: dict[str, Any], where: str = "resource") -> None:
    """Validate one resource (a plain dict) with its R4B model; MappingError names what broke."""
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
    fields = _complex_fields(model)
    prepared: dict[str, Any] = {}
    for key, value in resource.items():
        klass = fields.get(key)
        if klass is None:
            prepared[key] = value
        elif isinstance(value, dict):
            prepared[key] = _element(klass, value, f"{where}.{key}")
        elif isinstance(value, list) and all(isinstance(item, dict) for item in value):
            prepared[key] = [_element(klass, item, f"{where}.{key}[{i}]") for i, item in enumerate(value)]
        else:
            prepared[key] = value  # the model reports the wrong shape
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
    validate_resource(shell, "Bundle")
    for index, entry in enumerate(entries):
        resource = entry.get("resource")
        resource_type = resource.get("resourceType") if isinstance(resource, dict) else None
        where = f"entry[{index}].resource({resource_type})"
        if not isinstance(resource, dict):
            raise MappingError(
                "an entry has no resource", [FieldProblem(where, "missing-resource", "entry has no resource")]
            )
        validate_resource(resource, where)


def serialize(bundle: dict[str, Any]) -> bytes:
    """The Bundle as compact JSON bytes (orjson), ready for Kafka."""
    return orjson.dumps(bundle)
