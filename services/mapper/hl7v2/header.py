"""MSH -> MessageHeader (R4), MSH + EVN -> what the Provenance says (assembled by services/mapper/assembly.py).

MessageHeader: eventCoding v2-0003 trigger; source = sending application (MSH-3) with endpoint
``urn:carebus:hl7v2:<sender>`` and software from SFT; sender = sending facility (MSH-4); destination =
receiving application / facility (MSH-5/6); focus = the main resources.
Provenance: target = every resource of the bundle; recorded = MSH-7, when the sender made the message (so a
resend makes the same Provenance), else when carebus received it;
occurred = EVN-6 (event occurred), else EVN-2 (recorded), else MSH-7; reason EVN-4; agents: the sending
application on behalf of the sending facility (author), the EVN-5 operator (enterer) and carebus
(assembler, as the JSON path); entities: the CloudEvent (id from sender + MSH-10), the message's MSH-10,
and one entity per segment id that was present but not mapped (system
``urn:carebus:hl7v2:unmapped-segment``), so nothing is dropped silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.common.fhir.codesystems import (
    HL7V2_UNMAPPED_SEGMENT,
    PROVENANCE_PARTICIPANT_TYPE,
    RFC3986,
    V2_0003,
)
from services.common.hl7v2.er7 import Hd, source_uri
from services.mapper.assembly import Origin
from services.mapper.hl7v2.builder import Build, Json
from services.mapper.hl7v2.datatypes import (
    aware_datetime,
    codeable,
    fhir_datetime,
    instant_from,
    person_reference,
    prune,
)


def _hd_reference(hd: Hd) -> Json | None:
    if not hd.name:
        return None
    out: dict[str, Any] = {"display": hd.name}
    if hd.universal_id and hd.universal_id_type.upper() == "ISO":
        out["identifier"] = {"system": RFC3986, "value": f"urn:oid:{hd.universal_id}"}
    return out


def message_header(build: Build) -> Json:
    header = build.header
    sft = build.message.first("SFT")
    build.use(sft)
    receiver = header.receiving_facility.name or header.receiving_application.name
    return {
        "resourceType": "MessageHeader",
        "id": build.id("MessageHeader", build.event_id),
        "eventCoding": {"system": V2_0003, "code": header.trigger_event},
        "destination": [{
            "name": header.receiving_application.name or None,
            "endpoint": source_uri(receiver),
            "receiver": _hd_reference(header.receiving_facility),
        }] if receiver else None,
        "sender": _hd_reference(header.sending_facility),
        "source": {
            "name": header.sending_application.name or None,
            "software": sft.get(3) if sft is not None else None,
            "version": sft.get(2) if sft is not None else None,
            "endpoint": header.source,
        },
        "focus": build.focus,
    }


def origin(build: Build, unmapped: Sequence[tuple[str, int]]) -> Origin:
    """What the assembler (services/mapper/assembly.py) needs to know of the message for the Provenance and the
    Bundle: the author (sending application on behalf of the sending facility), EVN-5 as the enterer, EVN-6 /
    EVN-2 (else MSH-7) as occurred, EVN-4 as the reason, the message type as the activity, MSH-10 and every
    segment present but not mapped as source entities; recorded = MSH-7 (when the sender made the message, so
    a resend is the same Bundle), else carebus's receipt."""
    header = build.header
    conv = build.conv
    evn = build.message.first("EVN")
    occurred = None
    reason = None
    agents: list[Json] = []
    if evn is not None:
        build.use(evn)
        occurred = fhir_datetime(evn.get(6), evn.loc(6), conv) or fhir_datetime(evn.get(2), evn.loc(2), conv)
        reason = codeable(evn.rep(4), local=build.local(evn.loc(4)))
        operator = person_reference(evn.rep(5))
        if operator is not None:
            agents.append({
                "type": {"coding": [{"system": PROVENANCE_PARTICIPANT_TYPE, "code": "enterer",
                                     "display": "Enterer"}]},
                "who": operator,
            })
    author: Json = {"who": {"identifier": {"system": f"{header.source}/application",
                                           "value": header.sending_application.name or header.sender},
                            "display": header.sending_application.name or header.sender}}
    sender = _hd_reference(header.sending_facility)
    if sender is not None:
        author["onBehalfOf"] = sender
    entities: list[Json] = [{
        "role": "source",
        "what": {"identifier": {"system": f"{header.source}/message-control-id", "value": header.control_id},
                 "display": f"HL7 v2 {header.message_type}^{header.trigger_event} message (MSH-10)"},
    }]
    for name, count in unmapped:
        entities.append({
            "role": "source",
            "what": {"identifier": {"system": HL7V2_UNMAPPED_SEGMENT, "value": name},
                     "display": f"HL7 v2 segment {name} present ({count}x) but not mapped"},
        })
    return Origin(
        source=header.source,
        event_id=build.event_id,
        event_type="org.carebus.hl7v2.message.v1",
        recorded=instant_from(aware_datetime(header.timestamp, conv) or build.context.received_at),
        names=(header.sending_facility.namespace, header.sending_facility.universal_id, header.sender,
               header.source),
        occurred=occurred or fhir_datetime(header.timestamp, "MSH-7", conv),
        author=prune(author),
        activity={"coding": [{"system": V2_0003, "code": header.trigger_event}],
                  "text": f"{header.message_type}^{header.trigger_event}"},
        reason=[prune(reason)] if reason else [],
        agents=[prune(agent) for agent in agents],
        entities=entities,
    )
