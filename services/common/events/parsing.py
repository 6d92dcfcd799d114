"""Turning raw bytes into a typed care event, and the policy checks that follow the schema.

``parse_event`` runs three stages; each failure is an :class:`InvalidInput` whose ``problems`` name the field
location (``data.items[2].answer``), the rule and a fixed message — never the offending value (it may be PHI):

1. JSON and schema (pydantic):     EventValidationError, rule = pydantic error type (``missing``,
                                   ``literal_error``, ``answer_out_of_range`` ...); bytes that are not JSON
                                   raise its subclass MalformedJson (reason ``malformed-json``, rule
                                   ``json_invalid``).
2. Instrument items (assessments): EventValidationError, rules ``item-not-in-instrument``,
                                   ``duplicate-item``, ``answer-out-of-range``, ``answer-not-in-list`` — so a
                                   sender learns at intake, not from a dead letter, that an item is wrong.
3. Content policy:                 RefusedContent (a different error type, reason ``refused-content``):
   * ``note_type: psychotherapy_note`` -> rule ``psychotherapy-note-refused``. HIPAA psychotherapy notes
     (45 CFR 164.501) are kept apart from the medical record and need the patient's specific authorization
     for any disclosure, even for treatment; carebus fans data out to subscribers, so it never carries them.
     The schema accepts the value on purpose, so the sender gets this precise reason instead of a generic
     "not one of the allowed values".
   * ``note_type: sud_counseling_note`` -> rule ``sud-counseling-note-refused``: the 42 CFR Part 2 (2024 rule)
     class of SUD counseling notes mirrors psychotherapy notes and is refused for the same reason.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from pydantic import TypeAdapter, ValidationError

from services.common import fhir_ids
from services.common.errors import EventValidationError, FieldProblem, MalformedJson, RefusedContent
from services.common.events.envelope import EVENT_TYPES, AssessmentCompleted, CareEvent, NoteSigned
from services.common.fhir.instruments import INSTRUMENTS

_ADAPTER: Final[TypeAdapter[CareEvent]] = TypeAdapter(CareEvent)

# Item codes, highest answer weight and LOINC answer codes of each instrument, read from the one instrument
# table (services/common/fhir/instruments.py) that the scoring reads too.
INSTRUMENT_ITEMS: Final[Mapping[str, tuple[frozenset[str], int, frozenset[str]]]] = {
    key: (
        frozenset(item.loinc for item in spec.items),
        max(option.weight for item in spec.items for option in item.options),
        frozenset(option.code for item in spec.items for option in item.options),
    )
    for key, spec in INSTRUMENTS.items()
}

PSYCHOTHERAPY_NOTE_RULE: Final = "psychotherapy-note-refused"
SUD_COUNSELING_NOTE_RULE: Final = "sud-counseling-note-refused"
_REFUSALS: Final[Mapping[str, tuple[str, str]]] = {
    "psychotherapy_note": (
        PSYCHOTHERAPY_NOTE_RULE,
        "psychotherapy notes (HIPAA, 45 CFR 164.501) need the patient's specific authorization for every "
        "disclosure and are not carried by carebus; send a progress note or session summary instead",
    ),
    "sud_counseling_note": (
        SUD_COUNSELING_NOTE_RULE,
        "SUD counseling notes (42 CFR Part 2) need the patient's separate consent for every disclosure and "
        "are not carried by carebus; send a progress note instead",
    ),
}

# loc parts pydantic adds for union members (not field names): "int", "str", "constrained-str",
# "function-plain[...]", model class names ("ScoreQuantity").
_UNION_BRANCH = re.compile(r"^(int|str|float|bool|none|constrained-\w+|[a-z-]+\[.*\]|[A-Z]\w*)$")


def _location(loc: tuple[int | str, ...]) -> tuple[str, bool]:
    """``('org...v1', 'data', 'items', 2, 'answer')`` -> ``('data.items[2].answer', False)``; the flag says
    a union-branch marker was dropped (several problems at one place are then one problem)."""
    parts: list[str] = []
    branch = False
    for index, part in enumerate(loc):
        if index == 0 and isinstance(part, str) and part in EVENT_TYPES:
            continue  # the discriminator tag pydantic puts first
        if isinstance(part, int):
            parts.append(f"[{part}]")
            continue
        if _UNION_BRANCH.match(part):
            branch = True
            continue
        parts.append(f".{part}" if parts else part)
    return ("".join(parts) or "$"), branch


def _safe_message(error: Mapping[str, Any]) -> str:
    """pydantic's message, unless it could echo the input value."""
    kind = error["type"]
    if kind == "union_tag_invalid":
        return "type is not a known carebus event type"
    if kind == "union_tag_not_found":
        return "the event has no type attribute"
    message = str(error["msg"])
    value = error.get("input")
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        text = str(value)
        quoted = f"'{text}'" in message or f'"{text}"' in message
        if text and (quoted or (len(text) >= 4 and text in message)):
            return f"invalid value ({kind})"
    return message


def problems_from(error: ValidationError) -> list[FieldProblem]:
    """FieldProblems for a pydantic ValidationError: location, rule (error type), value-free message."""
    problems: list[FieldProblem] = []
    union_groups: dict[str, list[tuple[str, str]]] = {}
    for item in error.errors(include_url=False, include_input=True, include_context=False):
        location, branch = _location(tuple(item["loc"]))
        kind = str(item["type"])
        if kind == "union_tag_invalid" or kind == "union_tag_not_found":
            location = "type"
        message = _safe_message(item)
        if branch:
            union_groups.setdefault(location, []).append((kind, message))
        else:
            problems.append(FieldProblem(location, kind, message))
    for location, members in union_groups.items():
        if any(other.startswith(location + ".") for other in union_groups):
            continue  # a branch that got further (the value is an object) says more than "not an int"
        if len(members) == 1:
            problems.append(FieldProblem(location, members[0][0], members[0][1]))
        else:
            problems.append(
                FieldProblem(
                    location,
                    "union_no_match",
                    "matches none of the allowed forms: " + "; ".join(sorted({m for _, m in members})),
                )
            )
    return problems


def _assessment_problems(event: AssessmentCompleted) -> list[FieldProblem]:
    codes, max_weight, answer_codes = INSTRUMENT_ITEMS[event.data.instrument]
    problems: list[FieldProblem] = []
    seen: set[str] = set()
    for index, item in enumerate(event.data.items):
        code = item.item_code
        if code not in codes or code in seen:
            name_field = "code" if item.code is not None else "link_id"
            if code not in codes:
                problems.append(FieldProblem(f"data.items[{index}].{name_field}", "item-not-in-instrument",
                                             "not an item of this instrument"))
                continue
            problems.append(FieldProblem(f"data.items[{index}].{name_field}", "duplicate-item",
                                         "item is answered twice"))
        seen.add(code)
        answer = item.answer
        if isinstance(answer, int):
            if answer > max_weight:
                problems.append(FieldProblem(f"data.items[{index}].answer", "answer-out-of-range",
                                             f"answer weight above {max_weight} for this item"))
        elif answer not in answer_codes:
            problems.append(FieldProblem(f"data.items[{index}].answer", "answer-not-in-list",
                                         "answer code not in the instrument's lists"))
    return problems


def check_policy(event: CareEvent) -> None:
    """Raise RefusedContent for content carebus must not carry (see the module docstring)."""
    if isinstance(event, NoteSigned) and event.data.note_type in _REFUSALS:
        rule, message = _REFUSALS[event.data.note_type]
        raise RefusedContent(message, [FieldProblem("data.note_type", rule, message)])


def parse_event(raw: bytes | str | Mapping[str, Any]) -> CareEvent:
    """Validate one CloudEvent (JSON bytes / text, or an already-decoded dict) into its typed model.

    Raises EventValidationError (schema, JSON, instrument items) or RefusedContent (content policy)."""
    try:
        if isinstance(raw, bytes | str):
            event = _ADAPTER.validate_json(raw)
        else:
            event = _ADAPTER.validate_python(raw)
    except ValidationError as exc:
        problems = problems_from(exc)
        # ``from None``: pydantic's own error text carries input values, which must not reach any log.
        if any(problem.rule == "json_invalid" for problem in problems):
            raise MalformedJson("event is not JSON", problems) from None
        message = f"event breaks its schema ({len(problems)} problem(s))"
        raise EventValidationError(message, problems) from None
    if isinstance(event, AssessmentCompleted):
        item_problems = _assessment_problems(event)
        if item_problems:
            raise EventValidationError(
                f"assessment items break the instrument ({len(item_problems)} problem(s))", item_problems
            )
    check_policy(event)
    return event


def patient_key(event: CareEvent) -> str:
    """Kafka key ``<source>|<patient_id>``: one patient's events of one source stay in order."""
    return fhir_ids.patient_key(event.source, event.data.patient_id)
