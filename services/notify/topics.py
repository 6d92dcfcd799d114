"""The subscription topics carebus publishes, and which record changes trigger them (pure).

Every topic has a canonical URL under :data:`TOPIC_BASE`, the resource type it is about (the notification's
focus), the filter parameters a subscription may use (``backport-filter-criteria``), and a trigger: a function of
the change and the focus's previous state (:func:`state_of` the version before; ``None`` when the resource is
new). A change triggers a topic at most once; a replayed change triggers the same topics again (the notify store
de-duplicates by subscription, topic and resource version).

The table is the documentation: services/notify/README.md lists it, the record API's CapabilityStatement names
every canonical, and ``GET /Subscription`` validation refuses anything else.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, get_args

import orjson

from services.common.fhir.codesystems import OUTCOMES_CODES, SAFETY_TASK_CODES
from services.common.fhir.instruments import INSTRUMENTS
from services.common.topics import CHANGE_KINDS, ChangeKind, OutcomeChangeKind

TOPIC_BASE = "https://carebus.dev/fhir/SubscriptionTopic/"
SUICIDE_RISK_SNOMED = "225444004"
ASSESSMENT_TOTAL_CODES = frozenset(spec.total_loinc for spec in INSTRUMENTS.values())

@dataclass(frozen=True)
class Change:
    """One message of the record's change feed (services/record/changes.py)."""

    resource_type: str
    id: str
    version_id: int
    last_updated: str
    kind: ChangeKind
    patient: str | None
    person: str | None
    members: tuple[str, ...]
    security: tuple[str, ...]
    restriction: int
    resource: Mapping[str, Any] | None = field(default=None, compare=False)

    @property
    def focus(self) -> str:
        return f"{self.resource_type}/{self.id}"

    @property
    def versioned_focus(self) -> str:
        return f"{self.resource_type}/{self.id}/_history/{self.version_id}"


class MalformedChange(ValueError):
    """A change-feed message that is not one (its position is logged; it is skipped)."""


def parse_change(value: bytes) -> Change:
    try:
        data = orjson.loads(value)
        if data["change"] not in CHANGE_KINDS:
            raise ValueError("unknown change kind")
        return Change(
            resource_type=str(data["resourceType"]),
            id=str(data["id"]),
            version_id=int(data["versionId"]),
            last_updated=str(data["lastUpdated"]),
            kind=data["change"],
            patient=data.get("patient"),
            person=data.get("person"),
            members=tuple(data.get("members") or ()),
            security=tuple(data.get("security") or ()),
            restriction=int(data.get("restriction") or 0),
            resource=data.get("resource"),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise MalformedChange(type(exc).__name__) from exc


# --- the resource's state a trigger compares ---------------------------------------------------------------


def state_of(change: Change) -> str:
    """The part of a version the triggers compare with the version before (a short code, never PHI)."""
    resource = change.resource
    if change.kind == "deleted" or resource is None:
        return "deleted"
    if change.resource_type == "Patient":
        links = resource.get("link") or ()
        merged = any(isinstance(link, dict) and link.get("type") == "replaced-by" for link in links)
        return "merged" if merged else "active"
    if change.resource_type == "DocumentReference":
        return f"{resource.get('status', '')}/{resource.get('docStatus', '')}"
    if change.resource_type == "Observation" and any(s == OUTCOMES_CODES for s, _ in _codings(resource.get("code"))):
        return _outcome_facts(resource)
    status = resource.get("status")
    return status if isinstance(status, str) else ""


_OUTCOME_FACTS = frozenset(get_args(OutcomeChangeKind))


def _outcome_facts(resource: Mapping[str, Any]) -> str:
    """A derived episode Observation's state: how many of each outcome fact it records (its dated components,
    services/outcomes/fhir.py), e.g. ``outcome:deterioration=1,episode-started=1``."""
    counts = Counter(code for component in resource.get("component") or ()
                     if isinstance(component, dict) and "valueDateTime" in component
                     for system, code in _codings(component.get("code"))
                     if system == OUTCOMES_CODES and code in _OUTCOME_FACTS)
    return "outcome:" + ",".join(f"{kind}={n}" for kind, n in sorted(counts.items()))


def _fact_count(state: str | None, kind: str) -> int:
    if not state or not state.startswith("outcome:"):
        return 0
    for part in state.removeprefix("outcome:").split(","):
        name, _, n = part.partition("=")
        if name == kind and n.isdigit():
            return int(n)
    return 0


# --- filter values -----------------------------------------------------------------------------------------


def _codings(value: Any) -> Iterator[tuple[str, str]]:
    for concept in value if isinstance(value, list) else [value]:
        if isinstance(concept, dict):
            for coding in concept.get("coding") or ():
                if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                    yield str(coding.get("system") or ""), coding["code"]


def _field_codes(*paths: str) -> Callable[[Mapping[str, Any]], list[tuple[str, str]]]:
    def extract(resource: Mapping[str, Any]) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for path in paths:
            value: Any = resource
            for part in path.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            if isinstance(value, dict) and "system" in value and "code" in value and "coding" not in value:
                out.append((str(value.get("system") or ""), str(value.get("code"))))  # a Coding (Encounter.class)
            else:
                out.extend(_codings(value))
        return out

    return extract


@dataclass(frozen=True)
class FilterParam:
    name: str
    description: str
    codes: Callable[[Mapping[str, Any]], list[tuple[str, str]]] | None = None  # None: the patient filter


PATIENT = FilterParam("patient", "Patient/<id> (any Patient of the person: identity links and merges are followed)")


def _code(description: str, *paths: str) -> FilterParam:
    return FilterParam("code", description, _field_codes(*paths))


def _category(description: str, *paths: str) -> FilterParam:
    return FilterParam("category", description, _field_codes(*paths))


# --- the topics ----------------------------------------------------------------------------------------------

Trigger = Callable[[Change, str | None], bool]


@dataclass(frozen=True)
class Topic:
    name: str
    title: str
    description: str
    resource_type: str
    trigger_description: str
    trigger: Trigger
    filters: tuple[FilterParam, ...]

    @property
    def canonical(self) -> str:
        return TOPIC_BASE + self.name

    def filter(self, name: str) -> FilterParam | None:
        return next((f for f in self.filters if f.name == name), None)


def _became(*states: str) -> Trigger:
    """The resource is (now) in one of ``states`` and was not before (a new resource counts)."""
    wanted = frozenset(states)
    return lambda change, previous: state_of(change) in wanted and previous not in wanted


def _assessment(change: Change, previous: str | None) -> bool:
    resource = change.resource
    if resource is None or state_of(change) not in ("final", "amended", "corrected"):
        return False
    if previous in ("final", "amended", "corrected"):
        return False
    return any(code in ASSESSMENT_TOTAL_CODES for _, code in _codings(resource.get("code")))


def _safety_alert(change: Change, previous: str | None) -> bool:
    resource = change.resource
    if resource is None or state_of(change) != "active" or previous == "active":
        return False
    return any(code == SUICIDE_RISK_SNOMED for _, code in _codings(resource.get("code")))


def _medication_changed(change: Change, previous: str | None) -> bool:
    """An active prescription changed (dose, route ...), or a new one replaces an earlier one."""
    if change.resource is None or state_of(change) != "active":
        return False
    if previous == "active":
        return True
    return previous is None and bool(change.resource.get("priorPrescription"))


def _medication_prescribed(change: Change, previous: str | None) -> bool:
    if change.resource is None or state_of(change) != "active" or previous == "active":
        return False
    return not change.resource.get("priorPrescription")  # a replacement is a change, not a new prescription


def _diagnosis(change: Change, previous: str | None) -> bool:
    return change.kind != "deleted" and previous is None


_SIGNED = ("current/final", "current/amended", "current/")  # no docStatus: the sender did not say otherwise


def _note_signed(change: Change, previous: str | None) -> bool:
    return state_of(change) in _SIGNED and previous not in _SIGNED


def _care_plan(change: Change, previous: str | None) -> bool:
    return change.kind != "deleted"


def _coded(change: Change, system: str) -> bool:
    if change.kind == "deleted" or change.resource is None:
        return False
    return any(system == s for s, _ in _codings(change.resource.get("code")))


def _outcome_changed(change: Change, previous: str | None) -> bool:
    return _coded(change, OUTCOMES_CODES)


def _outcome_reached(kind: OutcomeChangeKind) -> Trigger:
    """A derived episode Observation records one more ``kind`` fact than its version before (a recompute or a
    replay that records the same facts triggers nothing; a second deterioration does)."""
    return lambda change, previous: (_outcome_changed(change, previous)
                                     and _fact_count(state_of(change), kind) > _fact_count(previous, kind))


def _safety_task(change: Change, previous: str | None) -> bool:
    return _coded(change, SAFETY_TASK_CODES)


# the outcome changes of carebus.outcomes.v1 a subscriber may ask for one by one (services/outcomes/episodes.py)
_OUTCOME_TOPICS: tuple[tuple[OutcomeChangeKind, str, str], ...] = (
    ("response-reached", "Response reached",
     "A PHQ-9 / GAD-7 episode reached response (a score at least 50 % below the index; GAD-7: its configured %)."),
    ("remission-reached", "Remission reached", "A PHQ-9 / GAD-7 episode reached remission (a score below 5)."),
    ("deterioration", "Deterioration", "A score rose 5 or more points above the previous one of the instrument."),
    ("follow-up-overdue", "Follow-up overdue",
     "No follow-up score came within the configured days (30) of a follow-up window opening."),
)

TOPICS: tuple[Topic, ...] = (
    Topic("encounter-started", "Encounter started", "A visit, session or admission has begun.", "Encounter",
          "Encounter status becomes in-progress (created so, or changed to it)",
          _became("in-progress"),
          (PATIENT, FilterParam("class", "Encounter.class (v3 ActCode: AMB, IMP, VR ...)",
                                _field_codes("class")),
           _code("Encounter.type (SNOMED CT)", "type"))),
    Topic("encounter-finished", "Encounter finished", "A visit, session or admission has ended.", "Encounter",
          "Encounter status becomes finished",
          _became("finished"),
          (PATIENT, FilterParam("class", "Encounter.class (v3 ActCode: AMB, IMP, VR ...)",
                                _field_codes("class")),
           _code("Encounter.type (SNOMED CT)", "type"))),
    Topic("assessment-completed", "Assessment completed",
          "A scored instrument (PHQ-9, PHQ-2, GAD-7, C-SSRS screener, AUDIT-C) was completed: the focus is the "
          "total-score Observation (valueQuantity = the score, interpretation = the severity band; C-SSRS: the "
          "risk level).", "Observation",
          "Observation with an instrument's total code (LOINC 44261-6, 55758-7, 70274-6, 93374-7, 75626-2) "
          "becomes final / amended / corrected",
          _assessment,
          (PATIENT, _code("Observation.code: the instrument's total (LOINC, e.g. 44261-6 for PHQ-9)", "code"))),
    Topic("safety-alert-raised", "Safety alert raised",
          "A suicide-risk safety flag was raised (PHQ-9 item 9 above 0, a high-risk C-SSRS screen, a risk flag "
          "from the sending system).", "Flag",
          "Flag with SNOMED CT 225444004 (at risk for suicide) becomes active",
          _safety_alert,
          (PATIENT, _code("Flag.code (SNOMED CT)", "code"), _category("Flag.category", "category"))),
    Topic("medication-prescribed", "Medication prescribed", "A new prescription.", "MedicationRequest",
          "MedicationRequest becomes active, without priorPrescription",
          _medication_prescribed,
          (PATIENT, _code("MedicationRequest.medicationCodeableConcept (RxNorm)", "medicationCodeableConcept"))),
    Topic("medication-changed", "Medication changed",
          "An active prescription changed (dose, frequency, route), or a new one replaces an earlier one.",
          "MedicationRequest",
          "active MedicationRequest updated while active, or created active with priorPrescription",
          _medication_changed,
          (PATIENT, _code("MedicationRequest.medicationCodeableConcept (RxNorm)", "medicationCodeableConcept"))),
    Topic("medication-stopped", "Medication stopped", "A prescription was discontinued.", "MedicationRequest",
          "MedicationRequest status becomes stopped, cancelled, completed or entered-in-error",
          _became("stopped", "cancelled", "completed", "entered-in-error"),
          (PATIENT, _code("MedicationRequest.medicationCodeableConcept (RxNorm)", "medicationCodeableConcept"))),
    Topic("referral-created", "Referral created", "A referral (ServiceRequest) was made.", "ServiceRequest",
          "ServiceRequest becomes active",
          _became("active"),
          (PATIENT, _code("ServiceRequest.code", "code"), _category("ServiceRequest.category", "category"))),
    Topic("referral-closed", "Referral closed", "A referral was completed or revoked.", "ServiceRequest",
          "ServiceRequest status becomes completed, revoked or entered-in-error",
          _became("completed", "revoked", "entered-in-error"),
          (PATIENT, _code("ServiceRequest.code", "code"), _category("ServiceRequest.category", "category"))),
    Topic("diagnosis-recorded", "Diagnosis recorded", "A diagnosis (Condition) was recorded.", "Condition",
          "Condition created",
          _diagnosis,
          (PATIENT, _code("Condition.code (ICD-10-CM, SNOMED CT)", "code"),
           _category("Condition.category (problem-list-item, encounter-diagnosis)", "category"))),
    Topic("note-signed", "Note signed", "A clinical note was signed (DocumentReference current and final).",
          "DocumentReference",
          "DocumentReference becomes status current with docStatus final, amended or absent (not preliminary)",
          _note_signed,
          (PATIENT, _code("DocumentReference.type (LOINC)", "type"),
           _category("DocumentReference.category", "category"))),
    Topic("care-plan-updated", "Care plan updated", "A care plan was created or changed.", "CarePlan",
          "CarePlan created or updated",
          _care_plan,
          (PATIENT, _category("CarePlan.category", "category"))),
    Topic("patient-merged", "Patient merged",
          "Two patient records were merged (HL7 A40): the retired record now points to the survivor.", "Patient",
          "Patient gets a link of type replaced-by",
          _became("merged"),
          (PATIENT,)),
    # outcomes (services/outcomes): derived episode Observations and safety Tasks
    Topic("outcome-changed", "Outcome changed",
          "A person's outcome for a PHQ-9 or GAD-7 episode changed (started, responding, remitted, deterioration, "
          "follow-up overdue): the focus is the derived episode Observation (value = the state, derivedFrom = the "
          "scores).", "Observation",
          "Observation with a code of urn:carebus:codesystem:outcomes gets a new version",
          _outcome_changed,
          (PATIENT, _code("Observation.code (phq-9-episode, gad-7-episode)", "code"))),
    *(Topic(f"outcome-{kind}", title, f"{description} The focus is the derived episode Observation.", "Observation",
            f"a derived episode Observation (urn:carebus:codesystem:outcomes) records a new {kind} fact",
            _outcome_reached(kind),
            (PATIENT, _code("Observation.code (phq-9-episode, gad-7-episode)", "code")))
      for kind, title, description in _OUTCOME_TOPICS),
    Topic("safety-task-changed", "Safety task changed",
          "A safety Task was created from an alert, escalated, acknowledged or closed.", "Task",
          "Task with a code of urn:carebus:codesystem:safety-task gets a new version",
          _safety_task,
          (PATIENT,)),
)

BY_CANONICAL: dict[str, Topic] = {t.canonical: t for t in TOPICS}
TYPES_WITH_TOPICS = frozenset(t.resource_type for t in TOPICS)


def triggered(change: Change, previous: str | None) -> list[Topic]:
    """The topics this change triggers (the pure heart of notify)."""
    if change.resource_type not in TYPES_WITH_TOPICS:
        return []
    return [t for t in TOPICS if t.resource_type == change.resource_type and t.trigger(change, previous)]


# --- filters -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Filter:
    """One parsed ``backport-filter-criteria``: ``name=value[,value]`` (token values ``system|code`` or
    ``code``). Filters are ANDed; the values of one filter are ORed."""

    name: str
    values: tuple[str, ...]

    def text(self, resource_type: str) -> str:
        return f"{resource_type}?{self.name}={','.join(self.values)}"


def parse_filter(topic: Topic, text: str) -> Filter:
    """Parse ``[Type?]name=value`` for ``topic``; raises ValueError naming what is wrong."""
    body = text.strip()
    if "?" in body:
        rtype, _, body = body.partition("?")
        if rtype != topic.resource_type:
            raise ValueError(f"filters of topic {topic.name} are on {topic.resource_type}, not {rtype}")
    name, sep, value = body.partition("=")
    if not sep or not value:
        raise ValueError("a filter is name=value")
    if "&" in value:
        raise ValueError("one filter per backport-filter-criteria extension")
    if topic.filter(name) is None:
        allowed = ", ".join(f.name for f in topic.filters)
        raise ValueError(f"topic {topic.name} supports the filters {allowed}, not {name}")
    values = tuple(v.strip() for v in value.split(",") if v.strip())
    if name == "patient":
        values = tuple(v if v.startswith("Patient/") else f"Patient/{v}" for v in values)
    return Filter(name, values)


def matches(topic: Topic, filters: Sequence[Filter], change: Change) -> bool:
    for f in filters:
        if f.name == "patient":
            if not set(f.values) & set(change.members or ((change.patient,) if change.patient else ())):
                return False
            continue
        param = topic.filter(f.name)
        if param is None or param.codes is None or change.resource is None:
            return False
        codes = param.codes(change.resource)
        if not any(_token_match(v, codes) for v in f.values):
            return False
    return True


def _token_match(value: str, codes: Sequence[tuple[str, str]]) -> bool:
    if "|" in value:
        system, _, code = value.partition("|")
        return any((not system or s == system) and c == code for s, c in codes)
    return any(c == value for _, c in codes)
