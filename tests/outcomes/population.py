"""50 constructed patients for the measure tests, in groups whose measure results are known by hand.

Measurement period 2025-01-01 .. 2025-06-30; evaluated on 2027-01-01 (every window closed).

| group | n | history (days after the index) | DRR-E style | CMS159 style |
|---|---|---|---|---|
| remit-early | 10 | index 18, day 180: 3 | num | - (no score at 12 months) |
| respond | 8 | index 20, day 200: 9 | num | - |
| remit-late | 7 | index 16, day 375: 2 | - | num |
| no-response | 6 | index 15, day 180: 15 | - | - |
| no-follow-up | 5 | index 22 | - | - |
| before-period | 5 | index 2024-11-01 (before the period), day 180: 2 | not counted | not counted |
| never-elevated | 5 | 8, then day 180: 3 | not counted | not counted |
| remit-both | 4 | index 12, day 150: 4, day 360: 1 | num | num |

Hand count: initial population = denominator = 40 for both; DRR-E numerator 22; CMS159 numerator 11.
"""

from __future__ import annotations

from datetime import date, timedelta

PERIOD = (date(2025, 1, 1), date(2025, 6, 30))
AS_OF = date(2027, 1, 1)
EXPECTED = {"drr-e": {"initial-population": 40, "denominator": 40, "denominator-exclusion": 0, "numerator": 22},
            "cms159": {"initial-population": 40, "denominator": 40, "denominator-exclusion": 0, "numerator": 11}}

GROUPS: list[tuple[str, int, list[tuple[int, int]], date | None]] = [
    ("remit-early", 10, [(0, 18), (180, 3)], None),
    ("respond", 8, [(0, 20), (200, 9)], None),
    ("remit-late", 7, [(0, 16), (375, 2)], None),
    ("no-response", 6, [(0, 15), (180, 15)], None),
    ("no-follow-up", 5, [(0, 22)], None),
    ("before-period", 5, [(0, 19), (180, 2)], date(2024, 11, 1)),
    ("never-elevated", 5, [(0, 8), (180, 3)], None),
    ("remit-both", 4, [(0, 12), (150, 4), (360, 1)], None),
]


def population() -> list[tuple[str, list[tuple[date, int]]]]:
    """(patient key, [(date, PHQ-9 total)]) for the 50 patients; index dates spread over the period."""
    patients: list[tuple[str, list[tuple[date, int]]]] = []
    n = 0
    for name, count, history, fixed_index in GROUPS:
        for i in range(count):
            index = fixed_index or PERIOD[0] + timedelta(days=(n * 3) % 180)
            patients.append((f"{name}-{i:02d}", [(index + timedelta(days=d), total) for d, total in history]))
            n += 1
    assert len(patients) == 50
    return patients
