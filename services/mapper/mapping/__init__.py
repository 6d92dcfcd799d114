"""Pure mapping of JSON care events to FHIR R4 Bundles.

    map_event(event, context) -> MappedEvent     dispatch.py: the table from event type to family module
    validate_bundle(bundle)                      validation.py: every resource through the R4B models
    validate_resource(resource)                  validation.py: one resource (R4B models; known shapes fast)
    serialize(bundle) -> bytes                   validation.py: orjson
    score_instrument(instrument, answers, ...)   instruments.py: PHQ-9, PHQ-2, GAD-7, C-SSRS, AUDIT-C

One module per event family: patient, referral, appointment, session, assessment, diagnosis, medication,
admission, note, careplan, consent, lab, risk. Security-label rules: labels.py. Id and reference
conventions: _fhir.py. Timing: ``python -m benchmarks.pipeline_bench``.
"""

from services.mapper.mapping.dispatch import DISPATCH, map_event
from services.mapper.mapping.instruments import InstrumentScore, score_instrument
from services.mapper.mapping.validation import serialize, validate_bundle, validate_resource

__all__ = [
    "DISPATCH",
    "InstrumentScore",
    "map_event",
    "score_instrument",
    "serialize",
    "validate_bundle",
    "validate_resource",
]
