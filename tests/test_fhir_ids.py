"""Resource ids are RFC 4122 version-5 UUIDs of ``type|system|identifiers`` in the carebus namespace."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.fhir_ids import CAREBUS_NAMESPACE, resource_id


@given(st.text(max_size=20), st.text(max_size=40), st.lists(st.text(max_size=30), max_size=4))
def test_ids_are_the_standard_uuid5_of_the_joined_name(resource_type: str, system: str, keys: list[str]) -> None:
    expected = uuid.uuid5(CAREBUS_NAMESPACE, "|".join((resource_type, system, *keys)))
    assert resource_id(resource_type, system, *keys) == str(expected)


@pytest.mark.parametrize("keys", [("MRN1",), ("MRN1", "2"), ("é", "😀", "")])
def test_ids_are_valid_fhir_ids_and_stable(keys: tuple[str, ...]) -> None:
    first = resource_id("Patient", "urn:carebus:clinic", *keys)
    assert first == resource_id("Patient", "urn:carebus:clinic", *keys)
    assert uuid.UUID(first).version == 5 and len(first) == 36
