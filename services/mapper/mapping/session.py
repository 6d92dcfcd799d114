"""session.completed -> Encounter (us-core-encounter) + Procedure (us-core-procedure) for therapy sessions.

Encounter: status finished; class (v3-ActCode) VR when telehealth, else AMB; type = the CPT code(s)
(http://www.ama-assn.org/go/cpt) and the visit kind; period = start .. start + duration_minutes; length in
minutes; participant = the practitioner; appointment / basedOn (referral) when given.

Therapy modality -> Procedure.code, SNOMED CT (t = third-party sources: eCQM value sets, NHS Talking Therapies
code lists). Where no code is known, the generic 75516001 Psychotherapy is used with the modality as text:

| modality         | SNOMED CT                                                   |
|------------------|-------------------------------------------------------------|
| cbt              | 304891004 Cognitive behavioral therapy (t)                  |
| psychodynamic    | 314034001 Psychodynamic psychotherapy (t)                   |
| ipt              | 443730003 Interpersonal psychotherapy (t)                   |
| emdr             | 449030000 Eye movement desensitization and reprocessing (t) |
| solution-focused | 401157001 Brief solution focused psychotherapy (t)          |
| dbt, act, supportive, family, group | 75516001 Psychotherapy (t) + text        |

Labels: every kind except primary-care -> PSY.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final

from services.common.events import SessionCompleted
from services.common.events.payloads import SessionKind, TherapyModality
from services.common.fhir import labels
from services.common.fhir.codesystems import CPT, SNOMED, UCUM, V3_ACT_CODE
from services.mapper.mapping._fhir import Draft, coding, iso, profile

PSYCHOTHERAPY: Final = ("75516001", "Psychotherapy (regime/therapy)")
MODALITIES: Final[dict[TherapyModality, tuple[str, str, str]]] = {
    # modality: (SNOMED code, display, text)
    "cbt": ("304891004", "Cognitive behavioral therapy (regime/therapy)", "Cognitive behavioral therapy"),
    "psychodynamic": (
        "314034001",
        "Psychodynamic psychotherapy (regime/therapy)",
        "Psychodynamic psychotherapy",
    ),
    "ipt": ("443730003", "Interpersonal psychotherapy (regime/therapy)", "Interpersonal psychotherapy"),
    "emdr": ("449030000", "Eye movement desensitization and reprocessing therapy", "EMDR"),
    "solution-focused": (
        "401157001",
        "Brief solution focused psychotherapy (regime/therapy)",
        "Solution-focused brief therapy",
    ),
    "dbt": (*PSYCHOTHERAPY, "Dialectical behavior therapy"),
    "act": (*PSYCHOTHERAPY, "Acceptance and commitment therapy"),
    "supportive": (*PSYCHOTHERAPY, "Supportive psychotherapy"),
    "family": (*PSYCHOTHERAPY, "Family psychotherapy"),
    "group": (*PSYCHOTHERAPY, "Group psychotherapy"),
}
VISIT_KINDS: Final[dict[SessionKind, str]] = {
    "primary-care": "Primary care visit",
    "therapy": "Psychotherapy session",
    "psychiatric-evaluation": "Psychiatric evaluation",
    "medication-management": "Psychiatric medication management",
}


def modality_concept(modality: TherapyModality) -> dict[str, Any]:
    code, display, text = MODALITIES[modality]
    return {"coding": [coding(SNOMED, code, display)], "text": text}


def map_session(event: SessionCompleted, draft: Draft) -> None:
    data = event.data
    subject = draft.subject
    end = data.start + dt.timedelta(minutes=data.duration_minutes)
    encounter_class = (
        coding(V3_ACT_CODE, "VR", "virtual") if data.telehealth else coding(V3_ACT_CODE, "AMB", "ambulatory")
    )
    encounter_id = subject.id("Encounter", data.session_id)
    encounter: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": encounter_id,
        "meta": {"profile": profile("us-core-encounter")},
        "identifier": [subject.identifier("encounter", data.session_id)],
        "status": "finished",
        "class": encounter_class,
        "type": [
            {"coding": [coding(CPT, code) for code in (data.cpt_code, *data.add_on_cpt_codes)]},
            {"text": VISIT_KINDS[data.kind]},
        ],
        "subject": subject.patient_ref,
        "participant": [{"individual": subject.practitioner(data.practitioner)}],
        "period": {"start": iso(data.start), "end": iso(end)},
        "length": {"value": data.duration_minutes, "unit": "min", "system": UCUM, "code": "min"},
    }
    if data.appointment_id:
        encounter["appointment"] = [subject.ref("Appointment", data.appointment_id)]
    if data.referral_id:
        encounter["basedOn"] = [subject.ref("ServiceRequest", data.referral_id)]
    session_labels = labels.care_service_labels(data.kind)
    draft.add(encounter, session_labels)
    if data.modality is not None:
        draft.add(
            {
                "resourceType": "Procedure",
                "id": subject.id("Procedure", data.session_id),
                "meta": {"profile": profile("us-core-procedure")},
                "status": "completed",
                "code": modality_concept(data.modality),
                "subject": subject.patient_ref,
                "encounter": {"reference": f"Encounter/{encounter_id}"},
                "performedPeriod": {"start": iso(data.start), "end": iso(end)},
                "performer": [{"actor": subject.practitioner(data.practitioner)}],
            },
            labels.combine(labels.therapy_modality_labels(), session_labels),
        )
