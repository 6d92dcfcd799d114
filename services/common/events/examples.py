"""One worked example per event type (realistic, fictional people), published in the JSON Schemas'
``examples``.

The schema tests feed every example through parse_event and map_event, so an example that drifts from the
models or from the mapping fails the build.
"""

from __future__ import annotations

from typing import Any, Final

from services.common.fhir.codesystems import EMPI, ICD10CM, NPI, RXNORM, SNOMED

PRIMARY_CARE: Final = "urn:carebus:source:riverside-primary-care"
THERAPY: Final = "urn:carebus:source:lakeside-therapy-practice"
PSYCHIATRY: Final = "urn:carebus:source:northgate-psychiatry"

_DR_OKAFOR: Final = {"id": "prac-117", "name": "Dr. Adaeze Okafor", "npi": "1234567893"}
_THERAPIST: Final = {"id": "th-022", "name": "Sam Lindqvist, LCSW"}
_PSYCHIATRIST: Final = {"id": "md-481", "name": "Dr. Priya Raman", "npi": "1588667638"}


def _event(type_: str, source: str, event_id: str, time: str, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": source,
        "type": f"org.carebus.{type_}.v1",
        "time": time,
        "datacontenttype": "application/json",
        "data": data,
    }


_PATIENT: Final = {
    "patient_id": "RPC-004711",
    "identifiers": [
        {"system": "urn:carebus:source:riverside-primary-care/mrn", "value": "004711", "assigner": "RPC"},
        {"system": EMPI, "value": "EMPI-8842-1170"},
    ],
    "name": {"family": "Quill", "given": ["Morgan", "Ellis"]},
    "birth_date": "1988-04-12",
    "gender": "female",
    "contact": {
        "phone": "+1-555-0142",
        "email": "morgan.quill@example.org",
        "address": {"line": ["12 Alder Row"], "city": "Springfield", "state": "IL", "postal_code": "62704"},
    },
}

_REFERRAL: Final = {
    "patient_id": "RPC-004711",
    "referral_id": "REF-2025-0193",
    "specialty": "therapy",
    "reason_codes": [
        {
            "system": ICD10CM,
            "code": "F32.1",
            "display": "Major depressive disorder, single episode, moderate",
        }
    ],
    "priority": "routine",
    "authored_on": "2025-03-04T15:40:00Z",
    "requester": _DR_OKAFOR,
    "encounter_id": "V-88213",
    "performer_organization": "Lakeside Therapy Practice",
}

_APPOINTMENT: Final = {
    "patient_id": "LTP-3301",
    "appointment_id": "APT-55120",
    "service": "therapy",
    "start": "2025-03-11T16:00:00Z",
    "end": "2025-03-11T16:50:00Z",
    "practitioner": _THERAPIST,
    "telehealth": False,
    "referral_id": "REF-2025-0193",
    "booked_at": "2025-03-05T09:12:00Z",
}

_PHQ9_ITEMS: Final = [
    {"code": "44250-9", "answer": 2},
    {"code": "44255-8", "answer": 2},
    {"code": "44259-0", "answer": "LA6570-1"},
    {"code": "44254-1", "answer": 2},
    {"code": "44251-7", "answer": 1},
    {"code": "44258-2", "answer": 1},
    {"code": "44252-5", "answer": 2},
    {"code": "44253-3", "answer": 0},
    {"code": "44260-8", "answer": "LA6568-5"},
    {"code": "69722-7", "answer": "LA6573-5"},
]

_DIAGNOSIS: Final = {
    "patient_id": "NGP-77015",
    "diagnosis_id": "DX-3390",
    "code": {
        "system": ICD10CM,
        "code": "F32.1",
        "display": "Major depressive disorder, single episode, moderate",
    },
    "category": "encounter-diagnosis",
    "verification": "confirmed",
    "onset_date": "2024-12-01",
    "recorded_at": "2025-03-20T17:05:00Z",
    "encounter_id": "E-20250320-01",
    "practitioner": _PSYCHIATRIST,
}

_PRESCRIPTION: Final = {
    "patient_id": "NGP-77015",
    "prescription_id": "RX-10442",
    "medication": {
        "system": RXNORM,
        "code": "36437",
        "display": "sertraline",
    },
    "dose": {"value": 50, "unit": "mg", "code": "mg"},
    "frequency": {"times": 1, "period": 1, "period_unit": "d"},
    "route": {"system": SNOMED, "code": "26643006", "display": "Oral route"},
    "authored_on": "2025-03-20T17:10:00Z",
    "prescriber": _PSYCHIATRIST,
    "reason_codes": [{"system": ICD10CM, "code": "F32.1"}],
    "encounter_id": "E-20250320-01",
}

_ADMISSION: Final = {
    "patient_id": "NGP-77015",
    "admission_id": "ADM-2025-0051",
    "service": "inpatient-psychiatry",
    "admitted_at": "2025-05-02T22:15:00Z",
    "involuntary": False,
    "reason_codes": [
        {"system": ICD10CM, "code": "R45.851", "display": "Suicidal ideations"}
    ],
    "attending": _PSYCHIATRIST,
    "facility": "Northgate Behavioral Health Hospital",
}

_CONSENT: Final = {
    "patient_id": "NGP-77015",
    "consent_id": "CNS-0091",
    "decision": "permit",
    "granted_at": "2025-03-20T17:20:00Z",
    "valid_until": "2026-03-20",
    "recipient": {
        "kind": "organization",
        "name": "Riverside Primary Care",
        "identifier": {"system": NPI, "value": "1972845013"},
    },
    "purposes": ["TREAT", "CAREMGT"],
    "labels_covered": ["PSY"],
    "form": "59284-0",
}

EXAMPLES: Final[dict[str, dict[str, Any]]] = {
    "org.carebus.patient.registered.v1": _event(
        "patient.registered", PRIMARY_CARE, "rpc-evt-000101", "2025-03-04T14:55:02Z", _PATIENT
    ),
    "org.carebus.patient.updated.v1": _event(
        "patient.updated",
        PRIMARY_CARE,
        "rpc-evt-000377",
        "2025-06-01T10:00:00Z",
        {**_PATIENT, "contact": {"phone": "+1-555-0199", "email": "m.quill@example.org"}},
    ),
    "org.carebus.referral.created.v1": _event(
        "referral.created", PRIMARY_CARE, "rpc-evt-000109", "2025-03-04T15:40:10Z", _REFERRAL
    ),
    "org.carebus.referral.closed.v1": _event(
        "referral.closed",
        PRIMARY_CARE,
        "rpc-evt-000212",
        "2025-03-12T08:00:00Z",
        {**_REFERRAL, "closed_at": "2025-03-12T08:00:00Z", "outcome": "completed"},
    ),
    "org.carebus.appointment.booked.v1": _event(
        "appointment.booked", THERAPY, "ltp-evt-1001", "2025-03-05T09:12:05Z", _APPOINTMENT
    ),
    "org.carebus.appointment.cancelled.v1": _event(
        "appointment.cancelled",
        THERAPY,
        "ltp-evt-1107",
        "2025-04-07T12:30:00Z",
        {
            **_APPOINTMENT,
            "appointment_id": "APT-55388",
            "start": "2025-04-08T16:00:00Z",
            "end": "2025-04-08T16:50:00Z",
            "cancelled_at": "2025-04-07T12:30:00Z",
            "cancelled_by": "patient",
        },
    ),
    "org.carebus.appointment.noshow.v1": _event(
        "appointment.noshow",
        THERAPY,
        "ltp-evt-1140",
        "2025-04-15T17:05:00Z",
        {
            **_APPOINTMENT,
            "appointment_id": "APT-55401",
            "start": "2025-04-15T16:00:00Z",
            "end": "2025-04-15T16:50:00Z",
            "recorded_at": "2025-04-15T17:05:00Z",
        },
    ),
    "org.carebus.session.completed.v1": _event(
        "session.completed",
        THERAPY,
        "ltp-evt-1010",
        "2025-03-11T17:00:00Z",
        {
            "patient_id": "LTP-3301",
            "session_id": "S-2025-0311-01",
            "kind": "therapy",
            "modality": "cbt",
            "start": "2025-03-11T16:00:00Z",
            "duration_minutes": 50,
            "cpt_code": "90834",
            "telehealth": False,
            "practitioner": _THERAPIST,
            "appointment_id": "APT-55120",
            "referral_id": "REF-2025-0193",
        },
    ),
    "org.carebus.assessment.completed.v1": _event(
        "assessment.completed",
        PRIMARY_CARE,
        "rpc-evt-000105",
        "2025-03-04T15:20:00Z",
        {
            "patient_id": "RPC-004711",
            "assessment_id": "PHQ9-20250304-4711",
            "instrument": "phq-9",
            "authored": "2025-03-04T15:18:40Z",
            "items": _PHQ9_ITEMS,
            "reported_total": "12",
            "performer": _DR_OKAFOR,
            "encounter_id": "V-88213",
        },
    ),
    "org.carebus.diagnosis.recorded.v1": _event(
        "diagnosis.recorded", PSYCHIATRY, "ngp-evt-20031", "2025-03-20T17:05:00Z", _DIAGNOSIS
    ),
    "org.carebus.diagnosis.resolved.v1": _event(
        "diagnosis.resolved",
        PSYCHIATRY,
        "ngp-evt-20977",
        "2025-11-14T16:00:00Z",
        {**_DIAGNOSIS, "resolved_at": "2025-11-14T16:00:00Z"},
    ),
    "org.carebus.medication.prescribed.v1": _event(
        "medication.prescribed", PSYCHIATRY, "ngp-evt-20032", "2025-03-20T17:10:00Z", _PRESCRIPTION
    ),
    "org.carebus.medication.changed.v1": _event(
        "medication.changed",
        PSYCHIATRY,
        "ngp-evt-20188",
        "2025-04-17T16:40:00Z",
        {
            **_PRESCRIPTION,
            "prescription_id": "RX-10587",
            "dose": {"value": 100, "unit": "mg", "code": "mg"},
            "authored_on": "2025-04-17T16:40:00Z",
            "changed_at": "2025-04-17T16:40:00Z",
            "replaces_prescription_id": "RX-10442",
        },
    ),
    "org.carebus.medication.discontinued.v1": _event(
        "medication.discontinued",
        PSYCHIATRY,
        "ngp-evt-21002",
        "2025-11-14T16:10:00Z",
        {
            **_PRESCRIPTION,
            "prescription_id": "RX-10587",
            "dose": {"value": 100, "unit": "mg", "code": "mg"},
            "discontinued_at": "2025-11-14T16:10:00Z",
            "reason": {"system": SNOMED, "code": "182992009"},
        },
    ),
    "org.carebus.admission.started.v1": _event(
        "admission.started", PSYCHIATRY, "ngp-evt-20301", "2025-05-02T22:15:00Z", _ADMISSION
    ),
    "org.carebus.admission.ended.v1": _event(
        "admission.ended",
        PSYCHIATRY,
        "ngp-evt-20355",
        "2025-05-09T11:00:00Z",
        {**_ADMISSION, "discharged_at": "2025-05-09T11:00:00Z", "discharge_disposition": "home"},
    ),
    "org.carebus.note.signed.v1": _event(
        "note.signed",
        PSYCHIATRY,
        "ngp-evt-20040",
        "2025-03-20T18:00:00Z",
        {
            "patient_id": "NGP-77015",
            "note_id": "NOTE-55102",
            "note_type": "consult_note",
            "mental_health": True,
            "signed_at": "2025-03-20T18:00:00Z",
            "author": _PSYCHIATRIST,
            "title": "Psychiatric evaluation",
            "text": "Referred by PCP for depressive symptoms over 4 months. PHQ-9 12 at referral. "
            "Assessment: major depressive disorder, single episode, moderate. Plan: start sertraline 50 mg "
            "daily, continue weekly CBT, follow up in 4 weeks.",
            "encounter_id": "E-20250320-01",
        },
    ),
    "org.carebus.careplan.updated.v1": _event(
        "careplan.updated",
        THERAPY,
        "ltp-evt-1012",
        "2025-03-11T17:10:00Z",
        {
            "patient_id": "LTP-3301",
            "care_plan_id": "CP-3301-1",
            "status": "active",
            "title": "Depression treatment plan",
            "period_start": "2025-03-11",
            "period_end": "2025-06-30",
            "goals": [
                {
                    "goal_id": "G-3301-1",
                    "description": "Reduce depressive symptoms to remission",
                    "target": {"measure": "44261-6", "below_value": 5, "due": "2025-06-30"},
                },
                {"goal_id": "G-3301-2", "description": "Return to full-time work"},
            ],
            "modalities": ["cbt"],
            "session_frequency": {"sessions": 1, "per": "week"},
            "author": _THERAPIST,
            "updated_at": "2025-03-11T17:10:00Z",
        },
    ),
    "org.carebus.consent.granted.v1": _event(
        "consent.granted", PSYCHIATRY, "ngp-evt-20041", "2025-03-20T17:20:00Z", _CONSENT
    ),
    "org.carebus.consent.revoked.v1": _event(
        "consent.revoked",
        PSYCHIATRY,
        "ngp-evt-20801",
        "2025-09-01T09:00:00Z",
        {**_CONSENT, "revoked_at": "2025-09-01T09:00:00Z"},
    ),
    "org.carebus.lab.resulted.v1": _event(
        "lab.resulted",
        PSYCHIATRY,
        "ngp-evt-20450",
        "2025-06-03T14:00:00Z",
        {
            "patient_id": "NGP-77015",
            "result_id": "LAB-88120",
            "code": {"code": "14334-7", "display": "Lithium [Moles/volume] in Serum or Plasma"},
            "status": "final",
            "value": {"value": 0.8, "unit": "mmol/L", "code": "mmol/L"},
            "reference_range": {
                "low": {"value": 0.6, "unit": "mmol/L", "code": "mmol/L"},
                "high": {"value": 1.2, "unit": "mmol/L", "code": "mmol/L"},
            },
            "interpretation": "N",
            "effective_at": "2025-06-03T08:10:00Z",
            "issued_at": "2025-06-03T13:55:00Z",
            "ordering_practitioner": _PSYCHIATRIST,
        },
    ),
    "org.carebus.risk.flagged.v1": _event(
        "risk.flagged",
        THERAPY,
        "ltp-evt-1203",
        "2025-04-29T16:55:00Z",
        {
            "patient_id": "LTP-3301",
            "flag_id": "RF-0042",
            "risk": "suicide",
            "level": "moderate",
            "flagged_at": "2025-04-29T16:55:00Z",
            "flagged_by": _THERAPIST,
            "encounter_id": "S-2025-0429-01",
        },
    ),
}
