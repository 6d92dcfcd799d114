"""Building blocks shared by the event payloads: codings, identifiers, names, quantities, practitioners.

Coded clinical fields are ``{system, code, display}``; the code systems carebus knows by URL are named here.
"""

from __future__ import annotations

import math
from typing import Annotated

from annotated_types import Ge, Le
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from services.common.fhir.codesystems import AdministrativeGender

# A source system's own identifier of a record (patient, encounter, order ...). Kept to a safe alphabet so
# it can be part of a Kafka key and of deterministic ids without escaping.
SourceId = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$")
]
# An absolute URI or URN (code systems, identifier systems, CloudEvents source).
Uri = Annotated[
    str, StringConstraints(min_length=3, max_length=512, pattern=r"^[A-Za-z][A-Za-z0-9+.\-]*:\S+$")
]
NonEmptyText = Annotated[str, StringConstraints(min_length=1, max_length=512)]
Code = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^\S(.*\S)?$")]
LoincCode = Annotated[str, StringConstraints(pattern=r"^\d{1,8}-\d$")]
LoincAnswerCode = Annotated[str, StringConstraints(pattern=r"^LA\d{1,8}-\d$")]


class Contract(BaseModel):
    """Base of every payload model: unknown fields are errors (a typo must not be silently dropped)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Coding(Contract):
    """A code from a code system, e.g. {system: "http://hl7.org/fhir/sid/icd-10-cm", code: "F32.1"}."""

    system: Uri
    code: Code
    display: NonEmptyText | None = None


class Identifier(Contract):
    """A business identifier, e.g. an MRN or the enterprise id {system: "urn:carebus:empi", value: ...}."""

    system: Uri
    value: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    assigner: NonEmptyText | None = Field(None, description="Name of the organization that issued it.")


class Practitioner(Contract):
    """A clinician as the source knows them. Becomes a logical FHIR reference (identifier + display)."""

    id: SourceId = Field(description="The source system's practitioner id.")
    name: NonEmptyText | None = None
    npi: Annotated[str, StringConstraints(pattern=r"^\d{10}$")] | None = None


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


# Larger magnitudes are no clinical quantity, and a whole float beyond 2^63 cannot be written as a JSON integer
# (FHIR decimals of whole values are): refused by the contract rather than crashing the mapping.
LARGEST_QUANTITY = 1e15
FiniteNumber = Annotated[float, Ge(-LARGEST_QUANTITY), Le(LARGEST_QUANTITY), AfterValidator(_finite)]


class Quantity(Contract):
    """A measured amount; ``unit`` is human-readable, ``code`` the UCUM code if known ("mg", "mmol/L")."""

    value: FiniteNumber
    unit: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    code: Annotated[str, StringConstraints(min_length=1, max_length=32)] | None = None


Gender = AdministrativeGender
