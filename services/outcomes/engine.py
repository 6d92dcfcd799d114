"""What the outcomes service does with each input, between the pure rules and Kafka: reads the record store,
decides the records to write. No consumer, no producer here: callers hand records in and write what comes out.

Design (how outcome resources reach the record API): the outcomes service is a process of its own. It consumes
the record's change feed (``carebus.record.changes.v1``, published after each store commit: which persons
changed) and reads each changed person's whole history from the record store (so identity links - shared
identifiers, A40 merges, operator links - are the record's own, and never ahead of or behind it). It
publishes its derived resources (Observations, MeasureReports, Tasks, with Provenance/AuditEvent for Task
changes) as Bundles on the bundle topic under the source ``urn:carebus:outcomes``; the record ingests them like
any other bundle (versioned, labelled, searchable, in $everything, replayable). Ids are deterministic, so a
recompute or a replay converges on the same resources; an unchanged resource is not republished. Outcome
changes go to ``carebus.outcomes.v1``, keyed by patient, with deterministic ids.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson

from services.common.event_headers import OUTCOMES_SOURCE as OUTCOMES_CE_SOURCE
from services.common.event_headers import alert_headers, bundle_headers, cloudevent_headers, security_header
from services.common.fhir.codesystems import LOINC, OUTCOMES_CODES, RFC3986
from services.common.kafka import OutboundRecord
from services.common.settings import Settings
from services.common.topics import (
    FHIR_BUNDLES,
    HEADER_SECURITY,
    OUTCOMES,
    SAFETY_ALERTS,
)
from services.outcomes.episodes import (
    OutcomeRules,
    PersonOutcomes,
    Score,
    evaluate_person,
    gad7_rules,
    outcome_id,
    phq9_rules,
)
from services.outcomes.exclusions import (
    EXCLUSION_OBSERVATION_CODES,
    EXCLUSIONS_READ,
    Exclusion,
    HospiceCodes,
    exclusion_of,
)
from services.outcomes.fhir import STATE_DISPLAY, outcome_resources
from services.outcomes.history import GAD7_TOTAL, OUTCOMES_SOURCE, PHQ9_TOTAL, loinc_codes, score_of
from services.outcomes.tasks import (
    UNACKNOWLEDGED,
    Alert,
    due_at,
    escalate,
    escalation_event,
    new_task,
    owner_chain,
    task_id,
)
from services.record.access import ALL_CLEARANCES
from services.record.search import parse_search
from services.record.store.base import EverythingQuery, View
from services.record.store.sql import SqlStore

log = logging.getLogger(__name__)

OUTCOMES_EVENT_TYPE = "org.carebus.outcomes.derived.v1"
TASK_EVENT_TYPE = "org.carebus.safety.task.v1"
OUTCOME_CHANGE_EVENT_TYPE = "org.carebus.outcome.changed.v1"
_ALL = View(ALL_CLEARANCES)
_EPISODE_CODES = (f"{OUTCOMES_CODES}|phq-9-episode", f"{OUTCOMES_CODES}|gad-7-episode")
_SCORE_CODES = (PHQ9_TOTAL, GAD7_TOTAL)
_EXCLUDING_TYPES = frozenset(EXCLUSIONS_READ) - {"Patient", "Observation"}
_READ_OBSERVATION_CODES = frozenset({*_SCORE_CODES, *EXCLUSION_OBSERVATION_CODES})
_PAGE = 1000


def rules_of(settings: Settings) -> OutcomeRules:
    return OutcomeRules(
        phq9=phq9_rules(settings.outcomes_phq9_index_at_least, settings.outcomes_deterioration_points,
                        settings.outcomes_overdue_after_days),
        gad7=gad7_rules(settings.outcomes_gad7_index_at_least, settings.outcomes_gad7_response_percent,
                        settings.outcomes_deterioration_points, settings.outcomes_overdue_after_days),
    )


def clock_of(settings: Settings) -> Callable[[], datetime]:
    offset = timedelta(seconds=settings.outcomes_clock_offset_s)
    return lambda: datetime.now(UTC) + offset


def content_of(body: bytes) -> dict[str, Any]:
    """A stored resource without the record's own meta (versionId, lastUpdated), to compare with ours."""
    resource: dict[str, Any] = orjson.loads(body)
    meta = {k: v for k, v in (resource.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")}
    if meta:
        resource["meta"] = meta
    else:
        resource.pop("meta", None)
    return resource


def bundle_record(prefix: str, key: str, event_id: str, event_type: str, entries: Sequence[dict[str, Any]],
                  now: datetime) -> OutboundRecord:
    labels = sorted({c["code"] for e in entries for c in (e.get("resource") or {}).get("meta", {}).get("security", ())})
    bundle = {"resourceType": "Bundle", "id": event_id, "type": "collection",
              "timestamp": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"), "entry": list(entries)}
    return OutboundRecord(
        topic=FHIR_BUNDLES.name(prefix), key=key, value=orjson.dumps(bundle),
        headers=bundle_headers(event_id, event_id, event_type, event_id, labels, source=OUTCOMES_CE_SOURCE, time=now))


def entry(resource: dict[str, Any]) -> dict[str, Any]:
    return {"fullUrl": f"urn:uuid:{resource['id']}", "resource": resource}


@dataclass
class Recent:
    """A bounded memory of ids already written by this process (suppresses repeats between a write and the
    record ingesting it; the deterministic ids make any repeat that still happens harmless)."""

    size: int = 100_000
    _items: OrderedDict[str, None] = field(default_factory=OrderedDict)

    def add(self, key: str) -> bool:
        """True when ``key`` is new."""
        if key in self._items:
            self._items.move_to_end(key)
            return False
        self._items[key] = None
        if len(self._items) > self.size:
            self._items.popitem(last=False)
        return True


@dataclass
class Output:
    records: list[OutboundRecord] = field(default_factory=list)
    changes: int = 0
    changes_by_kind: dict[str, int] = field(default_factory=dict)


class OutcomesEngine:
    def __init__(self, settings: Settings, store: SqlStore, clock: Callable[[], datetime] | None = None) -> None:
        self.settings = settings
        self.store = store
        self.rules = rules_of(settings)
        self.hospice_codes = HospiceCodes.with_local(settings.outcomes_local_hospice_codings)
        self.clock = clock or clock_of(settings)
        self.prefix = settings.topic_prefix
        self._emitted = Recent()
        self._tasks = Recent()

    # --- histories ------------------------------------------------------------------------------------

    def _search(self, resource_type: str, params: list[tuple[str, str]]) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        offset = 0
        while True:
            query = parse_search(resource_type, [*params, ("_count", str(_PAGE)), ("_offset", str(offset))],
                                 _PAGE, _PAGE)
            page = self.store.search(query, _ALL)
            found.extend(orjson.loads(row.body) for row in page.rows if row.body is not None)
            offset += _PAGE
            if offset >= page.total or not page.rows:
                return found

    def history(self, patient_ref: str) -> list[Score]:
        """Every PHQ-9 / GAD-7 total of the person ``patient_ref`` belongs to (identity links followed)."""
        codes = ",".join(f"{LOINC}|{c}" for c in _SCORE_CODES)
        found = (score_of(o) for o in self._search("Observation", [("patient", patient_ref), ("code", codes)]))
        return sorted(s for s in found if s is not None)

    def exclusions(self, members: Sequence[str]) -> list[Exclusion]:
        """The person's denominator exclusions (services/outcomes/exclusions.py): excluding Conditions, hospice
        and palliative care (Encounters, Procedures, ServiceRequests, assessments), death on any of their
        Patients."""
        if not members:
            return []
        found: list[Exclusion | None] = []
        offset = 0
        while True:  # the person's Conditions, Encounters, Procedures, ServiceRequests ($everything's read)
            query = EverythingQuery(frozenset(members), _EXCLUDING_TYPES, None, _PAGE, offset)
            page = self.store.everything(query, _ALL)
            found.extend(exclusion_of(orjson.loads(r.body), self.hospice_codes) for r in page.rows
                         if r.body is not None)
            offset += _PAGE
            if offset >= page.total or not page.rows:
                break
        codes = ",".join(f"{LOINC}|{c}" for c in EXCLUSION_OBSERVATION_CODES)
        assessments = self._search("Observation", [("patient", members[0]), ("code", codes)])
        found.extend(exclusion_of(o, self.hospice_codes) for o in assessments)
        for ref in members:
            row = self.store.read("Patient", ref.removeprefix("Patient/"))
            if row is not None and row.body is not None:
                found.append(exclusion_of(orjson.loads(row.body), self.hospice_codes))
        return sorted(e for e in found if e is not None)

    def evaluate(self, patient_ref: str, as_of: date | None = None) -> PersonOutcomes:
        return evaluate_person(self.history(patient_ref), as_of or self.clock().date(), self.rules)

    # --- bundles in ---------------------------------------------------------------------------------

    @staticmethod
    def affected_by_change(change: dict[str, Any]) -> set[str]:
        """The patients whose outcomes one record change (``carebus.record.changes.v1``) may change: the person of
        a score or of a resource that may state an exclusion, a Patient's person (identity links may have
        changed), a Linkage's patients."""
        rtype = change.get("resourceType")
        resource = change.get("resource")
        patients: set[str] = set()
        if rtype in _EXCLUDING_TYPES or (rtype == "Observation" and (
                resource is None or set(loinc_codes(resource)) & _READ_OBSERVATION_CODES)):
            # a score or an exclusion (a diagnosis, hospice or palliative care), a deletion (maybe of one), or a
            # new version of one that no longer says so (entered in error, refuted): the person is recomputed
            patients.update(str(m) for m in change.get("members") or ())
            if change.get("patient"):
                patients.add(str(change["patient"]))
        elif rtype == "Patient":
            patients.update(str(m) for m in change.get("members") or ())
            patients.add(f"Patient/{change.get('id')}")
        elif rtype == "Linkage" and isinstance(resource, dict):
            for link in resource.get("item") or ():
                ref = (link.get("resource") or {}).get("reference", "")
                if ref.startswith("Patient/"):
                    patients.add(ref)
        return patients

    def recompute(self, patient_refs: Iterable[str]) -> Output:
        """Recompute the persons of ``patient_refs``; the bundle and outcome-change records to write."""
        out = Output()
        now = self.clock()
        done: set[str] = set()
        for ref in sorted(patient_refs):
            if ref in done:
                continue
            person = self.store.person(ref)
            done.update(person.members)
            self._person(list(person.members) or [ref], now, out)
        return out

    def _person(self, members: Sequence[str], now: datetime, out: Output) -> None:
        ref = members[0]
        outcomes = evaluate_person(self.history(ref), now.date(), self.rules)
        exclusions = self.exclusions(members) if outcomes.of("phq-9") else []
        resources = outcome_resources(outcomes, self.settings.outcomes_reporter, exclusions)
        wanted = {(r["resourceType"], r["id"]): r for r in resources}
        stored_obs = {o["id"]: o for o in self._search("Observation", [("patient", ref),
                                                                       ("code", ",".join(_EPISODE_CODES))])}
        stored_reports = {r["id"]: r for r in self._search("MeasureReport", [("patient", ref)])
                          if any(t.get("code") == "carebus-outcomes" for t in r.get("meta", {}).get("tag", ()))}
        entries: list[dict[str, Any]] = []
        for (rtype, rid), resource in wanted.items():
            stored = (stored_obs if rtype == "Observation" else stored_reports).get(rid)
            if stored is None or content_of(orjson.dumps(stored)) != resource:
                entries.append(entry(resource))
        for rtype, stored_map in (("Observation", stored_obs), ("MeasureReport", stored_reports)):
            for rid in sorted(stored_map):
                if (rtype, rid) not in wanted:  # an episode that no longer exists (e.g. after a merge)
                    entries.append({"request": {"method": "DELETE", "url": f"{rtype}/{rid}"}})
        if entries:
            event_id = outcome_id("outcomes-bundle", *sorted(orjson.dumps(e).decode() for e in entries))
            if self._emitted.add(event_id):
                out.records.append(bundle_record(self.prefix, f"{OUTCOMES_SOURCE}|{ref}", event_id,
                                                 OUTCOMES_EVENT_TYPE, entries, now))
        for episode in outcomes.episodes:
            derived = wanted[("Observation", outcome_id("observation", episode.id))]
            before = stored_obs.get(derived["id"])
            known = {(c["code"]["coding"][0]["code"], c.get("valueDateTime")) for c in (before or {}).get(
                "component", ())}
            labels = security_header(c["code"] for c in derived["meta"]["security"])
            for fact in episode.facts:
                if (fact.kind, fact.when.isoformat()) in known or not self._emitted.add(fact.id):
                    continue
                change = {"id": fact.id, "kind": fact.kind, "instrument": fact.instrument,
                          "patient": episode.index.patient, "episode": f"Observation/{derived['id']}",
                          "state": episode.state, "state_display": STATE_DISPLAY[episode.state],
                          "date": fact.when.isoformat(), "score": fact.score}
                out.records.append(OutboundRecord(
                    topic=OUTCOMES.name(self.prefix), key=episode.index.patient, value=orjson.dumps(change),
                    headers={**cloudevent_headers(fact.id, OUTCOME_CHANGE_EVENT_TYPE, OUTCOMES_CE_SOURCE,
                                                  "application/json", now), HEADER_SECURITY: labels}))
                out.changes += 1
                out.changes_by_kind[fact.kind] = out.changes_by_kind.get(fact.kind, 0) + 1

    def all_patients(self) -> list[str]:
        """One patient reference per person with any score (the sweep's and the benchmark's population)."""
        rows = self.store.current_with_token("Observation", "code", _SCORE_CODES)
        firsts: dict[str, str] = {}
        for person, row in rows:
            if row.patient_ref:
                firsts[person] = min(firsts.get(person, row.patient_ref), row.patient_ref)
        return sorted(firsts.values())

    # --- safety alerts -----------------------------------------------------------------------------------

    def task_for_alert(self, value: dict[str, Any], key: str, labels: Sequence[str]) -> list[OutboundRecord]:
        """The Task bundle for one alert record, or nothing when its Task exists (a resend or a replay)."""
        if value.get("kind") == "escalation":
            return []
        alert = Alert.of(value, key, labels)
        tid = task_id(alert.focus)
        if self.store.read("Task", tid) is not None or not self._tasks.add(tid):
            return []
        chain = owner_chain(self.settings.safety_task_owners, alert.source)
        task = new_task(alert, chain, self.settings.safety_task_due_minutes)
        task["requester"] = {"identifier": {"system": RFC3986, "value": alert.source}}
        return [bundle_record(self.prefix, f"{OUTCOMES_SOURCE}|Task/{tid}", outcome_id("task-created", tid),
                              TASK_EVENT_TYPE, [entry(task)], alert.raised_at)]

    def open_tasks(self) -> list[dict[str, Any]]:
        return self._search("Task", [("status", ",".join(sorted(UNACKNOWLEDGED)))])

    def escalations(self, metrics_gauge: Any | None = None) -> tuple[list[OutboundRecord], list[str]]:
        """Records escalating every unacknowledged Task past its due time, and the kinds escalated. Sets the
        unacknowledged gauge (overdue / not yet due) when given."""
        now = self.clock()
        records: list[OutboundRecord] = []
        kinds: list[str] = []
        overdue = waiting = 0
        for task in self.open_tasks():
            due = due_at(task)
            if due is not None and now > due:
                overdue += 1
            else:
                waiting += 1
            source = str(((task.get("requester") or {}).get("identifier") or {}).get("value", "*"))
            chain = owner_chain(self.settings.safety_task_owners, source)
            escalated = escalate(task, chain, now, self.settings.safety_task_due_minutes)
            if escalated is None:
                continue
            current = self.store.read("Task", str(task["id"]))  # acknowledged meanwhile? then leave it
            if current is None or current.body is None or orjson.loads(current.body)["status"] != task["status"]:
                continue
            tid = str(task["id"])
            escalated.pop("meta", None)
            escalated["meta"] = {"security": task.get("meta", {}).get("security", [])}
            event = escalation_event(escalated, now)
            records.append(bundle_record(self.prefix, f"{OUTCOMES_SOURCE}|Task/{tid}", str(event["event_id"]),
                                         TASK_EVENT_TYPE, [entry(escalated)], now))
            event_id = str(event["event_id"])
            records.append(OutboundRecord(
                topic=SAFETY_ALERTS.name(self.prefix), key=f"{OUTCOMES_SOURCE}|Task/{tid}",
                value=orjson.dumps(event),
                headers=alert_headers(event_id, event_id, TASK_EVENT_TYPE, event_id,
                                      [c["code"] for c in escalated["meta"]["security"]],
                                      source=OUTCOMES_CE_SOURCE, time=now)))
            kinds.append(next((c["code"] for c in task["code"]["coding"]), "risk-flag"))
        if metrics_gauge is not None:
            metrics_gauge.labels(due="overdue").set(overdue)
            metrics_gauge.labels(due="not-yet-due").set(waiting)
        return records, kinds
