"""validate_bundle (fhir.resources R4B models) and serialize (orjson): the checks and bytes at the end of
the hot path.

Every entry's resource is validated against its R4B model, and the Bundle shell against the Bundle model
(without the resources, so nothing is validated twice). A failure raises MappingError whose problems name
``entry[<index>].resource(<ResourceType>).<path>`` and the rule (pydantic / FHIR error type), never a value.

Speed: building fhir.resources model objects costs far more than building the dicts (every complex element is
a model with Python-level hooks), yet carebus emits a few dozen resource *shapes* over and over with new
values in them. So the R4B models are applied in two ways that always give the same verdict:

* **Full**: ``Model.model_validate(resource)``. Used for a shape not seen yet, and to word every failure.
* **Known shape**: what an R4B model checks splits into rules on the *set of keys* of an element (no unknown
  elements, required elements present, at most one ``value[x]`` of a choice, no null in a list of complex
  elements) and rules on each *value* (its field's type: a primitive's pattern, a nested element's model).
  fhir_core's model-level hooks (``reject_null_complex_elements``, ``_validate_required_primitive_elements``,
  ``_validate_one_of_many``, the resourceType check) read only which keys are present and not null. So once the
  full validation has passed an element with a given key set, every element of that model with the same key
  set passes too, provided each value passes its field's own type. The known-shape path therefore checks, for
  every element at every depth: its key set is one the model has passed before, each primitive value passes
  the model field's own annotation (``TypeAdapter(Annotated[annotation, *metadata])``, the pydantic-core
  validator the model itself runs; values already passed are remembered), and each nested element, again,
  recursively. Anything else (a new key set, a null, an empty list, a ``_primitive`` extension sibling, a model
  with validators of its own, a value that fails) answers "not known" and the full validation decides.

After every full validation that passes, the resource's key sets and string values are remembered ("learned").
Both memories are bounded and cleared when full. tests/mapping/test_validation_paths.py checks that the two
paths agree on valid resources and on thousands of mutated ones.
The R4B models are FHIR 4.3; carebus emits only elements that exist in R4 4.0.1.
"""

from __future__ import annotations

import typing
from collections.abc import Hashable, Iterator
from typing import Annotated, Any, Final

import orjson
from fhir.resources.R4B import get_fhir_model_class
from fhir_core.fhirabstractmodel import FHIRAbstractModel
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector
from pydantic import AfterValidator, ConfigDict, TypeAdapter, ValidationError

from services.common.errors import FieldProblem, MappingError
from services.common.fhir_elements import r4_element_names

KEY_SETS_PER_MODEL: Final = 4096  # key sets remembered per model (an element of the model passed with them)
RECENT_KEY_SETS: Final = 4  # of which compared first, key by key
# Primitive values remembered per field type. Small on purpose: the values that repeat (codes, systems, profile
# URLs, a patient's references) come back within a few events, while ids are new every time; a memory of 50,000
# values per type made every lookup a cache miss and validation ~50% slower (from ~36 to ~55 µs per Bundle over
# 60,000 distinct events, benchmarks/pipeline_bench.py's mix).
VALUES_PER_TYPE: Final = 4096
LONGEST_REMEMBERED_VALUE: Final = 512  # longer strings are checked every time, never kept


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _problems(where: str, error: ValidationError) -> list[FieldProblem]:
    problems = []
    for item in error.errors(include_url=False, include_input=False, include_context=False):
        rule = str(item["type"])
        loc = tuple(item["loc"])
        if rule == "extra_forbidden" and loc and str(loc[-1]) not in r4_element_names():
            loc = loc[:-1]  # not a FHIR word: the sender's own text (it may be PHI), so only its parent is named
        path = _path(loc)
        location = f"{where}.{path}" if path else where
        message = ("an element FHIR R4 does not define here" if rule == "extra_forbidden"
                   else f"breaks the FHIR R4 rule '{rule}'")
        problems.append(FieldProblem(location, rule, message))
    return problems


# ---------------------------------------------------------------------------------------------------------
# the known-shape path: rules read off the R4B models, and what full validation has passed


class _PrimitiveType:
    """One primitive field type (annotation + field metadata), with the values it has passed."""

    __slots__ = ("limit", "passed", "validator")

    def __init__(self, annotation: Any, config: ConfigDict) -> None:
        # the pydantic-core validator of the field's annotation: what the model runs for this field
        self.validator = TypeAdapter(annotation, config=config).validator
        self.passed: set[Hashable] = set()
        self.limit = VALUES_PER_TYPE

    @staticmethod
    def _memo_key(value: Any) -> Hashable | None:
        kind = value.__class__
        if kind is str:
            return value if len(value) <= LONGEST_REMEMBERED_VALUE else None
        if kind is int or kind is bool or kind is float:
            return (kind, value)  # typed: True, 1 and 1.0 are equal in a set but not to a validator
        if kind is list and value and all(item.__class__ is str for item in value):
            return tuple(value)  # a repeating primitive (Meta.profile, HumanName.given)
        return None

    def holds(self, value: Any) -> bool:
        """Whether ``value`` passes this field type (None never does here: it is the full path's business)."""
        if value is None:
            return False
        key = self._memo_key(value)
        if key is not None and key in self.passed:
            return True
        try:
            self.validator.validate_python(value)
        except Exception:
            return False
        if key is not None:
            self.remember(key)
        return True

    def learn(self, value: Any) -> None:
        key = self._memo_key(value)
        if key is not None:
            self.remember(key)

    def remember(self, key: Hashable) -> None:
        if len(self.passed) >= self.limit:
            self.passed.clear()
        self.passed.add(key)


# the kinds of a model's fields
_PRIMITIVE: Final = 0
_ELEMENT: Final = 1
_ELEMENT_LIST: Final = 2
_RESOURCE: Final = 3  # Bundle.entry.resource: any resource, its model chosen by its resourceType
_RESOURCE_LIST: Final = 4  # DomainResource.contained
_RESOURCE_TYPE: Final = 5  # the "resourceType" key: must name the model itself

class _FieldRule:
    """How one field of a model is checked on the known-shape path."""

    __slots__ = ("codes", "element", "kind", "primitive", "resource_type")

    def __init__(self, kind: int, *, primitive: _PrimitiveType | None = None, element: _ModelRules | None = None,
                 resource_type: str = "", codes: frozenset[str] | None = None) -> None:
        self.kind = kind
        self.primitive = primitive  # _PRIMITIVE
        self.codes = codes  # _PRIMITIVE of a code with a required binding: the value set's codes
        self.element = element  # _ELEMENT, _ELEMENT_LIST
        self.resource_type = resource_type  # _RESOURCE_TYPE


_BASE_VALIDATORS: Final = (
    frozenset(FHIRAbstractModel.__pydantic_decorators__.model_validators),
    frozenset(FHIRAbstractModel.__pydantic_decorators__.field_validators),
)


class _ModelRules:
    """One R4B model: its fields by JSON name (read lazily) and the key sets its full validation has passed."""

    __slots__ = ("fields", "key_set_limit", "key_sets", "model", "recent_key_sets")

    def __init__(self, model: type[FHIRAbstractModel]) -> None:
        self.model = model
        self.fields: dict[str, _FieldRule] | None = None
        self.key_sets: set[tuple[str, ...]] = set()
        self.key_set_limit = KEY_SETS_PER_MODEL
        # members of key_sets with their fields' rules, most recently matched last
        self.recent_key_sets: list[tuple[tuple[str, ...], tuple[_FieldRule, ...]]] = []

    def read_fields(self) -> dict[str, _FieldRule]:
        model = self.model
        decorators = model.__pydantic_decorators__
        if (frozenset(decorators.model_validators), frozenset(decorators.field_validators)) != _BASE_VALIDATORS:
            self.fields = {}  # validators of its own (FHIRPrimitiveExtension): always the full path
            return self.fields
        fields: dict[str, _FieldRule] = {
            "resourceType": _FieldRule(_RESOURCE_TYPE, resource_type=model.__resource_type__)
        }
        for name, field in model.model_fields.items():
            element = _element_class(field.annotation)
            is_list = _is_list(field.annotation)
            if element is None:
                codes = _required_codes(field.json_schema_extra)
                primitive = _primitive_type(field.annotation, field.metadata, model.model_config, codes)
                fields[field.alias or name] = _FieldRule(_PRIMITIVE, primitive=primitive, codes=codes)
            elif element.__resource_type__ == "Resource":
                fields[field.alias or name] = _FieldRule(_RESOURCE_LIST if is_list else _RESOURCE)
            else:
                fields[field.alias or name] = _FieldRule(_ELEMENT_LIST if is_list else _ELEMENT,
                                                         element=_rules_of(element))
        self.fields = fields
        return fields


_rules: dict[type[FHIRAbstractModel], _ModelRules] = {}
_rules_by_resource_type: dict[str, _ModelRules | None] = {}
_primitive_types: dict[Any, _PrimitiveType] = {}


def _rules_of(model: type[FHIRAbstractModel]) -> _ModelRules:
    rules = _rules.get(model)
    if rules is None:
        rules = _rules[model] = _ModelRules(model)
    return rules


def _resource_rules(resource_type: Any) -> _ModelRules | None:
    """The rules of the R4B resource model named ``resource_type``; None for anything else."""
    if resource_type.__class__ is not str:
        return None
    try:
        return _rules_by_resource_type[resource_type]
    except KeyError:
        try:
            rules: _ModelRules | None = _rules_of(get_fhir_model_class(resource_type))
        except (ValueError, KeyError, AttributeError):
            rules = None
        _rules_by_resource_type[resource_type] = rules
        return rules


def _required_codes(extra: Any) -> frozenset[str] | None:
    """The codes of a required binding, read off the R4B model's field (``enum_values``); None when the field
    has none, or its value set is not fully listed there (a trailing ``+``)."""
    values = extra.get("enum_values") if isinstance(extra, dict) else None
    if not isinstance(values, list) or not values or "+" in values:
        return None
    return frozenset(str(value) for value in values)


def _in_codes(codes: frozenset[str]) -> Any:
    def check(value: Any) -> Any:
        for item in value if isinstance(value, list) else (value,):
            if item is not None and item not in codes:
                raise ValueError("not a code of the required value set")
        return value
    return AfterValidator(check)


def _primitive_type(annotation: Any, metadata: list[Any], config: ConfigDict,
                    codes: frozenset[str] | None = None) -> _PrimitiveType:
    """The shared field type of an annotation. A code with a required binding gets a type of its own per value
    set that passes only its codes, so the known-shape path never remembers another value for it."""
    annotated = Annotated[(annotation, *metadata)] if metadata else annotation
    key: Any = annotated if codes is None else (annotated, codes)
    if codes is not None:
        annotated = Annotated[annotated, _in_codes(codes)]
    try:
        found = _primitive_types.get(key)
    except TypeError:  # unhashable metadata: a type of its own
        return _PrimitiveType(annotated, config)
    if found is None:
        found = _primitive_types[key] = _PrimitiveType(annotated, config)
    return found


def _binding_problems(rules: _ModelRules, node: dict[str, Any], where: str, out: list[FieldProblem]) -> None:
    """Codes outside their required value set (the R4B models check a code's form only), found below ``node``.
    Run after a full validation passed, so the shapes are known to be right."""
    fields = rules.fields if rules.fields is not None else rules.read_fields()
    for key, value in node.items():
        field = fields.get(key)
        if field is None or value is None:
            continue
        kind = field.kind
        if kind == _PRIMITIVE and field.codes is not None:
            for item in value if isinstance(value, list) else (value,):
                if isinstance(item, str) and item not in field.codes:
                    out.append(FieldProblem(f"{where}.{key}", "required-binding",
                                            "not a code of the element's required value set"))
                    break
        elif kind == _ELEMENT and field.element is not None and isinstance(value, dict):
            _binding_problems(field.element, value, f"{where}.{key}", out)
        elif kind == _ELEMENT_LIST and field.element is not None and isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, dict):
                    _binding_problems(field.element, item, f"{where}.{key}[{index}]", out)
        elif kind in (_RESOURCE, _RESOURCE_LIST):
            items = value if isinstance(value, list) else [value]
            for index, item in enumerate(items):
                resource_rules = _resource_rules(item.get("resourceType")) if isinstance(item, dict) else None
                if resource_rules is not None:
                    suffix = f"[{index}]" if kind == _RESOURCE_LIST else ""
                    _binding_problems(resource_rules, item, f"{where}.{key}{suffix}", out)


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


def _is_list(annotation: Any) -> bool:
    if annotation is list or typing.get_origin(annotation) is list:
        return True
    return any(_is_list(arg) for arg in typing.get_args(annotation))


def _same_keys(node: dict[str, Any], keys: tuple[str, ...]) -> bool:
    """Whether ``node``'s keys are ``keys``, in order (``len(node) == len(keys)`` is checked by the caller)."""
    index = 0
    for key in node:
        expected = keys[index]
        if key is not expected and key != expected:
            return False
        index += 1
    return True


def _known_field_rules(rules: _ModelRules, node: dict[str, Any]) -> tuple[_FieldRule, ...] | None:
    """The rules of ``node``'s fields, in the node's key order, when its keys (in that order) are a key set
    ``rules.model`` has passed in full; None otherwise. Most nodes of a model repeat one of a few key sets: the
    most recently matched are compared key by key first, with their field rules ready, instead of building and
    hashing a tuple and looking every key up (together about a third of the known-shape path's time)."""
    size = len(node)
    recent = rules.recent_key_sets
    for keys, field_rules in recent:
        if len(keys) == size and _same_keys(node, keys):
            return field_rules
    fields = rules.fields
    keys = tuple(node)
    if fields is None or keys not in rules.key_sets:
        return None
    field_rules = tuple([fields[key] for key in keys])  # every key of a passed key set is a field
    if len(recent) >= RECENT_KEY_SETS:
        del recent[0]
    recent.append((keys, field_rules))
    return field_rules


def _known_valid(rules: _ModelRules, node: dict[str, Any]) -> bool:
    """True when ``node`` certainly passes ``rules.model`` (module docstring); False means "not known"."""
    field_rules = _known_field_rules(rules, node)
    if field_rules is None:
        return False
    index = 0
    for value in node.values():
        rule = field_rules[index]
        index += 1
        kind = rule.kind
        if kind == _PRIMITIVE:
            primitive = rule.primitive
            if primitive is None:
                return False
            if type(value) is str and value in primitive.passed:
                continue
            if not primitive.holds(value):
                return False
        elif kind == _ELEMENT:
            element = rule.element
            if element is None or type(value) is not dict or not _known_valid(element, value):
                return False
        elif kind == _ELEMENT_LIST:
            element = rule.element
            if element is None or type(value) is not list or not value:
                return False
            for item in value:
                if type(item) is not dict or not _known_valid(element, item):
                    return False
        elif kind == _RESOURCE_TYPE:
            if value != rule.resource_type:
                return False
        elif kind == _RESOURCE:
            if type(value) is not dict or not _known_resource(value):
                return False
        else:  # _RESOURCE_LIST
            if type(value) is not list or not value:
                return False
            for item in value:
                if type(item) is not dict or not _known_resource(item):
                    return False
    return True


def _known_resource(resource: dict[str, Any]) -> bool:
    rules = _resource_rules(resource.get("resourceType"))
    return rules is not None and _known_valid(rules, resource)


def _learn(rules: _ModelRules, node: dict[str, Any]) -> None:
    """Remember what a full validation has just passed: ``node``'s key set (when the known-shape path could
    use it) and, below it, every element's key set and every string value."""
    fields = rules.fields if rules.fields is not None else rules.read_fields()
    usable = bool(fields)
    for key, value in node.items():
        field = fields.get(key)
        if field is None or value is None or key[:1] == "_":
            usable = False
            continue
        kind = field.kind
        if kind == _PRIMITIVE and field.primitive is not None:
            field.primitive.learn(value)
        elif kind == _ELEMENT and field.element is not None and value.__class__ is dict:
            _learn(field.element, value)
        elif kind == _ELEMENT_LIST and field.element is not None and value.__class__ is list:
            for item in value:
                if item.__class__ is dict:
                    _learn(field.element, item)
        elif kind == _RESOURCE and value.__class__ is dict:
            _learn_resource(value)
        elif kind == _RESOURCE_LIST and value.__class__ is list:
            for item in value:
                if item.__class__ is dict:
                    _learn_resource(item)
    if usable:
        if len(rules.key_sets) >= rules.key_set_limit:
            rules.key_sets.clear()
            rules.recent_key_sets.clear()
        rules.key_sets.add(tuple(node))


def _learn_resource(resource: dict[str, Any]) -> None:
    rules = _resource_rules(resource.get("resourceType"))
    if rules is not None:
        _learn(rules, resource)


# ---------------------------------------------------------------------------------------------------------
# the API


class ValidationCounts:
    """Resources validated so far in this process, by path (the mapper exports them as a metric: a falling
    share of known shapes means new shapes are arriving, each validated in full)."""

    __slots__ = ("full", "known_shape")

    def __init__(self) -> None:
        self.known_shape = 0
        self.full = 0


COUNTS: Final = ValidationCounts()


class ValidationCollector(Collector):
    """``carebus_resources_validated_total{path="known-shape"|"full"}`` for the mapper's /metrics."""

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("carebus_resources_validated",
                                     "Resources validated against the FHIR R4 (R4B) models, by path", labels=["path"])
        family.add_metric(["known-shape"], COUNTS.known_shape)
        family.add_metric(["full"], COUNTS.full)
        yield family


def validate_resource(resource: dict[str, Any], where: str = "resource") -> None:
    """Validate one resource (a plain dict) against its R4B model; MappingError names what broke."""
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str):
        raise MappingError(
            "no resourceType", [FieldProblem(where, "missing-resource-type", "no resourceType")]
        )
    rules = _resource_rules(resource_type)
    if rules is None:
        raise MappingError(
            "unknown resource type", [FieldProblem(where, "unknown-resource-type", "not an R4 resource")]
        )
    if _known_valid(rules, resource):
        COUNTS.known_shape += 1
        return
    COUNTS.full += 1
    try:
        rules.model.model_validate(resource)
    except ValidationError as exc:
        raise MappingError(f"{resource_type} breaks FHIR R4", _problems(where, exc)) from None
    except Exception as exc:
        raise MappingError(f"{resource_type} breaks FHIR R4", [FieldProblem(
            where, "fhir-validator-error", f"the R4B model could not check it ({type(exc).__name__})")]) from None
    bindings: list[FieldProblem] = []
    _binding_problems(rules, resource, where, bindings)
    if bindings:
        raise MappingError(f"{resource_type} breaks a required binding", bindings)
    _learn(rules, resource)


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
