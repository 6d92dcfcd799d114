"""RDE O11 -> MedicationRequest (ORC + RXE/RXR/TQ1), VXU V04 -> Immunization (ORC + RXA/RXR, OBX).

MedicationRequest: id from ORC-2 (placer), else ORC-3 (filler), else RXE-15 (prescription number), else
MSH-10;
status from ORC-5 (v2-0038) or ORC-1 (v2-0119); medication RXE-2 (else RXO-1); dosage: RXE-3/4/5 dose, RXE-7
instructions, TQ1-3 repeat pattern and TQ1-7/8 bounds (RXE-1 TQ in v2.3/2.4), RXR-1/2/4 route, site, method;
dispense RXE-10/11, refills RXE-12; reasons RXE-27; requester ORC-12; authoredOn ORC-9. TQ1 and RXR of the
encoded order (after RXE) win over those of the original order (before it). RXO and RXC are not mapped.
Labels: psychotropic medications PSY; buprenorphine, methadone, naltrexone (opioid / alcohol use disorder
treatment) PART2; indications as diagnoses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from services.common.hl7v2.er7 import Segment
from services.mapper.hl7v2 import sensitivity
from services.mapper.hl7v2.builder import Build, Json, note_texts, ref
from services.mapper.hl7v2.datatypes import (
    codeable,
    fhir_date,
    fhir_datetime,
    identifier_ei,
    number,
    organization_reference,
    person_reference,
    quantity,
)
from services.mapper.hl7v2.results import observation
from services.mapper.hl7v2.terminology import IMMUNIZATION_STATUS, ORDER_CONTROL_STATUS, ORDER_STATUS

_ORDER_MEMBERS = {"RXO", "RXE", "RXR", "RXC", "TQ1", "TQ2", "NTE", "OBX", "RXA", "FT1", "BLG", "CTI", "RXD",
                  "RXG", "CDO"}

_PATIENT_LEVEL = {"PID", "PD1", "PV1", "PV2", "IN1", "IN2", "IN3", "GT1", "AL1", "NK1", "DG1"}


@dataclass
class Order:
    orc: Segment | None
    members: list[Segment] = field(default_factory=list)

    def first(self, name: str, after: Segment | None = None) -> Segment | None:
        for segment in self.members:
            if segment.name == name and (after is None or segment.position > after.position):
                return segment
        return None

    def all(self, name: str) -> list[Segment]:
        return [segment for segment in self.members if segment.name == name]


def group_orders(segments: Sequence[Segment], anchor: str) -> list[Order]:
    """ORC-led groups; an ``anchor`` segment (RXE / RXA) without a preceding ORC starts its own group."""
    orders: list[Order] = []
    current: Order | None = None
    for segment in segments:
        if segment.name == "ORC":
            current = Order(segment)
            orders.append(current)
        elif segment.name in _ORDER_MEMBERS:
            if segment.name == anchor and (current is None or current.first(anchor) is not None):
                current = Order(None)
                orders.append(current)
            if current is not None:
                current.members.append(segment)
        elif segment.name in _PATIENT_LEVEL:
            current = None
    return orders


def _order_key(build: Build, order: Order, prescription: str = "") -> str:
    orc = order.orc
    if orc is not None and orc.get(2):
        return f"placer|{orc.get(2)}"
    if orc is not None and orc.get(3):
        return f"filler|{orc.get(3)}"
    if prescription:
        return f"prescription|{prescription}"
    anchor = order.members[0] if order.members else orc
    if anchor is None:
        return f"message|{build.message_key}|order"
    return f"message|{build.message_key}|{anchor.name}|{anchor.occurrence}"


def _status(order: Order) -> str:
    orc = order.orc
    if orc is None:
        return "unknown"
    return ORDER_STATUS.get(orc.get(5).upper()) or ORDER_CONTROL_STATUS.get(orc.get(1).upper()) or "unknown"


def _timing(build: Build, rxe: Segment, tq1: Segment | None) -> Json | None:
    conv = build.conv
    if tq1 is not None:
        pattern = codeable(tq1.rep(3), local=build.local(tq1.loc(3)))
        bounds = {"start": fhir_datetime(tq1.get(7), tq1.loc(7), conv),
                  "end": fhir_datetime(tq1.get(8), tq1.loc(8), conv)}
        return {"code": pattern, "repeat": {"boundsPeriod": bounds}}
    if rxe.has(1):  # v2.3/2.4 TQ: quantity ^ interval ^ duration ^ start ^ end
        interval = rxe.get(1, 2)
        bounds = {"start": fhir_datetime(rxe.get(1, 4), rxe.loc(1), conv),
                  "end": fhir_datetime(rxe.get(1, 5), rxe.loc(1), conv)}
        return {"code": {"text": interval} if interval else None, "repeat": {"boundsPeriod": bounds}}
    return None


def _dose(rxe: Segment) -> list[Json]:
    low, high = number(rxe.get(3)), number(rxe.get(4))
    units = rxe.rep(5)
    if low is not None and high is not None and high != low:
        return [{"doseRange": {"low": quantity(low, units), "high": quantity(high, units)}}]
    if low is not None:
        return [{"doseQuantity": quantity(low, units)}]
    return []


def map_medication_request(build: Build, order: Order) -> Json | None:
    rxe = order.first("RXE")
    if rxe is None:
        return None
    conv = build.conv
    rxo = order.first("RXO")
    medication = codeable(rxe.rep(2), local=build.local(rxe.loc(2)))
    if medication is None and rxo is not None:
        medication = codeable(rxo.rep(1), local=build.local(rxo.loc(1)))
        build.use(rxo)
    if medication is None:
        build.issue("missing-code@RXE-2")
        medication = {"text": "Medication not specified (RXE-2 empty)"}
    tq1 = order.first("TQ1", after=rxe) or order.first("TQ1")
    routes = [s for s in order.all("RXR") if s.position > rxe.position] or order.all("RXR")
    rxr = routes[0] if routes else None
    instructions = [rep.text() for rep in rxe.reps(7)] + [rep.text() for rep in rxe.reps(21)]
    dosage: dict[str, Any] = {
        "text": "; ".join(i for i in instructions if i) or None,
        "timing": _timing(build, rxe, tq1),
        "asNeededBoolean": True if tq1 is not None and "PRN" in tq1.get(9).upper() else None,
        "route": codeable(rxr.rep(1), local=build.local(rxr.loc(1))) if rxr is not None else None,
        "site": codeable(rxr.rep(2), local=build.local(rxr.loc(2))) if rxr is not None else None,
        "method": codeable(rxr.rep(4), local=build.local(rxr.loc(4))) if rxr is not None else None,
        "doseAndRate": _dose(rxe),
    }
    refills = rxe.get(12)
    reasons = [codeable(rep, local=build.local(rxe.loc(27))) for rep in rxe.reps(27)]
    orc = order.orc
    substitution = rxe.get(9).upper()
    notes = [n for s in (orc, rxe) if s is not None for n in build.notes_after(s)]
    request: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": build.id("MedicationRequest", _order_key(build, order, rxe.get(15))),
        "identifier": [identifier_ei(orc.rep(2), "PLAC") if orc is not None else None,
                       identifier_ei(orc.rep(3), "FILL") if orc is not None else None,
                       build.source_identifier("prescription", rxe.get(15)) if rxe.get(15) else None],
        "status": _status(order),
        "intent": "order",
        "medicationCodeableConcept": medication,
        "subject": build.patient_ref,
        "encounter": build.encounter_ref,
        "authoredOn": (fhir_datetime(orc.get(9), orc.loc(9), conv) if orc is not None else None)
        or fhir_datetime(rxe.get(32), rxe.loc(32), conv),
        "requester": (person_reference(orc.rep(12)) if orc is not None else None),
        "reasonCode": reasons,
        "note": [{"text": text} for text in note_texts(notes)],
        "dosageInstruction": [dosage],
        "dispenseRequest": {
            "quantity": quantity(q, rxe.rep(11)) if (q := number(rxe.get(10))) is not None else None,
            "numberOfRepeatsAllowed": int(refills) if refills.isdigit() and int(refills) < 100_000 else None,
        },
        "substitution": {"allowedBoolean": substitution != "N"} if substitution in {"N", "G", "T"} else None,
    }
    build.use(orc, rxe, tq1, rxr, *notes)
    labels = sensitivity.combine(sensitivity.medication(medication),
                                 *(sensitivity.diagnosis(reason) for reason in reasons))
    return build.add(request, labels, focus=True)


def map_immunization(build: Build, order: Order) -> Json | None:
    rxa = order.first("RXA")
    if rxa is None:
        return None
    conv = build.conv
    orc = order.orc
    rxr = order.first("RXR", after=rxa) or order.first("RXR")
    vaccine = codeable(rxa.rep(5), local=build.local(rxa.loc(5)))
    if vaccine is None:
        build.issue("missing-code@RXA-5")
        vaccine = {"text": "Vaccine not specified (RXA-5 empty)"}
    status = IMMUNIZATION_STATUS.get(rxa.get(20).upper(), "completed")
    if rxa.get(21).upper() == "D":
        status = "entered-in-error"
    occurred = fhir_datetime(rxa.get(3), rxa.loc(3), conv)
    if occurred is None:
        build.issue("missing-datetime@RXA-3")
    amount = number(rxa.get(6))
    source = rxa.get(9).upper()
    key = _order_key(build, order) if orc is not None and (orc.get(2) or orc.get(3)) else \
        f"patient|{build.patient_key}|rxa|{rxa.get(3)}|{rxa.get(5)}"
    immunization: dict[str, Any] = {
        "resourceType": "Immunization",
        "id": build.id("Immunization", key),
        "identifier": [identifier_ei(orc.rep(2), "PLAC") if orc is not None else None,
                       identifier_ei(orc.rep(3), "FILL") if orc is not None else None],
        "status": status,
        "statusReason": codeable(rxa.rep(18), local=build.local(rxa.loc(18))) if status == "not-done" else None,
        "vaccineCode": vaccine,
        "patient": build.patient_ref,
        "encounter": build.encounter_ref,
        "occurrenceDateTime": occurred,
        "occurrenceString": None if occurred else "unknown",
        "primarySource": (source == "00") if source[:2].isdigit() else None,
        "manufacturer": organization_reference(rxa.rep(17)),
        "lotNumber": rxa.get(15) or None,
        "expirationDate": fhir_date(rxa.get(16), rxa.loc(16), conv),
        "route": codeable(rxr.rep(1), local=build.local(rxr.loc(1))) if rxr is not None else None,
        "site": codeable(rxr.rep(2), local=build.local(rxr.loc(2))) if rxr is not None else None,
        "doseQuantity": quantity(amount, rxa.rep(7)) if amount is not None and amount != 999 else None,
        "performer": [{"actor": who} for rep in rxa.reps(10) if (who := person_reference(rep))],
    }
    tq1 = order.first("TQ1")
    build.use(orc, rxa, rxr, tq1)
    made = build.add(immunization, focus=True)
    counter: dict[str, int] = {}
    for obx in order.all("OBX"):
        obs = observation(build, obx, scope=f"immunization|{key}", counter=counter)
        obs["partOf"] = [ref(made)]
        build.add(obs, sensitivity.observation(obs.get("code")))
    return made
