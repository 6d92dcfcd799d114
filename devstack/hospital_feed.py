"""The hospital's part of the demo journey: what an interface engine sends over MLLP, and what a FHIR-speaking
therapy platform posts. Fictional data for the same person as devstack/journey.py."""

from __future__ import annotations

import socket
from datetime import datetime, timedelta
from typing import Any

from services.common.fhir.codesystems import EMPI, LOINC

START_BLOCK, END_BLOCK = b"\x0b", b"\x1c\x0d"


def admission_adt_a01(admitted: datetime, control_id: str) -> str:
    """ADT^A01: admission to the hospital's inpatient psychiatry unit, with a diagnosis (DG1)."""
    ts = admitted.strftime("%Y%m%d%H%M%S")
    segments = [
        f"MSH|^~\\&|EPICADT|NORTHGATE_HOSP|CAREBUS|CAREBUS|{ts}||ADT^A01^ADT_A01|{control_id}|P|2.5.1",
        f"EVN|A01|{ts}",
        "PID|1||NGH-5512093^^^NORTHGATE_HOSP^MR~EMPI-8842-1170^^^EMPI^PI||Quill^Morgan^J||19890314|F|||"
        "12 Harbor Rd^^Springfield^IL^62701^USA||^PRN^PH^^1^217^5550142",
        f"PV1|1|I|PSY^4W^12^NORTHGATE_HOSP||||1588667638^Raman^Priya|||PSY||||7|||1588667638^Raman^Priya|IP|"
        f"V-NGH-{control_id}|||||||||||||||||||||||||{ts}",
        f"DG1|1||F32.2^Major depressive disorder, single episode, severe without psychotic features^I10||{ts}|A",
    ]
    return "\r".join(segments) + "\r"


def send_mllp(host: str, port: int, message: str, timeout_s: float = 30.0) -> str:
    """Send one framed message and return the ACK text."""
    with socket.create_connection((host, port), timeout=timeout_s) as conn:
        conn.sendall(START_BLOCK + message.encode() + END_BLOCK)
        received = b""
        while not received.endswith(END_BLOCK):
            chunk = conn.recv(65536)
            if not chunk:
                break
            received += chunk
    return received.strip(START_BLOCK + END_BLOCK).decode(errors="replace")


def gad7_bundle(authored: datetime) -> dict[str, Any]:
    """A FHIR transaction Bundle from a therapy platform: the client and a completed GAD-7."""
    answers = ["LA6569-3", "LA6570-1", "LA6569-3", "LA6568-5", "LA6569-3", "LA6570-1", "LA6569-3"]
    items = ["69725-0", "68509-9", "69733-4", "69734-2", "69735-9", "69689-8", "69736-7"]
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:0f4a8c2e-6d1b-4b7a-9c55-3e2f1a7d9b01",
             "resource": {"resourceType": "Patient", "id": "client-3301",
                          "identifier": [{"system": EMPI, "value": "EMPI-8842-1170"}],
                          "name": [{"family": "Quill", "given": ["Morgan"]}], "birthDate": "1989-03-14"},
             "request": {"method": "PUT", "url": "Patient/client-3301"}},
            {"fullUrl": "urn:uuid:0f4a8c2e-6d1b-4b7a-9c55-3e2f1a7d9b02",
             "resource": {"resourceType": "QuestionnaireResponse", "id": "gad7-" + authored.strftime("%Y%m%d"),
                          "status": "completed", "subject": {"reference": "Patient/client-3301"},
                          "authored": authored.isoformat(),
                          "item": [{"linkId": f"/{code}", "answer": [{"valueCoding": {
                              "system": LOINC, "code": answer}}]}
                                   for code, answer in zip(items, answers, strict=True)]},
             "request": {"method": "POST", "url": "QuestionnaireResponse"}},
        ],
    }


def feed_times(start: datetime) -> tuple[datetime, datetime]:
    """When the hospital admission and the platform's GAD-7 happen, relative to the journey's start."""
    return start + timedelta(days=64, hours=22), start + timedelta(days=70, hours=10)
