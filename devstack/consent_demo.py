"""The demo's consent scenario: two subscribers, one 42 CFR Part 2 consent, and the audit trail.

After the sample journey, psychiatry (Northgate) records an opioid-use-disorder diagnosis (ICD-10-CM F11.20)
and prescribes buprenorphine; before that the patient signs a Part 2 consent naming the SUD program's partner
clinic (treatment, SUD data). Two recipients are subscribed to the patient's diagnoses and prescriptions:

* the therapy practice's EHR (Lakeside; cleared for behavioural health, named by no Part 2 consent);
* the partner clinic (named by the consent).

carebus decides each notification per recipient with one disclosure engine: the partner clinic receives the
Part 2 resources with the 42 CFR 2.32 notice (a Provenance citing the consent); the therapy practice receives
nothing of them - no event number, no reference, no label, no count. Every push is audited (BALP
PrivacyDisclosure on carebus.audit.v1, then in the record), and the privacy officer's
``Patient/{id}/$disclosures`` lists who received what under which consent.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Final

import httpx
import orjson

from devstack.journey import PATIENT_IDS, PSYCHIATRY
from services.common.fhir.codesystems import ICD10CM, NPI, RXNORM, SNOMED

PARTNER_CLINIC: Final = {"system": NPI, "value": "1922063304"}  # the SUD program's partner clinic (fictional)
THERAPY_PRACTICE: Final = {"system": NPI, "value": "1710983302"}  # Lakeside Therapy Practice (fictional)
HOSPITAL: Final = {"system": NPI, "value": "1504237813"}  # the hospital that runs carebus (fictional)
HOSPITAL_ORGANIZATION: Final = f"{NPI}|{HOSPITAL['value']}"  # its staff's tokens act for it

# published demo credentials (never for production)
PARTNER_TOKEN: Final = "carebus-demo-partner-clinic-not-for-production"  # noqa: S105
PRIVACY_TOKEN: Final = "carebus-demo-privacy-officer-not-for-production"  # noqa: S105
PARTNER_GRANT: Final = {"scopes": ["system/Subscription.write"], "label": "partner clinic (demo)",
                        "organization": f"{NPI}|{PARTNER_CLINIC['value']}"}
PRIVACY_GRANT: Final = {"scopes": ["user/AuditEvent.read", "user/Patient.read"], "label": "privacy officer (demo)",
                        "organization": HOSPITAL_ORGANIZATION}
THERAPY_ORGANIZATION: Final = f"{NPI}|{THERAPY_PRACTICE['value']}"
TOPICS: Final = ("diagnosis-recorded", "medication-prescribed")

_F11_20: Final = {"system": ICD10CM, "code": "F11.20",
                  "display": "Opioid dependence, uncomplicated"}
_BUPRENORPHINE: Final = {"system": RXNORM, "code": "1819",
                         "display": "buprenorphine"}
_PSYCHIATRIST: Final = {"id": "md-481", "name": "Dr. Priya Raman", "npi": "1588667638"}


def part2_episode(at: datetime) -> list[dict[str, Any]]:
    """Psychiatry's Part 2 episode as CloudEvents (pure): the consent, then the diagnosis and the
    prescription, ``at`` (timezone-aware) being the consent's time."""

    def event(n: int, type_: str, minutes: int, data: dict[str, Any]) -> dict[str, Any]:
        return {"specversion": "1.0", "id": f"ngp-part2-{n:04d}", "source": PSYCHIATRY,
                "type": f"org.carebus.{type_}.v1", "time": (at + timedelta(minutes=minutes)).isoformat(),
                "datacontenttype": "application/json",
                "data": {"patient_id": PATIENT_IDS[PSYCHIATRY], **data}}

    when = at.isoformat()
    return [
        event(1, "consent.granted", 0, {
            "consent_id": "CNS-77015-P2", "granted_at": when,
            "valid_until": (at + timedelta(days=365)).date().isoformat(),
            "recipient": {"kind": "organization", "name": "Partner clinic of the SUD program",
                          "identifier": PARTNER_CLINIC},
            "purposes": ["TREAT"], "labels_covered": ["SUD"]}),
        event(2, "diagnosis.recorded", 5, {
            "diagnosis_id": "DX-NGP-3391", "code": _F11_20, "category": "encounter-diagnosis",
            "recorded_at": (at + timedelta(minutes=5)).isoformat(), "practitioner": _PSYCHIATRIST}),
        event(3, "medication.prescribed", 6, {
            "prescription_id": "RX-10443", "medication": _BUPRENORPHINE,
            "dose": {"value": 8, "unit": "mg", "code": "mg"},
            "frequency": {"times": 1, "period": 1, "period_unit": "d"},
            "route": {"system": SNOMED, "code": "37839007", "display": "Sublingual route"},
            "authored_on": (at + timedelta(minutes=6)).isoformat(), "prescriber": _PSYCHIATRIST,
            "reason_codes": [_F11_20]}),
    ]


def subscribe(base: str, token: str, who: str, endpoint: str, patient_ref: str, secret: str) -> list[str]:
    """Subscribe one recipient to the patient's diagnoses and prescriptions (full resources)."""
    from services.notify.subscriptions import EXT_FILTER, EXT_PAYLOAD_CONTENT, EXT_SECRET
    from services.notify.topics import TOPIC_BASE

    ids = []
    for topic in TOPICS:
        subscription = {
            "resourceType": "Subscription", "status": "requested", "reason": f"{who}: {topic}",
            "criteria": TOPIC_BASE + topic,
            "extension": [{"url": EXT_SECRET, "valueString": secret}],
            "_criteria": {"extension": [{"url": EXT_FILTER, "valueString": f"patient={patient_ref}"}]},
            "channel": {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json",
                        "_payload": {"extension": [{"url": EXT_PAYLOAD_CONTENT, "valueCode": "full-resource"}]}},
        }
        response = httpx.post(f"{base}/Subscription", content=orjson.dumps(subscription), timeout=10,
                              headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"})
        if response.status_code != 201:
            raise SystemExit(f"carebus | subscribing {who} failed: {response.status_code} {response.text}")
        ids.append(str(response.json()["id"]))
    return ids


def _received(bundles: list[dict[str, Any]]) -> tuple[list[tuple[str, bool]], bool, list[int]]:
    """(resources received: (Type/id, Part 2 labelled), whether a 42 CFR 2.32 notice came, event numbers)."""
    resources: list[tuple[str, bool]] = []
    notice = False
    numbers: list[int] = []
    for bundle in bundles:
        params = bundle["entry"][0]["resource"]["parameter"]
        numbers += [int(part["valueString"]) for p in params if p["name"] == "notification-event"
                    for part in p["part"] if part["name"] == "event-number"]
        for entry in bundle["entry"][1:]:
            resource = entry.get("resource") or {}
            if resource.get("resourceType") == "Provenance":
                notice = notice or "42 CFR part 2" in resource.get("text", {}).get("div", "")
            elif resource:
                codes = {c.get("code") for c in resource.get("meta", {}).get("security", [])}
                resources.append((f"{resource['resourceType']}/{resource['id']}", "42CFRPart2" in codes))
    return list(dict.fromkeys(resources)), notice, sorted(set(numbers))


def _numbers(bundles: list[dict[str, Any]]) -> str:
    found = _received(bundles)[2]
    return f"{found[0]}-{found[-1]}" if len(found) > 1 else str(found[0]) if found else "none"


def report(say: Callable[[str], None], base: str, bundles_of: Callable[[str], list[dict[str, Any]]],
           subscribers: dict[str, list[str]], patient_ref: str, timeout_s: float = 60) -> None:
    """Print what each recipient received, what was withheld from whom, and the accounting of disclosures."""

    def gather() -> dict[str, tuple[list[tuple[str, bool]], bool, list[int]]]:
        return {who: _received([b for sid in sids for b in bundles_of(sid)]) for who, sids in subscribers.items()}

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:  # until the partner clinic has the diagnosis and the prescription
        if all(sum(1 for _, p2 in got[0] if p2) >= 2 for who, got in gather().items() if "partner" in who):
            break
        time.sleep(0.5)
    time.sleep(2.0)  # anything else in flight (it would show below)
    received = gather()
    part2 = {ref for got in received.values() for ref, p2 in got[0] if p2}
    say("consent: a 42 CFR Part 2 consent names the partner clinic; the journey gains F11.20 and buprenorphine")
    for who, (resources, notice, _) in received.items():
        listed = ", ".join(f"{ref}{' (Part 2)' if p2 else ''}" for ref, p2 in resources) or "nothing"
        numbers = ", ".join(f"{topic} {_numbers(bundles_of(sid))}"
                            for topic, sid in zip(TOPICS, subscribers[who], strict=True))
        say(f"    {who:<26} received {listed}")
        told = "; the 42 CFR 2.32 notice (a Provenance citing the consent) came with the Part 2 data" if notice else ""
        say(f"    {'':<26} event numbers: {numbers}{told}")
        withheld = sorted(part2 - {ref for ref, _ in resources})
        if withheld:
            say(f"    {'':<26} withheld: {', '.join(withheld)} - it was told nothing of them (no event number, "
                "no reference, no label, no count)")
    by_subscription = {f"Subscription/{sid}": who for who, sids in subscribers.items() for sid in sids}
    headers = {"Authorization": f"Bearer {PRIVACY_TOKEN}", "Accept": "application/fhir+json"}
    pushes: list[tuple[str, dict[str, Any]]] = []
    total = 0
    delivered = sum(len(_received(bundles_of(sid))[2]) for sids in subscribers.values() for sid in sids)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # AuditEvents reach the record through carebus.audit.v1
        with contextlib.suppress(httpx.HTTPError, ValueError):
            answer = httpx.get(f"{base}/{patient_ref}/$disclosures", headers=headers, params={"_count": 500},
                               timeout=10).json()
            entries = [e["resource"] for e in answer.get("entry", [])
                       if e.get("resource", {}).get("resourceType") == "AuditEvent"]
            total = len(entries)
            pushes = [(name, e) for e in entries for a in e.get("agent", ())
                      if (name := by_subscription.get(a.get("who", {}).get("display", ""))) is not None]
            if len(pushes) >= delivered:
                break
        time.sleep(1)
    say(f"audit: the accounting of disclosures (Patient/$disclosures, privacy officer) lists {total} disclosure(s) "
        f"of this person; this scenario's pushes, one AuditEvent (BALP PrivacyDisclosure) each:")
    for who, event in sorted(pushes, key=lambda p: p[1].get("recorded", "")):
        what = [x["what"]["reference"] for x in event["entity"] if x.get("role", {}).get("code") == "4"]
        consents = [x["what"]["reference"] for x in event["entity"] if x.get("role", {}).get("code") == "13"]
        say(f"    {event['recorded']}  to {who:<24} {', '.join(what)}"
            f"{'  under ' + ', '.join(consents) if consents else ''}")
