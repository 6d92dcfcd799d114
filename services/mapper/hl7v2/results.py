"""OBR -> DiagnosticReport, OBX -> Observation, and behavioural-health instruments sent as OBX answers.

OBX value types: NM -> valueQuantity (a leading comparator kept), SN -> Quantity / Range / Ratio,
CE/CWE/CNE -> valueCodeableConcept, ST/TX/FT -> valueString, DT/DTM/TS -> valueDateTime, TM -> valueTime;
several repetitions of a non-text value become components; ED/RP (no R4 Observation value) go to the report's
presentedForm inside an order, else dataAbsentReason ``unsupported``. Units OBX-6 (UCUM coded when OBX-6.3 is
UCUM), reference range OBX-7, interpretation OBX-8 (v2-0078 -> v3 ObservationInterpretation), status OBX-11
(v2-0085 concept map), NTE -> note. Text lines without an OBX-3 code inside an order are the report's text:
they become one text/plain presentedForm.

Instruments: when OBR-4 is an instrument panel (PHQ-9 44249-1 ...), or the OBX codes are the items of one
instrument, the answers are scored by services/common/fhir/instruments.py exactly as for the JSON
``assessment.completed`` event: QuestionnaireResponse + item Observations (LOINC answer codings) + a total
computed from the items + a panel with hasMember, category survey; a reported total that disagrees is kept
and flagged (data quality ``reported-total-mismatch``); PHQ-9 item 9 > 0 and C-SSRS high risk add a safety
Flag and a SafetyAlert. Labels: instruments PSY (AUDIT-C R+ETHUD).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from services.common.fhir.codesystems import (
    DATA_ABSENT_REASON,
    LOINC,
    OBSERVATION_CATEGORY,
    UCUM,
    V2_0074,
    V3_OBSERVATION_INTERPRETATION,
)
from services.common.fhir.instruments import (
    INSTRUMENTS,
    InstrumentAnswerError,
    InstrumentScore,
    InstrumentSpec,
    score_instrument,
)
from services.common.hl7v2.er7 import Rep, Segment
from services.common.hl7v2.errors import InvalidValue
from services.mapper.hl7v2 import sensitivity
from services.mapper.hl7v2.builder import Build, Json, Labels, note_texts, ref
from services.mapper.hl7v2.datatypes import (
    codeable,
    fhir_code,
    fhir_datetime,
    fhir_instant,
    identifier_ei,
    number,
    organization_reference,
    person_reference,
    prune_dict,
    quantity,
    simple_code,
)
from services.mapper.hl7v2.terminology import INTERPRETATION, OBSERVATION_STATUS, REPORT_STATUS
from services.mapper.hl7v2.us_core import vital_sign, vital_ucum
from services.mapper.instrument_resources import Answered, scored_instrument_resources

_TEXT_TYPES = {"ST", "TX", "FT"}
_CODED_TYPES = {"CE", "CWE", "CNE", "CF", "CD"}
_DATE_TYPES = {"DT", "DTM", "TS"}
_COMPARATORS = ("<=", ">=", "<", ">")
_RANGE = re.compile(r"\s*([+-]?\d+(?:\.\d+)?)\s*(?:-|\u2013|to)\s*([+-]?\d+(?:\.\d+)?)\s*")
_BOUND = re.compile(r"\s*(<=|>=|<|>)\s*([+-]?\d+(?:\.\d+)?)\s*")
_TIME = re.compile(r"(\d{2})(\d{2})?(\d{2})?(?:\.\d+)?(?:[+-]\d{4})?")
_MIME = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*")
SURVEY = [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "survey", "display": "Survey"}]}]
LABORATORY = [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "laboratory", "display": "Laboratory"}]}]
VITAL_SIGNS_CATEGORY = [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "vital-signs",
                                     "display": "Vital Signs"}]}]
# v2-0074 diagnostic service sections that are laboratory work
LAB_SECTIONS = frozenset({"LAB", "BG", "BLB", "CG", "CH", "CP", "HM", "IMM", "MB", "MCB", "MYC", "OSL", "PAR",
                          "PAT", "SP", "SR", "TX", "URN", "VR"})


@dataclass
class OrderGroup:
    """An OBR with its ORC and result segments (OBX), as the message sent them."""

    obr: Segment | None
    orc: Segment | None
    results: list[Segment] = field(default_factory=list)


def _status(build: Build, obx: Segment) -> str:
    code = obx.get(11).upper()
    status = OBSERVATION_STATUS.get(code)
    if status is None:
        if code:
            build.issue("unknown-code@OBX-11")
        return "unknown"
    return status


def _text_value(obx: Segment) -> str:
    return "\n".join(rep.joined() for rep in obx.reps(5))


def _time(text: str) -> str | None:
    match = _TIME.fullmatch(text.strip())
    if match is None:
        return None
    hour, minute, second = (int(v) if v else 0 for v in match.groups())
    if hour > 23 or minute > 59 or second > 59:
        return None
    return f"{hour:02d}:{minute:02d}:{second:02d}"


def _numeric(rep: Rep, units: Rep | None) -> Json | None:
    text = rep.joined().strip()
    for comparator in _COMPARATORS:
        if text.startswith(comparator):
            value = number(text[len(comparator):])
            return {"valueQuantity": quantity(value, units, comparator)} if value is not None else None
    value = number(text)
    return {"valueQuantity": quantity(value, units)} if value is not None else None


def _structured_numeric(rep: Rep, units: Rep | None) -> Json | None:
    comparator, first, separator, second = rep.c(1), number(rep.c(2)), rep.c(3), number(rep.c(4))
    if first is None:
        return None
    if separator in {"-", "~"} and second is not None:
        return {"valueRange": {"low": quantity(first, units), "high": quantity(second, units)}}
    if separator in {":", "/"} and second is not None:
        return {"valueRatio": {"numerator": {"value": first}, "denominator": {"value": second}}}
    if separator:
        return {"valueString": f"{comparator}{rep.c(2)}{separator}{rep.c(4)}"}
    if comparator in _COMPARATORS:
        return {"valueQuantity": quantity(first, units, comparator)}
    if comparator in {"", "="}:
        return {"valueQuantity": quantity(first, units)}
    return None


def _value(build: Build, obx: Segment, value_type: str, rep: Rep) -> Json | None:
    units = obx.rep(6)
    loc = obx.loc(5)
    if value_type == "NM":
        made = _numeric(rep, units)
        if made is None:
            build.issue(f"non-numeric-value@{loc}")
            return {"valueString": rep.joined()}
        return made
    if value_type == "SN":
        made = _structured_numeric(rep, units)
        if made is None:
            build.issue(f"invalid-structured-numeric@{loc}")
            return {"valueString": rep.joined()}
        return made
    if value_type in _CODED_TYPES:
        concept = codeable(rep, local=build.local(loc))
        return {"valueCodeableConcept": concept} if concept else None
    if value_type in _DATE_TYPES:
        moment = fhir_datetime(rep.c(1), loc, build.conv)
        return {"valueDateTime": moment} if moment else None
    if value_type == "TM":
        time_of_day = _time(rep.c(1))
        if time_of_day is None:
            build.issue(f"invalid-time@{loc}")
            return None
        return {"valueTime": time_of_day}
    return {"valueString": rep.joined()}


def _reference_range(obx: Segment) -> list[Json]:
    text = obx.get(7)
    if not text:
        return []
    units = obx.rep(6)
    match = _RANGE.fullmatch(text)
    if match is not None:
        low, high = number(match.group(1)), number(match.group(2))
        if low is not None and high is not None:
            return [{"low": quantity(low, units), "high": quantity(high, units), "text": text}]
    match = _BOUND.fullmatch(text)
    if match is not None:
        bound = number(match.group(2))
        if bound is not None:
            side = "high" if match.group(1).startswith("<") else "low"
            return [{side: quantity(bound, units), "text": text}]
    return [{"text": text}]


def _interpretation(build: Build, obx: Segment) -> list[Json]:
    out: list[Json] = []
    for rep in obx.reps(8):
        code = rep.c(1).upper()
        if code in INTERPRETATION:
            out.append({"coding": [{"system": V3_OBSERVATION_INTERPRETATION, "code": code,
                                    "display": INTERPRETATION[code]}]})
        else:
            concept = codeable(rep, local=build.local(obx.loc(8)))
            if concept:
                out.append(concept)
    return out


def _code(build: Build, obx: Segment) -> Json:
    concept = codeable(obx.rep(3), local=build.local(obx.loc(3)))
    if concept is None:
        build.issue("missing-code@OBX-3")
        return {"text": "Unspecified observation (OBX-3 empty)"}
    return concept


def _code_key(concept: Json) -> str:
    codings = concept.get("coding", [])
    if codings:
        return f"{codings[0].get('system', '')}|{codings[0].get('code', '')}"
    return str(concept.get("text", ""))


def observation(build: Build, obx: Segment, *, scope: str, counter: dict[str, int],
                obr: Segment | None = None) -> Json:
    """One OBX -> one Observation (NTEs after it become notes). Not yet added to the build."""
    conv = build.conv
    value_type = obx.get(2).upper() or "ST"
    code = _code(build, obx)
    key = f"{_code_key(code)}|{obx.get(4)}"
    counter[key] = counter.get(key, 0) + 1
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": build.id("Observation", scope, "obx", key, str(counter[key])),
        "identifier": [identifier_ei(obx.rep(21))],
        "status": _status(build, obx),
        "code": code,
        "effectiveDateTime": fhir_datetime(obx.get(14), obx.loc(14), conv)
        or (fhir_datetime(obr.get(7), obr.loc(7), conv) if obr is not None else None),
        "issued": fhir_instant(obx.get(19), obx.loc(19), conv),
        "performer": [person_reference(rep) for rep in obx.reps(16)] + [organization_reference(obx.rep(23))],
        "referenceRange": _reference_range(obx),
        "interpretation": _interpretation(build, obx),
        "method": codeable(obx.rep(17), local=build.local(obx.loc(17))),
        "bodySite": codeable(obx.rep(20), local=build.local(obx.loc(20))),
        "device": {"identifier": identifier_ei(obx.rep(18))} if obx.get(18) else None,
    }
    build.subject(obs)
    reps = obx.reps(5)
    if value_type in {"ED", "RP"}:
        build.issue(f"unsupported-value-type@{obx.loc(2)}")
        obs["dataAbsentReason"] = {"coding": [{"system": DATA_ABSENT_REASON, "code": "unsupported",
                                               "display": "Unsupported"}]}
    elif value_type in _TEXT_TYPES and reps:
        obs["valueString"] = _text_value(obx)
    elif len(reps) == 1:
        obs.update(_value(build, obx, value_type, reps[0]) or {})
    elif len(reps) > 1:
        obs["component"] = [
            {"code": code, **value} for rep in reps if (value := _value(build, obx, value_type, rep))
        ]
    notes = build.notes_after(obx)
    build.use(obx, *notes)
    obs["note"] = [{"text": text} for text in note_texts(notes)]
    return obs


def attachment_of(obx: Segment, value_type: str) -> Json | None:
    rep = obx.rep(5)
    if rep is None:
        return None
    if value_type == "RP":
        pointer = rep.c(1)
        kind = f"{rep.c(3)}/{rep.c(4)}".lower()
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*:\S+", pointer):
            return None
        return prune_dict({"url": pointer, "contentType": kind if _MIME.fullmatch(kind) else None})
    kind = f"{rep.c(2)}/{rep.c(3)}".lower()
    encoding, data = rep.c(4).upper(), rep.c(5)
    if encoding != "BASE64" or not data:
        return None
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None
    return prune_dict({"contentType": kind if _MIME.fullmatch(kind) else "application/octet-stream",
                       "data": data})


# ---------------------------------------------------------------------------------------------------------
# orders and reports


def group_orders(segments: Sequence[Segment]) -> tuple[list[OrderGroup], list[Segment]]:
    """Split the segments after the patient into order groups (ORC? OBR ... OBX*) and OBX outside any."""
    groups: list[OrderGroup] = []
    standalone: list[Segment] = []
    pending_orc: Segment | None = None
    current: OrderGroup | None = None
    for segment in segments:
        if segment.name == "ORC":
            pending_orc = segment
        elif segment.name == "OBR":
            current = OrderGroup(segment, pending_orc)
            pending_orc = None
            groups.append(current)
        elif segment.name == "OBX":
            if current is not None:
                current.results.append(segment)
            else:
                standalone.append(segment)
    return groups, standalone


def map_standalone(build: Build, segments: Sequence[Segment]) -> list[Json]:
    """OBX outside any order: Observations about the patient / encounter. A US Core vital sign (by its LOINC
    code, us_core.VITAL_SIGNS) gets category vital-signs and its unit's UCUM code where the profile takes it."""
    scope = f"encounter|{build.encounter_key}" if build.encounter_key else f"patient|{build.patient_key}"
    counter: dict[str, int] = {}
    made: list[Json] = []
    for obx in segments:
        obs = observation(build, obx, scope=scope, counter=counter)
        loinc = vital_sign(obs)
        if loinc is not None and "category" not in obs:
            obs["category"] = VITAL_SIGNS_CATEGORY
            quantity = obs.get("valueQuantity")
            ucum = vital_ucum(loinc, str(quantity.get("code") or quantity.get("unit") or "")) if quantity else None
            if quantity is not None and ucum is not None and quantity.get("system") in (None, UCUM):
                obs["valueQuantity"] = {**quantity, "system": UCUM, "code": ucum}
        made.append(build.add(obs, sensitivity.observation(obs.get("code"))))
    return made


def _report_key(build: Build, group: OrderGroup) -> str:
    obr, orc = group.obr, group.orc
    for segment, n, kind in ((obr, 3, "filler"), (orc, 3, "filler"), (obr, 2, "placer"), (orc, 2, "placer")):
        if segment is not None and segment.get(n):
            return f"{kind}|{segment.get(n)}"
    occurrence = group.obr.occurrence if group.obr is not None else 0
    return f"message|{build.message_key}|obr|{occurrence}"


def map_report(build: Build, group: OrderGroup) -> Json:
    obr = group.obr
    assert obr is not None
    conv = build.conv
    orc = group.orc
    key = _report_key(build, group)
    presented: list[Json] = []
    results: list[tuple[Json, Labels]] = []
    text_lines: list[str] = []
    instrument = _instrument(obr, group.results)
    scored: set[int] = set()
    if instrument is not None:
        results.extend(_map_instrument(build, group, instrument, key, scored))
    counter: dict[str, int] = {}
    for obx in group.results:
        if obx.position in scored:
            continue
        if not obx.get(3) and (obx.get(2).upper() or "ST") in _TEXT_TYPES:
            text_lines.append(_text_value(obx))
            notes = build.notes_after(obx)
            build.use(obx, *notes)
            text_lines.extend(note_texts(notes))
            continue
        value_type = obx.get(2).upper()
        if value_type in {"ED", "RP"}:
            attachment = attachment_of(obx, value_type)
            if attachment is not None:
                presented.append(attachment)
                build.use(obx)
                continue
        obs = observation(build, obx, scope=f"report|{key}", counter=counter, obr=obr)
        results.append((obs, sensitivity.observation(obs.get("code"))))
    if text_lines:
        body = "\n".join(text_lines).encode()
        presented.insert(0, {"contentType": "text/plain; charset=utf-8",
                             "data": base64.b64encode(body).decode()})
    placer = obr.rep(2) or (orc.rep(2) if orc is not None else None)
    filler = obr.rep(3) or (orc.rep(3) if orc is not None else None)
    status = REPORT_STATUS.get(obr.get(25).upper())
    if status is None and obr.get(25):
        build.issue("unknown-code@OBR-25")
    code = codeable(obr.rep(4), local=build.local(obr.loc(4)))
    if code is None:
        build.issue("missing-code@OBR-4")
        code = {"text": "Unspecified report (OBR-4 empty)"}
    section = fhir_code(obr.get(24)).upper()
    category = [codeable(obr.rep(24), local=build.local(obr.loc(24))) if obr.get(24, 2) or obr.get(24, 3)
                else simple_code(section, V2_0074)]
    if section in LAB_SECTIONS:  # a laboratory section: the report is LAB, its results laboratory results
        if section != "LAB":
            category.append({"coding": [{"system": V2_0074, "code": "LAB", "display": "Laboratory"}]})
        for obs, _labels in results:
            if obs["resourceType"] == "Observation" and not obs.get("category"):
                obs["category"] = LABORATORY
    added = [build.add(obs, labels) for obs, labels in results]
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": build.id("DiagnosticReport", key),
        "identifier": [identifier_ei(placer, "PLAC"), identifier_ei(filler, "FILL")],
        "status": status or "unknown",
        "category": category,
        "code": code,
        "effectiveDateTime": fhir_datetime(obr.get(7), obr.loc(7), conv),
        "issued": fhir_instant(obr.get(22), obr.loc(22), conv),
        "result": [ref(obs) for obs in added if obs["resourceType"] == "Observation"],
        "presentedForm": presented,
    }
    build.subject(report)
    build.use(obr, orc)
    labels = sensitivity.combine(*(labels for _obs, labels in results), sensitivity.observation(code))
    return build.add(report, labels, focus=True)


# ---------------------------------------------------------------------------------------------------------
# instruments


def _loinc_codes(concept: Json | None) -> list[str]:
    if not concept:
        return []
    return [c["code"] for c in concept.get("coding", []) if c.get("system") == LOINC and c.get("code")]


def _instrument(obr: Segment, results: Sequence[Segment]) -> InstrumentSpec | None:
    by_panel = {spec.panel_loinc: spec for spec in INSTRUMENTS.values()}
    for code in _loinc_codes(codeable(obr.rep(4))):
        if code in by_panel:
            return by_panel[code]
    codes = {code for obx in results for code in _loinc_codes(codeable(obx.rep(3)))}
    best: tuple[int, int, InstrumentSpec] | None = None
    for spec in INSTRUMENTS.values():
        own = {item.loinc for item in spec.items} | {spec.total_loinc}
        matched = len(codes & own)
        if matched and (best is None or (matched, -len(own)) > (best[0], best[1])):
            best = (matched, -len(own), spec)
    return best[2] if best is not None else None


def _answer(obx: Segment) -> str:
    rep = obx.rep(5)
    if rep is None:
        return ""
    if (obx.get(2).upper() or "ST") in _CODED_TYPES:
        code = rep.c(1)
        return code if code else rep.c(2)
    return rep.joined()


def _map_instrument(build: Build, group: OrderGroup, spec: InstrumentSpec, key: str,
                    scored: set[int]) -> list[tuple[Json, Labels]]:
    obr = group.obr
    assert obr is not None
    own = {item.loinc for item in spec.items}
    answers: dict[str, str] = {}
    reported: str | None = None
    sources: dict[str, Segment] = {}
    for obx in group.results:
        codes = _loinc_codes(codeable(obx.rep(3), local=build.local(obx.loc(3))))
        item = next((c for c in codes if c in own), None)
        if item is not None:
            if item in answers:
                raise InvalidValue(obx.loc(3), "duplicate-item", "an instrument item is answered twice",
                                   segment_occurrence=obx.occurrence)
            answer = _answer(obx)
            if not answer:
                continue
            answers[item] = answer
            sources[item] = obx
            scored.add(obx.position)
        elif spec.total_loinc in codes:
            reported = _answer(obx) or None
            sources[spec.total_loinc] = obx
            scored.add(obx.position)
    if not answers and reported is None:
        return []
    sex = None
    patient = build.resources[0][0] if build.resources else {}
    if patient.get("resourceType") == "Patient":
        sex = patient.get("gender")
    try:
        score = score_instrument(spec.key, answers, reported_total=reported, sex=sex)
    except InstrumentAnswerError as exc:
        location = exc.problems[0].location if exc.problems else ""
        code = location.removeprefix("answers[").removesuffix("]")
        culprit = sources.get(code)
        raise InvalidValue(culprit.loc(5) if culprit is not None else "OBX-5", "instrument-answer-invalid",
                           "an instrument answer is not in the item's answer list",
                           segment_occurrence=culprit.occurrence if culprit is not None else 1) from exc
    for obx in sources.values():
        build.use(obx, *build.notes_after(obx))
    for code in score.data_quality:
        build.issue(code)
    return _instrument_resources(build, group, score, key, sources)


def _instrument_resources(build: Build, group: OrderGroup, score: InstrumentScore, key: str,
                          sources: dict[str, Segment]) -> list[tuple[Json, Labels]]:
    """The shared builder's resources (services/mapper/instrument_resources.py), with OBX-11 statuses."""
    obr = group.obr
    assert obr is not None
    conv = build.conv
    observed = [o for o in sources.values() if o.get(14)]
    authored = (fhir_datetime(obr.get(7), obr.loc(7), conv)
                or (fhir_datetime(observed[0].get(14), observed[0].loc(14), conv) if observed else None)
                or fhir_datetime(build.header.timestamp, "MSH-7", conv))
    built = scored_instrument_resources(Answered(
        score=score,
        source=build.source,
        key=key,
        event_id=build.event_id,
        patient=build.patient_ref,
        authored=authored,
        encounter=build.encounter_ref,
        profiles=False,  # claimed by us_core.py once the resource is checked
        statuses={code: _status(build, obx) for code, obx in sources.items() if obx.get(11)},
    ))
    build.alerts.extend(built.alerts)
    return built.resources
