"""From stored FHIR resources to an assessment history (pure): which Observations are instrument totals, and
what they say. The value read is always the total carebus computed from the item answers (``valueQuantity``):
a sender's disagreeing total is kept on the QuestionnaireResponse and in a note, never used here."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from typing import Any, Final

from services.common.fhir.codesystems import LOINC
from services.outcomes.episodes import Instrument, Score

PHQ9_TOTAL: Final = "44261-6"
GAD7_TOTAL: Final = "70274-6"
CSSRS_RISK: Final = "93374-7"
TOTAL_CODES: Final[dict[str, Instrument]] = {PHQ9_TOTAL: "phq-9", GAD7_TOTAL: "gad-7"}
# the outcomes service publishes resources under this source; its own bundles are not read back as input
OUTCOMES_SOURCE: Final = "urn:carebus:outcomes"


def loinc_codes(resource: dict[str, Any]) -> list[str]:
    return [c.get("code", "") for c in resource.get("code", {}).get("coding", []) if c.get("system") == LOINC]


def clinical_date(resource: dict[str, Any]) -> date | None:
    """The calendar date of an Observation's effective time, as the sender wrote it (its own offset)."""
    text = resource.get("effectiveDateTime") or (resource.get("effectivePeriod") or {}).get("start")
    if not isinstance(text, str) or len(text) < 10:
        return None
    try:
        return date.fromisoformat(text[:10])
    except ValueError:
        return None


def score_of(observation: dict[str, Any]) -> Score | None:
    """The Score an instrument-total Observation states, or None (not a total, no value, not final)."""
    if observation.get("resourceType") != "Observation":
        return None
    if observation.get("status") not in ("final", "amended", "corrected"):
        return None
    instrument = next((TOTAL_CODES[c] for c in loinc_codes(observation) if c in TOTAL_CODES), None)
    quantity = observation.get("valueQuantity")
    when = clinical_date(observation)
    if instrument is None or not isinstance(quantity, dict) or when is None:
        return None
    value = quantity.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        return None
    subject = (observation.get("subject") or {}).get("reference", "")
    labels = tuple(c["code"] for c in (observation.get("meta") or {}).get("security", ()) if "code" in c)
    return Score(when, f"Observation/{observation['id']}", int(value), instrument, subject, labels)


def scores_of(resources: Iterable[dict[str, Any]]) -> list[Score]:
    found = (score_of(r) for r in resources)
    return sorted(s for s in found if s is not None)
