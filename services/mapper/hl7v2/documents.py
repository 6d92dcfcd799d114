"""MDM T02 -> DocumentReference (TXA; the OBX segments are the document body, not Observations).

type: TXA-2 (v2-0270) with a LOINC note type added (PN 11506-3, CN 11488-4, DS 18842-5, DI 18748-4 ...); a LOINC
note type in TXA-2 or OBX-3 is kept, else v3-NullFlavor UNK is added (US Core's required type binding); and
mental-health note types (34904-3, 34785-6, 78263-1, 78306-8, 78472-8, 11510-5) label the document R+PSY. A
TXA-18 confidentiality of V or R is added to the labels. Body: text OBX values (TX/FT/ST/CWE...) joined by line
breaks as a base64 text/plain attachment; ED values with Base64 data (RP values with a URL) as their own
attachments. An ED or RP part that carries no content (OBX-5 ED without its
data, RP without a pointer) or content carebus cannot read (not Base64) refuses the whole message, AE at OBX-5
(``attachment-data-missing`` / ``attachment-unreadable``, the OBX occurrence named): storing the document without
a part the sender announced would show clinicians an incomplete document as complete, and the dead letter tells
the integration team which OBX to fix before resending. HIPAA psychotherapy notes are refused
(PsychotherapyNoteRefused): carebus never carries them. Id from TXA-12 (unique document number), else MSH-10.
"""

from __future__ import annotations

import base64
from typing import Any

from services.common.fhir.codesystems import LOINC, US_CORE_DOCUMENTREFERENCE_CATEGORY, V3_NULL_FLAVOR
from services.common.fhir.labels import MENTAL_HEALTH_NOTE_TYPES, refused_labels
from services.common.hl7v2.er7 import Segment
from services.common.hl7v2.errors import InvalidValue, MissingRequired, PsychotherapyNoteRefused
from services.mapper.hl7v2 import sensitivity
from services.mapper.hl7v2.builder import Build, Json, note_texts
from services.mapper.hl7v2.datatypes import (
    codeable,
    fhir_datetime,
    fhir_instant,
    identifier_ei,
    person_reference,
)
from services.mapper.hl7v2.results import attachment_of
from services.mapper.hl7v2.terminology import DOCUMENT_COMPLETION, DOCUMENT_TYPE

_AVAILABILITY = {"AV": "current", "UN": "current", "OB": "superseded", "CA": "entered-in-error"}


def _concept_text(concept: Json | None) -> str:
    if not concept:
        return ""
    parts = [str(concept.get("text", ""))]
    for item in concept.get("coding", []):
        parts.extend((str(item.get("code", "")), str(item.get("display", ""))))
    return " ".join(parts)


def _type(build: Build, txa: Segment, body_codes: list[Json]) -> Json:
    concept = codeable(txa.rep(2), local=build.local(txa.loc(2))) or {}
    codings: list[Json] = list(concept.get("coding", []))
    has_loinc = any(c.get("system") == LOINC for c in codings)
    if not has_loinc:
        body_loinc = [c for body in body_codes for c in body.get("coding", []) if c.get("system") == LOINC]
        mapped = DOCUMENT_TYPE.get(txa.get(2).upper())
        if body_loinc:
            codings = [body_loinc[0], *codings]
        elif mapped is not None:
            codings = [{"system": LOINC, "code": mapped[0], "display": mapped[1]}, *codings]
    for item in codings:
        if item.get("system") == LOINC and item.get("code") in MENTAL_HEALTH_NOTE_TYPES:
            item.setdefault("display", MENTAL_HEALTH_NOTE_TYPES[item["code"]])
    if not any(c.get("system") == LOINC for c in codings):
        # no LOINC type known: US Core's required binding takes NullFlavor UNK beside the sender's own code
        codings.append({"system": V3_NULL_FLAVOR, "code": "UNK", "display": "unknown"})
    return {**concept, "coding": codings}


def map_document(build: Build, txa: Segment) -> Json:
    conv = build.conv
    body_segments = [s for s in build.message.segments if s.name == "OBX" and s.position > txa.position]
    body_codes = [c for s in body_segments if (c := codeable(s.rep(3), local=build.local(s.loc(3)))) is not None]
    for concept in [codeable(txa.rep(2), local=build.local(txa.loc(2))), *body_codes]:
        if refused_labels((), _concept_text(concept)):
            raise PsychotherapyNoteRefused("TXA-2", "psychotherapy-note",
                                           "HIPAA psychotherapy notes are not accepted")
    lines: list[str] = []
    attachments: list[Json] = []
    for obx in body_segments:
        value_type = obx.get(2).upper()
        if value_type in {"ED", "RP"}:
            attachment = attachment_of(obx, value_type)
            if attachment is None:
                rep = obx.rep(5)
                if rep is None or not rep.c(1 if value_type == "RP" else 5):
                    raise MissingRequired(obx.loc(5), "attachment-data-missing",
                                          f"an {value_type} document part carries no content",
                                          segment_occurrence=obx.occurrence)
                raise InvalidValue(obx.loc(5), "attachment-unreadable",
                                   f"an {value_type} document part is not readable (ED: Base64 data; RP: a URL)",
                                   segment_occurrence=obx.occurrence)
            attachments.append(attachment)
        else:
            lines.extend(rep.joined() for rep in obx.reps(5))
        notes = build.notes_after(obx)
        lines.extend(note_texts(notes))
        build.use(obx, *notes)
    created = fhir_datetime(txa.get(6), txa.loc(6), conv)
    title = txa.get(2, 2) or None
    if lines:
        text = "\n".join(lines).encode()
        attachments.insert(0, {"contentType": "text/plain; charset=utf-8", "language": None,
                               "data": base64.b64encode(text).decode(), "title": title, "creation": created})
    if not attachments:
        raise MissingRequired("OBX-5", "document-body-required", "an MDM T02 needs the document body in OBX")
    doc_type = _type(build, txa, body_codes)
    key = f"document|{txa.get(12)}" if txa.get(12) else f"message|{build.message_key}|txa"
    authors = [person_reference(rep) for rep in (*txa.reps(5), *txa.reps(9))]
    date = next((made for raw, loc in ((txa.get(4), txa.loc(4)), (txa.get(6), txa.loc(6)),
                                        (txa.get(7), txa.loc(7)))
                 if raw and (made := fhir_instant(raw, loc, conv))), None)
    document: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "id": build.id("DocumentReference", key),
        "masterIdentifier": identifier_ei(txa.rep(12)),
        "identifier": [identifier_ei(txa.rep(16)), identifier_ei(txa.rep(14), "PLAC"),
                       identifier_ei(txa.rep(15), "FILL")],
        "status": _AVAILABILITY.get(txa.get(19).upper(), "current"),
        "docStatus": DOCUMENT_COMPLETION.get(txa.get(17).upper()),
        "type": doc_type,
        "category": [{"coding": [{"system": US_CORE_DOCUMENTREFERENCE_CATEGORY, "code": "clinical-note",
                                  "display": "Clinical Note"}]}],
        "subject": build.patient_ref,
        "date": date,
        "author": [a for a in authors if a is not None],
        "authenticator": person_reference(txa.rep(10)) or person_reference(txa.rep(22)),
        "content": [{"attachment": attachment} for attachment in attachments],
        "context": {"encounter": [build.encounter_ref] if build.encounter_ref else None},
    }
    confidentiality = txa.get(18).upper()
    labels = sensitivity.combine(sensitivity.document([doc_type, *body_codes]),
                                 (confidentiality,) if confidentiality in {"V", "R"} else ())
    build.use(txa)
    return build.add(document, labels, focus=True)
