"""Pure mapping of JSON care events to FHIR R4 Bundles.

    map_event(event, context) -> MappedEvent     dispatch.py: the table from event type to family module
    validate_bundle(bundle)                      services/common/fhir_validation.py: every resource, R4B models
    validate_resource(resource)                  the same, one resource (known shapes fast); intake uses it too
    serialize(bundle) -> bytes                   the same module: orjson

The neutral FHIR layer every path shares is services/common/fhir: code systems, the instrument table and
scoring (PHQ-9, PHQ-2, GAD-7, C-SSRS, AUDIT-C), the security-label rules.

One module per event family: patient, referral, appointment, session, assessment, diagnosis, medication,
admission, note, careplan, consent, lab, risk. Id and reference
conventions: _fhir.py. Timing: ``python -m benchmarks.pipeline_bench``.
"""

from services.common.fhir_validation import serialize, validate_bundle, validate_resource
from services.mapper.mapping.dispatch import DISPATCH, map_event

__all__ = [
    "DISPATCH",
    "map_event",
    "serialize",
    "validate_bundle",
    "validate_resource",
]
