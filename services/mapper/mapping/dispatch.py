"""map_event: the dispatch table from event class to family mapping, and the wrapping every bundle gets.

Every Bundle (type ``collection``, plain dict, id = resource_id("Bundle", source, event id)):
* ``identifier`` {system: event source, value: event id} and ``timestamp`` = event time;
* the family's resources, each with ``meta.security`` = its own labels (+ PART2 when the event's source is in
  context.part2_sources), fullUrl ``urn:uuid:<id>``;
* ALWAYS a Provenance last (us-core-provenance): target = every other resource; occurredDateTime = when the
  change happened (Draft.occurred_at, e.g. an appointment's cancelled_at; else the event time);
  recorded = event time, when the source recorded the event (not when carebus received this copy: a resend or
  replay of the same event makes the same Provenance); agent = the source system (author) and
  carebus (assembler); entity (role source) = the CloudEvent, identifier {system: source, value: event id}.
* ``meta.security`` on the Bundle and the Provenance = the union of all resources' labels; the same tuple
  is MappedEvent.security_labels.
Same event and same context -> identical bundle (ids from fhir_ids, no clock, no randomness).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any, Final

from services.common import security_labels
from services.common.errors import FieldProblem, MappingError
from services.common.events import (
    AdmissionEnded,
    AdmissionStarted,
    AppointmentBooked,
    AppointmentCancelled,
    AppointmentNoShow,
    AssessmentCompleted,
    CareEvent,
    CarePlanUpdated,
    ConsentGranted,
    ConsentRevoked,
    DiagnosisRecorded,
    DiagnosisResolved,
    LabResulted,
    MedicationChanged,
    MedicationDiscontinued,
    MedicationPrescribed,
    NoteSigned,
    PatientRegistered,
    PatientUpdated,
    ReferralClosed,
    ReferralCreated,
    RiskFlagged,
    SessionCompleted,
    check_policy,
)
from services.common.fhir.codesystems import CAREBUS_MAPPER, PROVENANCE_PARTICIPANT_TYPE, RFC3986
from services.common.fhir_ids import resource_id
from services.mapper.mapping import labels
from services.mapper.mapping._fhir import Draft, Subject, concept, iso, profile
from services.mapper.mapping.admission import map_admission
from services.mapper.mapping.appointment import map_appointment
from services.mapper.mapping.assessment import map_assessment
from services.mapper.mapping.careplan import map_care_plan
from services.mapper.mapping.consent import map_consent
from services.mapper.mapping.diagnosis import map_diagnosis
from services.mapper.mapping.lab import map_lab
from services.mapper.mapping.medication import map_medication
from services.mapper.mapping.note import map_note
from services.mapper.mapping.patient import map_patient
from services.mapper.mapping.referral import map_referral
from services.mapper.mapping.risk import map_risk_flag
from services.mapper.mapping.session import map_session
from services.mapper.result import MappedEvent, MappingContext

FamilyMapping = Callable[[Any, Draft], None]

DISPATCH: Final[dict[type, FamilyMapping]] = {
    PatientRegistered: map_patient,
    PatientUpdated: map_patient,
    ReferralCreated: map_referral,
    ReferralClosed: map_referral,
    AppointmentBooked: map_appointment,
    AppointmentCancelled: map_appointment,
    AppointmentNoShow: map_appointment,
    SessionCompleted: map_session,
    AssessmentCompleted: map_assessment,
    DiagnosisRecorded: map_diagnosis,
    DiagnosisResolved: map_diagnosis,
    MedicationPrescribed: map_medication,
    MedicationChanged: map_medication,
    MedicationDiscontinued: map_medication,
    AdmissionStarted: map_admission,
    AdmissionEnded: map_admission,
    NoteSigned: map_note,
    CarePlanUpdated: map_care_plan,
    ConsentGranted: map_consent,
    ConsentRevoked: map_consent,
    LabResulted: map_lab,
    RiskFlagged: map_risk_flag,
}
"""Event class -> family mapping (one module per family under services/mapper/mapping/)."""

# Parts of every Provenance that never vary, built once and shared (Bundles are read-only, see map_event)
_AUTHOR_TYPE: Final = concept(PROVENANCE_PARTICIPANT_TYPE, "author", "Author")
_ASSEMBLER: Final = {
    "type": concept(PROVENANCE_PARTICIPANT_TYPE, "assembler", "Assembler"),
    "who": {"identifier": {"system": RFC3986, "value": CAREBUS_MAPPER}},
}


def _provenance(
    event: CareEvent, context: MappingContext, targets: list[dict[str, Any]], bundle_labels: tuple[str, ...],
    occurred_at: dt.datetime | None = None,
) -> dict[str, Any]:
    provenance: dict[str, Any] = {
        "resourceType": "Provenance",
        "id": resource_id("Provenance", event.source, event.id),
        "meta": {"profile": profile("us-core-provenance")},
        "target": [{"reference": f"{r['resourceType']}/{r['id']}"} for r in targets],
        "occurredDateTime": iso(occurred_at or event.time),
        "recorded": iso(event.time),
        "agent": [
            {"type": _AUTHOR_TYPE, "who": {"identifier": {"system": RFC3986, "value": event.source}}},
            _ASSEMBLER,
        ],
        "entity": [
            {
                "role": "source",
                "what": {"identifier": {"system": event.source, "value": event.id}, "display": event.type},
            }
        ],
    }
    if bundle_labels:
        provenance["meta"]["security"] = security_labels.meta_security(bundle_labels)
    return provenance


def map_event(event: CareEvent, context: MappingContext) -> MappedEvent:
    """One care event -> one FHIR R4 Bundle (collection) with labels, alerts and data-quality codes.

    The Bundle is read-only: its resources share sub-objects where they are equal by construction (one
    meta.security list per label set; an assessment's Observations share subject, time, encounter and
    performer). It is meant to be validated and serialized; copy it (a JSON round trip) before changing it.

    Raises RefusedContent (psychotherapy / SUD counseling notes) or MappingError (e.g. answers that cannot
    be scored); both are InvalidInput: dead-letter the event and carry on."""
    check_policy(event)
    family = DISPATCH.get(type(event))
    if family is None:
        raise MappingError(
            "no mapping for this event type",
            [FieldProblem("type", "unmapped-event-type", "carebus has no mapping for this event type")],
        )
    draft = Draft(Subject(event.source, event.data.patient_id), event.id)
    family(event, draft)

    source_names = (event.source,)
    entries: list[dict[str, Any]] = []
    targets: list[dict[str, Any]] = []
    label_sets: list[tuple[str, ...]] = []
    security_lists: dict[tuple[str, ...], list[dict[str, Any]]] = {}  # one list per label set, shared
    for resource, own_labels in draft.resources:
        kind_labels = labels.source_labels(source_names, resource["resourceType"], context.part2_sources,
                                           context.psychiatric_sources)
        resource_labels = labels.combine(own_labels, kind_labels) if kind_labels else own_labels
        if resource_labels:
            security = security_lists.get(resource_labels)
            if security is None:
                security = security_lists[resource_labels] = security_labels.meta_security(resource_labels)
            resource.setdefault("meta", {})["security"] = security
        label_sets.append(resource_labels)
        targets.append(resource)
        entries.append({"fullUrl": f"urn:uuid:{resource['id']}", "resource": resource})
    bundle_labels = labels.combine(*label_sets)
    provenance = _provenance(event, context, targets, bundle_labels, draft.occurred_at)
    entries.append({"fullUrl": f"urn:uuid:{provenance['id']}", "resource": provenance})

    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": resource_id("Bundle", event.source, event.id),
        "identifier": {"system": event.source, "value": event.id},
        "type": "collection",
        "timestamp": iso(event.time),
        "entry": entries,
    }
    if bundle_labels:
        bundle["meta"] = {"security": security_labels.meta_security(bundle_labels)}
    counts: dict[str, int] = {}
    for entry in entries:
        resource_type = entry["resource"]["resourceType"]
        counts[resource_type] = counts.get(resource_type, 0) + 1
    return MappedEvent(
        bundle=bundle,
        security_labels=bundle_labels,
        alerts=tuple(draft.alerts),
        data_quality=tuple(dict.fromkeys(draft.data_quality)),
        resource_counts=counts,
    )
