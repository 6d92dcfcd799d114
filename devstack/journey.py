"""A sample behavioural-health care journey as CloudEvent dicts: pure (the start time is passed in).

One fictional person, Morgan Quill, seen by three sources, each with its own patient id and all sharing the
enterprise identifier ``urn:carebus:empi|EMPI-8842-1170``:

* primary care (urn:carebus:source:riverside-primary-care, patient RPC-004711): registration, a visit with a
  PHQ-9 (moderate), a TSH lab, a provisional diagnosis, referrals to therapy and to psychiatry;
* therapy practice (urn:carebus:source:lakeside-therapy-practice, patient LTP-3301): registration, booked
  appointments, eight weekly CBT sessions with a PHQ-9 every week and a GAD-7 every other week, a care plan,
  one PHQ-9 whose item 9 is positive (week 4, with the therapist's risk flag), one cancelled appointment;
* psychiatry (urn:carebus:source:northgate-psychiatry, patient NGP-77015): registration, a psychiatric
  evaluation (90792) with diagnosis F32.1 and sertraline (RxNorm 36437) 50 mg, a signed consult note, a
  consent to share psychiatric data with primary care, then a dose change to 100 mg.

Used by tests, the demo stack and the load generator. Same ``start`` -> the same events (ids included).
:func:`people` / :func:`person_journey` / :func:`distinct_people_events` make the same journey for many distinct
fictional people (own ids, enterprise id, name, birth date, gender; deterministic from a seed) for load and tests.
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from typing import Any, Final

from services.common.fhir.codesystems import EMPI as EMPI_SYSTEM
from services.common.fhir.codesystems import ICD10CM, NPI, RXNORM, SNOMED
from services.common.fhir.instruments import INSTRUMENTS, PHQ9_ITEM9

PRIMARY_CARE: Final = "urn:carebus:source:riverside-primary-care"
THERAPY: Final = "urn:carebus:source:lakeside-therapy-practice"
PSYCHIATRY: Final = "urn:carebus:source:northgate-psychiatry"
EMPI: Final = {"system": EMPI_SYSTEM, "value": "EMPI-8842-1170"}

PATIENT_IDS: Final = {PRIMARY_CARE: "RPC-004711", THERAPY: "LTP-3301", PSYCHIATRY: "NGP-77015"}
_PCP: Final = {"id": "prac-117", "name": "Dr. Adaeze Okafor", "npi": "1234567893"}
_THERAPIST: Final = {"id": "th-022", "name": "Sam Lindqvist, LCSW"}
_PSYCHIATRIST: Final = {"id": "md-481", "name": "Dr. Priya Raman", "npi": "1588667638"}
_F32_1: Final = {
    "system": ICD10CM,
    "code": "F32.1",
    "display": "Major depressive disorder, single episode, moderate",
}
_SERTRALINE: Final = {
    "system": RXNORM,
    "code": "36437",
    "display": "sertraline",
}

_PHQ9_ITEM9: Final = PHQ9_ITEM9
_PHQ9_ITEMS: Final = tuple(item.loinc for item in INSTRUMENTS["phq-9"].scored_items if item.loinc != PHQ9_ITEM9)
_GAD7_ITEMS: Final = ("69725-0", "68509-9", "69733-4", "69734-2", "69735-9", "69689-8", "69736-7")
_FREQUENCY_CODES: Final = ("LA6568-5", "LA6569-3", "LA6570-1", "LA6571-9")

# Weekly PHQ-9 (items 1-8 total, item 9) and GAD-7 totals over the eight CBT weeks: slow improvement.
_PHQ9_COURSE: Final = ((15, 0), (14, 0), (13, 0), (13, 1), (11, 0), (9, 0), (7, 0), (5, 0))
_GAD7_COURSE: Final = (12, 10, 8, 6)


def _spread(total: int, codes: tuple[str, ...], as_loinc_answers: bool) -> list[dict[str, Any]]:
    """Item answers (0-3 each) adding up to ``total``, every other one as a LOINC answer code."""
    answers = []
    remaining = total
    for index, code in enumerate(codes):
        slots_left = len(codes) - index
        weight = min(3, -(-remaining // slots_left))
        remaining -= weight
        answer: int | str = _FREQUENCY_CODES[weight] if as_loinc_answers and index % 2 else weight
        answers.append({"code": code, "answer": answer})
    return answers


class _Journey:
    def __init__(self, start: dt.datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        self.start = start
        self.events: list[dict[str, Any]] = []
        self.counters: dict[str, int] = {}

    def at(self, days: float, hours: float = 0.0) -> str:
        return (self.start + dt.timedelta(days=days, hours=hours)).isoformat()

    def emit(self, source: str, type_: str, time: str, data: dict[str, Any]) -> None:
        prefix = {PRIMARY_CARE: "rpc", THERAPY: "ltp", PSYCHIATRY: "ngp"}[source]
        self.counters[prefix] = self.counters.get(prefix, 0) + 1
        self.events.append(
            {
                "specversion": "1.0",
                "id": f"{prefix}-journey-{self.counters[prefix]:04d}",
                "source": source,
                "type": f"org.carebus.{type_}.v1",
                "time": time,
                "datacontenttype": "application/json",
                "data": {"patient_id": PATIENT_IDS[source], **data},
            }
        )

    def register(self, source: str, days: float, local_mrn: str) -> None:
        self.emit(
            source,
            "patient.registered",
            self.at(days),
            {
                "identifiers": [{"system": f"{source}/mrn", "value": local_mrn}, dict(EMPI)],
                "name": {"family": "Quill", "given": ["Morgan", "Ellis"]},
                "birth_date": "1988-04-12",
                "gender": "female",
                "contact": {"phone": "+1-555-0142", "email": "morgan.quill@example.org"},
            },
        )

    def phq9(
        self, source: str, days: float, assessment_id: str, total: int, item9: int, **extra: Any
    ) -> None:
        items = _spread(total - item9, _PHQ9_ITEMS, as_loinc_answers=True)
        items.append({"code": _PHQ9_ITEM9, "answer": item9})
        self.emit(
            source,
            "assessment.completed",
            self.at(days, 1),
            {
                "assessment_id": assessment_id,
                "instrument": "phq-9",
                "authored": self.at(days, 0.9),
                "items": items,
                "reported_total": str(total),
                **extra,
            },
        )


def sample_care_journey(start: dt.datetime) -> list[dict[str, Any]]:
    """The journey's CloudEvents (dicts, chronological) beginning at ``start`` (timezone-aware)."""
    j = _Journey(start)

    # --- primary care: day 0 ----------------------------------------------------------------------------
    j.register(PRIMARY_CARE, 0, "004711")
    j.emit(
        PRIMARY_CARE,
        "session.completed",
        j.at(0, 1),
        {
            "session_id": "V-88213",
            "kind": "primary-care",
            "start": j.at(0, 0.25),
            "duration_minutes": 25,
            "cpt_code": "99214",
            "practitioner": _PCP,
        },
    )
    j.phq9(PRIMARY_CARE, 0, "PHQ9-RPC-0001", 14, 0, performer=_PCP, encounter_id="V-88213")
    j.emit(
        PRIMARY_CARE,
        "lab.resulted",
        j.at(0, 6),
        {
            "result_id": "LAB-RPC-5521",
            "code": {"code": "3016-3", "display": "Thyrotropin [Units/volume] in Serum or Plasma"},
            "value": {"value": 2.1, "unit": "mIU/L", "code": "m[IU]/L"},
            "reference_range": {
                "low": {"value": 0.4, "unit": "mIU/L", "code": "m[IU]/L"},
                "high": {"value": 4.0, "unit": "mIU/L", "code": "m[IU]/L"},
            },
            "interpretation": "N",
            "effective_at": j.at(0, 0.5),
            "issued_at": j.at(0, 5.5),
            "ordering_practitioner": _PCP,
        },
    )
    j.emit(
        PRIMARY_CARE,
        "diagnosis.recorded",
        j.at(0, 1.2),
        {
            "diagnosis_id": "DX-RPC-0730",
            "code": _F32_1,
            "category": "encounter-diagnosis",
            "verification": "provisional",
            "recorded_at": j.at(0, 1.2),
            "encounter_id": "V-88213",
            "practitioner": _PCP,
        },
    )
    for referral_id, specialty, performer in (
        ("REF-2025-0193", "therapy", "Lakeside Therapy Practice"),
        ("REF-2025-0194", "psychiatry", "Northgate Psychiatry"),
    ):
        j.emit(
            PRIMARY_CARE,
            "referral.created",
            j.at(0, 1.5),
            {
                "referral_id": referral_id,
                "specialty": specialty,
                "reason_codes": [_F32_1],
                "priority": "routine",
                "authored_on": j.at(0, 1.5),
                "requester": _PCP,
                "encounter_id": "V-88213",
                "performer_organization": performer,
            },
        )

    # --- therapy practice: registration and weekly CBT -------------------------------------------------
    j.register(THERAPY, 1, "T-3301")
    gad_index = 0
    for week in range(8):
        day = 7 * (week + 1)
        appointment_id = f"APT-3301-{week + 1:02d}"
        session_start = j.at(day, 0)
        booked = {
            "appointment_id": appointment_id,
            "service": "therapy",
            "start": session_start,
            "end": j.at(day, 50 / 60),
            "practitioner": _THERAPIST,
            "telehealth": week % 3 == 2,
            "referral_id": "REF-2025-0193",
            "booked_at": j.at(1 if week == 0 else day - 7, 2),
        }
        j.emit(THERAPY, "appointment.booked", j.at(1 if week == 0 else day - 7, 2), booked)
        session_id = f"S-3301-{week + 1:02d}"
        j.emit(
            THERAPY,
            "session.completed",
            j.at(day, 1),
            {
                "session_id": session_id,
                "kind": "therapy",
                "modality": "cbt",
                "start": session_start,
                "duration_minutes": 50,
                "cpt_code": "90834",
                "telehealth": week % 3 == 2,
                "practitioner": _THERAPIST,
                "appointment_id": appointment_id,
                "referral_id": "REF-2025-0193",
            },
        )
        total, item9 = _PHQ9_COURSE[week]
        j.phq9(THERAPY, day, f"PHQ9-LTP-{week + 1:02d}", total, item9, encounter_id=session_id)
        if item9 > 0:
            j.emit(
                THERAPY,
                "risk.flagged",
                j.at(day, 1.2),
                {
                    "flag_id": f"RF-3301-{week + 1:02d}",
                    "risk": "suicide",
                    "level": "moderate",
                    "flagged_at": j.at(day, 1.2),
                    "flagged_by": _THERAPIST,
                    "encounter_id": session_id,
                },
            )
        if week % 2 == 0:
            gad_total = _GAD7_COURSE[gad_index]
            gad_index += 1
            j.emit(
                THERAPY,
                "assessment.completed",
                j.at(day, 1.1),
                {
                    "assessment_id": f"GAD7-LTP-{week + 1:02d}",
                    "instrument": "gad-7",
                    "authored": j.at(day, 0.95),
                    "items": _spread(gad_total, _GAD7_ITEMS, as_loinc_answers=False),
                    "reported_total": {"value": gad_total, "unit": "{score}"},
                    "encounter_id": session_id,
                },
            )
        if week == 0:
            j.emit(
                PRIMARY_CARE,
                "referral.closed",
                j.at(day, 3),
                {
                    "referral_id": "REF-2025-0193",
                    "specialty": "therapy",
                    "reason_codes": [_F32_1],
                    "authored_on": j.at(0, 1.5),
                    "requester": _PCP,
                    "encounter_id": "V-88213",
                    "performer_organization": "Lakeside Therapy Practice",
                    "closed_at": j.at(day, 3),
                    "outcome": "completed",
                },
            )
            j.emit(
                THERAPY,
                "careplan.updated",
                j.at(day, 1.3),
                {
                    "care_plan_id": "CP-3301-1",
                    "status": "active",
                    "title": "Depression treatment plan",
                    "period_start": (start + dt.timedelta(days=day)).date().isoformat(),
                    "period_end": (start + dt.timedelta(days=day + 84)).date().isoformat(),
                    "goals": [
                        {
                            "goal_id": "G-3301-1",
                            "description": "Reduce depressive symptoms to remission (PHQ-9 below 5)",
                            "target": {
                                "measure": "44261-6",
                                "below_value": 5,
                                "due": (start + dt.timedelta(days=day + 84)).date().isoformat(),
                            },
                        },
                        {"goal_id": "G-3301-2", "description": "Return to full-time work"},
                    ],
                    "modalities": ["cbt"],
                    "session_frequency": {"sessions": 1, "per": "week"},
                    "author": _THERAPIST,
                    "updated_at": j.at(day, 1.3),
                },
            )
    # one cancelled extra appointment in week 9
    j.emit(
        THERAPY,
        "appointment.cancelled",
        j.at(62, 3),
        {
            "appointment_id": "APT-3301-09",
            "service": "therapy",
            "start": j.at(63, 0),
            "end": j.at(63, 50 / 60),
            "practitioner": _THERAPIST,
            "referral_id": "REF-2025-0193",
            "cancelled_at": j.at(62, 3),
            "cancelled_by": "patient",
        },
    )

    # --- psychiatry: evaluation in week 3, dose change in week 7 ----------------------------------------
    j.register(PSYCHIATRY, 18, "N-77015")
    evaluation = "E-77015-01"
    eval_day = 20
    j.emit(
        PSYCHIATRY,
        "session.completed",
        j.at(eval_day, 1.1),
        {
            "session_id": evaluation,
            "kind": "psychiatric-evaluation",
            "start": j.at(eval_day, 0),
            "duration_minutes": 60,
            "cpt_code": "90792",
            "practitioner": _PSYCHIATRIST,
            "referral_id": "REF-2025-0194",
        },
    )
    j.emit(
        PSYCHIATRY,
        "diagnosis.recorded",
        j.at(eval_day, 1.2),
        {
            "diagnosis_id": "DX-NGP-3390",
            "code": _F32_1,
            "category": "encounter-diagnosis",
            "onset_date": (start - dt.timedelta(days=120)).date().isoformat(),
            "recorded_at": j.at(eval_day, 1.2),
            "encounter_id": evaluation,
            "practitioner": _PSYCHIATRIST,
        },
    )
    prescription = {
        "prescription_id": "RX-10442",
        "medication": _SERTRALINE,
        "dose": {"value": 50, "unit": "mg", "code": "mg"},
        "frequency": {"times": 1, "period": 1, "period_unit": "d"},
        "route": {"system": SNOMED, "code": "26643006", "display": "Oral route"},
        "authored_on": j.at(eval_day, 1.3),
        "prescriber": _PSYCHIATRIST,
        "reason_codes": [_F32_1],
        "encounter_id": evaluation,
    }
    j.emit(PSYCHIATRY, "medication.prescribed", j.at(eval_day, 1.3), prescription)
    j.emit(
        PSYCHIATRY,
        "note.signed",
        j.at(eval_day, 3),
        {
            "note_id": "NOTE-77015-01",
            "note_type": "consult_note",
            "mental_health": True,
            "signed_at": j.at(eval_day, 3),
            "author": _PSYCHIATRIST,
            "title": "Psychiatric evaluation",
            "text": "Referred by primary care for depressive symptoms over four months; PHQ-9 14 at "
            "referral. In weekly CBT. No psychotic features. Assessment: major depressive disorder, "
            "single episode, moderate. Plan: sertraline 50 mg daily; continue CBT; review in four weeks.",
            "encounter_id": evaluation,
        },
    )
    j.emit(
        PSYCHIATRY,
        "consent.granted",
        j.at(eval_day, 1.4),
        {
            "consent_id": "CNS-77015-01",
            "granted_at": j.at(eval_day, 1.4),
            "valid_until": (start + dt.timedelta(days=eval_day + 365)).date().isoformat(),
            "recipient": {
                "kind": "organization",
                "name": "Riverside Primary Care",
                "identifier": {"system": NPI, "value": "1972845013"},
            },
            "purposes": ["TREAT", "CAREMGT"],
            "labels_covered": ["PSY"],
        },
    )
    change_day = 48
    j.emit(
        PSYCHIATRY,
        "session.completed",
        j.at(change_day, 0.6),
        {
            "session_id": "E-77015-02",
            "kind": "medication-management",
            "start": j.at(change_day, 0),
            "duration_minutes": 25,
            "cpt_code": "99214",
            "add_on_cpt_codes": ["90833"],
            "telehealth": True,
            "practitioner": _PSYCHIATRIST,
        },
    )
    j.emit(
        PSYCHIATRY,
        "medication.changed",
        j.at(change_day, 0.7),
        {
            **prescription,
            "prescription_id": "RX-10587",
            "dose": {"value": 100, "unit": "mg", "code": "mg"},
            "authored_on": j.at(change_day, 0.7),
            "encounter_id": "E-77015-02",
            "changed_at": j.at(change_day, 0.7),
            "replaces_prescription_id": "RX-10442",
        },
    )
    return sorted(j.events, key=lambda event: event["time"])


# --- many distinct people -------------------------------------------------------------------------------------

_FAMILIES: Final = (
    "Abara", "Bergstrom", "Castellanos", "Delacroix", "Eriksen", "Fairweather", "Gallagher", "Haddad", "Ibarra",
    "Jablonski", "Kowalczyk", "Lindqvist", "Mbeki", "Nakamura", "Okonjo", "Petrossian", "Quintero", "Rasmussen",
    "Szabo", "Takahashi", "Underwood", "Valdivia", "Whitfield", "Xiong", "Yamamoto", "Zielinski", "Achterberg",
    "Brennan", "Chaudhry", "Dimitrov", "Esposito", "Fontaine", "Gutierrez", "Holloway", "Iversen", "Jovanovic",
    "Kaur", "Lefebvre", "Moreau", "Novak", "Oyelaran", "Pellegrini", "Ramanathan", "Sorensen", "Thibodeaux",
    "Vasquez", "Wojcik", "Yilmaz", "Zapata", "Adeyemi",
)
_GIVEN: Final = {
    "female": ("Amara", "Beatriz", "Chiara", "Dalia", "Elif", "Freya", "Grace", "Hana", "Ines", "Jun", "Kalinda",
               "Leila", "Mireille", "Nadia", "Odette", "Priya", "Rosalind", "Sofia", "Tamsin", "Wren"),
    "male": ("Anders", "Bashir", "Cormac", "Dmitri", "Emeka", "Felipe", "Gideon", "Hiroshi", "Idris", "Jonah",
             "Kofi", "Luca", "Mateo", "Nikhil", "Oskar", "Pavel", "Rafael", "Soren", "Tobias", "Yusuf"),
    "other": ("Ari", "Blake", "Charlie", "Eden", "Jordan", "Kai", "Quinn", "Reese", "Sage", "Rowan"),
}


@dataclass(frozen=True)
class JourneyPerson:
    """A fictional person whose journey is the sample journey with their own identifiers and demographics."""

    number: int
    family: str
    given: tuple[str, str]
    birth_date: str
    gender: str
    empi: str
    offset_minutes: int  # their journey starts this long after the given start

    @property
    def suffix(self) -> str:
        return f"p{self.number:06d}"


def people(count: int, seed: int = 20260105) -> list[JourneyPerson]:
    """``count`` distinct people, the same for the same seed: names, birth dates 1940-2007, genders, enterprise
    ids and start times drawn from ``random.Random(seed)``."""
    rng = random.Random(seed)  # noqa: S311 - fictional test people, not secrets
    out = []
    for number in range(1, count + 1):
        gender = rng.choices(("female", "male", "other"), weights=(50, 46, 4))[0]
        first, middle = rng.sample(_GIVEN[gender], 2)
        birth = dt.date(1940, 1, 1) + dt.timedelta(days=rng.randrange(68 * 365))
        out.append(JourneyPerson(
            number=number, family=rng.choice(_FAMILIES), given=(first, middle), birth_date=birth.isoformat(),
            gender=gender, empi=f"EMPI-{rng.randrange(10**8):08d}-{number}",
            offset_minutes=rng.randrange(0, 60 * 24 * 90),
        ))
    return out


def _own_ids(value: Any, suffix: str) -> Any:
    """Every ``*_id`` value (and the patient ids) made this person's own; practitioners (``id``) stay shared."""
    if isinstance(value, dict):
        return {k: (f"{v}-{suffix}" if k.endswith("_id") and isinstance(v, str) else _own_ids(v, suffix))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_own_ids(v, suffix) for v in value]
    return value


def person_journey(person: JourneyPerson, start: dt.datetime) -> list[dict[str, Any]]:
    """The sample journey lived by ``person``: their ids (patient, MRN, enterprise id, every source record id,
    event ids) and demographics; everything else as in :func:`sample_care_journey`."""
    events = sample_care_journey(start + dt.timedelta(minutes=person.offset_minutes))
    email = f"{person.given[0]}.{person.family}{person.number}@example.org".lower()
    for event in events:
        event["id"] = f"{event['id']}-{person.suffix}"
        data = _own_ids(event["data"], person.suffix)
        if event["type"] == "org.carebus.patient.registered.v1":
            data["identifiers"] = [
                {"system": ident["system"], "value": person.empi if ident["system"] == EMPI["system"]
                 else f"{ident['value']}-{person.suffix}"} for ident in data["identifiers"]]
            data["name"] = {"family": person.family, "given": list(person.given)}
            data["birth_date"] = person.birth_date
            data["gender"] = person.gender
            data["contact"] = {"phone": f"+1-555-01{person.number % 100:02d}", "email": email}
        event["data"] = data
    return events


def distinct_people_events(count: int, start: dt.datetime, seed: int = 20260105) -> list[dict[str, Any]]:
    """``count`` events: whole journeys of distinct people (the last one cut short), in journey order per person."""
    per_person = len(sample_care_journey(start))
    events: list[dict[str, Any]] = []
    for person in people(-(-count // per_person), seed):
        events.extend(person_journey(person, start))
    return events[:count]
