"""FHIR R4 in: resources and Bundles (transaction, batch or collection) from systems that already speak FHIR.

Pure, like every mapping. Each resource is

- validated with the R4B models (services/common/fhir_validation.py);
- kept as the sender sent it, with only its id and its references re-keyed to the sending system by one rule
  (:class:`Rekeying`): ``resource_id(type, source, source id)`` for the resource, and for every reference
  (an entry's fullUrl, ``Type/id``, an absolute ``.../Type/id``, a versioned one) the same id of what it
  names, whether that is in this payload, came earlier from the same source or comes later. A resend converges
  on the same resources, and a Patient id agrees with the one the JSON events give the same source patient;
- labelled from its content, with the same rules as the JSON events (services/common/fhir/labels.py):
  ICD-10-CM / SNOMED CT diagnoses, medications (RxNorm by ingredient whatever the term type, or the drug named in
  a medication's coding display or text), LOINC labs and instruments; labels the sender already put in
  meta.security are kept; a Part 2 source labels everything Part 2.

A QuestionnaireResponse of an instrument carebus scores (PHQ-9, PHQ-2, GAD-7, C-SSRS screener, AUDIT-C) is
recognised from its items' LOINC codes (the item codes of its Questionnaire when the payload carries it, a
LOINC ``definition``, LOINC linkIds), else from its ``questionnaire`` canonical (instruments.py names them);
with the form's own linkIds, items are tied by the number ending the linkId (``Q9`` is item 9) and an answered
number that is no item is the reported total. It is kept as sent and labelled (PSY; AUDIT-C R+ETHUD), and
carebus adds its own results beside it, from the scored-instrument builder every path shares
(instrument_resources.py): scored Observations (derivedFrom the sender's response), the safety Flag and alert,
data-quality findings. A recognised instrument whose answers cannot be tied to its items, or that names no
patient, is refused with UnscoreableResponse (dead letter ``instrument-response-unscoreable`` naming the
rule): a suicide-item answer is never passed through unscored. Psychotherapy notes (meta.security PSYTHPN) are
refused (HIPAA 45 CFR 164.501).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from services.common import security_labels
from services.common.errors import FieldProblem, MappingError, UnscoreableResponse
from services.common.fhir import labels
from services.common.fhir.codesystems import ICD10CM, LOINC, RXNORM, SNOMED
from services.common.fhir.instruments import (
    InstrumentSpec,
    answer_for,
    instrument_codes,
    instrument_for_codes,
    instrument_for_questionnaire,
    risk_level_word,
    score_instrument,
)
from services.common.fhir_payload import Rekeying, check_resources
from services.common.topics import FHIR_RESOURCE_EVENT_TYPE
from services.mapper.assembly import Origin, assemble
from services.mapper.instrument_resources import Answered, Built, scored_instrument_resources
from services.mapper.result import MappedEvent, MappingContext, SafetyAlert


def _codings(value: Any) -> Iterator[tuple[str, str, str | None]]:
    """(system, code, display) of every Coding in a resource (meta and narrative left out)."""
    if isinstance(value, dict):
        system, code = value.get("system"), value.get("code")
        if isinstance(system, str) and isinstance(code, str):
            display = value.get("display")
            yield system, code, display if isinstance(display, str) else None
        for key, item in value.items():
            if key not in ("meta", "text"):
                yield from _codings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _codings(item)


_MEDICATION_CONCEPTS = {"MedicationRequest": "medicationCodeableConcept",
                        "MedicationStatement": "medicationCodeableConcept",
                        "MedicationAdministration": "medicationCodeableConcept",
                        "MedicationDispense": "medicationCodeableConcept", "Medication": "code"}


def _medication_names(resource: dict[str, Any]) -> Iterator[str]:
    """The names of the medication a medication resource is about: its codings' displays and its text (any
    code system: NDC, local codes)."""
    for contained in resource.get("contained") or []:  # a contained Medication named by medicationReference
        if isinstance(contained, dict):
            yield from _medication_names(contained)
    concept = resource.get(_MEDICATION_CONCEPTS.get(str(resource.get("resourceType")), ""))
    if not isinstance(concept, dict):
        return
    for coding in concept.get("coding") or []:
        if isinstance(coding, dict) and isinstance(coding.get("display"), str):
            yield coding["display"]
    if isinstance(concept.get("text"), str):
        yield concept["text"]


def sent_labels(resource: dict[str, Any]) -> tuple[str, ...]:
    """The carebus-known labels the sender already put in meta.security (kept: never downgraded)."""
    security = (resource.get("meta") or {}).get("security") or []
    return tuple(c["code"] for c in security if isinstance(c, dict) and c.get("code") in security_labels.KNOWN)


def _covered_codes(provision: Any) -> list[str]:
    """The securityLabel codes of a Consent's provisions, nested ones included."""
    if not isinstance(provision, dict):
        return []
    codes = [c["code"] for c in provision.get("securityLabel") or () if isinstance(c, dict)
             and isinstance(c.get("code"), str)]
    for child in provision.get("provision") or ():
        codes.extend(_covered_codes(child))
    return codes


def content_labels(resource: dict[str, Any]) -> tuple[str, ...]:
    """Labels implied by the codes a resource carries (same tables as the JSON events), plus those sent."""
    found: list[tuple[str, ...]] = [sent_labels(resource)]
    found.extend(labels.medication_name_labels(name) for name in _medication_names(resource))
    for system, code, display in _codings(resource):
        if system in (ICD10CM, SNOMED):
            found.append(labels.diagnosis_labels(system, code))
        elif system == RXNORM:
            found.append(labels.medication_labels(code, None, display))
        elif system == LOINC:
            found.append(labels.lab_labels(code))
    return labels.combine(*found)


# ---------------------------------------------------------------------------------------------------------
# ids and references: one rule


# ---------------------------------------------------------------------------------------------------------
# scored instruments sent as QuestionnaireResponse

_LOINC_CODE = re.compile(r"^\d{1,8}-\d$")
_ITEM_NUMBER = re.compile(r"(\d{1,2})$")
_WEIGHT_EXTENSIONS = frozenset({"http://hl7.org/fhir/StructureDefinition/ordinalValue",
                                "http://hl7.org/fhir/StructureDefinition/itemWeight",
                                "http://hl7.org/fhir/StructureDefinition/iso21090-CO-value"})


def _answered(items: Any) -> Iterator[dict[str, Any]]:
    """Every item with an answer, nested groups and items under answers included, in order."""
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        answers = item.get("answer")
        if isinstance(answers, list) and answers:
            yield item
            for answer in answers:
                if isinstance(answer, dict):
                    yield from _answered(answer.get("item"))
        yield from _answered(item.get("item"))


def _loinc_of(item: dict[str, Any], link_codes: dict[str, str]) -> str | None:
    """An answered item's LOINC code: the code of its item in the Questionnaire (when the payload carries the
    Questionnaire), else a LOINC ``definition`` (``http://loinc.org/...44250-9``), else a linkId that is (or
    ends in ``/``) a LOINC code. (An R4 QuestionnaireResponse item has no ``code`` of its own.)"""
    link_id = str(item.get("linkId", ""))
    if link_id in link_codes:
        return link_codes[link_id]
    definition = item.get("definition")
    if isinstance(definition, str) and "loinc.org" in definition:
        tail = re.split(r"[/#]", definition)[-1]
        if _LOINC_CODE.fullmatch(tail):
            return tail
    last = link_id.rsplit("/", 1)[-1]
    return last if _LOINC_CODE.fullmatch(last) else None


def _questionnaire_codes(found: list[tuple[str | None, dict[str, Any]]]) -> dict[str, dict[str, str]]:
    """linkId -> LOINC code of the items of each Questionnaire in the payload, by its canonical url (without
    version) and by ``Questionnaire/<id>``."""
    out: dict[str, dict[str, str]] = {}
    for _, resource in found:
        if resource.get("resourceType") != "Questionnaire":
            continue
        codes: dict[str, str] = {}
        pending = list(resource.get("item") or [])
        while pending:
            item = pending.pop()
            if not isinstance(item, dict):
                continue
            pending.extend(item.get("item") or [])
            for code in item.get("code") or []:
                if isinstance(code, dict) and code.get("system") == LOINC and isinstance(code.get("code"), str):
                    codes[str(item.get("linkId", ""))] = str(code["code"])
                    break
        for name in (resource.get("url"), f"Questionnaire/{resource.get('id')}" if resource.get("id") else None):
            if isinstance(name, str):
                out[name.split("|", 1)[0]] = codes
    return out


def _candidates(answer: dict[str, Any]) -> list[int | str]:
    """What an answer may be read as, most specific first: coding code, display, weight; numbers; text."""
    out: list[int | str] = []
    coding = answer.get("valueCoding")
    if isinstance(coding, dict):
        for key in ("code", "display"):
            if isinstance(coding.get(key), str) and coding[key]:
                out.append(str(coding[key]))
        for extension in coding.get("extension") or []:
            if isinstance(extension, dict) and extension.get("url") in _WEIGHT_EXTENSIONS:
                weight = extension.get("valueDecimal", extension.get("valueInteger"))
                if isinstance(weight, int | float) and not isinstance(weight, bool) and float(weight).is_integer():
                    out.append(int(weight))
    for key in ("valueInteger", "valueDecimal"):
        number = answer.get(key)
        if isinstance(number, int | float) and not isinstance(number, bool) and float(number).is_integer():
            out.append(int(number))
    if isinstance(answer.get("valueBoolean"), bool):
        out.append(1 if answer["valueBoolean"] else 0)
    if isinstance(answer.get("valueString"), str):
        out.append(str(answer["valueString"]))
    return out


def _reported(answer: dict[str, Any]) -> object:
    """A reported total as sent: a number, a Quantity's value, a coding's display or code, a string."""
    for key in ("valueInteger", "valueDecimal"):
        if isinstance(answer.get(key), int | float):
            return answer[key]
    quantity = answer.get("valueQuantity")
    if isinstance(quantity, dict) and isinstance(quantity.get("value"), int | float):
        return quantity["value"]
    coding = answer.get("valueCoding")
    if isinstance(coding, dict):
        return coding.get("display") or coding.get("code")
    return answer.get("valueString")


def _unscoreable(location: str, rule: str, message: str) -> UnscoreableResponse:
    return UnscoreableResponse(message, [FieldProblem(location, rule, message)])


def _link_codes(response: dict[str, Any], questionnaires: dict[str, dict[str, str]]) -> dict[str, str]:
    canonical = response.get("questionnaire")
    return questionnaires.get(canonical.split("|", 1)[0], {}) if isinstance(canonical, str) else {}


def scored_instrument(response: dict[str, Any], link_codes: dict[str, str]) -> InstrumentSpec | None:
    """The instrument a QuestionnaireResponse is, from its answered items' LOINC codes (see _loinc_of), else
    its questionnaire canonical; None when it is no instrument carebus scores."""
    codes = [code for item in _answered(response.get("item")) if (code := _loinc_of(item, link_codes)) is not None]
    spec = instrument_for_codes(codes)
    if spec is None and isinstance(response.get("questionnaire"), str):
        spec = instrument_for_questionnaire(response["questionnaire"])
    return spec


def _scored_response(response: dict[str, Any], spec: InstrumentSpec, link_codes: dict[str, str],
                     rekeying: Rekeying, response_id: str, event_id: str, fallback_time: str) -> Built:
    """carebus's results for a recognised QuestionnaireResponse, from the one scored-instrument builder
    (instrument_resources.py) fed with what the response says. Items are tied to the instrument by LOINC code
    (_loinc_of), else, when no answered item has one, by the number that ends the linkId (``Q9`` is item 9), and
    an answered number that is no item is the reported total. Raises UnscoreableResponse when that cannot be
    done: never scored half-silently. A reported total that is neither a number nor a short text (16
    characters, as the JSON contract allows), or a C-SSRS risk level that is none of none / low / moderate /
    high, is not compared: it stays in the response as sent. The authored time is the response's instant, else
    ``fallback_time`` (the time the sender recorded what it sent)."""
    where = "QuestionnaireResponse"
    patient = rekeying.source_id_of(response.get("subject"), "Patient")
    if patient is None:
        raise _unscoreable(f"{where}.subject", "required",
                           f"a {spec.name} response needs a Patient subject to be scored")
    answered = list(_answered(response.get("item")))
    coded = any(_loinc_of(item, link_codes) is not None for item in answered)
    answers: dict[str, int | str] = {}
    reported: object = None
    for item in answered:
        location = f"{where}.item[linkId={item.get('linkId')}]"
        answer = item["answer"][0] if isinstance(item["answer"][0], dict) else {}
        loinc = _loinc_of(item, link_codes)
        if loinc is None and not coded:  # the form's own linkIds: item numbers, and a numeric total
            number = _ITEM_NUMBER.search(str(item.get("linkId", "")).rsplit("/", 1)[-1])
            position = int(number.group(1)) if number is not None else 0
            if 1 <= position <= len(spec.items):
                loinc = spec.items[position - 1].loinc
            elif reported is None and isinstance(_reported(answer), int | float):
                reported = _reported(answer)
                continue
        if loinc == spec.total_loinc:
            reported = _reported(answer)
            continue
        if loinc is None or loinc == spec.panel_loinc:
            continue  # not an item of the instrument (a comment, a group answer): kept in the response
        if spec.item(loinc) is None:
            if loinc in instrument_codes(spec) or instrument_for_codes([loinc]) is None:
                continue
            raise _unscoreable(location, "item-of-another-instrument",
                               f"an item of another instrument in a {spec.name} response")
        if loinc in answers:
            raise _unscoreable(location, "duplicate-item", f"item {loinc} of {spec.name} is answered twice")
        value = answer_for(spec, loinc, _candidates(answer))
        if value is None:
            raise _unscoreable(location, "answer-not-in-list",
                               f"the answer to {spec.name} item {loinc} is not in the item's answer list")
        answers[loinc] = value
    if not answers:
        raise _unscoreable(f"{where}.item", "no-scorable-items",
                           f"a {spec.name} response whose answers cannot be tied to the instrument's items "
                           "(no LOINC item codes, no numbered linkIds)")
    reported_total: int | str | None = None
    if spec.key == "cssrs-screener":
        # a level carebus cannot read is kept in the response, not compared
        reported_total = risk_level_word(str(reported)) if reported is not None else None
    elif isinstance(reported, int | float) and not isinstance(reported, bool):
        reported_total = int(reported) if float(reported).is_integer() else str(reported)
    elif isinstance(reported, str) and 0 < len(reported.strip()) <= 16:
        reported_total = reported.strip()
    authored = _instant(response.get("authored"))
    encounter = rekeying.source_id_of(response.get("encounter"), "Encounter")
    return scored_instrument_resources(Answered(
        score=score_instrument(spec.key, answers, reported_total=reported_total),
        source=rekeying.source,
        key=response_id,
        event_id=event_id,
        patient={"reference": f"Patient/{rekeying.new_id('Patient', patient)}"},
        authored=authored.isoformat() if authored is not None else fallback_time,
        encounter={"reference": f"Encounter/{rekeying.new_id('Encounter', encounter)}"} if encounter else None,
    ))


# ---------------------------------------------------------------------------------------------------------


def _instant(value: Any) -> datetime | None:
    """A FHIR instant (date, time and zone), else None."""
    if not isinstance(value, str) or "T" not in value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def stated_time(payload: dict[str, Any], found: list[tuple[str | None, dict[str, Any]]],
                envelope: dict[str, Any], context: MappingContext) -> str:
    """When the sender says it recorded what it sent: Bundle.timestamp, else the newest meta.lastUpdated of the
    sent resources, else the event's time. Provenance.recorded is this time, not this copy's receipt, so a resend
    of the same content makes the same Provenance."""
    stated = _instant(payload.get("timestamp")) if payload.get("resourceType") == "Bundle" else None
    if stated is None:
        updated = [moment for _, r in found
                   if isinstance(r.get("meta"), dict) and (moment := _instant(r["meta"].get("lastUpdated")))]
        stated = max(updated) if updated else None
    if stated is None:
        stated = _instant(envelope.get("time")) or context.received_at
    return stated.isoformat()


def map_fhir_payload(envelope: dict[str, Any], context: MappingContext) -> MappedEvent:
    """A FHIR-in CloudEvent (data = resource or Bundle) -> one labelled collection Bundle with carebus ids."""
    source, event_id = str(envelope.get("source", "")), str(envelope.get("id", ""))
    payload = envelope.get("data")
    if not source or not event_id or not isinstance(payload, dict):
        raise MappingError("FHIR event without source, id or data", [FieldProblem(
            "data", "required", "a FHIR event needs source, id and a resource in data")])
    found = check_resources(payload)
    rekeying = Rekeying(source, found)
    questionnaires = _questionnaire_codes(found)

    resources: list[tuple[dict[str, Any], tuple[str, ...]]] = []
    alerts: list[SafetyAlert] = []
    quality: list[str] = []
    recorded = stated_time(payload, found, envelope, context)
    computed: list[tuple[dict[str, Any], tuple[str, ...]]] = []
    for (_, original), source_id in zip(found, rekeying.source_ids, strict=True):
        resource_type = str(original["resourceType"])
        new_id = rekeying.new_id(resource_type, source_id)
        # the sender's resource as sent: only its id and its references re-keyed
        resource = rekeying.rewrite({**original, "id": new_id})
        # demographics are ordinary PHI: a Patient keeps only what was sent (or Part 2, from a Part 2 program)
        implied = sent_labels(original) if resource_type == "Patient" else content_labels(original)
        if resource_type == "Consent":  # a consent reveals the kind of data it covers
            implied = labels.combine(implied, labels.covered_labels(_covered_codes(original.get("provision"))))
        link_codes = _link_codes(original, questionnaires) if resource_type == "QuestionnaireResponse" else {}
        spec = scored_instrument(original, link_codes) if resource_type == "QuestionnaireResponse" else None
        if spec is not None:
            # carebus's results in its own resources (Observations, Flag), derivedFrom the sender's response
            built = _scored_response(original, spec, link_codes, rekeying, source_id, event_id, recorded)
            alerts.extend(built.alerts)
            quality.extend(built.data_quality)
            implied = labels.combine(implied, labels.instrument_labels(spec.key))
            # the sender's response is kept as sent (above), so the builder's own is left out
            computed.extend(entry for entry in built.resources if entry[0]["resourceType"] != "QuestionnaireResponse")
        resources.append((resource, implied))
    resources.extend(computed)
    origin = Origin(source=source, event_id=event_id, event_type=str(envelope.get("type") or FHIR_RESOURCE_EVENT_TYPE),
                    recorded=recorded)
    return assemble(origin, resources, context, alerts=alerts, data_quality=quality)
