"""note.signed -> DocumentReference (us-core-documentreference; mental-health notes also carry the US
Behavioral Health Profiles mental-health-clinical-notes profile seen in its published example).

The note text goes base64-encoded into content[0].attachment.data (contentType with charset utf-8).
Psychotherapy notes and SUD counseling notes never get here: parse_event refuses them, and map_event refuses
them again for events built in code (RefusedContent).

| note_type            | LOINC (mental_health false)       | LOINC (mental_health true)                   |
|----------------------|-----------------------------------|----------------------------------------------|
| progress_note        | 11506-3 Progress note             | 34904-3 Mental health Progress note          |
| consult_note         | 11488-4 Consult note              | 34785-6 Mental health Consult note           |
| discharge_summary    | 18842-5 Discharge summary         | 78263-1 Mental health Discharge summary      |
| history_and_physical | 34117-2 History and physical note | 78306-8 Mental health History and physical   |
| procedure_note       | 28570-0 Procedure note            | 78472-8 Mental health Procedure note         |
(mental-health set (v) US BHP ValueSet; 34117-2 and 28570-0 (t)).
Labels: mental_health true -> PSY; otherwise none.
"""

from __future__ import annotations

import base64
from typing import Any, Final

from services.common.events import NoteSigned
from services.common.events.payloads import NoteType
from services.common.fhir import labels
from services.common.fhir.codesystems import LOINC, US_CORE_DOCUMENTREFERENCE_CATEGORY
from services.mapper.mapping._fhir import US_CORE, Draft, concept, iso

BHP_MENTAL_HEALTH_NOTE: Final = (
    "http://fhir.org/guides/onc/bhp/StructureDefinition/mental-health-clinical-notes"
)
NOTE_TYPES: Final[dict[tuple[NoteType, bool], tuple[str, str]]] = {
    ("progress_note", False): ("11506-3", "Progress note"),
    ("progress_note", True): ("34904-3", "Mental health Progress note"),
    ("consult_note", False): ("11488-4", "Consult note"),
    ("consult_note", True): ("34785-6", "Mental health Consult note"),
    ("discharge_summary", False): ("18842-5", "Discharge summary"),
    ("discharge_summary", True): ("78263-1", "Mental health Discharge summary"),
    ("history_and_physical", False): ("34117-2", "History and physical note"),
    ("history_and_physical", True): ("78306-8", "Mental health History and physical note"),
    ("procedure_note", False): ("28570-0", "Procedure note"),
    ("procedure_note", True): ("78472-8", "Mental health Procedure note"),
}


def map_note(event: NoteSigned, draft: Draft) -> None:
    data = event.data
    subject = draft.subject
    code, display = NOTE_TYPES[(data.note_type, data.mental_health)]
    profiles = [US_CORE + "us-core-documentreference"]
    if data.mental_health:
        profiles.append(BHP_MENTAL_HEALTH_NOTE)
    attachment: dict[str, Any] = {
        "contentType": f"{data.content_type}; charset=utf-8",
        "data": base64.b64encode(data.text.encode("utf-8")).decode("ascii"),
        "creation": iso(data.signed_at),
    }
    if data.title:
        attachment["title"] = data.title
    document: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "id": subject.id("DocumentReference", data.note_id),
        "meta": {"profile": profiles},
        "identifier": [subject.identifier("note", data.note_id)],
        "status": "current",
        "docStatus": "final",
        "type": concept(LOINC, code, display, text=display),
        "category": [concept(US_CORE_DOCUMENTREFERENCE_CATEGORY, "clinical-note", "Clinical Note")],
        "subject": subject.patient_ref,
        "date": iso(data.signed_at),
        "author": [subject.practitioner(data.author)],
        "authenticator": subject.practitioner(data.author),
        "content": [{"attachment": attachment}],
    }
    if data.encounter_id:
        document["context"] = {"encounter": [subject.ref("Encounter", data.encounter_id)]}
    draft.add(document, labels.note_labels(data.mental_health))
