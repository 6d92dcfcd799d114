"""The contract fields the JSON event mapping knowingly leaves out of FHIR, and why: every other field of every
event payload is mapped. tests/mapping/test_field_coverage.py holds both halves: it changes each field of each
event type and fails when a field not listed here leaves the Bundle unchanged, or when one listed here changes it.

Keys: the event type without ``org.carebus.`` and ``.v1``; field paths as in the payload (``a.b``; ``[]`` for
the items of a list).
"""

from __future__ import annotations

from typing import Final

IGNORED: Final[dict[str, dict[str, str]]] = {
    "appointment.noshow": {
        "recorded_at": "when the practice recorded the no-show: R4's Appointment has no element for it; status "
                       "noshow is the fact, and the Bundle's Provenance carries the event's time",
    },
    "consent.revoked": {
        "valid_until": "the planned end no longer applies: a revoked consent's period ends at revoked_at",
    },
}
