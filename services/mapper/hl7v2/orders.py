"""RDE O11 -> MedicationRequest (ORC + RXE/RXR/TQ1), VXU V04 -> Immunization (ORC + RXA/RXR, OBX).

MedicationRequest: id from ORC-2 (placer), else ORC-3 (filler), else RXE-15 (prescription number), else
MSH-10;
status from ORC-5 (v2-0038) or ORC-1 (v2-0119); medication RXE-2; dosage: RXE-3/4/5 dose, RXE-23/24 give rate
(doseAndRate.rateQuantity, UCUM where the unit is known: datatypes.rate_quantity), RXE-7 instructions, TQ1-3
repeat pattern (RPT: timing.code in v2-0335 or the sender's system, frequency/period/when from it:
datatypes.repeat_pattern) and TQ1-7/8 bounds (RXE-1 TQ in v2.3/2.4), RXR-1/2/4 route, site, method; dispense
RXE-10/11, refills RXE-12, substitution RXE-9; reasons RXE-27; requester ORC-12, else RXE-13; authoredOn ORC-9.
TQ1 and RXR of the encoded order (after RXE) win over those of the original order (before it).
RXO, the order as the provider requested it, fills what RXE leaves empty: medication RXO-1, dose RXO-2/3/4, rate
RXO-21/22, administration instructions RXO-7, dispense RXO-11/12, refills RXO-13, substitution RXO-9, indication
RXO-20, ordering provider RXO-14 (after ORC-12 and RXE-13); its pharmacy instructions (RXO-6) and a requested
medication other than the one dispensed become notes.
An order with RXO but no RXE (not a valid RDE, but sent) is mapped from RXO alone. RXC is not mapped.
Labels: psychotropic medications PSY; buprenorphine, methadone, naltrexone (opioid / alcohol use disorder
treatment) PART2; indications as diagnoses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from services.common.hl7v2.er7 import Rep, Segment
from services.mapper.hl7v2 import sensitivity
from services.mapper.hl7v2.builder import Build, Json, note_texts, ref
from services.mapper.hl7v2.datatypes import (
    codeable,
    fhir_date,
    fhir_datetime,
    identifier_ei,
    number,
    person_reference,
    prune_dict,
    quantity,
    rate_quantity,
    repeat_pattern,
)
from services.mapper.hl7v2.results import observation
from services.mapper.hl7v2.terminology import (
    IMMUNIZATION_STATUS,
    ORDER_CONTROL_STATUS,
    ORDER_STATUS,
    code_system,
)

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


def _timing(build: Build, rxe: Segment | None, tq1: Segment | None) -> Json | None:
    conv = build.conv
    if tq1 is not None:
        pattern, repeat = repeat_pattern(tq1.rep(3), build.source, tq1.loc(3))
        bounds = {"start": fhir_datetime(tq1.get(7), tq1.loc(7), conv),
                  "end": fhir_datetime(tq1.get(8), tq1.loc(8), conv)}
        return {"code": pattern, "repeat": {**repeat, "boundsPeriod": bounds}}
    if rxe is not None and rxe.has(1):  # v2.3/2.4 TQ: quantity ^ interval ^ duration ^ start ^ end
        interval = rxe.get(1, 2)
        bounds = {"start": fhir_datetime(rxe.get(1, 4), rxe.loc(1), conv),
                  "end": fhir_datetime(rxe.get(1, 5), rxe.loc(1), conv)}
        return {"code": {"text": interval} if interval else None, "repeat": {"boundsPeriod": bounds}}
    return None


def _dose_and_rate(give: Segment, low_field: int, high_field: int, units_field: int, rate_field: int) -> Json:
    low, high = number(give.get(low_field)), number(give.get(high_field))
    units = give.rep(units_field)
    made: Json = {}
    if low is not None and high is not None and high != low:
        made["doseRange"] = {"low": quantity(low, units), "high": quantity(high, units)}
    elif low is not None:
        made["doseQuantity"] = quantity(low, units)
    rate = rate_quantity(give.get(rate_field), give.rep(rate_field + 1))
    if rate is not None:
        made["rateQuantity"] = rate
    return made


def _filled(*values: Any) -> Any:
    """The first value that is not empty."""
    return next((value for value in values if value not in (None, "", [], {})), None)


def _concept_text(concept: Json | None) -> str:
    if not concept:
        return ""
    first: Json = next(iter(concept.get("coding", [])), {})
    label = concept.get("text") or first.get("display") or first.get("code") or ""
    code = first.get("code")
    return f"{label} ({code})" if code and code != label else str(label)


def map_medication_request(build: Build, order: Order) -> Json | None:
    rxe = order.first("RXE")
    rxo = order.first("RXO")
    give = rxe or rxo
    if give is None:
        return None
    conv = build.conv
    # what RXE (the pharmacy's encoding) says, else what RXO (the provider's request) says
    ordered = codeable(rxo.rep(1), local=build.local(rxo.loc(1))) if rxo is not None else None
    encoded = codeable(rxe.rep(2), local=build.local(rxe.loc(2))) if rxe is not None else None
    medication = encoded or ordered
    if medication is None:
        build.issue(f"missing-code@{'RXE-2' if rxe is not None else 'RXO-1'}")
        medication = {"text": "Medication not specified (RXE-2 empty)"}
    tq1 = order.first("TQ1", after=rxe) or order.first("TQ1")
    routes = [s for s in order.all("RXR") if s.position > give.position] or order.all("RXR")
    rxr = routes[0] if routes else None
    instructions = [rep.text() for rep in rxe.reps(7)] + [rep.text() for rep in rxe.reps(21)] if rxe else []
    if not any(instructions) and rxo is not None:
        instructions = [rep.text() for rep in rxo.reps(7)]
    dose_rate = _dose_and_rate(rxe, 3, 4, 5, 23) if rxe is not None else {}
    if rxo is not None:
        requested = _dose_and_rate(rxo, 2, 3, 4, 21)
        if "doseRange" not in dose_rate and "doseQuantity" not in dose_rate:
            dose_rate.update({k: v for k, v in requested.items() if k != "rateQuantity"})
        dose_rate.setdefault("rateQuantity", requested.get("rateQuantity"))
    dosage: dict[str, Any] = {
        "text": "; ".join(i for i in instructions if i) or None,
        "timing": _timing(build, rxe, tq1),
        "asNeededBoolean": True if tq1 is not None and "PRN" in (tq1.get(9).upper(), tq1.get(3).upper()) else None,
        "route": codeable(rxr.rep(1), local=build.local(rxr.loc(1))) if rxr is not None else None,
        "site": codeable(rxr.rep(2), local=build.local(rxr.loc(2))) if rxr is not None else None,
        "method": codeable(rxr.rep(4), local=build.local(rxr.loc(4))) if rxr is not None else None,
        "doseAndRate": [dose_rate],
    }
    refills = _filled(rxe.get(12) if rxe else "", rxo.get(13) if rxo else "") or ""
    indicated, field_no = (rxe, 27) if rxe is not None and rxe.has(27) else (rxo, 20)
    reasons = [codeable(rep, local=build.local(indicated.loc(field_no))) for rep in indicated.reps(field_no)] \
        if indicated is not None else []
    orc = order.orc
    substitution = str(_filled(rxe.get(9) if rxe else "", rxo.get(9) if rxo else "") or "").upper()
    notes = [n for s in (orc, rxo, rxe) if s is not None for n in build.notes_after(s)]
    texts = note_texts(notes)
    if rxo is not None:
        texts += [f"Pharmacy instructions (RXO-6): {t}" for rep in rxo.reps(6) if (t := rep.text())]
        if encoded is not None and ordered is not None and not set(_codes(encoded)) & set(_codes(ordered)):
            texts.append(f"Requested as (RXO-1): {_concept_text(ordered)}")
    dispensed = number(rxe.get(10)) if rxe is not None else None
    dispense_units = rxe.rep(11) if rxe is not None else None
    if dispensed is None and rxo is not None:
        dispensed, dispense_units = number(rxo.get(11)), rxo.rep(12)
    prescription = rxe.get(15) if rxe is not None else ""
    request: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": build.id("MedicationRequest", _order_key(build, order, prescription)),
        "identifier": [identifier_ei(orc.rep(2), "PLAC") if orc is not None else None,
                       identifier_ei(orc.rep(3), "FILL") if orc is not None else None,
                       build.source_identifier("prescription", prescription) if prescription else None],
        "status": _status(order),
        "intent": "order",
        "medicationCodeableConcept": medication,
        "subject": build.patient_ref,
        "encounter": build.encounter_ref,
        "authoredOn": (fhir_datetime(orc.get(9), orc.loc(9), conv) if orc is not None else None)
        or (fhir_datetime(rxe.get(32), rxe.loc(32), conv) if rxe is not None else None),
        # the ordering provider: ORC-12, else the ordering provider named in RXE-13 / RXO-14 (XCN)
        "requester": _filled(person_reference(orc.rep(12)) if orc is not None else None,
                             person_reference(rxe.rep(13)) if rxe is not None else None,
                             person_reference(rxo.rep(14)) if rxo is not None else None),
        "reasonCode": reasons,
        "note": [{"text": text} for text in texts],
        "dosageInstruction": [dosage],
        "dispenseRequest": {
            "quantity": quantity(dispensed, dispense_units) if dispensed is not None else None,
            "numberOfRepeatsAllowed": int(refills) if refills.isdigit() and int(refills) < 100_000 else None,
        },
        "substitution": {"allowedBoolean": substitution != "N"} if substitution in {"N", "G", "T"} else None,
    }
    build.use(orc, rxe, rxo, tq1, rxr, *notes)
    labels = sensitivity.combine(sensitivity.medication(medication),
                                 sensitivity.medication(ordered) if ordered is not None else (),
                                 *(sensitivity.diagnosis(reason) for reason in reasons))
    return build.add(request, labels, focus=True)


def _manufacturer(rep: Rep | None) -> Json | None:
    """RXA-17 (a CWE, MVX codes) -> a logical Reference: the code as an identifier in its coding system, the
    text as display."""
    if rep is None or not (rep.c(1) or rep.c(2)):
        return None
    system = code_system(rep.c(3)) if rep.c(3) else None
    identifier = {"system": system, "value": rep.c(1)} if rep.c(1) else None
    return prune_dict({"identifier": identifier, "display": rep.c(2) or rep.c(1)})


def _codes(concept: Json) -> list[str]:
    return [str(c.get("code")) for c in concept.get("coding", []) if c.get("code")]


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
        "manufacturer": _manufacturer(rxa.rep(17)),
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
