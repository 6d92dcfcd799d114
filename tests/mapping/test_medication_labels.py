"""One medication rule on every path (issue 10, item 2): an RxNorm clinical or branded drug (SCD, SBD, pack) is
labelled by its ingredient like the ingredient code; an unknown product code of a known ingredient named in the
coding's display is labelled too; the same for Part 2 (OUD / AUD treatment) drugs. JSON events, HL7 v2 RDE and
FHIR-in MedicationRequest, including the project's own lorazepam discharge sample."""

from __future__ import annotations

from typing import Any

import pytest

from services.common.fhir import labels
from services.common.fhir.rxnorm_products import PRODUCTS_BY_INGREDIENT
from services.mapper.fhir_in import map_fhir_payload
from tests.fhir_in.test_fhir_in import CONTEXT as FHIR_CONTEXT
from tests.fhir_in.test_fhir_in import envelope
from tests.hl7v2.helpers import PID, er7, msh
from tests.hl7v2.helpers import mapped as mapped_v2
from tests.mapping.helpers import example, mapped, sample

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
PSY = ("R", "PSY")
PART2 = ("R", "42CFRPart2", "NORDSCLCD", "SUD")

# (code, RxNorm name, expected labels): names as in the VSAC expansion the table was taken from
PRODUCTS = [
    ("312940", "sertraline 25 MG Oral Tablet", PSY),  # the example code
    ("312941", "sertraline 50 MG Oral Tablet", PSY),
    ("197900", "lorazepam 0.5 MG Oral Tablet", PSY),  # the US BHP discharge-medication sample
    ("596926", "duloxetine 20 MG Delayed Release Oral Capsule", PSY),
    ("283406", "mirtazapine 15 MG Disintegrating Oral Tablet", PSY),
    ("1010600", "buprenorphine 2 MG / naloxone 0.5 MG Sublingual Film", PART2),
    ("864706", "methadone hydrochloride 10 MG Oral Tablet", PART2),
    ("637213", "naltrexone 380 MG Injection", PART2),
]
NOT_LABELLED = [("197361", "amlodipine 5 MG Oral Tablet"), ("243670", "aspirin 81 MG Oral Tablet")]


def labels_of(resource: dict[str, Any]) -> tuple[str, ...]:
    return tuple(sorted(c["code"] for c in (resource.get("meta") or {}).get("security") or []))


@pytest.mark.parametrize(("code", "name", "expected"), PRODUCTS)
def test_a_product_code_is_labelled_by_its_ingredient_without_a_display(code: str, name: str,
                                                                      expected: tuple[str, ...]) -> None:
    assert labels.medication_labels(code) == expected
    ingredient = labels.ingredients_of(code)[0]
    assert ingredient in name.lower()  # the table agrees with the product's RxNorm name


@pytest.mark.parametrize(("code", "name"), NOT_LABELLED)
def test_other_drugs_are_not_labelled(code: str, name: str) -> None:
    assert labels.medication_labels(code, None, name) == ()


def test_an_unknown_product_of_a_known_ingredient_is_labelled_by_its_display() -> None:
    assert labels.medication_labels("99999901") == ()
    assert labels.medication_labels("99999901", None, "lithium carbonate 300 MG Oral Capsule") == PSY
    assert labels.medication_labels("99999902", None, "Suboxone 8 MG / 2 MG Sublingual Film") == PART2
    assert labels.medication_labels("99999903", None, "ZOLOFT 100 MG Oral Tablet") == PSY
    assert labels.medication_labels("99999904", None, "pseudolithium") == ()  # whole words only


def test_the_table_lists_only_ingredients_the_rule_labels() -> None:
    known = set(labels.PSYCHIATRIC_INGREDIENTS) | set(labels.SUD_TREATMENT_INGREDIENTS)
    assert set(PRODUCTS_BY_INGREDIENT) <= known
    assert len(labels.RXNORM_PRODUCT_INGREDIENTS) > 600
    assert all(code.isdigit() for code in labels.RXNORM_PRODUCT_INGREDIENTS)


@pytest.mark.parametrize(("code", "name", "expected"), PRODUCTS)
def test_json_event_path(code: str, name: str, expected: tuple[str, ...]) -> None:
    event = example("medication.prescribed")
    event["data"]["medication"] = {"system": RXNORM, "code": code, "display": name}
    event["data"]["reason_codes"] = []
    request = next(e["resource"] for e in mapped(event).bundle["entry"]
                   if e["resource"]["resourceType"] == "MedicationRequest")
    assert labels_of(request) == tuple(sorted(expected))


@pytest.mark.parametrize(("code", "name", "expected"), PRODUCTS)
def test_hl7v2_rde_path(code: str, name: str, expected: tuple[str, ...]) -> None:
    for give in (f"{code}^^RXNORM", f"{code}^{name}^RXNORM", f"00000-0000-00^{name}^NDC"):
        text = er7(msh("RDE^O11^RDE_O11"), PID, "ORC|NW|ORD-1|||||||20240501090000-0500",
                   f"RXE||{give}|1||TAB^tablet")
        request = next(e["resource"] for e in mapped_v2(text).bundle["entry"]
                       if e["resource"]["resourceType"] == "MedicationRequest")
        assert labels_of(request) == tuple(sorted(expected)), give


@pytest.mark.parametrize(("code", "name", "expected"), PRODUCTS)
def test_fhir_in_path(code: str, name: str, expected: tuple[str, ...]) -> None:
    request = {"resourceType": "MedicationRequest", "id": "mr-1", "status": "active", "intent": "order",
               "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": code}]},
               "subject": {"reference": "Patient/p-1"}}
    out = next(e["resource"] for e in map_fhir_payload(envelope(request), FHIR_CONTEXT).bundle["entry"]
               if e["resource"]["resourceType"] == "MedicationRequest")
    assert labels_of(out) == tuple(sorted(expected))


def test_the_lorazepam_discharge_sample_is_labelled_psychiatric() -> None:
    discharge = sample("MedicationRequest-ativan-discharge-med-example-1.json")
    result = map_fhir_payload(envelope(discharge), FHIR_CONTEXT)
    request = next(e["resource"] for e in result.bundle["entry"]
                   if e["resource"]["resourceType"] == "MedicationRequest")
    assert labels_of(request) == tuple(sorted(PSY))
    assert set(PSY) <= set(result.security_labels)
    # an NDC-coded product is labelled by the name in its display
    discharge["medicationCodeableConcept"] = {"coding": [{"system": "http://hl7.org/fhir/sid/ndc",
                                                          "code": "0187-0063-01", "display": "Ativan 0.5 mg tablet"}]}
    request = next(e["resource"] for e in map_fhir_payload(envelope(discharge), FHIR_CONTEXT).bundle["entry"]
                   if e["resource"]["resourceType"] == "MedicationRequest")
    assert labels_of(request) == tuple(sorted(PSY))


def test_a_contained_medication_named_by_its_ndc_display_is_labelled() -> None:
    request = {"resourceType": "MedicationRequest", "id": "mr-2", "status": "active", "intent": "order",
               "contained": [{"resourceType": "Medication", "id": "med",
                              "code": {"coding": [{"system": "http://hl7.org/fhir/sid/ndc", "code": "12496-1208-1",
                                                   "display": "SUBOXONE 8 mg / 2 mg sublingual film"}]}}],
               "medicationReference": {"reference": "#med"}, "subject": {"reference": "Patient/p-1"}}
    out = next(e["resource"] for e in map_fhir_payload(envelope(request), FHIR_CONTEXT).bundle["entry"]
               if e["resource"]["resourceType"] == "MedicationRequest")
    assert labels_of(out) == tuple(sorted(PART2))
    assert out["medicationReference"] == {"reference": "#med"}  # contained references kept as sent
