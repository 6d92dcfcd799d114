"""HL7 v2 acknowledgements (original mode ACK).

``ack_message`` answers in the sender's version with the sending and receiving application/facility swapped:
MSA-1 the code (AA accept, AE content error, AR reject), MSA-2 the sender's MSH-10, and for AE/AR an ERR
segment naming the segment, occurrence and field (ERR-2, or ERR-1 before v2.5), the HL7 error code
(table 0357, ERR-3), severity E and carebus' rule code (ERR-5) and fixed message (ERR-8). Nothing of the
message content but its header identifiers is echoed: an ACK carries no PHI.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from services.common.errors import CarebusError, InfrastructureError, InvalidInput
from services.common.hl7v2.er7 import Hd, Message, parse_message, parse_version
from services.common.hl7v2.errors import HL7_APPLICATION_INTERNAL_ERROR, HL7_ERROR_TEXT, AckCode, Hl7v2Error

CAREBUS_APPLICATION = "CAREBUS"
DEFAULT_VERSION = "2.5.1"
_ACK_NAMESPACE = uuid.UUID("0b1c0d0a-6c61-4b5e-8c8e-4143cb4d4c4c")


_ESCAPES = str.maketrans({"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\",
                          "\r": "\\.br\\", "\n": "\\.br\\"})


def escape(text: str) -> str:
    """Escape a value for the standard encoding characters ``|^~\\&``; line breaks become ``\\.br\\``."""
    if "\r\n" in text:  # one line break, one escape
        text = text.replace("\r\n", "\n")
    return text.translate(_ESCAPES)  # one pass: an escape's own backslashes are not escaped again


def _hd(hd: Hd | None) -> str:
    if hd is None:
        return ""
    parts = [escape(hd.namespace), escape(hd.universal_id), escape(hd.universal_id_type)]
    while parts and not parts[-1]:
        parts.pop()
    return "^".join(parts)


def _timestamp(now: datetime) -> str:
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return now.strftime("%Y%m%d%H%M%S%z")


def _error_fields(error: CarebusError | None) -> tuple[str, str, int, int | None, str, str]:
    """(segment, hl7 code, occurrence, field, rule, message) for the ERR segment."""
    if isinstance(error, Hl7v2Error):
        return (error.segment, error.hl7_code, error.segment_occurrence, error.field_position, error.rule,
                error.problems[0].message if error.problems else error.reason)
    if isinstance(error, InvalidInput):
        problem = error.problems[0] if error.problems else None
        return ("", "207", 1, None, error.reason, problem.message if problem else "invalid input")
    if isinstance(error, InfrastructureError):
        return ("", HL7_APPLICATION_INTERNAL_ERROR, 1, None, "infrastructure-unavailable",
                "the message could not be stored; retry later")
    return ("", HL7_APPLICATION_INTERNAL_ERROR, 1, None, "internal-error",
            "the message could not be processed")


def ack_message(er7_or_parsed: str | Message, code: AckCode, error: CarebusError | None,
                now: datetime) -> str:
    """An ACK for the message (or for what can be read of it): segments separated by CR, no framing."""
    message: Message | None
    if isinstance(er7_or_parsed, Message):
        message = er7_or_parsed
    else:
        try:
            message = parse_message(er7_or_parsed)
        except Hl7v2Error:
            message = None
    header = message.header if message is not None else None
    version = header.version if header is not None and parse_version(header.version) else DEFAULT_VERSION
    version_tuple = parse_version(version) or (2, 5, 1)
    trigger = escape(header.trigger_event) if header is not None else ""
    control_id = header.control_id if header is not None else ""
    message_type = f"ACK^{trigger}^ACK" if version_tuple >= (2, 3, 1) else f"ACK^{trigger}"
    timestamp = _timestamp(now)
    ack_id = uuid.uuid5(_ACK_NAMESPACE, f"{header.source if header else ''}|{control_id}|{code}|"
                                        f"{timestamp}").hex[:20].upper()
    processing = header.processing_id if header is not None and header.processing_id else "P"
    msh = [
        "MSH", "^~\\&",
        _hd(header.receiving_application) if header is not None and header.receiving_application.name
        else CAREBUS_APPLICATION,
        _hd(header.receiving_facility) if header is not None else "",
        _hd(header.sending_application) if header is not None else "",
        _hd(header.sending_facility) if header is not None else "",
        timestamp, "", message_type, ack_id, escape(processing), escape(version),
    ]
    segments = [_msh_line(msh)]
    msa = ["MSA", code, escape(control_id)]
    if code != "AA":
        segment, hl7_code, occurrence, field, rule, text = _error_fields(error)
        if version_tuple < (2, 4):
            msa.append(escape(text))
        segments.append("|".join(msa))
        location = "^".join([segment, str(occurrence) if segment else "",
                             str(field) if field else ""]).rstrip("^")
        condition = f"{hl7_code}^{escape(HL7_ERROR_TEXT.get(hl7_code, 'Error'))}^HL70357"
        if version_tuple < (2, 5):  # ERR-1 ELD: segment ^ sequence ^ field ^ code&text&table
            eld = [segment, str(occurrence) if segment else "", str(field) if field else "",
                   condition.replace("^", "&")]
            segments.append("|".join(["ERR", "^".join(eld)]))
        else:
            segments.append("|".join(["ERR", "", location, condition, "E", f"{escape(rule)}^^99CAREBUS",
                                      "", "", escape(text)]))
    else:
        segments.append("|".join(msa))
    return "\r".join(segments) + "\r"


def _msh_line(fields: list[str]) -> str:
    # MSH-1 is the field separator itself: "MSH" + "|" + "^~\&" + "|" + MSH-3 ...
    return "MSH|" + "|".join(fields[1:])
