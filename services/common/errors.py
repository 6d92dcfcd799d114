"""The carebus exception tree.

    CarebusError
    ├── InvalidInput              bad input: answered (4xx, NAK, OperationOutcome) or dead-lettered; carry on
    │   ├── EventValidationError  an inbound event breaks its schema (names each field and rule)
    │   ├── RefusedContent        content carebus must not carry (e.g. HIPAA psychotherapy notes)
    │   └── MappingError          a valid event that cannot become valid FHIR
    │       ├── InstrumentAnswerError   instrument answers outside the item's answer list, unknown items
    │       └── UnscoreableResponse     a recognised instrument's response that cannot be scored
    └── InfrastructureError       broken infrastructure: retried, nothing committed or acknowledged
        ├── BrokerUnavailable     Kafka did not acknowledge in time
        └── StoreUnavailable      a store's database cannot be reached or failed (services/common/sql.py)
"""

from __future__ import annotations

from dataclasses import dataclass


class CarebusError(Exception):
    """Root of every error carebus raises on purpose."""


@dataclass(frozen=True)
class FieldProblem:
    """One broken rule at one place in the input. Never carries the offending value (it may be PHI)."""

    location: str
    rule: str
    message: str


class InvalidInput(CarebusError):
    """Input that will never succeed unchanged. ``reason`` is a short machine code, safe to log."""

    reason: str = "invalid-input"

    def __init__(self, message: str, problems: list[FieldProblem] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.problems = problems or []


class EventValidationError(InvalidInput):
    reason = "schema-violation"


class MalformedJson(EventValidationError):
    """Bytes that are not JSON at all (rather than JSON that breaks the schema)."""

    reason = "malformed-json"


class RefusedContent(InvalidInput):
    reason = "refused-content"


class MappingError(InvalidInput):
    reason = "mapping-failed"


# Raised by services/common/fhir/instruments.py; defined here because that module is compiled with mypyc,
# where a subclass's class-level ``reason`` would not override the base class's (it read "mapping-failed").
class InstrumentAnswerError(MappingError):
    """Answers that cannot be scored: unknown instrument or item, or an answer outside its list."""

    reason = "instrument-answer-invalid"


class UnscoreableResponse(MappingError):
    """A questionnaire response recognised as an instrument carebus scores whose answers cannot be tied to the
    instrument's items (or that names no patient): dead-lettered with the rule, never passed through unscored
    (it may hold a suicide-item answer)."""

    reason = "instrument-response-unscoreable"


class InfrastructureError(CarebusError):
    """Something carebus depends on is broken; retry later, acknowledge nothing."""


class StoreUnavailable(InfrastructureError):
    """A store's database (record, notify) failed; the batch is retried and its Kafka offsets are not committed."""


class BrokerUnavailable(InfrastructureError):
    """Kafka did not acknowledge a write (or could not be reached) within the configured time."""
