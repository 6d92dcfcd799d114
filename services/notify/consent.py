"""The consent seam of notify (pure): one function decides, per recipient and resource version, whether a
notification is delivered, withheld, or delivered with a notice.

:func:`decide` is the only place notify asks. Its first implementation is the record API's own rule
(services/record/access.py): a resource is disclosed only when the recipient's token holds every clearance its
security labels need, and a patient-bound token sees only its person's compartment. Part 2 data that is
disclosed carries the 42 CFR 2.32 notice prohibiting re-disclosure. The consent engine (issue 14) replaces the
body of :func:`decide`; nothing else changes.

A withheld change gets no event number at all: the subscriber cannot tell from a gap that something exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from services.notify.topics import Change
from services.record.access import PART2

Outcome = Literal["deliver", "withhold", "deliver-with-notice"]

PART2_NOTICE = (
    "42 CFR part 2 prohibits unauthorized disclosure of these records. This information has been disclosed to "
    "you from records protected by federal confidentiality rules (42 CFR part 2). The federal rules prohibit "
    "you from making any further disclosure of information in this record that identifies a patient as having "
    "or having had a substance use disorder either directly, by reference to publicly available information, "
    "or through verified or direct or indirect means, unless further disclosure is expressly permitted by the "
    "written consent of the individual whose information is being disclosed or as otherwise permitted by 42 "
    "CFR part 2."
)


@dataclass(frozen=True)
class Recipient:
    """Who a subscription delivers to: the token's client (organization), its clearances and, for a
    patient-bound token, the Patient it is bound to."""

    client: str
    clearances: int
    patient: str | None = None  # "Patient/<id>"


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    notice: str | None = None


DELIVER = Decision("deliver")
WITHHOLD = Decision("withhold")


def decide(recipient: Recipient, change: Change) -> Decision:
    """Deliver, withhold or deliver with a notice: the record API's label + clearance rule."""
    if recipient.patient is not None and recipient.patient not in (change.members or (change.patient,)):
        return WITHHOLD
    if change.restriction & ~recipient.clearances:
        return WITHHOLD
    if change.restriction & PART2:
        return Decision("deliver-with-notice", PART2_NOTICE)
    return DELIVER
