"""The HL7 v2 codec (ER7 versions 2.3 to 2.8): what intake needs to accept a message and the mapper to read it.

    parse_message(er7) -> Message                         er7.py: lazy, immutable view of segments and fields
    inspect_message(er7) -> MessageSummary                inspection.py: cheap shape check (MSH, type/version,
                                                          PID-3, PID dates), the record key and event id
    message_key(er7) / message_control_id(er7)            inspection.py: Kafka key '<source>|<PID-3 id>' / MSH-10
    message_event_id(header, digest)                      ids.py: CloudEvent id from sender, MSH-3, MSH-10, digest
    ack_message(er7_or_parsed, code, error, now) -> str   ack.py: the ACK (MSA, ERR) for a message
    parse_dtm(text) -> Dtm | None                         dtm.py: DTM/TS/DT values

Errors: errors.py (AE for content errors, AR for unsupported messages). The mapping to FHIR is
services/mapper/hl7v2; nothing here maps.
"""

from services.common.hl7v2.ack import ack_message
from services.common.hl7v2.er7 import Message, parse_message
from services.common.hl7v2.errors import (
    AckCode,
    Hl7v2Error,
    InvalidResource,
    InvalidValue,
    MalformedMessage,
    MissingRequired,
    PsychotherapyNoteRefused,
    UnsupportedMessage,
    UnsupportedMessageType,
    UnsupportedVersion,
)
from services.common.hl7v2.ids import message_event_id
from services.common.hl7v2.inspection import MessageSummary, inspect_message, message_control_id, message_key

__all__ = [
    "AckCode",
    "Hl7v2Error",
    "InvalidResource",
    "InvalidValue",
    "MalformedMessage",
    "Message",
    "MessageSummary",
    "MissingRequired",
    "PsychotherapyNoteRefused",
    "UnsupportedMessage",
    "UnsupportedMessageType",
    "UnsupportedVersion",
    "ack_message",
    "inspect_message",
    "message_control_id",
    "message_event_id",
    "message_key",
    "parse_message",
]
