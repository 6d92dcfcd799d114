"""Validate each resource of an HL7 v2-derived bundle with the fhir.resources R4B models.

fhir.resources' Bundle model does not validate entry.resource against its own type, so every resource is
validated on its own class. Errors name the resource type and the element path, never the value.
(services/mapper/mapping has no shared ``validate_bundle`` yet; this is the HL7 v2 package's own.)
"""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError


def resource_problems(resource: dict[str, Any]) -> list[str]:
    """The element paths (``Observation.valueQuantity.value: value_error``) that break R4 rules."""
    resource_type = str(resource.get("resourceType", ""))
    try:
        model = get_fhir_model_class(resource_type)
    except ValueError:
        return [f"{resource_type or 'resource'}: unknown resource type"]
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        return [
            f"{resource_type}.{'.'.join(str(part) for part in error['loc'])}: {error['type']}"
            for error in exc.errors()
        ]
    return []


def bundle_problems(bundle: dict[str, Any]) -> list[str]:
    problems = resource_problems({k: v for k, v in bundle.items() if k != "entry"})
    for entry in bundle.get("entry", []):
        problems.extend(resource_problems(entry.get("resource", {})))
    return problems
