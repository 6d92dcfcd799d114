"""map_event for every event type: resources, codes, profiles, labels, alerts, determinism. Every bundle here
is validated with the fhir.resources R4B models (helpers.mapped)."""

from __future__ import annotations

import base64
import copy
import dataclasses
import datetime as dt
from typing import Any

import orjson
import pytest

from services.common.errors import MappingError
from services.common.events import EVENT_TYPES, parse_event
from services.common.events.examples import EXAMPLES
from services.common.fhir_ids import resource_id
from services.common.fhir_validation import validate_resource
from services.mapper.mapping import DISPATCH, map_event, serialize, validate_bundle
from services.mapper.result import MappingContext
from tests.mapping.helpers import CONTEXT, RECEIVED, codes, example, mapped, one, resources, security_codes

US_CORE = "http://hl7.org/fhir/us/core/StructureDefinition/"
PSY = ["R", "PSY"]
PART2 = ["R", "42CFRPart2", "NORDSCLCD", "SUD"]


def test_dispatch_covers_every_event_type() -> None:
    assert set(DISPATCH) == set(EVENT_TYPES.values())


@pytest.mark.parametrize("event_type", sorted(EXAMPLES))
def test_every_bundle_is_a_valid_collection_with_provenance_last(event_type: str) -> None:
    event = EXAMPLES[event_type]
    result = mapped(event)
    bundle = result.bundle
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    assert bundle["id"] == resource_id("Bundle", event["source"], event["id"])
    assert bundle["identifier"] == {"system": event["source"], "value": event["id"]}
    entries = bundle["entry"]
    for entry in entries:
        assert entry["fullUrl"] == f"urn:uuid:{entry['resource']['id']}"
    provenance = entries[-1]["resource"]
    assert provenance["resourceType"] == "Provenance"
    assert provenance["meta"]["profile"] == [US_CORE + "us-core-provenance"]
    others = [f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in entries[:-1]]
    assert [t["reference"] for t in provenance["target"]] == others
    assert provenance["entity"][0]["what"]["identifier"] == {"system": event["source"], "value": event["id"]}
    assert provenance["agent"][0]["who"]["identifier"]["value"] == event["source"]
    # recorded: when the source recorded the event (its time), not this copy's receipt (RECEIVED)
    assert dt.datetime.fromisoformat(provenance["recorded"]) == dt.datetime.fromisoformat(event["time"])
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry["resource"]["resourceType"]] = counts.get(entry["resource"]["resourceType"], 0) + 1
    assert result.resource_counts == counts
    # the bundle carries the union of its resources' labels, and so does MappedEvent
    union = {c for e in entries for c in security_codes(e["resource"])}
    assert set(result.security_labels) == union == set(security_codes(bundle))
    assert security_codes(provenance) == security_codes(bundle)


@pytest.mark.parametrize("event_type", sorted(EXAMPLES))
def test_same_event_twice_gives_the_identical_bundle(event_type: str) -> None:
    first = map_event(parse_event(EXAMPLES[event_type]), CONTEXT)
    second = map_event(parse_event(orjson.dumps(EXAMPLES[event_type])), CONTEXT)
    assert serialize(first.bundle) == serialize(second.bundle)
    assert first == second


def test_replay_from_another_moment_keeps_every_id() -> None:
    event = EXAMPLES["org.carebus.assessment.completed.v1"]
    later = MappingContext(received_at=RECEIVED + dt.timedelta(days=3))
    first, second = mapped(event), mapped(event, later)
    assert [e["fullUrl"] for e in first.bundle["entry"]] == [e["fullUrl"] for e in second.bundle["entry"]]
    assert serialize(first.bundle) == serialize(second.bundle)  # a resend or replay converges, Provenance too


def test_subject_is_the_patient_with_the_deterministic_id() -> None:
    source, patient_id = "urn:carebus:source:riverside-primary-care", "RPC-004711"
    patient = one(mapped(EXAMPLES["org.carebus.patient.registered.v1"]), "Patient")
    assert patient["id"] == resource_id("Patient", source, patient_id)
    referral = one(mapped(EXAMPLES["org.carebus.referral.created.v1"]), "ServiceRequest")
    assert referral["subject"] == {"reference": f"Patient/{patient['id']}"}


def test_patient() -> None:
    result = mapped(EXAMPLES["org.carebus.patient.registered.v1"])
    patient = one(result, "Patient")
    assert patient["meta"]["profile"] == [US_CORE + "us-core-patient"]
    assert patient["identifier"][0] == {
        "use": "usual",
        "system": "urn:carebus:source:riverside-primary-care/patient",
        "value": "RPC-004711",
    }
    assert {"system": "urn:carebus:empi", "value": "EMPI-8842-1170"} in patient["identifier"]
    assert patient["name"] == [{"use": "official", "family": "Quill", "given": ["Morgan", "Ellis"]}]
    assert (patient["gender"], patient["birthDate"]) == ("female", "1988-04-12")
    assert patient["address"][0]["postalCode"] == "62704"
    assert result.security_labels == ()  # demographics alone are not labelled
    assert "meta" not in result.bundle or "security" not in result.bundle.get("meta", {})


def test_referral_created_and_closed() -> None:
    created = one(mapped(EXAMPLES["org.carebus.referral.created.v1"]), "ServiceRequest")
    assert created["meta"]["profile"] == [US_CORE + "us-core-servicerequest"]
    assert (created["status"], created["intent"], created["priority"]) == ("active", "order", "routine")
    assert codes(created, "category") == ["3457005"]
    assert codes(created, "code") == ["306343005"]
    assert codes(created, "reasonCode") == ["F32.1"]
    assert created["requester"]["identifier"] == {
        "system": "http://hl7.org/fhir/sid/us-npi",
        "value": "1234567893",
    }
    assert security_codes(created) == PSY
    closed = one(mapped(EXAMPLES["org.carebus.referral.closed.v1"]), "ServiceRequest")
    assert closed["id"] == created["id"]
    assert closed["status"] == "completed"
    declined = one(
        mapped(example("referral.closed", outcome="declined", specialty="psychiatry")), "ServiceRequest"
    )
    assert declined["status"] == "revoked"
    assert codes(declined, "code") == ["183524004"]


def test_appointments() -> None:
    booked = one(mapped(EXAMPLES["org.carebus.appointment.booked.v1"]), "Appointment")
    assert booked["status"] == "booked"
    assert booked["minutesDuration"] == 50
    assert booked["basedOn"][0]["reference"].startswith("ServiceRequest/")
    assert booked["participant"][0]["actor"]["reference"].startswith("Patient/")
    assert security_codes(booked) == PSY
    cancelled = one(mapped(EXAMPLES["org.carebus.appointment.cancelled.v1"]), "Appointment")
    assert cancelled["status"] == "cancelled" and codes(cancelled, "cancelationReason") == ["pat"]
    noshow = one(mapped(EXAMPLES["org.carebus.appointment.noshow.v1"]), "Appointment")
    assert noshow["status"] == "noshow"
    primary = one(
        mapped(example("appointment.booked", service="primary-care", telehealth=True)), "Appointment"
    )
    assert "security" not in primary.get("meta", {})
    assert primary["appointmentType"] == {"text": "telehealth"}


def test_therapy_session_encounter_and_modality() -> None:
    result = mapped(EXAMPLES["org.carebus.session.completed.v1"])
    encounter = one(result, "Encounter")
    assert encounter["meta"]["profile"] == [US_CORE + "us-core-encounter"]
    assert encounter["status"] == "finished"
    assert encounter["class"]["code"] == "AMB"
    assert encounter["type"][0]["coding"] == [{"system": "http://www.ama-assn.org/go/cpt", "code": "90834"}]
    assert encounter["period"] == {"start": "2025-03-11T16:00:00+00:00", "end": "2025-03-11T16:50:00+00:00"}
    assert encounter["length"]["value"] == 50
    procedure = one(result, "Procedure")
    assert codes(procedure, "code") == ["304891004"]
    assert procedure["encounter"] == {"reference": f"Encounter/{encounter['id']}"}
    assert security_codes(encounter) == security_codes(procedure) == PSY


def test_telehealth_and_modality_without_known_code() -> None:
    result = mapped(example("session.completed", telehealth=True, modality="dbt"))
    assert one(result, "Encounter")["class"]["code"] == "VR"
    code = one(result, "Procedure")["code"]
    assert code["coding"][0]["code"] == "75516001" and code["text"] == "Dialectical behavior therapy"


def test_primary_care_visit_is_not_labelled() -> None:
    result = mapped(
        example("session.completed", kind="primary-care", modality=None, cpt_code="99214", referral_id=None)
    )
    assert result.security_labels == ()
    assert resources(result, "Procedure") == []


def test_assessment_phq9_resources() -> None:
    result = mapped(EXAMPLES["org.carebus.assessment.completed.v1"])
    response = one(result, "QuestionnaireResponse")
    assert response["meta"]["profile"] == [US_CORE + "us-core-questionnaireresponse"]
    assert response["questionnaire"] == "http://loinc.org/q/44249-1"
    assert [i["linkId"] for i in response["item"]][:2] == ["/44250-9", "/44255-8"]
    assert response["item"][-1] == {
        "linkId": "/44261-6",
        "text": "Patient Health Questionnaire 9 item (PHQ-9) total score [Reported]",
        "answer": [{"valueInteger": 12}],
    }
    observations = resources(result, "Observation")
    by_code = {o["code"]["coding"][0]["code"]: o for o in observations}
    assert len(observations) == 12  # panel + 9 items + difficulty + total
    panel, total = by_code["44249-1"], by_code["44261-6"]
    assert [m["reference"] for m in panel["hasMember"]] == [
        f"Observation/{o['id']}" for o in observations if o is not panel
    ]
    assert total["valueQuantity"] == {
        "value": 12,
        "unit": "{score}",
        "system": "http://unitsofmeasure.org",
        "code": "{score}",
    }
    assert total["interpretation"] == [{"text": "Moderate depression"}]
    assert "note" not in total
    for observation in observations:
        assert observation["meta"]["profile"] == [US_CORE + "us-core-observation-screening-assessment"]
        assert observation["category"][0]["coding"][0]["code"] == "survey"
        assert observation["derivedFrom"] == [{"reference": f"QuestionnaireResponse/{response['id']}"}]
        assert security_codes(observation) == PSY
    assert by_code["44259-0"]["valueCodeableConcept"]["coding"][0]["code"] == "LA6570-1"
    assert by_code["44250-9"]["valueCodeableConcept"]["coding"][0]["code"] == "LA6570-1"  # sent as integer 2
    assert result.alerts == () and result.data_quality == ()
    assert resources(result, "Flag") == []


def test_reported_total_mismatch_is_visible_in_the_resources() -> None:
    result = mapped(example("assessment.completed", reported_total={"value": 15, "unit": "{score}"}))
    assert result.data_quality == ("reported-total-mismatch",)
    total = next(o for o in resources(result, "Observation") if o["code"]["coding"][0]["code"] == "44261-6")
    assert total["valueQuantity"]["value"] == 12
    assert "reported 15" in total["note"][0]["text"] and "give 12" in total["note"][0]["text"]
    response = one(result, "QuestionnaireResponse")
    assert response["item"][-1]["answer"] == [{"valueInteger": 15}]


def test_phq9_item9_positive_gives_flag_and_alert() -> None:
    event = example("assessment.completed", reported_total=None)
    for item in event["data"]["items"]:
        if item["code"] == "44260-8":
            item["answer"] = "LA6569-3"
    result = mapped(event)
    flag = one(result, "Flag")
    assert flag["status"] == "active"
    assert codes(flag, "category") == ["safety"]
    assert codes(flag, "code") == ["225444004"]
    assert security_codes(flag) == PSY
    (alert,) = result.alerts
    assert alert.kind == "phq9-item9"
    assert alert.flag_id == flag["id"]
    assert alert.patient_reference == flag["subject"]["reference"]
    assert alert.event_id == event["id"]
    assert "LA6569" not in alert.detail and "Quill" not in alert.detail


def test_cssrs_high_risk_and_low_risk() -> None:
    items = [{"code": "93246-7", "answer": "LA33-6"}, {"code": "93247-5", "answer": "LA33-6"}]
    items += [{"code": c, "answer": "LA32-8"} for c in ("93248-3", "93250-9", "93267-3", "93269-9")]
    low = mapped(
        example(
            "assessment.completed",
            instrument="cssrs-screener",
            items=[*items, {"code": "93249-1", "answer": "LA32-8"}],
            reported_total="low",
        )
    )
    risk = next(o for o in resources(low, "Observation") if o["code"]["coding"][0]["code"] == "93374-7")
    assert risk["valueCodeableConcept"]["coding"][0]["code"] == "low"
    assert low.alerts == () and low.data_quality == ()
    high = mapped(
        example(
            "assessment.completed",
            instrument="cssrs-screener",
            items=[*items, {"code": "93249-1", "answer": 1}],
            reported_total=None,
        )
    )
    assert [a.kind for a in high.alerts] == ["cssrs-high-risk"]
    assert one(high, "Flag")["id"] == high.alerts[0].flag_id


def test_audit_c_labels_and_positivity_by_sex() -> None:
    items = [
        {"code": "68518-0", "answer": "LA18927-6"},
        {"code": "68519-8", "answer": 0},
        {"code": "68520-6", "answer": 1},
    ]
    female = mapped(
        example(
            "assessment.completed",
            instrument="audit-c",
            items=items,
            reported_total=3,
            patient_gender="female",
        )
    )
    male = mapped(
        example(
            "assessment.completed", instrument="audit-c", items=items, reported_total=3, patient_gender="male"
        )
    )

    def total_of(result: Any) -> dict[str, Any]:
        return next(
            o for o in resources(result, "Observation") if o["code"]["coding"][0]["code"] == "75626-2"
        )

    assert total_of(female)["interpretation"] == [{"text": "Positive alcohol misuse screen"}]
    assert total_of(male)["interpretation"] == [{"text": "Negative alcohol misuse screen"}]
    assert female.security_labels == ("R", "ETHUD")
    unknown = mapped(example("assessment.completed", instrument="audit-c", items=items, reported_total=None))
    assert unknown.data_quality == ("audit-c-sex-unknown",)


def test_incomplete_assessment_has_no_total_value() -> None:
    event = example("assessment.completed")
    event["data"]["items"] = event["data"]["items"][:5]
    result = mapped(event)
    total = next(o for o in resources(result, "Observation") if o["code"]["coding"][0]["code"] == "44261-6")
    assert "valueQuantity" not in total and total["dataAbsentReason"]["coding"][0]["code"] == "error"
    assert "incomplete-answers" in result.data_quality


@pytest.mark.parametrize(
    ("system", "code", "sensitivity", "expected"),
    [
        ("http://hl7.org/fhir/sid/icd-10-cm", "F32.1", None, PSY),
        ("http://hl7.org/fhir/sid/icd-10-cm", "F41.1", None, PSY),
        ("http://hl7.org/fhir/sid/icd-10-cm", "F11.20", None, PART2),
        ("http://hl7.org/fhir/sid/icd-10-cm", "F10.10", None, PART2),
        ("http://hl7.org/fhir/sid/icd-10-cm", "F19.20", None, PART2),
        ("http://hl7.org/fhir/sid/icd-10-cm", "F17.210", None, []),
        ("http://hl7.org/fhir/sid/icd-10-cm", "R45.851", None, PSY),
        ("http://hl7.org/fhir/sid/icd-10-cm", "E11.9", None, []),
        ("http://snomed.info/sct", "310496002", None, PSY),
        ("http://snomed.info/sct", "1297194009", None, PART2),
        ("http://snomed.info/sct", "44054006", None, []),
        ("http://snomed.info/sct", "44054006", "substance-use", PART2),
        (
            "http://hl7.org/fhir/sid/icd-10-cm",
            "F32.1",
            "substance-use",
            ["R", "42CFRPart2", "NORDSCLCD", "PSY", "SUD"],
        ),
    ],
)
def test_diagnosis_labels(system: str, code: str, sensitivity: str | None, expected: list[str]) -> None:
    event = example("diagnosis.recorded", sensitivity=sensitivity)
    event["data"]["code"] = {"system": system, "code": code}
    result = mapped(event)
    condition = one(result, "Condition")
    assert security_codes(condition) == expected
    assert list(result.security_labels) == expected


def test_diagnosis_recorded_and_resolved() -> None:
    recorded = one(mapped(EXAMPLES["org.carebus.diagnosis.recorded.v1"]), "Condition")
    assert recorded["meta"]["profile"] == [US_CORE + "us-core-condition-encounter-diagnosis"]
    assert codes(recorded, "clinicalStatus") == ["active"]
    assert codes(recorded, "category") == ["encounter-diagnosis"]
    assert codes(recorded, "code") == ["F32.1"]
    problem = one(mapped(example("diagnosis.recorded", category="problem-list-item")), "Condition")
    assert problem["meta"]["profile"] == [US_CORE + "us-core-condition-problems-health-concerns"]
    resolved = one(mapped(EXAMPLES["org.carebus.diagnosis.resolved.v1"]), "Condition")
    assert resolved["id"] == recorded["id"]
    assert codes(resolved, "clinicalStatus") == ["resolved"]
    assert resolved["abatementDateTime"] == "2025-11-14T16:00:00+00:00"


@pytest.mark.parametrize(
    ("rxnorm", "expected"),
    [("36437", PSY), ("1819", PART2), ("6813", PART2), ("7243", PART2), ("197361", [])],
)
def test_medication_labels(rxnorm: str, expected: list[str]) -> None:
    event = example("medication.prescribed", reason_codes=[])
    event["data"]["medication"] = {"code": rxnorm}
    assert security_codes(one(mapped(event), "MedicationRequest")) == expected


def test_medication_reason_codes_add_labels() -> None:
    event = example(
        "medication.prescribed",
        reason_codes=[{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "F11.20"}],
    )
    event["data"]["medication"] = {"code": "197361"}
    assert security_codes(one(mapped(event), "MedicationRequest")) == PART2


def test_medication_lifecycle() -> None:
    prescribed = one(mapped(EXAMPLES["org.carebus.medication.prescribed.v1"]), "MedicationRequest")
    assert prescribed["meta"]["profile"] == [US_CORE + "us-core-medicationrequest"]
    assert (prescribed["status"], prescribed["intent"]) == ("active", "order")
    assert codes(prescribed, "medicationCodeableConcept") == ["36437"]
    dosage = prescribed["dosageInstruction"][0]
    assert dosage["doseAndRate"][0]["doseQuantity"] == {
        "value": 50,
        "unit": "mg",
        "system": "http://unitsofmeasure.org",
        "code": "mg",
    }
    assert dosage["timing"]["repeat"] == {"frequency": 1, "period": 1, "periodUnit": "d"}
    assert codes(dosage, "route") == ["26643006"]
    changed = one(mapped(EXAMPLES["org.carebus.medication.changed.v1"]), "MedicationRequest")
    assert changed["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] == 100
    assert changed["priorPrescription"] == {"reference": f"MedicationRequest/{prescribed['id']}"}
    stopped = one(mapped(EXAMPLES["org.carebus.medication.discontinued.v1"]), "MedicationRequest")
    assert stopped["id"] == changed["id"] and stopped["status"] == "stopped"
    assert codes(stopped, "statusReason") == ["182992009"]


def test_admission_started_and_ended() -> None:
    started = one(mapped(EXAMPLES["org.carebus.admission.started.v1"]), "Encounter")
    assert started["class"]["code"] == "IMP" and started["status"] == "in-progress"
    assert security_codes(started) == PSY
    ended = one(mapped(example("admission.ended", discharge_disposition="psy")), "Encounter")
    assert ended["id"] == started["id"] and ended["status"] == "finished"
    assert ended["hospitalization"]["dischargeDisposition"]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/discharge-disposition",
        "code": "psy",
        "display": "Psychiatric hospital",
    }
    assert ended["period"]["end"] == "2025-05-09T11:00:00+00:00"
    detox = one(mapped(example("admission.started", service="inpatient-detox", reason_codes=[])), "Encounter")
    assert security_codes(detox) == PART2
    medical = one(
        mapped(example("admission.started", service="inpatient-medical", reason_codes=[])), "Encounter"
    )
    assert security_codes(medical) == []


def test_note_signed_mental_health_and_ordinary() -> None:
    result = mapped(EXAMPLES["org.carebus.note.signed.v1"])
    document = one(result, "DocumentReference")
    assert codes(document, "type") == ["34785-6"]
    assert codes(document, "category") == ["clinical-note"]
    assert US_CORE + "us-core-documentreference" in document["meta"]["profile"]
    attachment = document["content"][0]["attachment"]
    assert attachment["contentType"] == "text/plain; charset=utf-8"
    text = EXAMPLES["org.carebus.note.signed.v1"]["data"]["text"]
    assert base64.b64decode(attachment["data"]).decode("utf-8") == text
    assert security_codes(document) == PSY
    ordinary = one(
        mapped(example("note.signed", mental_health=False, note_type="progress_note")), "DocumentReference"
    )
    assert codes(ordinary, "type") == ["11506-3"]
    assert security_codes(ordinary) == []


@pytest.mark.parametrize(
    ("note_type", "loinc"),
    [
        ("progress_note", "34904-3"),
        ("consult_note", "34785-6"),
        ("discharge_summary", "78263-1"),
        ("history_and_physical", "78306-8"),
        ("procedure_note", "78472-8"),
    ],
)
def test_mental_health_note_types(note_type: str, loinc: str) -> None:
    document = one(mapped(example("note.signed", note_type=note_type)), "DocumentReference")
    assert codes(document, "type") == [loinc]


def test_care_plan_and_goals() -> None:
    result = mapped(EXAMPLES["org.carebus.careplan.updated.v1"])
    plan = one(result, "CarePlan")
    goals = resources(result, "Goal")
    assert plan["meta"]["profile"] == [US_CORE + "us-core-careplan"]
    assert plan["text"]["status"] == "generated" and "Cognitive behavioral therapy" in plan["text"]["div"]
    assert (plan["status"], plan["intent"]) == ("active", "plan")
    assert codes(plan, "category") == ["assess-plan"]
    assert [g["reference"] for g in plan["goal"]] == [f"Goal/{g['id']}" for g in goals]
    activity = plan["activity"][0]["detail"]
    assert activity["code"]["coding"][0]["code"] == "304891004"
    assert activity["scheduledTiming"]["repeat"] == {"frequency": 1, "period": 1, "periodUnit": "wk"}
    target = goals[0]["target"][0]
    assert target["measure"]["coding"][0]["code"] == "44261-6"
    assert target["detailQuantity"]["comparator"] == "<" and target["detailQuantity"]["value"] == 5
    assert all(security_codes(r) == PSY for r in (plan, *goals))


def test_care_plan_narrative_escapes_markup() -> None:
    event = example("careplan.updated", title="<script>alert(1)</script>")
    plan = one(mapped(event), "CarePlan")
    assert "<script>" not in plan["text"]["div"]


def test_consent_part2_and_revocation() -> None:
    granted = one(mapped(EXAMPLES["org.carebus.consent.granted.v1"]), "Consent")
    assert granted["status"] == "active"
    assert codes(granted, "scope") == ["patient-privacy"]
    assert codes(granted, "category") == ["59284-0"]
    provision = granted["provision"]
    assert provision["type"] == "permit"
    assert [p["code"] for p in provision["purpose"]] == ["TREAT", "CAREMGT"]
    assert provision["purpose"][0]["system"] == "http://terminology.hl7.org/CodeSystem/v3-ActReason"
    assert [s["code"] for s in provision["securityLabel"]] == ["PSY"]
    assert provision["actor"][0]["reference"]["display"] == "Riverside Primary Care"
    assert security_codes(granted) == PSY
    part2 = one(
        mapped(example("consent.granted", labels_covered=["SUD", "42CFRPart2"], form="64292-6")), "Consent"
    )
    assert codes(part2, "policyRule") == ["42CFRPart2"]
    assert security_codes(part2) == PART2
    revoked = one(mapped(EXAMPLES["org.carebus.consent.revoked.v1"]), "Consent")
    assert revoked["id"] == granted["id"] and revoked["status"] == "inactive"
    assert revoked["provision"]["period"]["end"] == "2025-09-01T09:00:00+00:00"


def test_lab_result() -> None:
    observation = one(mapped(EXAMPLES["org.carebus.lab.resulted.v1"]), "Observation")
    assert observation["meta"]["profile"] == [US_CORE + "us-core-observation-lab"]
    assert codes(observation, "category") == ["laboratory"]
    assert codes(observation, "code") == ["14334-7"]
    assert observation["valueQuantity"]["value"] == 0.8
    assert observation["referenceRange"][0]["high"]["value"] == 1.2
    assert codes(observation, "interpretation") == ["N"]
    assert security_codes(observation) == PSY  # lithium monitoring is psychiatric information
    tsh = example("lab.resulted", code={"code": "3016-3"}, value={"value": 2.1, "unit": "mIU/L"})
    assert security_codes(one(mapped(tsh), "Observation")) == []
    text_result = example("lab.resulted", value=None, value_text="Negative", reference_range=None)
    assert one(mapped(text_result), "Observation")["valueString"] == "Negative"


def test_risk_flag() -> None:
    result = mapped(EXAMPLES["org.carebus.risk.flagged.v1"])
    flag = one(result, "Flag")
    assert codes(flag, "code") == ["225444004"] and codes(flag, "category") == ["safety"]
    assert [a.kind for a in result.alerts] == ["risk-flag"]
    violence = mapped(example("risk.flagged", risk="violence"))
    assert one(violence, "Flag")["code"] == {"text": "Risk of violence (moderate)"}
    assert len(violence.alerts) == 1


def test_part2_source_labels_every_resource_including_the_patient() -> None:
    event = EXAMPLES["org.carebus.patient.registered.v1"]
    context = MappingContext(received_at=RECEIVED, part2_sources=frozenset({event["source"]}))
    result = mapped(event, context)
    assert security_codes(one(result, "Patient")) == PART2
    assert list(result.security_labels) == PART2
    session = mapped(
        {**EXAMPLES["org.carebus.session.completed.v1"], "source": "urn:carebus:source:harbor-otp"},
        MappingContext(received_at=RECEIVED, part2_sources=frozenset({"urn:carebus:source:harbor-otp"})),
    )
    assert list(session.security_labels) == ["R", "42CFRPart2", "NORDSCLCD", "PSY", "SUD"]


def test_different_sources_give_different_ids_for_the_same_source_ids() -> None:
    event = EXAMPLES["org.carebus.diagnosis.recorded.v1"]
    other = copy.deepcopy(event)
    other["source"] = "urn:carebus:source:another-clinic"
    assert one(mapped(event), "Condition")["id"] != one(mapped(other), "Condition")["id"]


def test_recorded_is_the_event_time_whatever_the_receipt_clock() -> None:
    event = EXAMPLES["org.carebus.lab.resulted.v1"]
    for context in (MappingContext(received_at=dt.datetime(2025, 6, 1, 12, 0)), CONTEXT):
        recorded = mapped(event, context).bundle["entry"][-1]["resource"]["recorded"]
        assert dt.datetime.fromisoformat(recorded) == dt.datetime.fromisoformat(event["time"])


# --- validation -------------------------------------------------------------------------------------------


def _bundle() -> dict[str, Any]:
    """A mapped Bundle to break on purpose. Mapped Bundles share sub-objects between resources (read-only):
    a JSON round trip gives each resource its own, so one breakage stays in one place."""
    return orjson.loads(orjson.dumps(
        map_event(parse_event(EXAMPLES["org.carebus.assessment.completed.v1"]), CONTEXT).bundle
    ))


@pytest.mark.parametrize(
    ("path", "value", "location", "rule"),
    [
        (("entry", 3, "resource", "effectiveDateTime"), "last tuesday", "entry[3].resource(Observation)", ""),
        (
            ("entry", 0, "resource", "unknownElement"),
            1,
            "entry[0].resource(QuestionnaireResponse)",
            "extra_forbidden",
        ),
        (("entry", 2, "resource", "code", "coding"), "ZQX-coding", "entry[2].resource(Observation).code", ""),
        (
            ("entry", 2, "resource", "meta", "security", 0, "code"),
            " ZQX",
            "entry[2].resource(Observation).meta",
            "",
        ),
    ],
)
def test_validate_bundle_names_resource_and_rule_without_values(
    path: tuple[Any, ...], value: Any, location: str, rule: str
) -> None:
    bundle = _bundle()
    target: Any = bundle
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    with pytest.raises(MappingError) as caught:
        validate_bundle(bundle)
    problems = caught.value.problems
    assert problems and problems[0].location.startswith(location)
    if rule:
        assert problems[0].rule == rule
    text = " ".join([str(caught.value), *(f"{p.location} {p.rule} {p.message}" for p in problems)])
    assert "ZQX" not in text and "tuesday" not in text


def test_validation_catches_missing_required_elements_and_bad_choice_types() -> None:
    bundle = _bundle()
    del bundle["entry"][1]["resource"]["status"]  # Observation.status is 1..1
    with pytest.raises(MappingError) as caught:
        validate_bundle(bundle)
    assert caught.value.problems[0].location.startswith("entry[1].resource(Observation)")
    bundle = _bundle()
    item = bundle["entry"][2]["resource"]
    item["valueString"] = "also"  # two value[x] at once
    with pytest.raises(MappingError):
        validate_bundle(bundle)


def test_validation_of_a_repeated_element_is_still_checked_in_each_place() -> None:
    # the element cache must not let a bad element through because a good one looked alike
    good = {
        "resourceType": "Flag",
        "id": "f1",
        "status": "active",
        "code": {"text": "x"},
        "subject": {"reference": "Patient/p1"},
    }
    validate_resource(good)
    bad = {**good, "subject": {"reference": "Patient/p1", "bogus": 1}}
    with pytest.raises(MappingError) as caught:
        validate_resource(bad)
    problem = caught.value.problems[0]
    assert (problem.location, problem.rule) == ("resource.subject", "extra_forbidden")  # "bogus": not a FHIR word
    validate_resource(good)


def test_validate_bundle_rejects_non_bundles() -> None:
    with pytest.raises(MappingError):
        validate_bundle({"resourceType": "Patient"})
    with pytest.raises(MappingError):
        validate_bundle(
            {"resourceType": "Bundle", "type": "collection", "entry": [{"fullUrl": "urn:uuid:x"}]}
        )
    with pytest.raises(MappingError):
        validate_bundle(
            {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [{"resource": {"resourceType": "Nope"}}],
            }
        )


def test_serialize_is_orjson_of_the_plain_dict() -> None:
    result = map_event(parse_event(EXAMPLES["org.carebus.lab.resulted.v1"]), CONTEXT)
    data = serialize(result.bundle)
    assert isinstance(data, bytes)
    assert orjson.loads(data) == result.bundle


def test_mapped_event_is_plain_data() -> None:
    result = map_event(parse_event(EXAMPLES["org.carebus.risk.flagged.v1"]), CONTEXT)
    assert dataclasses.is_dataclass(result)
    orjson.dumps(result.bundle)  # JSON-ready without default=
