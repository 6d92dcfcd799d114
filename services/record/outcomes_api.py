"""Record API routes for outcomes and safety work (an APIRouter included before the generic routes):

* ``GET /Measure``, ``GET /Measure/{id}``: the two outcome Measures (services/outcomes/fhir.py), built from code;
  searchable by ``_id``, ``url``, ``version``, ``status``, ``name`` and ``title`` (an unknown parameter is a 400).
* ``GET|POST /Measure/{id}/$evaluate-measure`` with ``periodStart``, ``periodEnd`` (required) and optionally
  ``subject`` (Patient/<id>) and ``reportType`` (``population`` | ``subject``; default ``subject`` when a subject
  is named, as FHIR's operation defines): a DEQM Summary (or Individual) MeasureReport computed on read from the
  record's PHQ-9 totals and denominator exclusions (services/outcomes/exclusions.py), with the same rules the
  outcomes service uses. Only scores and exclusions the token may see count (its disclosure grants and patient
  compartment). The parsed scores are kept between calls (services/outcomes/population.py): a call reads only the
  store's index of current versions and the bodies it has not parsed yet.
* ``PUT /Task/{id}``: acknowledge / progress / close a safety Task: the body is the Task with the new
  ``status`` and ``owner`` = the acting Practitioner (note optional; nothing else may change). Needs a
  ``system/`` or ``user/`` Task write scope and the clearance of the Task's labels. The new version is written to
  the bundle topic with a Provenance and an AuditEvent (who, what, when), and answered once the record has it.
* ``GET /Patient/{id}`` with ``Accept: text/html`` (a browser): the clinician's page (services/record/
  clinician_page.py), from exactly what the token may see; ``GET /clinic`` (HTML): open safety Tasks and
  overdue follow-ups. Other clients of ``/Patient/{id}`` get FHIR JSON from the generic routes.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from datetime import date
from typing import Any, Final

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.routing import Match
from starlette.types import Scope

from services.common.kafka import OutboundRecord
from services.common.topics import FHIR_BUNDLES
from services.outcomes.engine import TASK_EVENT_TYPE, bundle_record, entry, rules_of
from services.outcomes.episodes import evaluate_person
from services.outcomes.fhir import (
    MEASURE_SEARCH_PARAMS,
    MEASURES,
    MEASURES_BY_ID,
    Judgement,
    MeasureSpec,
    PersonFacts,
    count_judgements,
    index_episode,
    individual_report,
    judge,
    measure_resource,
    population_counts,
    summary_report,
)
from services.outcomes.history import GAD7_TOTAL, OUTCOMES_SOURCE, PHQ9_TOTAL, scores_of
from services.outcomes.population import Pair, PersonEntry, PopulationIndex
from services.outcomes.tasks import TaskChangeRefused, audit_records, change_status
from services.record import render
from services.record.clinician_page import clinic_page, patient_page
from services.record.errors import BadRequest, Forbidden, ResourceNotFound, StoreUnavailable, UnknownParameter
from services.record.search import parse_search
from services.record.store.base import EverythingQuery

log = logging.getLogger(__name__)

_EVALUATE_PARAMS = frozenset({"periodStart", "periodEnd", "subject", "reportType", "_format"})
_WRITE_WAIT_S = 15.0


def _fhir(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=render.FHIR_JSON)


def _outcome(status: int, code: str, message: str) -> Response:
    return _fhir(render.operation_outcome("error", code, message), status)


# Measure search (MEASURE_SEARCH_PARAMS, which the CapabilityStatement lists): exact values (``name`` and ``title``
# match case-insensitively from the start, as FHIR string parameters do); several parameters are ANDed
_MEASURE_PARAMS: Final = frozenset(name for name, _ in MEASURE_SEARCH_PARAMS)
_MEASURE_FORMAT_PARAMS = frozenset({"_format", "_pretty", "_count"})  # two Measures: one page whatever _count


def _measure_value(measure: dict[str, Any], name: str) -> set[str]:
    """The values of ``measure`` a search for ``name`` matches against (strings: every prefix, lower-cased)."""
    value = str(measure.get("id" if name == "_id" else name, ""))
    if name in ("name", "title"):
        folded = value.lower()
        return {folded[:n] for n in range(1, len(folded) + 1)}
    return {value}


def _date_param(params: dict[str, str], name: str) -> date:
    value = params.get(name)
    if not value:
        raise BadRequest(f"$evaluate-measure needs {name} (a date, YYYY-MM-DD)")
    try:
        return date.fromisoformat(value[:10])
    except ValueError as exc:
        raise BadRequest(f"{name} must be a date (YYYY-MM-DD)") from exc


def build_router(api: Any) -> APIRouter:
    """``api``: the :class:`services.record.api.RecordApi` (store, tokens, settings, publish, clock)."""
    router = APIRouter()
    rules = rules_of(api.settings)
    population: PopulationIndex = api.population  # warmed at start-up (services/record/service.py)

    def spec_of(measure_id: str) -> MeasureSpec:
        spec = MEASURES_BY_ID.get(measure_id)
        if spec is None:
            raise ResourceNotFound(f"Measure/{measure_id} is not known")
        return spec

    @router.get("/Measure")
    def measures(request: Request) -> Response:
        access = api.authenticate(request)
        access.require_read("Measure")
        wanted: dict[str, set[str]] = {}
        for name, value in request.query_params.multi_items():
            if name in _MEASURE_FORMAT_PARAMS:
                continue
            if name not in _MEASURE_PARAMS:
                raise UnknownParameter(f"unknown search parameter '{name}' for Measure")
            folded = value.lower() if name in ("name", "title") else value
            wanted.setdefault(name, set()).update(v for v in folded.split(",") if v)  # a comma: any of them
        found = [m for m in map(measure_resource, MEASURES)
                 if all(_measure_value(m, name) & values for name, values in wanted.items())]
        base = api.base_url(request)
        bundle = {"resourceType": "Bundle", "id": str(uuid.uuid4()), "type": "searchset", "total": len(found),
                  "link": [{"relation": "self", "url": f"{base}/Measure"}],
                  "entry": [{"fullUrl": f"{base}/Measure/{m['id']}", "resource": m, "search": {"mode": "match"}}
                            for m in found]}
        return _fhir(bundle)

    @router.get("/Measure/{measure_id}")
    def measure(measure_id: str, request: Request) -> Response:
        access = api.authenticate(request)
        access.require_read("Measure")
        return _fhir(measure_resource(spec_of(measure_id)))

    def evaluate(measure_id: str, request: Request, params: Sequence[tuple[str, str]]) -> Response:
        access = api.authenticate(request)
        access.require_read("MeasureReport")
        access.require_read("Observation")
        spec = spec_of(measure_id)
        for name, _ in params:
            if name not in _EVALUATE_PARAMS:
                raise BadRequest(f"unsupported parameter '{name}' for $evaluate-measure")
        values = dict(params)
        start, end = _date_param(values, "periodStart"), _date_param(values, "periodEnd")
        if end < start:
            raise BadRequest("periodEnd is before periodStart")
        subject = values.get("subject")
        report_type = values.get("reportType", "subject" if subject else "population")
        if report_type not in ("population", "subject"):
            raise BadRequest("reportType must be population or subject")
        if report_type == "subject" and not subject:
            raise BadRequest("reportType=subject needs a subject (Patient/<id>)")
        compartment = api.compartment(access)
        members: frozenset[str] | None = None
        if subject:
            if not subject.startswith("Patient/"):
                raise BadRequest("subject must be Patient/<id>")
            members = frozenset(api.store.person(subject).members)
            if compartment is not None and not members & compartment:
                raise Forbidden("the subject is outside the token's patient compartment")
        assert api.gate is not None
        grants = api.gate.grants(access, members)  # the disclosure decision (consent and labels) per person

        allowed: dict[Pair, bool] = {}

        def may_see(pair: Pair) -> bool:
            found = allowed.get(pair)
            if found is None:
                patient_ref, restriction = pair
                found = (grants.grant_of(patient_ref).permits(restriction)
                         and (compartment is None or patient_ref in compartment)
                         and (members is None or patient_ref in members))
                allowed[pair] = found
            return found

        as_of = api.clock().date()
        organization = api.settings.outcomes_reporter
        generated = api.clock().isoformat(timespec="seconds").replace("+00:00", "Z")
        visible: list[tuple[PersonEntry, frozenset[Pair]]] = []
        for person in population.persons((PHQ9_TOTAL,)):
            if members is not None and members.isdisjoint(person.patients):
                continue
            seen = frozenset(p for p in person.pairs if may_see(p))
            if any(p in seen for p in person.score_pairs):
                visible.append((person, seen))
        if report_type == "subject":
            persons = [(evaluate_person(facts.scores, as_of, rules), facts.exclusions)
                       for facts in (p.facts(seen) for p, seen in sorted(visible, key=lambda v: v[0].person))]
            found_episode = next(((e, x) for p, x in persons if (e := index_episode(spec, p, start, end)) is not None),
                                 None)
            if found_episode is not None:
                episode, excluded = found_episode
                report = individual_report(spec, episode, organization, excluded, since=start)
                report["id"] = str(uuid.uuid4())
                report["period"] = {"start": start.isoformat(), "end": end.isoformat()}
                return _fhir(report)
            counts = population_counts(spec, [], start, end, as_of, rules.phq9)
            report = summary_report(spec, counts, start, end, generated, organization, str(uuid.uuid4()))
            report.update(type="individual", subject={"reference": subject}, status="complete")
            report["group"][0]["measureScore"] = {"value": 0.0}
            return _fhir(report)

        def judged(facts: PersonFacts) -> Judgement:
            return judge(spec.window, facts, start, end, as_of, rules.phq9)

        key = (spec.window, start, end, as_of)
        counts = count_judgements(spec, (person.judged(seen, key, judged) for person, seen in visible))
        return _fhir(summary_report(spec, counts, start, end, generated, organization, str(uuid.uuid4())))

    @router.get("/Measure/{measure_id}/$evaluate-measure")
    def evaluate_get(measure_id: str, request: Request) -> Response:
        return evaluate(measure_id, request, request.query_params.multi_items())

    @router.post("/Measure/{measure_id}/$evaluate-measure")
    async def evaluate_post(measure_id: str, request: Request) -> Response:
        params: list[tuple[str, str]] = list(request.query_params.multi_items())
        raw = await request.body()
        if raw:
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise BadRequest("the body must be a FHIR Parameters resource") from exc
            if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
                raise BadRequest("the body must be a FHIR Parameters resource")
            for p in body.get("parameter") or ():
                value = next((v for k, v in p.items() if k.startswith("value")), None)
                if isinstance(p, dict) and isinstance(p.get("name"), str) and isinstance(value, str):
                    params.append((p["name"], value))
        return await run_in_threadpool(evaluate, measure_id, request, params)

    # --- safety Tasks: acknowledge / close ------------------------------------------------------------

    @router.put("/Task/{task_id}")
    async def update_task(task_id: str, request: Request) -> Response:
        access = api.authenticate(request)
        access.require_write("Task")
        if api.publish is None:
            raise StoreUnavailable("no Kafka producer configured")
        row = api.store.read("Task", task_id)
        if row is None or row.body is None:
            raise ResourceNotFound(f"Task/{task_id} is not known")
        api.check_row(access, row, api.compartment(access), "read", request, f"Task/{task_id} is not known")
        if_match = request.headers.get("if-match")
        if if_match and if_match.strip().removeprefix("W/").strip('"') != str(row.version_id):
            return _outcome(412, "conflict", "the Task has changed since that version (If-Match)")
        try:
            requested = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _outcome(400, "invalid", "the body must be a FHIR Task (JSON)")
        current = orjson.loads(row.body)
        current_meta = {k: v for k, v in current.get("meta", {}).items() if k not in ("versionId", "lastUpdated")}
        current["meta"] = current_meta
        if isinstance(requested, dict) and isinstance(requested.get("meta"), dict):
            requested = {**requested, "meta": current_meta}
        now = api.clock()
        try:
            updated = change_status(current, requested if isinstance(requested, dict) else {}, now)
        except TaskChangeRefused as exc:
            return _outcome(409 if exc.conflict else 422, "business-rule" if exc.conflict else "invalid",
                            exc.message)
        if updated == current:
            return _fhir(orjson.loads(row.body))
        practitioner = updated["owner"]["reference"]
        audit = audit_records(updated, row.version_id + 1, practitioner, now, access.label)
        event_id = str(uuid.uuid4())
        record: OutboundRecord = bundle_record(
            api.settings.topic_prefix, f"{OUTCOMES_SOURCE}|Task/{task_id}", event_id, TASK_EVENT_TYPE,
            [entry(updated), *(entry(a) for a in audit)], now)
        assert record.topic == FHIR_BUNDLES.name(api.settings.topic_prefix)
        await api.publish([record])
        log.info("safety task updated", extra={"task": task_id, "status": updated["status"], "event_id": event_id})
        deadline = time.monotonic() + _WRITE_WAIT_S
        while time.monotonic() < deadline:
            stored = await run_in_threadpool(api.store.read, "Task", task_id)
            if stored is not None and stored.version_id > row.version_id and stored.body is not None:
                return Response(stored.body, media_type=render.FHIR_JSON,
                                headers={"ETag": f'W/"{stored.version_id}"'})
            await _sleep(0.02)
        return _fhir(updated, 202)  # durable in Kafka; the record has not ingested it yet

    _page_routes(router, api, rules, population)
    return router


class HtmlRoute(APIRoute):
    """Matches only requests that ask for HTML (a browser's Accept), so the same path still answers FHIR JSON
    through the generic routes for every other client."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match == Match.NONE:
            return match, child
        accept = dict(scope.get("headers") or ()).get(b"accept", b"").decode(errors="replace")
        if "text/html" not in accept:
            return Match.NONE, {}
        return match, child


def _page_routes(router: APIRouter, api: Any, rules: Any, population: PopulationIndex) -> None:
    html_router = APIRouter(route_class=HtmlRoute)

    @html_router.get("/Patient/{patient_id}")
    def patient_html(patient_id: str, request: Request) -> Response:
        access = api.authenticate(request)
        access.require_read("Patient")
        row = api.store.read("Patient", patient_id)
        if row is None or row.body is None:
            raise ResourceNotFound(f"Patient/{patient_id} is not known")
        compartment = api.compartment(access)
        api.check_row(access, row, compartment, "read", request, f"Patient/{patient_id} is not known")
        members = frozenset(api.store.person(f"Patient/{patient_id}").members)
        if compartment is not None:
            members &= compartment
        grants = api.gate.grants(access, members)  # consent and labels, as $everything decides them
        page = api.store.everything(EverythingQuery(members, None, None, 10_000, 0), grants.view(compartment))
        api.audit_page(access, grants, "read", page.rows, request, query=False)
        resources = [orjson.loads(r.body) for r in page.rows
                     if r.body is not None and access.may_read(r.resource_type)]
        today = api.clock().date()
        outcomes = evaluate_person(scores_of(resources), today, rules)
        html = patient_page(orjson.loads(row.body), resources, outcomes, today)
        return HTMLResponse(html)

    @html_router.get("/clinic")
    def clinic_html(request: Request) -> Response:
        access = api.authenticate(request)
        access.require_read("Task")
        access.require_read("Observation")
        compartment = api.compartment(access)
        query = parse_search("Task", [("status", "requested,received,accepted,in-progress,on-hold"),
                                      ("_count", "1000")], 1000, 1000)
        grants = api.gate.grants(access, compartment)
        found = api.store.search(query, grants.view(compartment)).rows
        api.audit_page(access, grants, "search-type", found, request, query=False)
        tasks = [orjson.loads(r.body) for r in found if r.body is not None]
        today = api.clock().date()

        def may_see(pair: Pair) -> bool:
            patient_ref, restriction = pair
            return grants.grant_of(patient_ref).permits(restriction) and (
                compartment is None or patient_ref in compartment)

        def overdue_of(facts: PersonFacts) -> list[tuple[str, str, str]]:
            return [(e.index.patient, e.instrument, str(e.follow_up_due))
                    for e in evaluate_person(facts.scores, today, rules).episodes if e.follow_up_overdue]

        overdue: list[tuple[str, str, str]] = []
        for person in population.persons((PHQ9_TOTAL, GAD7_TOTAL)):
            seen = frozenset(p for p in person.score_pairs if may_see(p))
            if seen:
                overdue.extend(person.judged(seen, ("overdue", today), overdue_of))
        return HTMLResponse(clinic_page(tasks, sorted(overdue, key=lambda o: o[2]), today))

    router.include_router(html_router)


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)
