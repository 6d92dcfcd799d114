"""lab.resulted -> Observation (us-core-observation-lab, category laboratory), and the order it answers.

code LOINC (e.g. 14334-7 lithium [Moles/volume] in serum or plasma); valueQuantity (UCUM when a code is
given) or valueString; referenceRange low / high / text; interpretation (v3-ObservationInterpretation N, A,
H, L, HH, LL); effectiveDateTime; issued.
With an ``order_id`` or an ``ordering_practitioner``: a ServiceRequest (us-core-servicerequest, intent order,
category laboratory, status unknown: the result does not say whether the order is done; code = the test;
identifier = the order id; requester = the ordering practitioner), and Observation.basedOn names it. Its id is
keyed by the order id, else by the result.
Labels: psychiatric drug monitoring (lithium) -> PSY; other labs none (labels.lab_labels).
"""

from __future__ import annotations

from typing import Any, Final

from services.common.events import LabResulted
from services.common.events.payloads import ResultInterpretation
from services.common.fhir import labels
from services.common.fhir.codesystems import LOINC, OBSERVATION_CATEGORY, SNOMED, V3_OBSERVATION_INTERPRETATION
from services.mapper.mapping._fhir import Draft, coding, concept, iso, profile, quantity

INTERPRETATION_DISPLAY: Final[dict[ResultInterpretation, str]] = {
    "N": "Normal",
    "A": "Abnormal",
    "H": "High",
    "L": "Low",
    "HH": "Critical high",
    "LL": "Critical low",
}


def map_lab(event: LabResulted, draft: Draft) -> None:
    data = event.data
    subject = draft.subject
    observation: dict[str, Any] = {
        "resourceType": "Observation",
        "id": subject.id("Observation", "lab", data.result_id),
        "meta": {"profile": profile("us-core-observation-lab")},
        "identifier": [subject.identifier("lab-result", data.result_id)],
        "status": data.status,
        "category": [concept(OBSERVATION_CATEGORY, "laboratory", "Laboratory")],
        "code": {"coding": [coding(LOINC, data.code.code, data.code.display)]},
        "subject": subject.patient_ref,
        "effectiveDateTime": iso(data.effective_at),
    }
    if data.code.display:
        observation["code"]["text"] = data.code.display
    if data.issued_at:
        observation["issued"] = iso(data.issued_at)
    if data.value is not None:
        observation["valueQuantity"] = quantity(data.value.value, data.value.unit, data.value.code)
    elif data.value_text is not None:
        observation["valueString"] = data.value_text
    if data.interpretation:
        observation["interpretation"] = [
            concept(V3_OBSERVATION_INTERPRETATION, data.interpretation, INTERPRETATION_DISPLAY[data.interpretation])
        ]
    if data.reference_range is not None:
        reference: dict[str, Any] = {}
        rr = data.reference_range
        if rr.low is not None:
            reference["low"] = quantity(rr.low.value, rr.low.unit, rr.low.code)
        if rr.high is not None:
            reference["high"] = quantity(rr.high.value, rr.high.unit, rr.high.code)
        if rr.text:
            reference["text"] = rr.text
        if reference:
            observation["referenceRange"] = [reference]
    lab_labels = labels.lab_labels(data.code.code)
    if data.order_id is not None or data.ordering_practitioner is not None:
        order_key = ("lab-order", data.order_id) if data.order_id is not None else ("lab-order-of", data.result_id)
        order: dict[str, Any] = {
            "resourceType": "ServiceRequest",
            "id": subject.id("ServiceRequest", *order_key),
            "meta": {"profile": profile("us-core-servicerequest")},
            "status": "unknown",
            "intent": "order",
            "category": [concept(SNOMED, "108252007", "Laboratory procedure")],
            "code": {"coding": [coding(LOINC, data.code.code, data.code.display)]},
            "subject": subject.patient_ref,
        }
        if data.order_id is not None:
            order["identifier"] = [subject.identifier("lab-order", data.order_id)]
        if data.ordering_practitioner is not None:
            order["requester"] = subject.practitioner(data.ordering_practitioner)
        observation["basedOn"] = [{"reference": f"ServiceRequest/{order['id']}"}]
        draft.add(observation, lab_labels)
        draft.add(order, lab_labels)
    else:
        draft.add(observation, lab_labels)
