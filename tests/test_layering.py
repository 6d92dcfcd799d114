"""The layers of the product package, read from its import graph (grimp; imports inside functions count too).

services/common is below every service. Intake depends on services/common only: it frames, inspects and
acknowledges HL7 v2 and checks FHIR payloads with the shared codec (services/common/hl7v2, fhir_payload.py),
and never loads the mapper to accept a message.
"""

from __future__ import annotations

import grimp
import pytest

SERVICES = ("intake", "mapper", "record", "notify", "outcomes", "general", "operator")


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("services", cache_dir=None)


def _chains(graph: grimp.ImportGraph, importer: str, imported: str) -> list[str]:
    return [" -> ".join(chain) for chain in
            graph.find_shortest_chains(importer=importer, imported=imported, as_packages=True)]


@pytest.mark.parametrize("other", [s for s in SERVICES if s != "intake"])
def test_intake_imports_no_other_service(graph: grimp.ImportGraph, other: str) -> None:
    assert _chains(graph, "services.intake", f"services.{other}") == []


@pytest.mark.parametrize("service", SERVICES)
def test_services_common_imports_no_service(graph: grimp.ImportGraph, service: str) -> None:
    assert _chains(graph, "services.common", f"services.{service}") == []


def test_intake_and_the_mapper_read_hl7v2_and_fhir_with_the_same_shared_modules(graph: grimp.ImportGraph) -> None:
    for shared in ("services.common.hl7v2.er7", "services.common.hl7v2.ack", "services.common.fhir_payload"):
        assert _chains(graph, "services.intake", shared), shared
    assert _chains(graph, "services.mapper.hl7v2", "services.common.hl7v2.er7")
    assert _chains(graph, "services.mapper.fhir_in", "services.common.fhir_payload")


def test_fhir_in_scores_with_the_shared_builder_not_through_the_json_event_mapping(graph: grimp.ImportGraph) -> None:
    # a QuestionnaireResponse is scored by the one builder every path feeds, never as a made-up JSON event
    assert _chains(graph, "services.mapper.fhir_in", "services.mapper.instrument_resources")
    for other_path in ("services.mapper.mapping", "services.common.events.parsing"):
        assert _chains(graph, "services.mapper.fhir_in", other_path) == [], other_path


def test_the_record_and_notify_stores_share_the_one_sql_layer(graph: grimp.ImportGraph) -> None:
    for store in ("services.record.store", "services.notify.store"):
        assert _chains(graph, store, "services.common.sql"), store
    assert _chains(graph, "services.notify", "services.record.store") == []


def test_mllp_framing_knows_nothing_of_kafka_or_acceptance(graph: grimp.ImportGraph) -> None:
    # the listener frames and answers; what a message means and where it is kept is the injected acceptor's job
    for below in ("services.common.kafka", "services.intake.hl7v2_acceptor", "services.intake.inbound"):
        assert _chains(graph, "services.intake.mllp", below) == [], below
    assert _chains(graph, "services.intake.hl7v2_acceptor", "services.common.kafka")
