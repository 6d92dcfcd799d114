"""services/common/r4_element_names.txt is exactly the element names of the R4B models (regenerate with
`python -m services.common.fhir_elements`)."""

from __future__ import annotations

from services.common.fhir_elements import names_from_models, r4_element_names


def test_the_element_name_list_matches_the_models() -> None:
    assert r4_element_names() == frozenset(names_from_models())
    assert {"url", "gender", "valueQuantity"} <= r4_element_names()
