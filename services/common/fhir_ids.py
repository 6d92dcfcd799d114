"""Deterministic FHIR resource ids: the same source system and source identifiers always give the same id,
so a replayed event (or message) produces the same resources and the record converges instead of duplicating."""

from __future__ import annotations

import hashlib
import uuid
from functools import lru_cache

CAREBUS_NAMESPACE = uuid.UUID("6f1c1f2e-3b0a-4c55-9a57-0c4a1e5b2d10")
_NAMESPACE_BYTES = CAREBUS_NAMESPACE.bytes


@lru_cache(maxsize=4096)  # the same references (a patient, an encounter) recur across a batch's events
def resource_id(resource_type: str, source_system: str, *source_identifiers: str) -> str:
    """A FHIR id (a UUID string, valid under FHIR's id rule) from the source system and identifiers:
    the RFC 4122 name-based UUID (version 5) of ``type|system|identifiers`` in the carebus namespace."""
    name = "|".join((resource_type, source_system, *source_identifiers))
    # uuid.uuid5(CAREBUS_NAMESPACE, name) without building a UUID object (tests/test_fhir_ids.py compares them)
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name.encode(), usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    text = digest.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def patient_key(source_system: str, source_patient_id: str) -> str:
    """Kafka record key for one patient of one source: keeps that patient's events in order."""
    return f"{source_system}|{source_patient_id}"
