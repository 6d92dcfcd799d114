"""One HL7 v2 message (ER7 text) -> one labelled FHIR R4 Bundle (type collection). Pure.

Validation happens once, after the mapping, where every mapping is validated: the mapper pipeline
(services/mapper/pipeline.py) runs ``validate_bundle`` (services/common/fhir_validation.py, R4B models) on
this bundle as on every other. ``validate_mapped`` is the same check for callers that want the failure as an
HL7 v2 error (InvalidResource, AE, located at the segment the resource comes from).

Order of the bundle: MessageHeader, Patient (and a retired Patient for A40), Encounter, RelatedPerson,
AllergyIntolerance, Condition, the message's own resources (DiagnosticReport + Observations, Appointment,
DocumentReference, MedicationRequest, Immunization, assessment resources and safety Flags), Provenance.
Then the assembler every path uses (services/mapper/assembly.py) makes the Bundle and its Provenance (from
header.origin) and labels: each resource's own (see sensitivity.py) and the sender's configured kind (a sending
facility or sender in ``context.part2_sources`` / ``context.psychiatric_sources``); MessageHeader, Provenance and
Bundle carry the union. Bundle.timestamp = Provenance.recorded = MSH-7.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from datetime import tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo

from services.common.errors import MappingError
from services.common.fhir_validation import validate_bundle
from services.common.hl7v2.dtm import offset_of
from services.common.hl7v2.er7 import Header, Message, Segment, check_shape, parse_message
from services.common.hl7v2.errors import InvalidResource
from services.mapper.assembly import assemble
from services.mapper.hl7v2.builder import Build, Json
from services.mapper.hl7v2.datatypes import Conversion, prune
from services.mapper.hl7v2.documents import map_document
from services.mapper.hl7v2.header import message_header, origin
from services.mapper.hl7v2.orders import group_orders as group_medication_orders
from services.mapper.hl7v2.orders import map_immunization, map_medication_request
from services.mapper.hl7v2.patient import map_merge, map_patient, map_related_person
from services.mapper.hl7v2.results import group_orders, map_report, map_standalone
from services.mapper.hl7v2.scheduling import map_appointment
from services.mapper.hl7v2.us_core import claim_profile
from services.mapper.hl7v2.visit import map_allergy, map_condition, map_encounter
from services.mapper.result import MappedEvent, MappingContext

# Where a resource type comes from, for the location of a validation error (never a value).
_ORIGIN = {
    "Patient": "PID", "Encounter": "PV1", "Condition": "DG1", "AllergyIntolerance": "AL1",
    "RelatedPerson": "NK1", "Observation": "OBX", "DiagnosticReport": "OBR", "Appointment": "SCH",
    "DocumentReference": "TXA", "MedicationRequest": "RXE", "Immunization": "RXA",
    "QuestionnaireResponse": "OBX", "Flag": "OBX", "MessageHeader": "MSH", "Provenance": "EVN",
}


def _following(message: Message, anchor: Segment, name: str, stop: set[str]) -> Segment | None:
    for segment in message.segments[anchor.position + 1:]:
        if segment.name == name:
            return segment
        if segment.name in stop:
            return None
    return None


@lru_cache(maxsize=64)
def _zone(name: str | None) -> tzinfo | None:
    return ZoneInfo(name) if name else None


def _sender_zone(header: Header, zones: Mapping[str, str]) -> tzinfo | None:
    """The configured time zone of the message's sender (CAREBUS_HL7_SENDER_TIME_ZONES), if any."""
    if not zones:
        return None
    names = (header.sending_facility.namespace, header.sending_facility.universal_id, header.sender, header.source)
    return next((_zone(zones[name]) for name in names if name and name in zones), None)


def _map_body(build: Build, pid: Segment) -> None:
    message = build.message
    header = build.header
    kind, trigger = header.message_type, header.trigger_event
    after_patient = [s for s in message.segments if s.position > pid.position]
    if kind == "ADT" and trigger == "A40":
        mrg = _following(message, pid, "MRG", {"PID"})
        survivor = build.resources[0][0]
        if mrg is not None:
            map_merge(build, pid, mrg, survivor)
    pv1 = message.first("PV1")
    encounter = None
    if pv1 is not None:
        pv2 = _following(message, pv1, "PV2", {"PID", "PV1", "ORC", "OBR", "SCH", "TXA", "RXE", "RXA"})
        encounter = map_encounter(build, pv1, pv2)
    for nk1 in message.all("NK1"):
        map_related_person(build, nk1)
    for al1 in message.all("AL1"):
        map_allergy(build, al1)
    conditions = [c for dg1 in message.all("DG1") if (c := map_condition(build, dg1, encounter)) is not None]

    if kind == "ORU":
        groups, standalone = group_orders(after_patient)
        for group in groups:
            map_report(build, group)
        map_standalone(build, standalone)
    elif kind == "SIU":
        sch = message.first("SCH")
        assert sch is not None
        map_appointment(build, sch, conditions)
        map_standalone(build, message.all("OBX"))
    elif kind == "MDM":
        txa = message.first("TXA")
        assert txa is not None
        map_document(build, txa)
    elif kind in {"RDE", "VXU"}:
        anchor = "RXE" if kind == "RDE" else "RXA"
        orders = group_medication_orders(after_patient, anchor)
        in_orders: set[int] = set()
        for order in orders:
            in_orders.update(s.position for s in order.members)
            if kind == "RDE":
                map_medication_request(build, order)
            else:
                map_immunization(build, order)
        map_standalone(build, [s for s in message.all("OBX") if s.position not in in_orders])
    else:  # ADT
        map_standalone(build, message.all("OBX"))


def _unmapped(build: Build) -> list[tuple[str, int]]:
    counts: Counter[str] = Counter()
    order: list[str] = []
    for segment in build.message.segments:
        if segment.position in build.used:
            continue
        if segment.name not in counts:
            order.append(segment.name)
        counts[segment.name] += 1
    return [(name, counts[name]) for name in order]


def validate_mapped(bundle: Json) -> None:
    """Every resource of a mapped bundle against the R4B models (``validate_bundle``, shared with the JSON
    path); a failure becomes InvalidResource at the segment the resource type comes from."""
    try:
        validate_bundle(bundle)
    except MappingError as exc:
        where = exc.problems[0].location if exc.problems else ""
        resource_type = where.partition("(")[2].partition(")")[0]
        origin = _ORIGIN.get(resource_type, "MSH")
        paths = "; ".join(f"{p.location}: {p.rule}" for p in exc.problems[:5])
        raise InvalidResource(origin, "fhir-r4-invalid", f"a mapped resource is not valid FHIR R4 ({paths})") \
            from exc


def map_hl7v2_message(er7: str, context: MappingContext) -> MappedEvent:
    """Map one HL7 v2 message to a FHIR R4 Bundle (see the package docstring for what maps to what).

    Raises only :class:`~services.common.hl7v2.errors.Hl7v2Error` subclasses for bad or unsupported input.
    The bundle is not validated here: the caller validates it once (the pipeline's ``validate_bundle``, or
    :func:`validate_mapped`).
    """
    message = parse_message(er7)
    patient_id = check_shape(message)
    header = message.header
    conv = Conversion(default_tz=offset_of(header.timestamp), sender_zone=_sender_zone(header, context.time_zones),
                      fallback_zone=_zone(context.default_time_zone),
                      authority_systems=context.assigning_authorities, source=header.source)
    build = Build(message=message, context=context, conv=conv, patient_key=patient_id.value)
    build.use(message.msh)
    pid = message.first("PID")
    assert pid is not None  # check_shape requires it
    pd1 = _following(message, pid, "PD1", {"PID", "PV1", "MRG"})
    map_patient(build, pid, pd1)
    _map_body(build, pid)

    for resource, _labels in build.resources:
        claim_profile(resource)
    mapped_header = prune(message_header(build))  # marks SFT as used
    build.use(message.first("EVN"))  # EVN -> Provenance
    unmapped = _unmapped(build)
    return assemble(origin(build, unmapped), build.resources, build.context, header=mapped_header,
                    alerts=build.alerts, data_quality=build.conv.issues,
                    unmapped_segments=[name for name, _count in unmapped])
