"""assessment.completed -> QuestionnaireResponse + Observations (+ safety Flags): scored by the instrument table
(services/common/fhir/instruments.py), built by the one builder every path shares
(services/mapper/instrument_resources.py, whose docstring is the mapping spec). Data quality: the score's codes
(``reported-total-mismatch`` ...) go to MappedEvent.data_quality.
"""

from __future__ import annotations

from services.common.events import AssessmentCompleted
from services.common.fhir.instruments import score_instrument
from services.mapper.instrument_resources import Answered, scored_instrument_resources
from services.mapper.mapping._fhir import Draft, iso


def map_assessment(event: AssessmentCompleted, draft: Draft) -> None:
    data = event.data
    subject = draft.subject
    reported = data.reported_total
    score = score_instrument(
        data.instrument,
        {item.item_code: item.answer for item in data.items},
        reported_total=reported.model_dump()
        if reported is not None and not isinstance(reported, str | int)
        else reported,
        sex=data.patient_gender,
    )
    built = scored_instrument_resources(Answered(
        score=score,
        source=subject.source,
        key=data.assessment_id,
        event_id=draft.event_id,
        patient=subject.patient_ref,
        authored=iso(data.authored),
        encounter=subject.ref("Encounter", data.encounter_id) if data.encounter_id else None,
        performer=subject.practitioner(data.performer) if data.performer is not None else None,
    ))
    for resource, resource_labels in built.resources:
        draft.add(resource, resource_labels)
    draft.alerts.extend(built.alerts)
    draft.data_quality.extend(score.data_quality)
