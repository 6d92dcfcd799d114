"""Standard behavioural-health instruments, scored from item answers. Pure and table-driven: the items, answer
lists and bands are the table instruments.yaml beside this module (data, one row shape per instrument).

Used by the JSON care-event mapping (``assessment.completed``) and by the HL7 v2 mapping (ORU OBX answers):

    >>> score = score_instrument("phq-9", {"44250-9": 2, "44255-8": "LA6570-1", ...}, reported_total="12")
    >>> score.total, score.band.code, score.positive, score.safety_alerts, score.data_quality

``instrument`` is a key of :data:`INSTRUMENTS` (``phq-9``, ``phq-2``, ``gad-7``, ``cssrs-screener``,
``audit-c``) or the instrument's LOINC panel code (``44249-1`` ...), so an OBR-4 code can be passed as is.

``answers`` maps the LOINC item code (a questionnaire linkId such as ``/44250-9`` is accepted too) to:
  * an int (the item weight, e.g. 0-3 for PHQ/GAD items, 0/1 for C-SSRS no/yes, 0-4 for AUDIT-C), or
  * a str: a LOINC answer code (LA6568-5 ... LA6571-9, LA32-8 / LA33-6, AUDIT-C answer lists), the weight as
    digits ("2"), or the answer's display text ("Several days", "Not-at-all", case and hyphens ignored).
If ``answers`` carries the instrument's total code (e.g. 44261-6) it is taken as the *reported* total, exactly
like ``reported_total`` (which may be an int, a numeric string, or a Quantity-like mapping {value, unit}).

Rules (domain.md; (t) = third-party source, (?) = unverified, kept in these tables so they can be corrected):

PHQ-9 (panel 44249-1, total 44261-6): 9 items 0-3; bands 0-4 minimal, 5-9 mild, 10-14 moderate,
  15-19 moderately severe, 20-27 severe; positive >= 10. Difficulty item 69722-7 is recorded, not scored.
PHQ-2 (t) (55757-9, 55758-7): items 1-2 of PHQ-9; 0-2 negative, 3-6 positive (give the PHQ-9).
GAD-7 (t) (69737-5, 70274-6): 7 items 0-3; 0-4 minimal, 5-9 mild, 10-14 moderate, 15-21 severe;
  positive >= 10.
C-SSRS screener (t panel) (93373-9, risk level 93374-7): yes/no items. Risk level: none; Q1/Q2 yes -> low;
  Q3 (method) yes or lifetime behaviour (Q6) -> moderate; Q4 (intent) / Q5 (plan) yes or behaviour in the
  past 3 months -> high. positive = any risk above none. A "reported total" is a risk level word.
AUDIT-C (72109-2, 75626-2): 3 items 0-4; positive >= 4 (male), >= 3 (female); sex unknown or other -> the
  lower cut-off 3 and data_quality ``audit-c-sex-unknown``.

Safety: PHQ-9 item 9 (44260-8) answered above 0 ("Not at all") raises ``phq9-item9`` whatever the total;
C-SSRS high risk raises ``cssrs-high-risk``. They are returned in ``InstrumentScore.safety_alerts``.

Data quality (closed set, returned in ``InstrumentScore.data_quality``):
  ``reported-total-mismatch``   the sender's total differs from the one computed from the items. The computed
                                total is the score; the reported one is kept in ``reported_total`` (never
                                silently overwritten; the FHIR mapping shows both).
  ``reported-total-unparseable`` a reported total that is not a whole number (or, for C-SSRS, a risk level).
  ``incomplete-answers``        a scored item is missing: no total, band or positivity is computed (safety
                                alerts still are, from the items present).
  ``audit-c-sex-unknown``       AUDIT-C scored without a male/female sex: the lower (female) cut-off was used.

Errors: an unknown instrument, an item code that is not part of the instrument, or an answer outside the
item's answer list raise :class:`InstrumentAnswerError` (a MappingError) naming the item code, never
the value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, get_args

import yaml

from services.common.errors import FieldProblem
from services.common.errors import InstrumentAnswerError as InstrumentAnswerError  # re-exported
from services.common.fhir.codesystems import LOINC
from services.common.topics import MapperAlertKind

InstrumentKey = Literal["phq-9", "phq-2", "gad-7", "cssrs-screener", "audit-c"]
RiskLevel = Literal["none", "low", "moderate", "high"]


@dataclass(frozen=True)
class AnswerOption:
    code: str  # LOINC answer code (LA...)
    display: str
    weight: int


@dataclass(frozen=True)
class ItemSpec:
    loinc: str
    display: str
    options: tuple[AnswerOption, ...]
    scored: bool = True


@dataclass(frozen=True)
class Band:
    code: str  # machine code, e.g. "moderately-severe"
    display: str  # e.g. "Moderately severe depression"
    low: int
    high: int


@dataclass(frozen=True)
class InstrumentSpec:
    key: InstrumentKey
    name: str
    panel_loinc: str
    panel_display: str
    total_loinc: str
    total_display: str
    items: tuple[ItemSpec, ...]
    bands: tuple[Band, ...] = ()
    positive_at: int | None = None  # total >= positive_at is a positive screen (None: instrument-specific)
    max_total: int | None = None
    # how a Questionnaire canonical names it: its last path segment, lower case, letters and digits only,
    # contains one of these (e.g. .../Questionnaire/phq-9-example, .../sdc-profile-example-PHQ9)
    questionnaire_names: tuple[str, ...] = ()

    def item(self, loinc: str) -> ItemSpec | None:
        return _ITEM_INDEX[self.key].get(loinc)

    @property
    def scored_items(self) -> tuple[ItemSpec, ...]:
        return tuple(i for i in self.items if i.scored)


@dataclass  # hot path: plain, never changed after init (docs/hot-path.md)
class ItemScore:
    """One answered item: its weight and the LOINC answer coding (when the answer list has one)."""

    loinc: str
    display: str
    value: int
    answer_code: str | None
    answer_display: str | None
    scored: bool

    def answer_coding(self) -> dict[str, Any] | None:
        if self.answer_code is None:
            return None
        return {"system": LOINC, "code": self.answer_code, "display": self.answer_display}


@dataclass  # hot path: plain, never changed after init (docs/hot-path.md)
class InstrumentScore:
    instrument: InstrumentSpec
    items: tuple[ItemScore, ...]
    total: int | None  # computed from the items; None for C-SSRS (see risk_level) or incomplete answers
    band: Band | None
    positive: bool | None
    risk_level: RiskLevel | None = None  # C-SSRS only
    reported_total: int | str | None = None  # as the sender reported it (normalised to int where numeric)
    missing_items: tuple[str, ...] = ()
    safety_alerts: tuple[MapperAlertKind, ...] = ()
    data_quality: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())  # fixed phrases, safe to show (no input values)

    @property
    def total_mismatch(self) -> bool:
        return "reported-total-mismatch" in self.data_quality


# --- the table ----------------------------------------------------------------------------------------------
# Items, answer lists and bands are data: instruments.yaml beside this module, loaded and checked once at import.
# The codes the scoring rules below name are constants here, checked against the table.

TABLE: Final = Path(__file__).with_name("instruments.yaml")

PHQ9_ITEM9: Final = "44260-8"
CSSRS_WISH_DEAD: Final = "93246-7"
CSSRS_THOUGHTS: Final = "93247-5"
CSSRS_METHOD: Final = "93248-3"
CSSRS_INTENT: Final = "93249-1"
CSSRS_PLAN: Final = "93250-9"
CSSRS_BEHAVIOUR_LIFETIME: Final = "93267-3"
CSSRS_BEHAVIOUR_3_MONTHS: Final = "93269-9"
_RULE_CODES: Final = (
    ("phq-9", PHQ9_ITEM9), ("cssrs-screener", CSSRS_WISH_DEAD), ("cssrs-screener", CSSRS_THOUGHTS),
    ("cssrs-screener", CSSRS_METHOD), ("cssrs-screener", CSSRS_INTENT), ("cssrs-screener", CSSRS_PLAN),
    ("cssrs-screener", CSSRS_BEHAVIOUR_LIFETIME), ("cssrs-screener", CSSRS_BEHAVIOUR_3_MONTHS),
)


def load_instruments(text: str) -> dict[str, InstrumentSpec]:
    """The instrument table (instruments.yaml's format, described in its header) as InstrumentSpecs, in order.
    Raises ValueError for a table that is not exactly the InstrumentKey instruments, or lacks an item a scoring
    rule names."""
    data = yaml.safe_load(text)
    lists = {str(name): tuple(AnswerOption(str(code), str(display), int(weight)) for code, display, weight in rows)
             for name, rows in data["answer_lists"].items()}
    specs: dict[str, InstrumentSpec] = {}
    for row in data["instruments"]:
        if "items_of" in row:
            source, count = row["items_of"]
            items = specs[source].items[:count]
        else:
            items = tuple(ItemSpec(str(i[0]), str(i[1]), lists[i[2]], scored="not-scored" not in i[3:])
                          for i in row["items"])
        key = next((k for k in get_args(InstrumentKey) if k == row["key"]), None)
        if key is None:
            raise ValueError(f"instrument {row['key']!r} of the table is not an InstrumentKey")
        specs[key] = InstrumentSpec(
            key=key,
            name=str(row["name"]),
            panel_loinc=str(row["panel"][0]),
            panel_display=str(row["panel"][1]),
            total_loinc=str(row["total"][0]),
            total_display=str(row["total"][1]),
            items=items,
            bands=tuple(Band(str(code), str(display), int(low), int(high))
                        for code, display, low, high in row["bands"]),
            positive_at=row.get("positive_at"),
            max_total=row.get("max_total"),
            questionnaire_names=tuple(str(n) for n in row.get("questionnaire_names", ())),
        )
    if tuple(specs) != get_args(InstrumentKey):
        raise ValueError("the instrument table must list the InstrumentKey instruments, in their order")
    for key, code in _RULE_CODES:
        if all(item.loinc != code for item in specs[key].items):
            raise ValueError(f"item {code} that a scoring rule names is not an item of {key}")
    return specs


INSTRUMENTS: Final[Mapping[str, InstrumentSpec]] = load_instruments(TABLE.read_text(encoding="utf-8"))

_BY_PANEL: Final[Mapping[str, InstrumentSpec]] = {spec.panel_loinc: spec for spec in INSTRUMENTS.values()}
_ITEM_INDEX: Final[dict[str, dict[str, ItemSpec]]] = {
    spec.key: {item.loinc: item for item in spec.items} for spec in INSTRUMENTS.values()
}
AUDIT_C_POSITIVE_AT: Final[Mapping[str, int]] = {"male": 4, "female": 3}
_RISK_RANK: Final[Mapping[RiskLevel, int]] = {"none": 0, "low": 1, "moderate": 2, "high": 3}
_CODES: Final[dict[str, frozenset[str]]] = {
    spec.key: frozenset({spec.panel_loinc, spec.total_loinc, *(item.loinc for item in spec.items)})
    for spec in INSTRUMENTS.values()
}


def instrument_spec(instrument: str) -> InstrumentSpec:
    """The instrument named by key (``phq-9``) or LOINC panel code (``44249-1``)."""
    spec = INSTRUMENTS.get(instrument.lower()) or _BY_PANEL.get(instrument)
    if spec is None:
        raise InstrumentAnswerError(
            "unknown instrument",
            [FieldProblem("instrument", "unknown-instrument", "instrument is not one carebus scores")],
        )
    return spec


def instrument_for_questionnaire(canonical: str) -> InstrumentSpec | None:
    """The instrument a Questionnaire canonical names: ``http://loinc.org/q/<panel>`` (or any canonical
    ending in a panel code), else a name in its last path segment (InstrumentSpec.questionnaire_names)."""
    path = canonical.split("|", 1)[0].rstrip("/")
    last = path.rsplit("/", 1)[-1]
    spec = _BY_PANEL.get(last)
    if spec is not None:
        return spec
    name = re.sub(r"[^a-z0-9]", "", last.lower())
    for candidate in INSTRUMENTS.values():
        if any(token in name for token in candidate.questionnaire_names):
            return candidate
    return None


def instrument_for_codes(codes: Iterable[str]) -> InstrumentSpec | None:
    """The instrument whose item / total codes cover most of ``codes`` (LOINC codes of answered items; other
    codes are ignored), the smaller instrument on a tie (two PHQ items are a PHQ-2); None if no code is one of
    an instrument's."""
    found = set(codes)
    best: InstrumentSpec | None = None
    best_overlap = 0
    for spec in INSTRUMENTS.values():
        overlap = len(found & _CODES[spec.key])
        if overlap > best_overlap or (overlap == best_overlap and overlap and best is not None
                                      and len(spec.items) < len(best.items)):
            best, best_overlap = spec, overlap
    return best


def instrument_codes(spec: InstrumentSpec) -> frozenset[str]:
    """Every LOINC code of an instrument: panel, total and items."""
    return _CODES[spec.key]


def answer_for(spec: InstrumentSpec, loinc: str, candidates: Iterable[int | str]) -> int | None:
    """The weight of the first of ``candidates`` (an answer's code, display, weight ...) that is in the item's
    answer list; None if none is."""
    item = spec.item(loinc)
    if item is None:
        return None
    for candidate in candidates:
        try:
            return _resolve_answer(spec, item, candidate).value
        except InstrumentAnswerError:
            continue
    return None


def risk_level_word(reported: str) -> RiskLevel | None:
    """A C-SSRS risk level as a sender may write it ("High", "high risk", "Moderate Risk") -> the word."""
    word = _normalise_text(reported).removesuffix(" risk").removesuffix(" suicide").strip()
    for level in _RISK_RANK:
        if word == level:
            return level
    return None


def _normalise_text(text: str) -> str:
    return re.sub(r"[\s\-_]+", " ", text.strip().lower())


_OPTION_LOOKUP: Final[dict[tuple[str, str], dict[str, AnswerOption]]] = {}
for _spec in INSTRUMENTS.values():
    for _item in _spec.items:
        _table: dict[str, AnswerOption] = {}
        for _option in _item.options:
            _table[_option.code.lower()] = _option
            _table[_normalise_text(_option.display)] = _option
        _OPTION_LOOKUP[(_spec.key, _item.loinc)] = _table


def _item_problem(loinc: str, rule: str, message: str) -> InstrumentAnswerError:
    return InstrumentAnswerError(message, [FieldProblem(f"answers[{loinc}]", rule, message)])


def _resolve_answer(spec: InstrumentSpec, item: ItemSpec, answer: int | str) -> ItemScore:
    options = item.options
    option: AnswerOption | None = None
    if isinstance(answer, bool):
        raise _item_problem(item.loinc, "answer-type", f"answer to item {item.loinc} must be int or code")
    if isinstance(answer, int):
        option = next((o for o in options if o.weight == answer), None)
    elif isinstance(answer, str):
        text = answer.strip()
        if text.isdigit():
            weight = int(text)
            option = next((o for o in options if o.weight == weight), None)
        else:
            option = _OPTION_LOOKUP[(spec.key, item.loinc)].get(text.lower()) or _OPTION_LOOKUP[
                (spec.key, item.loinc)
            ].get(_normalise_text(text))
    else:
        raise _item_problem(item.loinc, "answer-type", f"answer to item {item.loinc} must be int or code")
    if option is None:
        raise _item_problem(
            item.loinc, "answer-not-in-list", f"answer to item {item.loinc} is not in the item's answer list"
        )
    return ItemScore(item.loinc, item.display, option.weight, option.code, option.display, item.scored)


def _parse_reported(reported: object) -> int | str | None:
    """Normalise a reported total: int / numeric string / Quantity-like {value, unit}. Returns the int, the
    stripped string when not numeric (C-SSRS risk levels), or None when absent."""
    if reported is None:
        return None
    if isinstance(reported, Mapping):
        reported = reported.get("value")
        if reported is None:
            return None
    if isinstance(reported, bool):
        return str(reported)
    if isinstance(reported, int):
        return reported
    if isinstance(reported, float):
        return int(reported) if reported.is_integer() else str(reported)
    if isinstance(reported, str):
        text = reported.strip()
        try:
            number = float(text)
        except ValueError:
            return text
        return int(number) if number.is_integer() else text
    return str(reported)


def _item_code(key: str) -> str:
    return key.strip().lstrip("/")


def _cssrs_risk(values: Mapping[str, int]) -> RiskLevel:
    def yes(code: str) -> bool:
        return values.get(code, 0) > 0

    if yes(CSSRS_INTENT) or yes(CSSRS_PLAN) or yes(CSSRS_BEHAVIOUR_3_MONTHS):
        return "high"
    if yes(CSSRS_METHOD) or yes(CSSRS_BEHAVIOUR_LIFETIME):
        return "moderate"
    if yes(CSSRS_WISH_DEAD) or yes(CSSRS_THOUGHTS):
        return "low"
    return "none"


def score_instrument(
    instrument: str,
    answers: Mapping[str, int | str],
    *,
    reported_total: object = None,
    sex: str | None = None,
) -> InstrumentScore:
    """Score one administration of ``instrument`` from its item answers (see the module docstring)."""
    spec = instrument_spec(instrument)
    items: list[ItemScore] = []
    values: dict[str, int] = {}
    for raw_code, answer in answers.items():
        code = _item_code(raw_code)
        if code == spec.total_loinc:
            if reported_total is None:
                reported_total = answer
            continue
        item = spec.item(code)
        if item is None:
            raise _item_problem(code, "item-not-in-instrument", f"item {code} is not part of {spec.name}")
        if code in values:
            raise _item_problem(code, "duplicate-item", f"item {code} is answered more than once")
        scored = _resolve_answer(spec, item, answer)
        values[code] = scored.value
        items.append(scored)
    order = {item.loinc: index for index, item in enumerate(spec.items)}
    items.sort(key=lambda s: order[s.loinc])

    data_quality: list[str] = []
    safety: list[MapperAlertKind] = []
    notes: list[str] = []
    missing = tuple(i.loinc for i in spec.scored_items if i.loinc not in values)
    complete = not missing
    if not complete:
        data_quality.append("incomplete-answers")
        notes.append("Not all scored items were answered: no total was computed.")

    reported = _parse_reported(reported_total)
    total: int | None = None
    band: Band | None = None
    positive: bool | None = None
    risk: RiskLevel | None = None

    if spec.key == "cssrs-screener":
        # Risk is decided from the items present even when some are missing (a "yes" is never ignored).
        risk = _cssrs_risk(values)
        band = next(b for b in spec.bands if b.code == risk)
        positive = risk != "none"
        if risk == "high":
            safety.append("cssrs-high-risk")
        if reported is not None:
            level = risk_level_word(reported) if isinstance(reported, str) else None
            if level is not None:
                if level != risk:
                    data_quality.append("reported-total-mismatch")
            else:
                data_quality.append("reported-total-unparseable")
    else:
        if complete:
            total = sum(values[i.loinc] for i in spec.scored_items)
            if spec.key == "audit-c":
                cut_off = AUDIT_C_POSITIVE_AT.get((sex or "").lower())
                if cut_off is None:
                    cut_off = min(AUDIT_C_POSITIVE_AT.values())
                    data_quality.append("audit-c-sex-unknown")
                    notes.append("Sex not known: the lower AUDIT-C cut-off (3) was used.")
                positive = total >= cut_off
                band = spec.bands[1] if positive else spec.bands[0]
            else:
                band = next(b for b in spec.bands if b.low <= total <= b.high)
                positive = spec.positive_at is not None and total >= spec.positive_at
        if reported is not None:
            if not isinstance(reported, int):
                data_quality.append("reported-total-unparseable")
            elif total is not None and reported != total:
                data_quality.append("reported-total-mismatch")
        if spec.key == "phq-9" and values.get(PHQ9_ITEM9, 0) > 0:
            safety.append("phq9-item9")

    if "reported-total-mismatch" in data_quality:
        notes.append("The reported total differs from the total computed from the item answers.")
    return InstrumentScore(
        instrument=spec,
        items=tuple(items),
        total=total,
        band=band,
        positive=positive,
        risk_level=risk,
        reported_total=reported,
        missing_items=missing,
        safety_alerts=tuple(safety),
        data_quality=tuple(data_quality),
        notes=tuple(notes),
    )
