"""Why an HL7 v2 message was refused: exceptions naming the place (``PID-3``) and the rule, never a value.

    services.common.errors.MappingError (an InvalidInput)
    └── Hl7v2Error                      root: location, rule, HL7 error code (table 0357), ACK code
        ├── MalformedMessage            AE  not HL7 ER7 (no MSH, bad separators, unparseable)
        ├── MissingRequired             AE  a segment or field the mapping needs is absent (PID-3, MSH-10)
        ├── InvalidValue                AE  a value breaks its data type or table (e.g. an unusable timestamp)
        ├── InvalidResource             AE  the message produced a resource that fails R4 validation
        ├── PsychotherapyNoteRefused    AE  a HIPAA psychotherapy note: carebus never carries them
        │                                   (also a services.common.errors.RefusedContent)
        └── UnsupportedMessage          AR  a message carebus does not take (type/event, version, batch)
            ├── UnsupportedMessageType
            └── UnsupportedVersion

Content errors (everything but :class:`UnsupportedMessage`) become ``AE``: resending the message unchanged
will not help. Unsupported messages become ``AR``. Messages and reasons are fixed phrases: safe to log.
"""

from __future__ import annotations

from typing import Literal

from services.common.errors import FieldProblem, MappingError, RefusedContent

AckCode = Literal["AA", "AE", "AR"]

# HL7 table 0357 (message error condition codes) used in ERR-3.
HL7_SEGMENT_SEQUENCE_ERROR = "100"
HL7_REQUIRED_FIELD_MISSING = "101"
HL7_DATA_TYPE_ERROR = "102"
HL7_TABLE_VALUE_NOT_FOUND = "103"
HL7_UNSUPPORTED_MESSAGE_TYPE = "200"
HL7_UNSUPPORTED_EVENT_CODE = "201"
HL7_UNSUPPORTED_PROCESSING_ID = "202"
HL7_UNSUPPORTED_VERSION_ID = "203"
HL7_APPLICATION_INTERNAL_ERROR = "207"

HL7_ERROR_TEXT = {
    HL7_SEGMENT_SEQUENCE_ERROR: "Segment sequence error",
    HL7_REQUIRED_FIELD_MISSING: "Required field missing",
    HL7_DATA_TYPE_ERROR: "Data type error",
    HL7_TABLE_VALUE_NOT_FOUND: "Table value not found",
    HL7_UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    HL7_UNSUPPORTED_EVENT_CODE: "Unsupported event code",
    HL7_UNSUPPORTED_PROCESSING_ID: "Unsupported processing id",
    HL7_UNSUPPORTED_VERSION_ID: "Unsupported version id",
    HL7_APPLICATION_INTERNAL_ERROR: "Application internal error",
}


class Hl7v2Error(MappingError):
    """Root of every refusal of an HL7 v2 message.

    ``location`` is ``SEG`` or ``SEG-n`` (``SEG-n.c`` for a component); ``rule`` is a short machine code;
    ``hl7_code`` is the table 0357 code for ERR-3; ``ack_code`` the MSA-1 the sender should receive.
    """

    reason = "hl7v2-invalid"
    ack_code: AckCode = "AE"
    hl7_code = HL7_DATA_TYPE_ERROR

    def __init__(self, location: str, rule: str, message: str, *, hl7_code: str | None = None,
                 segment_occurrence: int = 1) -> None:
        super().__init__(f"{message} ({location}: {rule})", [FieldProblem(location, rule, message)])
        self.location = location
        self.rule = rule
        self.segment_occurrence = segment_occurrence
        if hl7_code is not None:
            self.hl7_code = hl7_code

    @property
    def segment(self) -> str:
        return self.location.split("-", 1)[0]

    @property
    def field_position(self) -> int | None:
        _, _, rest = self.location.partition("-")
        number = rest.split(".", 1)[0]
        return int(number) if number.isdigit() else None


class MalformedMessage(Hl7v2Error):
    reason = "hl7v2-malformed"
    hl7_code = HL7_SEGMENT_SEQUENCE_ERROR


class MissingRequired(Hl7v2Error):
    reason = "hl7v2-missing-required"
    hl7_code = HL7_REQUIRED_FIELD_MISSING


class InvalidValue(Hl7v2Error):
    reason = "hl7v2-invalid-value"
    hl7_code = HL7_DATA_TYPE_ERROR


class InvalidResource(Hl7v2Error):
    reason = "hl7v2-invalid-fhir"
    hl7_code = HL7_APPLICATION_INTERNAL_ERROR


class PsychotherapyNoteRefused(Hl7v2Error, RefusedContent):
    reason = "refused-content"
    hl7_code = HL7_TABLE_VALUE_NOT_FOUND


class UnsupportedMessage(Hl7v2Error):
    reason = "hl7v2-unsupported"
    ack_code: AckCode = "AR"
    hl7_code = HL7_UNSUPPORTED_MESSAGE_TYPE


class UnsupportedMessageType(UnsupportedMessage):
    reason = "hl7v2-unsupported-type"


class UnsupportedVersion(UnsupportedMessage):
    reason = "hl7v2-unsupported-version"
    hl7_code = HL7_UNSUPPORTED_VERSION_ID
