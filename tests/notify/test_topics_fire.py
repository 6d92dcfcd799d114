"""Every topic fires for the record changes that should trigger it and not for others, through the real record
service, its change feed, the notify process and a real HTTP receiver; patient filters follow identity links
(a shared enterprise id, an A40 merge); no subscriber receives another's patients or data it is not cleared
for; the Subscription API refuses what it must."""

from __future__ import annotations

from typing import Any

from services.notify.topics import TOPIC_BASE, TOPICS
from tests.notify.conftest import NotifyStack, auth, secret_of
from tests.notify.receiver import Receiver
from tests.record.fhir_data import (
    CLINIC,
    HOSPITAL,
    SUD_PROGRAM,
    Event,
    care_plan,
    depression_condition,
    encounter,
    medication_request,
    opioid_use_condition,
    patient,
    patient_id,
    phq9_total,
    progress_note,
    referral,
    risk_flag,
    unique,
)

ALL_TOPICS = ("encounter-started", "encounter-finished", "assessment-completed", "safety-alert-raised",
              "medication-prescribed", "medication-changed", "medication-stopped", "referral-created",
              "referral-closed", "diagnosis-recorded", "note-signed", "care-plan-updated", "patient-merged")


def _type_of(focus: str) -> str:
    return focus.rsplit("/", 2)[-2]


def test_each_topic_fires_for_its_changes_only(stack: NotifyStack) -> None:
    receiver = Receiver()
    try:
        mrn, other_mrn = unique("tf-"), unique("tfo-")
        pid, other = patient_id(CLINIC, mrn), patient_id(CLINIC, other_mrn)
        subs: dict[str, str] = {}
        for topic in ALL_TOPICS:
            created = stack.subscribe("therapy", topic, receiver.url, filters=(f"patient=Patient/{pid}",))
            subs[topic] = created["id"]
            receiver.secrets[created["id"]] = secret_of(created)
        other_sub = stack.subscribe("therapy", "assessment-completed", receiver.url,
                                    filters=(f"patient=Patient/{other}",))["id"]
        gad7_only = stack.subscribe("therapy", "assessment-completed", receiver.url,
                                    filters=(f"patient=Patient/{pid}", "code=http://loinc.org|70274-6"))["id"]
        for sid in [*subs.values(), other_sub, gad7_only]:
            stack.wait_status(sid, "active")
        rx = medication_request(CLINIC, pid, f"{mrn}-rx", "2024-03-01")
        sr = referral(CLINIC, pid, f"{mrn}-sr", "2024-02-20")
        journey = [
            Event(CLINIC, mrn, [patient(CLINIC, mrn), sr]),
            Event(CLINIC, mrn, [encounter(CLINIC, pid, f"{mrn}-enc", "2024-03-01T10:00:00Z", None)]),
            Event(CLINIC, mrn, [phq9_total(CLINIC, pid, f"{mrn}-phq", "2024-03-01T10:20:00Z", 16),
                                risk_flag(CLINIC, pid, f"{mrn}-flag", "2024-03-01T10:21:00Z"),
                                depression_condition(CLINIC, pid, f"{mrn}-dx", "2024-03-01")]),
            Event(CLINIC, mrn, [rx, progress_note(CLINIC, pid, f"{mrn}-note", "2024-03-01T11:00:00Z"),
                                care_plan(CLINIC, pid, f"{mrn}-cp", "2024-03-01")]),
            Event(CLINIC, mrn, [encounter(CLINIC, pid, f"{mrn}-enc", "2024-03-01T10:00:00Z",
                                          "2024-03-01T11:00:00Z"), {**sr, "status": "completed"}]),
            Event(CLINIC, mrn, [{**rx, "dosageInstruction": [{"text": "twice daily"}]}]),
            Event(CLINIC, mrn, [{**rx, "status": "stopped"}]),
            Event(CLINIC, other_mrn, [patient(CLINIC, other_mrn),
                                      phq9_total(CLINIC, other, f"{other_mrn}-phq", "2024-03-02", 4)]),
        ]
        stack.record.publish(*journey)
        assert receiver.wait_for(lambda: receiver.acknowledged_numbers(other_sub) == [1])
        # then an A40 merge: this patient's record is retired into the other one
        stack.record.publish(Event(CLINIC, mrn, [patient(CLINIC, mrn, links=((other, "replaced-by"),))]))
        expected = {
            "encounter-started": ["Encounter"], "encounter-finished": ["Encounter"],
            "assessment-completed": ["Observation"], "safety-alert-raised": ["Flag"],
            "medication-prescribed": ["MedicationRequest"], "medication-changed": ["MedicationRequest"],
            "medication-stopped": ["MedicationRequest"], "referral-created": ["ServiceRequest"],
            "referral-closed": ["ServiceRequest"], "diagnosis-recorded": ["Condition"],
            "note-signed": ["DocumentReference"], "care-plan-updated": ["CarePlan"], "patient-merged": ["Patient"],
        }
        assert receiver.wait_for(lambda: all(len(receiver.acknowledged_numbers(subs[t])) >= len(v)
                                             for t, v in expected.items())), _summary(receiver, subs)
        for topic, types in expected.items():
            got = [f for r in receiver.of(subs[topic]) if r.acknowledged for f in r.foci]
            assert [_type_of(f) for f in got] == types, (topic, got)
            assert all(r.signature_ok for r in receiver.of(subs[topic]))
            assert [n for r in receiver.of(subs[topic]) for n in r.numbers] == list(range(1, len(types) + 1))
        # the handshake came first, with the status 'requested' and no events
        handshake = receiver.of(subs["assessment-completed"], "handshake")[0]
        assert handshake.numbers == [] and handshake.headers["x-subscriber-key"] == "k-123"
        # after the merge, the survivor's new assessment reaches the subscription on the retired Patient id
        later = phq9_total(CLINIC, other, f"{other_mrn}-phq-2", "2024-03-09", 7)
        stack.record.publish(Event(CLINIC, other_mrn, [later]))
        assert receiver.wait_for(lambda: receiver.acknowledged_numbers(subs["assessment-completed"]) == [1, 2])
        assert receiver.of(subs["assessment-completed"])[-1].foci[0].endswith(f"/Observation/{later['id']}")
        assert stack.store.events(gad7_only) == []  # a PHQ-9 is not a GAD-7
    finally:
        receiver.stop()


def _summary(receiver: Receiver, subs: dict[str, str]) -> str:
    return str({t: receiver.acknowledged_numbers(s) for t, s in subs.items()})


def test_patient_filters_follow_the_person_and_labels_are_enforced(stack: NotifyStack) -> None:
    receiver = Receiver()
    try:
        empi = unique("EMPI-")
        clinic_mrn, hospital_mrn, sud_mrn = unique("pc-"), unique("ph-"), unique("ps-")
        clinic_pid, hospital_pid = patient_id(CLINIC, clinic_mrn), patient_id(HOSPITAL, hospital_mrn)
        sud_pid = patient_id(SUD_PROGRAM, sud_mrn)
        stack.record.publish(Event(CLINIC, clinic_mrn, [patient(CLINIC, clinic_mrn, empi=empi)]))
        therapy = stack.subscribe("therapy", "diagnosis-recorded", receiver.url,
                                  filters=(f"patient=Patient/{clinic_pid}",), content="full-resource")
        billing = stack.subscribe("billing", "diagnosis-recorded", receiver.url,
                                  filters=(f"patient=Patient/{clinic_pid}",))
        primary = stack.subscribe("primary", "diagnosis-recorded", receiver.url,
                                  filters=(f"patient=Patient/{clinic_pid}",))
        for created in (therapy, billing, primary):
            receiver.secrets[created["id"]] = secret_of(created)
            stack.wait_status(created["id"], "active")
        stack.record.publish(
            Event(HOSPITAL, hospital_mrn, [patient(HOSPITAL, hospital_mrn, empi=empi),
                                           depression_condition(HOSPITAL, hospital_pid, f"{hospital_mrn}-dx",
                                                                "2024-04-01")]),
            Event(SUD_PROGRAM, sud_mrn, [patient(SUD_PROGRAM, sud_mrn, empi=empi),
                                         opioid_use_condition(SUD_PROGRAM, sud_pid, f"{sud_mrn}-dx", "2024-04-02")]),
        )
        # the hospital's diagnosis (PSY) reaches the cleared subscribers of the clinic's Patient id: one person
        assert receiver.wait_for(lambda: receiver.acknowledged_numbers(therapy["id"]) == [1]
                                 and receiver.acknowledged_numbers(primary["id"]) == [1])
        delivered = receiver.of(therapy["id"])[0].bundle
        resource = delivered["entry"][1]["resource"]
        assert resource["id"] == depression_condition(HOSPITAL, hospital_pid, f"{hospital_mrn}-dx", "x")["id"]
        # neither the behavioural-health diagnosis for billing (no clearance) nor the Part 2 one for anybody
        # cleared for behavioural health only: they get no event number at all (no gap betrays them)
        assert stack.store.events(billing["id"]) == []
        assert [e.resource_type for e in stack.store.events(therapy["id"])] == ["Condition"]
        assert receiver.of(billing["id"]) == []
    finally:
        receiver.stop()


def test_the_subscription_api_refuses_what_it_must(stack: NotifyStack) -> None:
    receiver = Receiver()
    try:
        topic = TOPIC_BASE + "assessment-completed"

        def post(token: str, endpoint: str) -> Any:
            body = {"resourceType": "Subscription", "status": "requested", "reason": "x", "criteria": topic,
                    "channel": {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json"}}
            return stack.record.client.post("/Subscription", json=body, headers=auth(token))

        outside = post("therapy", "https://intranet.hospital.local/hook")
        assert outside.status_code == 422
        issue = outside.json()["issue"][0]
        assert issue["expression"] == ["Subscription.channel.endpoint"] and "allow-list" in issue["diagnostics"]
        plain = post("therapy", "http://localhost:8082/Patient")
        assert plain.status_code == 422 and "https" in plain.json()["issue"][0]["diagnostics"]
        assert post("reader", receiver.url).status_code == 403  # read scopes only
        assert post("reader", receiver.url).json()["resourceType"] == "OperationOutcome"
        no_token = stack.record.client.post("/Subscription", json={})
        assert no_token.status_code == 401
        mine = post("therapy", receiver.url)
        assert mine.status_code == 201, mine.text
        sid = mine.json()["id"]
        # another client cannot see, change or delete it
        stack.fhir("GET", f"/Subscription/{sid}", "primary", status=404)
        stack.fhir("DELETE", f"/Subscription/{sid}", "primary", status=404)
        theirs = stack.fhir("GET", "/Subscription", "primary")
        assert sid not in [e["resource"]["id"] for e in theirs.get("entry", [])]
        listed = stack.fhir("GET", "/Subscription", "therapy", params={"url": topic})
        assert sid in [e["resource"]["id"] for e in listed["entry"]]
        status = stack.fhir("GET", f"/Subscription/{sid}/$status", "therapy")
        assert status["type"] == "history"
        assert status["entry"][0]["resource"]["parameter"][3] == {"name": "type", "valueCode": "query-status"}
        off = stack.fhir("PUT", f"/Subscription/{sid}", "therapy",
                         json={"resourceType": "Subscription", "id": sid, "status": "off"})
        assert off["status"] == "off"
        bad = stack.record.client.put(f"/Subscription/{sid}", headers=auth("therapy"), json={
            "resourceType": "Subscription", "status": "off", "channel": {"endpoint": "https://other.example/"}})
        assert bad.status_code == 400 and bad.json()["issue"][0]["expression"] == ["Subscription.channel.endpoint"]
        stack.fhir("DELETE", f"/Subscription/{sid}", "therapy", status=204)
        stack.fhir("GET", f"/Subscription/{sid}", "therapy", status=404)
        metadata = stack.record.client.get("/metadata").json()
        subscription = next(r for r in metadata["rest"][0]["resource"] if r["type"] == "Subscription")
        canonicals = [e["valueCanonical"] for e in subscription["extension"]]
        assert topic in canonicals and len(canonicals) == len(TOPICS)
    finally:
        receiver.stop()
