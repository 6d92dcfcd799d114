"""Realistic FHIR R4 test data for the record service, written for these tests (codes from
/work/shared/reference/domain.md): three source systems, behavioural-health resources with the labels the
mapper puts on them, and bundles shaped like the pipeline's (collection, fullUrl + resource, deterministic ids).
"""

from __future__ import annotations

import base64
import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from services.common.fhir_ids import patient_key, resource_id
from services.common.kafka import OutboundRecord
from services.common.security_labels import PART2, PSYCHIATRIC, combine, meta_security
from services.common.topics import (
    FHIR_BUNDLES,
    HEADER_CONTENT_TYPE,
    HEADER_CORRELATION_ID,
    HEADER_EVENT_ID,
    HEADER_EVENT_TYPE,
    HEADER_SECURITY,
)

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
US_CORE = "http://hl7.org/fhir/us/core/StructureDefinition/"
EMPI = "urn:carebus:empi"

_counter = itertools.count(1)


@dataclass(frozen=True)
class Source:
    system: str
    name: str
    part2: bool = False

    @property
    def mrn_system(self) -> str:
        return f"{self.system}:mrn"

    def labels(self, *extra: tuple[str, ...]) -> tuple[str, ...]:
        return combine(PART2 if self.part2 else (), *extra)


CLINIC = Source("urn:carebus:source:riverside-cmhc", "Riverside Community Mental Health")
HOSPITAL = Source("urn:carebus:source:st-mary-hospital", "St Mary Hospital")
SUD_PROGRAM = Source("urn:carebus:source:harbor-recovery", "Harbor Recovery (42 CFR Part 2 program)", part2=True)


def unique(prefix: str = "") -> str:
    return f"{prefix}{next(_counter):05d}{datetime.now(UTC).strftime('%H%M%S%f')}"


def _meta(profile: str | None, labels: tuple[str, ...]) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if profile:
        meta["profile"] = [US_CORE + profile]
    if labels:
        meta["security"] = meta_security(labels)
    return meta


def _with_meta(resource: dict[str, Any], profile: str | None, labels: tuple[str, ...]) -> dict[str, Any]:
    meta = _meta(profile, labels)
    if meta:
        resource["meta"] = meta
    return resource


def patient_id(source: Source, mrn: str) -> str:
    return resource_id("Patient", source.system, mrn)


def patient(source: Source, mrn: str, *, family: str = "Rivera", given: tuple[str, ...] = ("Alex", "J"),
            birth: str = "1987-04-12", gender: str = "female", empi: str | None = None,
            links: tuple[tuple[str, str], ...] = (), active: bool = True, phone: str | None = None
            ) -> dict[str, Any]:
    identifiers: list[dict[str, Any]] = [{
        "use": "usual",
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
        "system": source.mrn_system,
        "value": mrn,
    }]
    if empi:
        identifiers.append({"use": "secondary", "system": EMPI, "value": empi})
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": patient_id(source, mrn),
        "identifier": identifiers,
        "active": active,
        "name": [{"use": "official", "family": family, "given": list(given)}],
        "gender": gender,
        "birthDate": birth,
    }
    if phone:
        resource["telecom"] = [{"system": "phone", "value": phone, "use": "mobile"}]
    if links:
        resource["link"] = [{"other": {"reference": f"Patient/{other}"}, "type": kind} for other, kind in links]
    return _with_meta(resource, "us-core-patient", source.labels())


def _subject(pid: str) -> dict[str, str]:
    return {"reference": f"Patient/{pid}"}


def phq9_total(source: Source, pid: str, key: str, when: str, score: int) -> dict[str, Any]:
    return _with_meta({
        "resourceType": "Observation",
        "id": resource_id("Observation", source.system, key, "44261-6"),
        "status": "final",
        "category": [{"coding": [{"system": OBS_CATEGORY, "code": "survey", "display": "Survey"}]}],
        "code": {"coding": [{"system": LOINC, "code": "44261-6",
                             "display": "Patient Health Questionnaire 9 item (PHQ-9) total score [Reported]"}]},
        "subject": _subject(pid),
        "effectiveDateTime": when,
        "valueQuantity": {"value": score, "unit": "{score}", "system": "http://unitsofmeasure.org",
                          "code": "{score}"},
    }, "us-core-observation-screening-assessment", source.labels(PSYCHIATRIC))


def gad7_total(source: Source, pid: str, key: str, when: str, score: int) -> dict[str, Any]:
    return _with_meta({
        "resourceType": "Observation",
        "id": resource_id("Observation", source.system, key, "70274-6"),
        "status": "final",
        "category": [{"coding": [{"system": OBS_CATEGORY, "code": "survey", "display": "Survey"}]}],
        "code": {"coding": [{"system": LOINC, "code": "70274-6",
                             "display": "Generalized anxiety disorder 7 item (GAD-7) total score [Reported.PHQ]"}]},
        "subject": _subject(pid),
        "effectiveDateTime": when,
        "valueQuantity": {"value": score, "unit": "{score}", "system": "http://unitsofmeasure.org",
                          "code": "{score}"},
    }, "us-core-observation-screening-assessment", source.labels(PSYCHIATRIC))


def body_weight(source: Source, pid: str, key: str, when: str, kg: float) -> dict[str, Any]:
    return _with_meta({
        "resourceType": "Observation",
        "id": resource_id("Observation", source.system, key, "29463-7"),
        "status": "final",
        "category": [{"coding": [{"system": OBS_CATEGORY, "code": "vital-signs", "display": "Vital Signs"}]}],
        "code": {"coding": [{"system": LOINC, "code": "29463-7", "display": "Body weight"}]},
        "subject": _subject(pid),
        "effectiveDateTime": when,
        "valueQuantity": {"value": kg, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"},
    }, "us-core-body-weight", source.labels())


def depression_condition(source: Source, pid: str, key: str, onset: str) -> dict[str, Any]:
    return _with_meta({
        "resourceType": "Condition",
        "id": resource_id("Condition", source.system, key),
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                       "code": "active"}]},
        "verificationStatus": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category",
                                  "code": "problem-list-item"}]}],
        "code": {"coding": [{"system": ICD10, "code": "F32.A", "display": "Depression, unspecified"},
                            {"system": SNOMED, "code": "310496002", "display": "Moderate depression"}]},
        "subject": _subject(pid),
        "onsetDateTime": onset,
        "recordedDate": onset,
    }, "us-core-condition-problems-health-concerns", source.labels(PSYCHIATRIC))


def opioid_use_condition(source: Source, pid: str, key: str, onset: str) -> dict[str, Any]:
    return _with_meta({
        "resourceType": "Condition",
        "id": resource_id("Condition", source.system, key),
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                       "code": "active"}]},
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category",
                                  "code": "problem-list-item"}]}],
        "code": {"coding": [{"system": ICD10, "code": "F11.20", "display": "Opioid dependence, uncomplicated"}]},
        "subject": _subject(pid),
        "onsetDateTime": onset,
    }, "us-core-condition-problems-health-concerns", combine(PART2))


def medication_request(source: Source, pid: str, key: str, authored: str, *, rxnorm: str = "36437",
                       display: str = "sertraline", status: str = "active",
                       labels: tuple[str, ...] = PSYCHIATRIC) -> dict[str, Any]:
    return _with_meta({
        "resourceType": "MedicationRequest",
        "id": resource_id("MedicationRequest", source.system, key),
        "status": status,
        "intent": "order",
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": rxnorm, "display": display}]},
        "subject": _subject(pid),
        "authoredOn": authored,
        "dosageInstruction": [{"text": "once daily"}],
    }, "us-core-medicationrequest", source.labels(labels))


def encounter(source: Source, pid: str, key: str, start: str, end: str | None, *, klass: str = "AMB"
              ) -> dict[str, Any]:
    period = {"start": start}
    if end:
        period["end"] = end
    return _with_meta({
        "resourceType": "Encounter",
        "id": resource_id("Encounter", source.system, key),
        "status": "finished" if end else "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": klass},
        "type": [{"coding": [{"system": SNOMED, "code": "90526000", "display": "Psychotherapy"}]}],
        "subject": _subject(pid),
        "period": period,
    }, "us-core-encounter", source.labels(PSYCHIATRIC))


def progress_note(source: Source, pid: str, key: str, when: str) -> dict[str, Any]:
    text = base64.b64encode(b"Session summary: mood improving, continue CBT weekly.").decode()
    return _with_meta({
        "resourceType": "DocumentReference",
        "id": resource_id("DocumentReference", source.system, key),
        "status": "current",
        "type": {"coding": [{"system": LOINC, "code": "34904-3", "display": "Mental health Progress note"}]},
        "category": [{"coding": [{"system": "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category",
                                  "code": "clinical-note"}]}],
        "subject": _subject(pid),
        "date": when,
        "content": [{"attachment": {"contentType": "text/plain", "data": text}}],
        "context": {"period": {"start": when}},
    }, "us-core-documentreference", source.labels(PSYCHIATRIC))


def phq9_response(source: Source, pid: str, key: str, authored: str) -> dict[str, Any]:
    return _with_meta({
        "resourceType": "QuestionnaireResponse",
        "id": resource_id("QuestionnaireResponse", source.system, key),
        "questionnaire": "http://loinc.org/q/44249-1",
        "status": "completed",
        "subject": _subject(pid),
        "authored": authored,
        "item": [
            {"linkId": "/44250-9", "answer": [{"valueCoding": {"system": LOINC, "code": "LA6569-3",
                                                               "display": "Several days"}}]},
            {"linkId": "/44260-8", "answer": [{"valueCoding": {"system": LOINC, "code": "LA6568-5",
                                                               "display": "Not at all"}}]},
        ],
    }, "us-core-questionnaireresponse", source.labels(PSYCHIATRIC))


def referral(source: Source, pid: str, key: str, authored: str) -> dict[str, Any]:
    return _with_meta({
        "resourceType": "ServiceRequest",
        "id": resource_id("ServiceRequest", source.system, key),
        "status": "active",
        "intent": "order",
        "category": [{"coding": [{"system": SNOMED, "code": "3457005", "display": "Patient referral"}]}],
        "code": {"text": "Referral to behavioral health"},
        "subject": _subject(pid),
        "authoredOn": authored,
    }, "us-core-servicerequest", source.labels(PSYCHIATRIC))


def appointment(source: Source, pid: str, key: str, start: str, end: str) -> dict[str, Any]:
    return _with_meta({
        "resourceType": "Appointment",
        "id": resource_id("Appointment", source.system, key),
        "status": "booked",
        "start": start,
        "end": end,
        "participant": [{"actor": _subject(pid), "status": "accepted"}],
    }, None, source.labels())


def care_plan(source: Source, pid: str, key: str, start: str) -> dict[str, Any]:
    return _with_meta({
        "resourceType": "CarePlan",
        "id": resource_id("CarePlan", source.system, key),
        "status": "active",
        "intent": "plan",
        "category": [{"coding": [{"system": "http://hl7.org/fhir/us/core/CodeSystem/careplan-category",
                                  "code": "assess-plan"}]}],
        "subject": _subject(pid),
        "period": {"start": start},
        "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">Weekly CBT</div>'},
    }, "us-core-careplan", source.labels(PSYCHIATRIC))


def risk_flag(source: Source, pid: str, key: str, start: str) -> dict[str, Any]:
    return _with_meta({
        "resourceType": "Flag",
        "id": resource_id("Flag", source.system, key),
        "status": "active",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/flag-category",
                                  "code": "safety"}]}],
        "code": {"coding": [{"system": SNOMED, "code": "225444004", "display": "At risk for suicide"}]},
        "subject": _subject(pid),
        "period": {"start": start},
    }, None, source.labels(PSYCHIATRIC))


@dataclass
class Event:
    """One pipeline event: a bundle for one patient of one source."""

    source: Source
    mrn: str
    resources: list[dict[str, Any]]
    event_id: str = field(default_factory=lambda: unique("evt-"))
    deletions: list[str] = field(default_factory=list)  # "Type/id"

    def bundle(self) -> dict[str, Any]:
        labels: set[str] = set()
        for r in self.resources:
            labels.update(c["code"] for c in r.get("meta", {}).get("security", ()))
        entries: list[dict[str, Any]] = [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in self.resources]
        entries += [{"request": {"method": "DELETE", "url": ref}} for ref in self.deletions]
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "id": resource_id("Bundle", self.source.system, self.event_id),
            "type": "collection",
            "timestamp": "2025-01-01T00:00:00Z",
            "entry": entries,
        }
        if labels:
            bundle["meta"] = {"security": meta_security(labels)}
        return bundle

    def record(self, prefix: str) -> OutboundRecord:
        bundle = self.bundle()
        security = ",".join(c["code"] for c in bundle.get("meta", {}).get("security", ()))
        return OutboundRecord(
            topic=FHIR_BUNDLES.name(prefix),
            key=patient_key(self.source.system, self.mrn),
            value=orjson.dumps(bundle),
            headers={HEADER_EVENT_ID: self.event_id, HEADER_EVENT_TYPE: "org.carebus.test.v1",
                     HEADER_CORRELATION_ID: self.event_id, HEADER_SECURITY: security,
                     HEADER_CONTENT_TYPE: "application/fhir+json"},
        )


def iso(base: datetime, days: float = 0.0) -> str:
    return (base + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")


T0 = datetime(2024, 3, 1, 15, 0, tzinfo=UTC)


def full_record(source: Source, mrn: str, pid: str, start: datetime = T0) -> list[dict[str, Any]]:
    """One of every resource type the record searches, for one patient of one source."""
    return [
        phq9_total(source, pid, f"{mrn}-phq-1", iso(start, 0), 14),
        phq9_total(source, pid, f"{mrn}-phq-2", iso(start, 28), 9),
        gad7_total(source, pid, f"{mrn}-gad-1", iso(start, 0), 11),
        body_weight(source, pid, f"{mrn}-wt-1", iso(start, 1), 71.5),
        depression_condition(source, pid, f"{mrn}-dx-1", iso(start, -2)),
        medication_request(source, pid, f"{mrn}-rx-1", iso(start, 0)),
        medication_request(source, pid, f"{mrn}-rx-2", iso(start, -60), status="stopped", rxnorm="321988",
                           display="escitalopram"),
        encounter(source, pid, f"{mrn}-enc-1", iso(start, 0), iso(start, 0.04)),
        encounter(source, pid, f"{mrn}-enc-2", iso(start, 28), iso(start, 28.04), klass="VR"),
        progress_note(source, pid, f"{mrn}-note-1", iso(start, 0.05)),
        phq9_response(source, pid, f"{mrn}-qr-1", iso(start, 0)),
        referral(source, pid, f"{mrn}-sr-1", iso(start, -7)),
        appointment(source, pid, f"{mrn}-appt-1", iso(start, 35), iso(start, 35.04)),
        care_plan(source, pid, f"{mrn}-cp-1", iso(start, 0)),
        risk_flag(source, pid, f"{mrn}-flag-1", iso(start, 0)),
    ]
