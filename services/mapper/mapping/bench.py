"""A quick timing script (not a test): events per second through parse -> map -> validate -> serialize.

    python -m services.mapper.mapping.bench [patients]

Input: the sample care journey (services/mapper/journey.py) replayed for ``patients`` distinct patients
(every source id suffixed, start times shifted), so the element cache sees realistic variety: different
patients, subjects, ids and times. Reports:
* end to end: parse_event + map_event + validate_bundle + serialize, one process, one thread;
* the same mapping, but building fhir.resources model objects for the whole Bundle and calling
  model_dump_json (the baseline the hot path must beat by at least 3x).
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from typing import Any

import orjson
from fhir.resources.R4B import get_fhir_model_class

from services.common.events import parse_event
from services.mapper.journey import sample_care_journey
from services.mapper.mapping import map_event, serialize, validate_bundle
from services.mapper.result import MappingContext

_ID_FIELDS = frozenset(
    {
        "patient_id", "referral_id", "appointment_id", "session_id", "assessment_id", "diagnosis_id",
        "prescription_id", "admission_id", "note_id", "care_plan_id", "consent_id", "result_id", "flag_id",
        "encounter_id", "goal_id", "replaces_prescription_id",
    }
)  # fmt: skip


def _suffix_ids(value: Any, suffix: str) -> Any:
    if isinstance(value, dict):
        return {
            k: (f"{v}-{suffix}" if k in _ID_FIELDS and isinstance(v, str) else _suffix_ids(v, suffix))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_suffix_ids(v, suffix) for v in value]
    return value


def workload(patients: int) -> list[bytes]:
    start = dt.datetime(2025, 3, 3, 15, 0, tzinfo=dt.UTC)
    out = []
    for n in range(patients):
        for event in sample_care_journey(start + dt.timedelta(minutes=37 * n)):
            event = _suffix_ids(event, f"p{n}")
            event["id"] = f"{event['id']}-p{n}"
            out.append(orjson.dumps(event))
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    patients = int(args[0]) if args else 50
    raws = workload(patients)
    context = MappingContext(received_at=dt.datetime(2025, 3, 3, tzinfo=dt.UTC))

    began = time.perf_counter()
    for raw in raws:
        mapped = map_event(parse_event(raw), context)
        validate_bundle(mapped.bundle)
        serialize(mapped.bundle)
    ours = time.perf_counter() - began

    events = [parse_event(raw) for raw in raws]
    began = time.perf_counter()
    for event in events:
        mapped = map_event(event, context)
        validate_bundle(mapped.bundle)
        serialize(mapped.bundle)
    ours_no_parse = time.perf_counter() - began

    bundle_model = get_fhir_model_class("Bundle")
    began = time.perf_counter()
    for event in events:
        mapped = map_event(event, context)
        bundle_model.model_validate(mapped.bundle).model_dump_json()
    models = time.perf_counter() - began

    count = len(raws)
    print(f"events: {count} ({patients} patients x {count // patients} journey events)")
    print(f"end to end (parse+map+validate+serialize): {count / ours:,.0f} events/s")
    print(f"map+validate+serialize:                    {count / ours_no_parse:,.0f} events/s")
    print(f"map+fhir.resources models+model_dump_json: {count / models:,.0f} events/s")
    print(f"speed-up over models:                      {models / ours_no_parse:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
