"""FHIR R4 in: resources and Bundles (transaction, batch or collection) from systems that already speak FHIR.

Pure, like every mapping. Each resource is

- validated with the R4B models (services/mapper/mapping/validation.py);
- given a deterministic id keyed to the sending system: ``resource_id(type, source, original id or fullUrl)``,
  with every reference inside the payload (``Type/id`` and ``urn:uuid:`` fullUrls) rewritten to match, so a
  resend converges on the same resources and a Patient id agrees with the one the JSON events give the same
  source patient;
- labelled from its content, with the same rules as the JSON events (services/mapper/mapping/labels.py):
  ICD-10-CM / SNOMED CT diagnoses, RxNorm medications, LOINC labs and instruments; labels the sender already
  put in meta.security are kept; a Part 2 source labels everything Part 2.

A QuestionnaireResponse of an instrument carebus scores (PHQ-9, PHQ-2, GAD-7, C-SSRS screener, AUDIT-C, known
by its item linkIds / LOINC codes) goes through the assessment mapping instead: scored Observations, the
safety Flag and alert, data-quality findings, exactly like an assessment.completed event.
Psychotherapy notes (meta.security PSYTHPN) are refused (HIPAA 45 CFR 164.501).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from services.common import security_labels
from services.common.errors import FieldProblem, MappingError, RefusedContent
from services.common.events import parse_event
from services.common.fhir_ids import resource_id
from services.mapper.mapping import labels, map_event, validate_resource
from services.mapper.mapping.instruments import INSTRUMENTS, InstrumentSpec
from services.mapper.result import MappedEvent, MappingContext, SafetyAlert

ACCEPTED_BUNDLE_TYPES = frozenset({"transaction", "batch", "collection"})
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOINC = "http://loinc.org"
_INSTRUMENT_PANELS = {spec.panel_loinc: spec for spec in INSTRUMENTS.values()}


def resources_of(payload: dict[str, Any]) -> list[tuple[str | None, dict[str, Any]]]:
    """(fullUrl, resource) pairs of a resource or an accepted Bundle; raises MappingError otherwise."""
    if not isinstance(payload, dict) or not isinstance(payload.get("resourceType"), str):
        raise MappingError("not a FHIR resource", [FieldProblem("resourceType", "required", "no resourceType")])
    if payload["resourceType"] != "Bundle":
        return [(None, payload)]
    if payload.get("type") not in ACCEPTED_BUNDLE_TYPES:
        raise MappingError("unsupported Bundle type", [FieldProblem(
            "Bundle.type", "unsupported-bundle-type", "send a transaction, batch or collection Bundle")])
    out: list[tuple[str | None, dict[str, Any]]] = []
    for index, entry in enumerate(payload.get("entry") or []):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            raise MappingError("entry without resource", [FieldProblem(
                f"Bundle.entry[{index}].resource", "required", "every entry needs a resource")])
        out.append((entry.get("fullUrl"), resource))
    if not out:
        raise MappingError("empty Bundle", [FieldProblem("Bundle.entry", "required", "the Bundle has no entries")])
    return out


def check_resources(payload: dict[str, Any]) -> list[tuple[str | None, dict[str, Any]]]:
    """Validate every resource (R4B) and refuse psychotherapy notes: intake before accepting, the mapper before
    mapping. Returns the (fullUrl, resource) pairs of :func:`resources_of`."""
    found = resources_of(payload)
    for index, (_, resource) in enumerate(found):
        where = f"Bundle.entry[{index}].resource" if payload.get("resourceType") == "Bundle" else "resource"
        labels_sent = {c.get("code") for c in (resource.get("meta") or {}).get("security") or []
                       if isinstance(c, dict)}
        if "PSYTHPN" in labels_sent:
            raise RefusedContent("psychotherapy notes are not accepted", [FieldProblem(
                f"{where}.meta.security", "psychotherapy-note-refused",
                "psychotherapy notes (HIPAA 45 CFR 164.501) need the patient's specific authorization and are "
                "kept out of the shared record")])
        validate_resource(resource, where)
    return found


def _codings(value: Any) -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        system, code = value.get("system"), value.get("code")
        if isinstance(system, str) and isinstance(code, str):
            yield system, code
        for key, item in value.items():
            if key not in ("meta", "text"):
                yield from _codings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _codings(item)


def sent_labels(resource: dict[str, Any]) -> tuple[str, ...]:
    """The carebus-known labels the sender already put in meta.security (kept: never downgraded)."""
    security = (resource.get("meta") or {}).get("security") or []
    return tuple(c["code"] for c in security if isinstance(c, dict) and c.get("code") in security_labels.KNOWN)


def content_labels(resource: dict[str, Any]) -> tuple[str, ...]:
    """Labels implied by the codes a resource carries (same tables as the JSON events), plus those sent."""
    found: list[tuple[str, ...]] = [sent_labels(resource)]
    for system, code in _codings(resource):
        if system in (ICD10CM, SNOMED):
            found.append(labels.diagnosis_labels(system, code))
        elif system == RXNORM:
            found.append(labels.medication_labels(code))
        elif system == LOINC:
            found.append(labels.lab_labels(code))
            spec = _INSTRUMENT_PANELS.get(code)
            if spec is not None:
                found.append(labels.ETHUD if spec.key == "audit-c" else labels.PSY)
    return labels.combine(*found)


def _covered_codes(provision: Any) -> list[str]:
    """The securityLabel codes of a Consent's provisions, nested ones included."""
    if not isinstance(provision, dict):
        return []
    codes = [c["code"] for c in provision.get("securityLabel") or () if isinstance(c, dict)
             and isinstance(c.get("code"), str)]
    for child in provision.get("provision") or ():
        codes.extend(_covered_codes(child))
    return codes


def _item_code(link_id: str) -> str:
    return link_id.rsplit("/", 1)[-1]


def _scored_instrument(response: dict[str, Any]) -> InstrumentSpec | None:
    answered = {_item_code(str(item.get("linkId", ""))) for item in response.get("item") or []}
    for spec in INSTRUMENTS.values():
        scored = {item.loinc for item in spec.scored_items}
        if answered and scored <= answered <= {item.loinc for item in spec.items} | {spec.total_loinc}:
            return spec
    return None


def _answer(item: dict[str, Any]) -> int | str | None:
    answers = item.get("answer") or []
    if not answers:
        return None
    answer = answers[0]
    coding, string = answer.get("valueCoding"), answer.get("valueString")
    if isinstance(coding, dict) and coding.get("code"):
        return str(coding["code"])
    for key in ("valueInteger", "valueDecimal"):
        number = answer.get(key)
        if isinstance(number, int | float):
            return int(number)
    return string if isinstance(string, str) else None


def _reference_id(reference: Any, resource_type: str) -> str | None:
    ref = reference.get("reference") if isinstance(reference, dict) else None
    if isinstance(ref, str) and ref.startswith(f"{resource_type}/"):
        return ref.split("/", 1)[1]
    return None


def _assessment_event(response: dict[str, Any], spec: InstrumentSpec, source: str, event_id: str,
                      fallback_time: str) -> dict[str, Any]:
    patient = _reference_id(response.get("subject"), "Patient")
    if patient is None:
        raise MappingError("questionnaire response without a Patient subject", [FieldProblem(
            "QuestionnaireResponse.subject", "required", "a scored QuestionnaireResponse needs Patient/<id>")])
    items: list[dict[str, Any]] = []
    reported: int | str | None = None
    for item in response.get("item") or []:
        code, answer = _item_code(str(item.get("linkId", ""))), _answer(item)
        if answer is None:
            continue
        if code == spec.total_loinc:
            reported = answer
        else:
            items.append({"code": code, "answer": answer})
    data: dict[str, Any] = {
        "patient_id": patient, "assessment_id": str(response.get("id") or event_id),
        "instrument": spec.key, "authored": response.get("authored") or fallback_time, "items": items,
    }
    if reported is not None:
        data["reported_total"] = reported
    encounter = _reference_id(response.get("encounter"), "Encounter")
    if encounter is not None:
        data["encounter_id"] = encounter
    return {"specversion": "1.0", "id": f"{event_id}.{data['assessment_id']}", "source": source,
            "type": "org.carebus.assessment.completed.v1", "time": data["authored"], "data": data}


def _rewrite(value: Any, references: dict[str, str]) -> Any:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key == "reference" and isinstance(item, str) and item in references:
                out[key] = references[item]
            else:
                out[key] = _rewrite(item, references)
        return out
    if isinstance(value, list):
        return [_rewrite(item, references) for item in value]
    return value


def map_fhir_payload(envelope: dict[str, Any], context: MappingContext) -> MappedEvent:
    """A FHIR-in CloudEvent (data = resource or Bundle) -> one labelled collection Bundle with carebus ids."""
    source, event_id = str(envelope.get("source", "")), str(envelope.get("id", ""))
    payload = envelope.get("data")
    if not source or not event_id or not isinstance(payload, dict):
        raise MappingError("FHIR event without source, id or data", [FieldProblem(
            "data", "required", "a FHIR event needs source, id and a resource in data")])
    found = check_resources(payload)

    references: dict[str, str] = {}
    new_ids: list[str] = []
    for index, (full_url, resource) in enumerate(found):
        source_id = str(resource.get("id") or full_url or f"entry-{index}")
        new_id = resource_id(resource["resourceType"], source, source_id)
        if resource.get("id"):
            references[f"{resource['resourceType']}/{resource['id']}"] = f"{resource['resourceType']}/{new_id}"
        if full_url:
            references[full_url] = f"{resource['resourceType']}/{new_id}"
        new_ids.append(new_id)

    entries: list[dict[str, Any]] = []
    label_sets: list[tuple[str, ...]] = []
    alerts: list[SafetyAlert] = []
    quality: list[str] = []
    part2 = source in context.part2_sources
    fallback_time = str(envelope.get("time") or context.received_at.isoformat())
    for (_, original), new_id in zip(found, new_ids, strict=True):
        spec = _scored_instrument(original) if original["resourceType"] == "QuestionnaireResponse" else None
        if spec is not None:
            scored = map_event(parse_event(_assessment_event(original, spec, source, event_id, fallback_time)),
                               context)
            alerts.extend(scored.alerts)
            quality.extend(scored.data_quality)
            for entry in scored.bundle["entry"]:
                if entry["resource"]["resourceType"] != "Provenance":
                    entries.append(entry)
                    label_sets.append(sent_labels(entry["resource"]))
            continue
        resource = _rewrite({**original, "id": new_id}, references)
        # demographics are ordinary PHI: a Patient keeps only what was sent (or Part 2, from a Part 2 program)
        implied = sent_labels(original) if original["resourceType"] == "Patient" else content_labels(original)
        if original["resourceType"] == "Consent":  # a consent reveals the kind of data it covers
            implied = labels.combine(implied, labels.covered_labels(_covered_codes(original.get("provision"))))
        own = labels.combine(implied, labels.PART2 if part2 else ())
        if own:
            resource.setdefault("meta", {})["security"] = security_labels.meta_security(own)
        entries.append({"fullUrl": f"urn:uuid:{new_id}", "resource": resource})
        label_sets.append(own)

    bundle_labels = labels.combine(*label_sets)
    provenance_id = resource_id("Provenance", source, event_id)
    provenance: dict[str, Any] = {
        "resourceType": "Provenance", "id": provenance_id,
        "target": [{"reference": f"{e['resource']['resourceType']}/{e['resource']['id']}"} for e in entries],
        "recorded": context.received_at.isoformat(),
        "agent": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                                        "code": "author"}]},
                   "who": {"display": source}}],
        "entity": [{"role": "source", "what": {"identifier": {"system": source, "value": event_id}}}],
    }
    if bundle_labels:
        provenance["meta"] = {"security": security_labels.meta_security(bundle_labels)}
    entries.append({"fullUrl": f"urn:uuid:{provenance_id}", "resource": provenance})
    bundle: dict[str, Any] = {
        "resourceType": "Bundle", "id": resource_id("Bundle", source, event_id), "type": "collection",
        "entry": entries,
    }
    if bundle_labels:
        bundle["meta"] = {"security": security_labels.meta_security(bundle_labels)}
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry["resource"]["resourceType"]] = counts.get(entry["resource"]["resourceType"], 0) + 1
    return MappedEvent(bundle=bundle, security_labels=bundle_labels, alerts=tuple(alerts),
                       data_quality=tuple(quality), resource_counts=counts)
