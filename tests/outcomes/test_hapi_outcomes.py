"""Every kind of resource the outcomes work emits passes the HL7 reference validator (HAPI, R4 core + US Core
6.1.0) with 0 errors, in the session's one validator run (tests/validation/test_emitted_sets.py validates
:func:`resources`): derived Observations, Individual and Summary MeasureReports, both Measures, safety Tasks
(new, escalated, acknowledged), their Provenance and AuditEvent."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from services.outcomes.episodes import Score, evaluate_person, phq9_rules
from services.outcomes.exclusions import Exclusion
from services.outcomes.fhir import (
    MEASURES,
    individual_report,
    measure_resource,
    outcome_resources,
    population_counts,
    summary_report,
)
from services.outcomes.tasks import Alert, audit_records, change_status, escalate, new_task

CHAIN = ["CareTeam/on-call", "Organization/crisis-line"]


def resources() -> list[dict[str, Any]]:
    labels = ("R", "PSY")
    scores = [Score(date(2025, 1, 5), "Observation/a1", 20, "phq-9", "Patient/p1", labels),
              Score(date(2025, 6, 1), "Observation/a2", 4, "phq-9", "Patient/p1", labels),
              Score(date(2025, 1, 5), "Observation/g1", 12, "gad-7", "Patient/p1", labels)]
    outcomes = evaluate_person(scores, date(2026, 1, 1))
    found = outcome_resources(outcomes, "Riverside") + [measure_resource(m) for m in MEASURES]
    hospice = Exclusion(date(2025, 3, 1), "palliative-or-hospice-care", "Encounter/e1", date(2025, 3, 9))
    excluded = individual_report(MEASURES[1], outcomes.of("phq-9")[0], "Riverside", [hospice])
    found.append({**excluded, "id": "excluded-1"})  # denominator-exclusion 1, the Encounter in evaluatedResource
    period = (date(2025, 1, 1), date(2025, 6, 30))
    counts = population_counts(MEASURES[0], [scores], *period, date(2026, 1, 1), phq9_rules())
    found.append(summary_report(MEASURES[0], counts, *period,
                                "2026-01-01T00:00:00Z", "Riverside", "summary-1"))
    alert = Alert("phq9-item9", "Patient/p1", "Flag/f1", "e1", datetime(2025, 6, 1, 10, tzinfo=UTC), "urn:x", labels)
    task = new_task(alert, CHAIN, {"phq9-item9": 30})
    escalated = escalate(task, CHAIN, datetime(2025, 6, 1, 11, tzinfo=UTC), {"phq9-item9": 30})
    assert escalated is not None
    accepted = change_status(task, {**task, "status": "accepted", "owner": {"reference": "Practitioner/dr1"}},
                             datetime(2025, 6, 1, 10, 5, tzinfo=UTC))
    found += [task, {**escalated, "id": "escalated-1"}, {**accepted, "id": "accepted-1"},
              *audit_records(accepted, 2, "Practitioner/dr1", datetime(2025, 6, 1, 10, 5, tzinfo=UTC), "desk")]
    return found


def test_every_kind_of_outcome_resource_is_in_the_validated_set() -> None:
    """:func:`resources` is validated in the session's one validator run (tests/validation/conftest.py
    ``EXTRA_SETS``, checked by tests/validation/test_emitted_sets.py): every kind the outcomes work emits is in it."""
    assert {r["resourceType"] for r in resources()} == {"Observation", "MeasureReport", "Measure", "Task",
                                                         "Provenance", "AuditEvent"}
