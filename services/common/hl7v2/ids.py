"""What names one HL7 v2 message: its sender's control id, a digest of its content, and its CloudEvent id.

A resend (same content) has the same event id; a reused control id with other content is another message."""

from __future__ import annotations

import hashlib

from services.common.fhir_ids import resource_id
from services.common.hl7v2.er7 import Header, Message


def sender_control_id(header: Header) -> str:
    """A message's control id qualified by its sending application (MSH-3 ^ MSH-10): one facility's
    applications number their messages independently, so MSH-10 alone does not name a message."""
    application = header.sending_application
    return f"{application.namespace}^{application.universal_id}^{application.universal_id_type}|{header.control_id}"


def message_digest(message: Message) -> str:
    """A digest of a message's content: every segment as parsed (line ends and encoding characters
    normalised), MSH-7 (the time the message was built, which some engines renew on a resend) left out."""
    msh = message.msh.line
    sep = msh[3]
    fields = msh.split(sep)
    if len(fields) > 6:
        fields[6] = ""
    digest = hashlib.blake2b(sep.join(fields).encode(), digest_size=16)
    if len(message.segments) > 1:  # each further segment after a CR, in one update
        digest.update("".join([f"\r{segment.line}" for segment in message.segments[1:]]).encode())
    return digest.hexdigest()


def message_event_id(header: Header, digest: str) -> str:
    """The CloudEvent id of a message: from its sender (MSH-4, else MSH-3), sending application, MSH-10 and
    content digest. A resend (same content) has the same id; a reused control id with other content is
    another message with another id."""
    return resource_id("HL7v2Message", header.source, sender_control_id(header), digest)
