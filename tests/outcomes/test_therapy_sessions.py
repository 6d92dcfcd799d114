"""What the clinician's page lists under "Therapy sessions" (services/record/clinician_page.py, pure): psychotherapy
Procedures and psychotherapy Encounters only, each session once; a hospice Procedure, a primary-care visit or a
cancelled session is not one. Sessions come from the real mapper where the mapper makes them."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from services.mapper.mapping.session import MODALITIES
from services.outcomes.episodes import PersonOutcomes
from services.record.clinician_page import PSYCHOTHERAPY, patient_page, therapy_sessions
from tests.mapping import helpers as events

SCT = "http://snomed.info/sct"
CPT = "http://www.ama-assn.org/go/cpt"


def session(**data: Any) -> list[dict[str, Any]]:
    """The resources the mapper makes of one session.completed event (an Encounter, a Procedure with a modality)."""
    mapped = events.mapped(events.example("session.completed", **data))
    return [*events.resources(mapped, "Encounter"), *events.resources(mapped, "Procedure")]


def procedure(code: tuple[str, str], status: str = "completed", text: str | None = None,
              rid: str = "pr") -> dict[str, Any]:
    concept: dict[str, Any] = {"coding": [{"system": code[0], "code": code[1]}]}
    if text:
        concept["text"] = text
    return {"resourceType": "Procedure", "id": rid, "status": status, "code": concept,
            "performedDateTime": "2025-04-02T10:00:00Z"}


def visit(cpt: str, status: str = "finished") -> dict[str, Any]:
    return {"resourceType": "Encounter", "id": "v", "status": status, "type": [{"coding": [{"system": CPT,
            "code": cpt}]}], "period": {"start": "2025-05-06T09:00:00Z", "end": "2025-05-06T09:50:00Z"}}


HOSPICE_CARE = procedure((SCT, "385763009"), text="Hospice care", rid="hospice")


@pytest.mark.parametrize(("resources", "rows"), [
    # a mapped therapy session: its Procedure names the modality; its Encounter is the same session, not another
    (session(modality="cbt"), [["2025-03-11", "Cognitive behavioral therapy", "completed"]]),
    (session(modality="dbt"), [["2025-03-11", "Dialectical behavior therapy", "completed"]]),
    (session(modality="psychodynamic", telehealth=True), [["2025-03-11", "Psychodynamic psychotherapy", "completed"]]),
    # psychotherapy recorded without a modality: a medication visit with the psychotherapy add-on (CPT 90833)
    (session(kind="medication-management", modality=None, cpt_code="99214", add_on_cpt_codes=["90833"]),
     [["2025-03-11", "not recorded", "finished"]]),
    # not therapy sessions
    ([HOSPICE_CARE], []),  # the known bug: hospice care was listed as a therapy session
    ([procedure((SCT, "103735009"), text="Palliative care")], []),
    ([procedure((SCT, "82078001"), text="Blood draw")], []),
    ([visit("99213")], []),  # a primary-care office visit
    (session(kind="primary-care", modality=None, cpt_code="99214"), []),
    (session(kind="medication-management", modality=None, cpt_code="99214"), []),
    (session(kind="psychiatric-evaluation", modality=None, cpt_code="90791"), []),
    ([visit("90834", status="cancelled")], []),
    ([visit("90837", status="planned")], []),
    ([procedure((SCT, "304891004"), status="entered-in-error")], []),
    ([procedure((SCT, "304891004"), status="not-done")], []),
    # psychotherapy from other senders: a CPT-coded procedure, a group session visit
    ([procedure((CPT, "90837"), text="Psychotherapy, 60 minutes")], [["2025-04-02", "Psychotherapy, 60 minutes",
                                                                      "completed"]]),
    ([visit("90853")], [["2025-05-06", "not recorded", "finished"]]),
    # a session among other records: only it is listed
    ([HOSPICE_CARE, visit("99213"), *session(modality="cbt")], [["2025-03-11", "Cognitive behavioral therapy",
                                                                 "completed"]]),
])
def test_therapy_sessions(resources: list[dict[str, Any]], rows: list[list[str]]) -> None:
    assert therapy_sessions(resources) == rows


def test_the_page_lists_no_hospice_procedure_as_a_session() -> None:
    patient = {"resourceType": "Patient", "id": "p", "name": [{"given": ["Ada"], "family": "Example"}]}
    html = patient_page(patient, [HOSPICE_CARE, *session(modality="cbt")], PersonOutcomes((), ()), date(2025, 6, 1))
    sessions = html.split('<div id="sessions">', 1)[1].split("</div>", 1)[0]
    assert "Cognitive behavioral therapy" in sessions and "Hospice" not in sessions
    assert "No therapy session." in patient_page(patient, [HOSPICE_CARE], PersonOutcomes((), ()), date(2025, 6, 1))


def test_every_modality_the_mapper_codes_is_psychotherapy() -> None:
    assert {(SCT, code) for code, _, _ in MODALITIES.values()} <= PSYCHOTHERAPY
