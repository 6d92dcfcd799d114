"""SIU S12-S15, S26 -> Appointment (SCH, TQ1, NTE, RGS with AIS / AIG / AIL / AIP).

Status from the trigger: S12 booked, S13 (rescheduled) / S14 (modified) booked, S15 cancelled (reason SCH-6),
S26 noshow. Id from SCH-2 (filler appointment id), else SCH-1 (placer), else MSH-10, so S13-S26 update the
appointment S12 created. Times: TQ1-7/8 (v2.5+), else SCH-11.4/11.5 (v2.3-2.4), else the first resource
start (AIS-4, AIG-8, AIL-6, AIP-6); an end missing but a duration known (SCH-9/10, AIS-7/8) is computed. A
booked or no-show appointment without a start, or with a start and no way to know the end, is refused
(FHIR app-3/app-2); so is one whose start has no offset from a sender whose time zone is not known
(``timezone-required``, see datatypes.py). Participants: the patient, AIP (practitioners, role AIP-4), AIL
(locations), AIG (other resources), all as logical references. NTE -> comment; DG1 -> reasonReference.
Labels: psychiatric / behavioural-health services (AIS-3, SCH-7/8 text) -> PSY; substance-use services ->
PART2.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from services.common.fhir.labels import scheduled_service_labels
from services.common.hl7v2.dtm import parse_dtm
from services.common.hl7v2.er7 import Segment
from services.common.hl7v2.errors import MissingRequired
from services.mapper.hl7v2 import sensitivity
from services.mapper.hl7v2.builder import Build, Json, Labels, note_texts
from services.mapper.hl7v2.datatypes import (
    aware_datetime,
    codeable,
    fhir_instant,
    identifier_ei,
    instant_from,
    location_display,
    number,
    person_reference,
)
from services.mapper.hl7v2.terminology import APPOINTMENT_STATUS

_RESOURCE_SEGMENTS = {"AIS", "AIG", "AIL", "AIP"}
_START_FIELD = {"AIS": 4, "AIG": 8, "AIL": 6, "AIP": 6}
_MINUTES = {"MIN": 1, "M": 1, "MINUTE": 1, "MINUTES": 1, "H": 60, "HR": 60, "HOUR": 60, "HOURS": 60, "S": 0,
            "D": 1440, "DAY": 1440, "DAYS": 1440}


def _minutes(amount: str, unit: str) -> int | None:
    value = number(amount)
    factor = _MINUTES.get(unit.strip().upper() or "MIN")
    if value is None or factor is None or value <= 0:
        return None
    minutes = int(value * factor) if factor else int(value // 60)
    return minutes if 0 < minutes < 1_000_000 else None


def _appointment_key(build: Build, sch: Segment) -> str:
    if sch.get(2):
        return f"filler|{sch.get(2)}"
    if sch.get(1):
        return f"placer|{sch.get(1)}"
    return f"message|{build.message_key}"


def _times(build: Build, sch: Segment, resources: list[Segment]) -> tuple[str, str, str]:
    """(start, end, location of start) as raw v2 timestamps."""
    tq1 = next((s for s in build.message.segments if s.name == "TQ1" and s.position > sch.position
                and not any(r.position < s.position for r in resources)), None)
    if tq1 is not None and tq1.get(7):
        build.use(tq1)
        return tq1.get(7), tq1.get(8), tq1.loc(7)
    if sch.get(11, 4):
        return sch.get(11, 4), sch.get(11, 5), sch.loc(11)
    for segment in resources:
        start = segment.get(_START_FIELD[segment.name])
        if start:
            return start, "", segment.loc(_START_FIELD[segment.name])
    return "", "", "TQ1-7"


def _duration(sch: Segment, resources: list[Segment]) -> int | None:
    minutes = _minutes(sch.get(9), sch.get(10, 1)) if sch.get(9) else None
    if minutes is not None:
        return minutes
    for segment in resources:
        if segment.name == "AIS" and segment.get(7):
            found = _minutes(segment.get(7), segment.get(8, 1))
            if found is not None:
                return found
    return None


def _end_from(start: str, minutes: int, build: Build) -> str | None:
    parsed = parse_dtm(start)
    moment = aware_datetime(start, build.conv)
    if parsed is None or moment is None:
        return None
    end = moment + timedelta(minutes=minutes)
    return instant_from(end)


def _labels(texts: list[str]) -> Labels:
    return scheduled_service_labels(" ".join(texts))


def map_appointment(build: Build, sch: Segment, conditions: list[Json]) -> Json:
    conv = build.conv
    trigger = build.header.trigger_event
    status = APPOINTMENT_STATUS[trigger]
    resources = [s for s in build.message.segments if s.name in _RESOURCE_SEGMENTS]
    start_raw, end_raw, start_loc = _times(build, sch, resources)
    start = fhir_instant(start_raw, start_loc, conv) if start_raw else None
    end = fhir_instant(end_raw, start_loc, conv) if end_raw else None
    minutes = _duration(sch, resources)
    if start and not end and minutes is not None:
        end = _end_from(start_raw, minutes, build)
    if start and end:
        start_at, end_at = aware_datetime(start_raw, conv), aware_datetime(end_raw, conv) if end_raw else None
        if start_at is not None and end_at is not None and end_at < start_at:
            build.issue("period-end-before-start@TQ1-8")
            end = _end_from(start_raw, minutes, build) if minutes is not None else None
    if status not in {"cancelled", "proposed"}:
        if not start and start_raw and f"timezone-unknown@{start_loc}" in conv.issues:
            raise MissingRequired(start_loc, "timezone-required",
                                  "the start has no UTC offset and the sender's time zone is not known "
                                  "(CAREBUS_HL7_SENDER_TIME_ZONES)")
        if not start:
            raise MissingRequired(start_loc, "appointment-start-required",
                                  "a booked appointment needs a start time")
        if not end:
            raise MissingRequired("TQ1-8", "appointment-end-required",
                                  "a booked appointment needs an end time or a duration")
    elif not (start and end):
        start = end = None
    if start and end:
        begin, finish = _aware_instant(start), _aware_instant(end)
        if begin is not None and finish is not None:
            minutes = int((finish - begin).total_seconds() // 60) or None

    participants: list[Json] = []
    if build.patient_ref is not None:
        participants.append({"actor": build.patient_ref, "status": "accepted", "required": "required"})
    texts: list[str] = [sch.get(7, 2), sch.get(8, 2), sch.get(7), sch.get(8)]
    service_types: list[Json] = []
    header_notes = build.notes_after(sch)
    for segment in build.message.segments[sch.position + 1:]:
        if segment.name == "TQ1":
            header_notes.extend(build.notes_after(segment))
        elif segment.name != "NTE":
            break
    notes: list[str] = note_texts(header_notes)
    build.use(*header_notes)
    for segment in resources:
        build.use(segment, *build.notes_after(segment))
        notes.extend(note_texts(build.notes_after(segment)))
        participant = _participant(build, segment)
        if segment.name == "AIS":
            concept = codeable(segment.rep(3), local=build.local(segment.loc(3)))
            if concept is not None:
                service_types.append(concept)
                texts.append(str(concept.get("text", "")))
                texts.extend(str(c.get("display", "")) for c in concept.get("coding", []))
        if participant is not None:
            participants.append(participant)
    for rgs in build.message.all("RGS"):
        build.use(rgs)
    if not participants:
        participants.append({"type": [{"text": "unspecified participant"}], "status": "needs-action"})
    appointment: dict[str, Any] = {
        "resourceType": "Appointment",
        "id": build.id("Appointment", _appointment_key(build, sch)),
        "identifier": [identifier_ei(sch.rep(1), "PLAC"), identifier_ei(sch.rep(2), "FILL")],
        "status": status,
        "cancelationReason": codeable(sch.rep(6), local=build.local(sch.loc(6))) if status == "cancelled" else None,
        "serviceType": service_types,
        "appointmentType": codeable(sch.rep(8), local=build.local(sch.loc(8))),
        "reasonCode": [codeable(sch.rep(7), local=build.local(sch.loc(7)))],
        "reasonReference": [{"reference": f"Condition/{c['id']}"} for c in conditions],
        "start": start,
        "end": end,
        "minutesDuration": minutes if minutes and minutes > 0 else None,
        "comment": "\n".join(notes) or None,
        "participant": participants,
    }
    build.use(sch)
    labels = sensitivity.combine(_labels([t for t in texts if t]),
                                 *(sensitivity.diagnosis(c.get("code")) for c in conditions))
    return build.add(appointment, labels, focus=True)


def _aware_instant(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _participant(build: Build, segment: Segment) -> Json | None:
    filler_status = {"AIS": 10, "AIG": 14, "AIL": 12, "AIP": 12}[segment.name]
    declined = segment.get(filler_status).lower() in {"cancelled", "canceled", "deleted", "blocked"}
    status = "declined" if declined else "accepted"
    if segment.name == "AIP":
        who = person_reference(segment.rep(3))
        role = codeable(segment.rep(4), local=build.local(segment.loc(4)))
        if who is None and role is None:
            return None
        return {"type": [role] if role else None, "actor": who, "status": status}
    if segment.name == "AIL":
        display = location_display(segment.rep(3))
        role = codeable(segment.rep(4), local=build.local(segment.loc(4)))
        if not display and role is None:
            return None
        return {"type": [role] if role else None, "actor": {"display": display} if display else None,
                "status": status}
    if segment.name == "AIG":
        resource = codeable(segment.rep(3), local=build.local(segment.loc(3)))
        role = codeable(segment.rep(4), local=build.local(segment.loc(4)))
        if resource is None and role is None:
            return None
        display = str((resource or {}).get("text", "")) or next(
            (str(c.get("display", "")) for c in (resource or {}).get("coding", []) if c.get("display")), "")
        return {"type": [role] if role else None, "actor": {"display": display} if display else None,
                "status": status}
    return None
