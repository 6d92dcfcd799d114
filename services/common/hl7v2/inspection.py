"""A cheap look at an HL7 v2 message, without mapping it: what intake's MLLP listener and HTTP route need to
accept or refuse it (header, type and version, PID-3, the patient's dates) and to key and name its record."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.fhir_ids import patient_key
from services.common.hl7v2.dtm import parse_dtm
from services.common.hl7v2.er7 import Header, Message, check_shape, parse_message
from services.common.hl7v2.errors import InvalidValue, MissingRequired
from services.common.hl7v2.ids import message_digest, message_event_id, sender_control_id


@dataclass(frozen=True)
class MessageSummary:
    """What the MLLP listener learns from a cheap look at a message (no FHIR mapping)."""

    header: Header
    patient_id: str
    key: str  # Kafka record key: '<source>|<PID-3 id>'
    event_id: str  # CloudEvent id: from the sender, MSH-3, MSH-10 and the content digest
    digest: str  # of the content (ids.message_digest)

    @property
    def source(self) -> str:
        return self.header.source

    @property
    def control_id(self) -> str:
        return self.header.control_id

    @property
    def sender_control_id(self) -> str:
        """MSH-3 + MSH-10: what names one message of this sender (the resend memory's key)."""
        return sender_control_id(self.header)


def inspect_message(er7: str | Message) -> MessageSummary:
    """Parse MSH, check type/version and the segments the mapping needs; raises Hl7v2Error subclasses."""
    message = er7 if isinstance(er7, Message) else parse_message(er7)
    patient = check_shape(message)
    check_patient_data_types(message)
    header = message.header
    digest = message_digest(message)
    return MessageSummary(header, patient.value, patient_key(header.source, patient.value),
                          message_event_id(header, digest), digest)


# PID fields of data type DTM/TS that the mapping turns into FHIR dates: a value that is not one is a content
# error (AE, HL7 error 102) at the door, not a birth date silently dropped later.
_PATIENT_DATETIMES = ((7, "birth date"), (29, "death date/time"))


def check_patient_data_types(message: Message) -> None:
    """Raise InvalidValue for a PID date/time that is not an HL7 DTM (YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ])."""
    for pid in message.all("PID"):
        for position, what in _PATIENT_DATETIMES:
            text = pid.get(position)
            if text and parse_dtm(text) is None:
                raise InvalidValue(f"PID-{position}", "invalid-datetime",
                                   f"the {what} is not an HL7 date/time (YYYY[MM[DD[HHMM[SS]]]][+/-ZZZZ])")


def message_key(er7: str) -> str:
    """Kafka key of a message: its source (sending facility) and PID-3 patient id, as ``patient_key``."""
    return inspect_message(er7).key


def message_control_id(er7: str) -> str:
    """MSH-10 of a message (raises MissingRequired when empty, MalformedMessage when there is no MSH)."""
    header = parse_message(er7).header
    if not header.control_id:
        raise MissingRequired("MSH-10", "required", "MSH-10 message control id is empty")
    return header.control_id
