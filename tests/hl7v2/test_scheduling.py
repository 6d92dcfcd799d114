"""SIU S12-S15, S26 -> Appointment."""

from __future__ import annotations

from datetime import datetime

import pytest

from services.common.hl7v2 import MissingRequired
from services.common.hl7v2.dtm import parse_dtm
from services.common.security_labels import PSYCHIATRIC
from tests.hl7v2.helpers import PID, codes, er7, mapped, msh, one, sample, security

SCH = "SCH|PL-7|FI-7||||ROUTINE^Routine follow-up^L|FOLLOWUP^Follow-up^L|||||||||||||||||Booked"


def siu(trigger: str, *body: str, sch: str = SCH) -> str:
    return er7(msh(f"SIU^{trigger}^SIU_S12", control_id=f"SIU-{trigger}"), sch,
               "TQ1|||||||20240510140000-0500|20240510145000-0500", "NTE|1||Bring medication list", PID,
               "RGS|1", *body)


def aware(text: str) -> datetime:
    parsed = parse_dtm(text)
    assert parsed is not None and parsed.tz is not None
    return parsed.aware(parsed.tz)


def test_s12_sample_times_come_from_tq1() -> None:
    text = sample("SIU-S12-02.hl7")
    tq1 = next(line for line in text.splitlines() if line.startswith("TQ1|")).split("|")
    appointment = one(mapped(text), "Appointment")
    assert appointment["status"] == "booked"
    assert datetime.fromisoformat(appointment["start"]) == aware(tq1[7])
    assert datetime.fromisoformat(appointment["end"]) == aware(tq1[8])
    assert appointment["participant"][0]["actor"]["reference"].startswith("Patient/")


def test_s12_booked_with_participants_and_notes() -> None:
    event = mapped(siu("S12", "AIS|1||90834^Psychotherapy, 45 minutes^C4|20240510140000-0500|||45|min",
                       "AIP|1||5555^Freud^Anna^^^Dr|PSYCHOLOGIST^Psychologist^L",
                       "AIL|1||ROOM3^^^BHCLINIC|OFFICE^Office^L", "NTE|1||Room 3 upstairs"))
    appointment = one(event, "Appointment")
    assert appointment["start"] == "2024-05-10T14:00:00-05:00"
    assert appointment["end"] == "2024-05-10T14:50:00-05:00"
    assert appointment["minutesDuration"] == 50
    assert appointment["comment"] == "Bring medication list\nRoom 3 upstairs"
    assert [p.get("actor", {}).get("display") for p in appointment["participant"][1:]] == \
        ["Dr Anna Freud", "ROOM3 BHCLINIC"]
    assert codes(appointment["serviceType"][0]) == {"90834"}
    assert security(appointment) == set(PSYCHIATRIC)
    assert event.unmapped_segments == ()


def test_v23_times_from_sch11_and_end_from_duration() -> None:
    sch = "SCH|PL-8|FI-8||||||||||^^30^20240601090000+0000"
    text = er7(msh("SIU^S12", version="2.3"), sch, PID, "RGS|1",
               "AIS|1||CHECK^Check-up^L|20240601090000+0000|||30|MIN")
    appointment = one(mapped(text), "Appointment")
    assert appointment["start"] == "2024-06-01T09:00:00+00:00"
    assert appointment["end"] == "2024-06-01T09:30:00+00:00"


@pytest.mark.parametrize(("trigger", "status"), [("S13", "booked"), ("S14", "booked"), ("S15", "cancelled"),
                                                 ("S26", "noshow")])
def test_follow_up_events_update_the_same_appointment(trigger: str, status: str) -> None:
    booked = one(mapped(siu("S12")), "Appointment")
    changed = one(mapped(siu(trigger)), "Appointment")
    assert changed["status"] == status
    assert changed["id"] == booked["id"]


def test_cancellation_reason() -> None:
    sch = "SCH|PL-7|FI-7||||PATREQ^Patient request^L"
    appointment = one(mapped(er7(msh("SIU^S15"), sch, PID)), "Appointment")
    assert appointment["status"] == "cancelled"
    assert codes(appointment["cancelationReason"]) == {"PATREQ"}
    assert "start" not in appointment


def test_booked_appointment_without_a_time_is_refused() -> None:
    with pytest.raises(MissingRequired) as caught:
        mapped(er7(msh("SIU^S12"), "SCH|PL-9|FI-9", PID))
    assert caught.value.rule == "appointment-start-required"
    assert caught.value.ack_code == "AE"
