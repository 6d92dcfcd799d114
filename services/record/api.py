"""The record's FHIR R4 REST API (FastAPI): read, vread, history, search, Patient/$everything,
CapabilityStatement, identity administration, and the operational routes.

Every FHIR answer is application/fhir+json; every error is an OperationOutcome with its status (400 bad
parameter, 401 no/unknown token, 403 scope / clearance / a search naming a patient outside the token's
compartment, 404 unknown - and a resource outside the compartment or withheld from an uncleared caller, with
the same text -, 410 deleted, 503 store down).
Handlers are thin: parse (services/record/search.py), check access (access.py), ask the store, render
(render.py). Handlers are synchronous functions (FastAPI runs them in its thread pool) because the stores are
blocking DB-API clients; only the admin writes, which wait for Kafka acks, are async.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any, NoReturn
from urllib.parse import parse_qsl

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common import part2
from services.common.audit import Interaction
from services.common.disclosure import DEFAULT_POLICY
from services.common.errors import BrokerUnavailable, InvalidInput
from services.common.event_headers import RECORD_SOURCE, bundle_headers
from services.common.http import add_operational_routes
from services.common.kafka import OutboundRecord
from services.common.metrics import Metrics
from services.common.settings import Settings
from services.common.topics import (
    FHIR_BUNDLES,
)
from services.outcomes.exclusions import HospiceCodes
from services.outcomes.population import PopulationIndex
from services.record import disclosures, render
from services.record.access import PART2, PRIVATE_TYPES, Access, TokenRegistry, describe_restriction
from services.record.admin import ADMIN_SOURCE, LINKAGE_EVENT_TYPE, LinkRequest, command_of, linkage_bundle
from services.record.capability import ADMIN_TYPES, capability_statement
from services.record.contract_routes import contract_router
from services.record.denials import DeniedAttempts
from services.record.disclosure_routes import disclosure_router
from services.record.disclosures import AuditSink, CallerGrants, DisclosureGate
from services.record.errors import (
    BadRequest,
    Forbidden,
    RecordAccessError,
    ResourceGone,
    ResourceNotFound,
    StoreUnavailable,
    UnknownParameter,
)
from services.record.fhirdates import instant_ms
from services.record.identity import overlay_links
from services.record.indexing import SEARCH_PARAMETERS
from services.record.outcomes_api import build_router as outcomes_router
from services.record.search import PatientCriterion, parse_paging, parse_search, refuse_forbidden_characters
from services.record.store.base import EverythingQuery, HistoryQuery, Person, RecordStore, StoredRow
from services.record.subscription_api import subscription_router

log = logging.getLogger(__name__)

_TYPE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_VERSION = re.compile(r"^[0-9]{1,9}$")  # versionIds are counted from 1; more digits than any store holds
_EVERYTHING_PARAMS = frozenset({"_count", "_offset", "_type", "_since", "_format", "_pretty"})
_HISTORY_PARAMS = frozenset({"_count", "_offset", "_since", "_format", "_pretty"})
_TYPES_TTL_S = 5.0

Publish = Callable[[Sequence[OutboundRecord]], Awaitable[Any]]
NOBODY = "Patient/"  # a Patient reference no record has: what a 404 looks up in place of a withheld one's patient


@dataclass
class RecordApi:
    """Everything the API needs, handed in by the composition root."""

    settings: Settings
    store: RecordStore
    metrics: Metrics
    tokens: TokenRegistry
    readiness: Callable[[], tuple[bool, str]]
    publish: Publish | None = None
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    audit_sink: AuditSink | None = None  # blocking write of AuditEvent records (acks=all); None: not audited
    denials: DeniedAttempts | None = None  # writes denied-attempt AuditEvents off the request path; None: not audited
    gate: DisclosureGate | None = None
    population: PopulationIndex = field(init=False)  # $evaluate-measure's and the clinic view's kept state
    _types: frozenset[str] = frozenset()
    _types_at: float = 0.0
    _types_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.population = PopulationIndex(
            self.store,  # type: ignore[arg-type]  # a SqlStore: the bulk reads
            HospiceCodes.with_local(self.settings.outcomes_local_hospice_codings))
        if self.gate is None:
            self.gate = DisclosureGate(self.store, DEFAULT_POLICY, self.now_ms)

    # --- helpers ------------------------------------------------------------------------------------

    def known_types(self, refresh: bool = False) -> frozenset[str]:
        with self._types_lock:
            if refresh or time.monotonic() - self._types_at > _TYPES_TTL_S:
                self._types = frozenset({*SEARCH_PARAMETERS, *ADMIN_TYPES, *self.store.stored_types()})
                self._types_at = time.monotonic()
            return self._types

    def check_type(self, resource_type: str) -> None:
        if not _TYPE.match(resource_type):
            raise ResourceNotFound("not a resource type")
        if resource_type not in self.known_types() and resource_type not in self.known_types(refresh=True):
            raise ResourceNotFound(f"resource type {resource_type} is not supported by this server")

    def base_url(self, request: Request) -> str:
        return (self.settings.record_base_url or str(request.base_url)).rstrip("/")

    def authenticate(self, request: Request) -> Access:
        return self.tokens.authenticate(request.headers.get("authorization"))

    def compartment(self, access: Access) -> frozenset[str] | None:
        if access.patient is None:
            return None
        return frozenset(self.store.person(f"Patient/{access.patient}").members)

    def check_row(
        self,
        access: Access,
        row: StoredRow,
        compartment: frozenset[str] | None,
        interaction: Interaction,
        request: Request,
        not_found: str,
    ) -> CallerGrants:
        """The caller may see ``row``, or this raises: a resource outside a patient-bound token's compartment
        does not exist for it (404 with ``not_found``, see :meth:`missing`: a 403 would tell it that another
        person's record exists); a withheld resource answers the same 404 unless the caller is cleared for every
        withheld class (then 403 stating them). A withheld attempt is audited, off the request path."""
        if compartment is not None and row.patient_ref not in compartment:
            self.missing(access, request, not_found, compartment_known=True)
        assert self.gate is not None
        grants = self.gate.person_grants(access, row.patient_ref)
        grant = grants.grant_of(row.patient_ref)
        if grant.permits(row.restriction):
            return grants
        self.deny_later(disclosures.denied_read(access, interaction, row, self.base_url(request), self.now_ms()))
        missing = grant.withheld(row.restriction)
        if access.cleared_for(missing):
            classes = " and ".join(describe_restriction(missing))
            raise Forbidden(f"withheld: {classes} data goes to this recipient only as its clearances, the "
                            "patient's consent and the disclosure policy allow")
        raise ResourceNotFound(not_found)

    def missing(self, access: Access, request: Request, not_found: str, compartment_known: bool = False) -> NoReturn:
        """404 for a resource (or version) that does not exist, after the same work a withheld one costs in
        :meth:`check_row` - the token's compartment (unless the caller has looked it up already), the grants of
        a patient (here one that no record has) and one denied-attempt journal row (here of nothing) - so the
        work behind a 404 does not tell the two apart."""
        if not compartment_known:
            self.compartment(access)
        assert self.gate is not None
        self.gate.person_grants(access, NOBODY)
        self.deny_later(disclosures.denied_attempt(access, "read", self.base_url(request), self.now_ms()))
        raise ResourceNotFound(not_found)

    def audit(self, events: Sequence[dict[str, Any]]) -> None:
        """Write AuditEvents before the answer leaves (BrokerUnavailable: the request fails with 503)."""
        if events and self.audit_sink is not None:
            self.audit_sink(disclosures.audit_records(events, self.settings.topic_prefix))

    def deny_later(self, attempt: disclosures.DeniedAttempt) -> None:
        """Journal one answer's denied-attempt facts (durable before it leaves; the writer thread builds and
        writes their AuditEvents later): every answer calls this once, whether or not it withheld anything
        (services/record/denials.py)."""
        if self.denials is not None:
            self.denials.submit(attempt)

    def audit_page(
        self,
        access: Access,
        grants: CallerGrants,
        interaction: Interaction,
        rows: Sequence[StoredRow],
        request: Request,
        query: bool = True,
        withheld_patients: Sequence[str] = (),
    ) -> None:
        """The AuditEvents of one answer: what it disclosed (per patient), written before it leaves; and, per
        patient whose matches it withheld, a denied attempt (outcome 4), journalled for the writer thread - one
        journal row whether or not anything was withheld."""
        text = request.url.query if query else None
        base, now = self.base_url(request), self.now_ms()
        self.audit(disclosures.access_events(access, grants, interaction, rows, base, now, text))
        self.deny_later(disclosures.denied_query(access, interaction, withheld_patients, base, now, text))

    def served_body(self, row: StoredRow, persons: dict[str, Person] | None = None) -> bytes:
        """The current version as served; a Patient carries the links of its person. ``persons`` caches the
        person lookups of one response (a person's Patients all come together in $everything)."""
        assert row.body is not None
        if row.resource_type != "Patient":
            return row.body
        ref = f"Patient/{row.id}"
        person = persons.get(ref) if persons is not None else None
        if person is None:
            person = self.store.person(ref)
            if persons is not None:
                persons.update(dict.fromkeys(person.members, person))
        if len(person.members) == 1 and b'"link"' not in row.body:
            return row.body
        return orjson.dumps(overlay_links(orjson.loads(row.body), person.members, person.pairs))

    def body_renderer(self) -> Callable[[StoredRow], bytes]:
        persons: dict[str, Person] = {}
        return lambda row: self.served_body(row, persons)

    def now_ms(self) -> int:
        return int(self.clock().timestamp() * 1000)


def fhir_response(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(body, status_code=status, media_type=render.FHIR_JSON, headers=headers)


def outcome_response(status: int, code: str, diagnostics: str, headers: dict[str, str] | None = None) -> Response:
    severity = "error" if status >= 400 else "information"
    body = orjson.dumps(render.operation_outcome(severity, code, diagnostics))
    return fhir_response(body, status, headers)


def _version_headers(row: StoredRow) -> dict[str, str]:
    modified = datetime.fromtimestamp(row.last_updated / 1000, tz=UTC)
    return {"ETag": f'W/"{row.version_id}"', "Last-Modified": format_datetime(modified, usegmt=True)}


def _served_headers(row: StoredRow, grants: CallerGrants) -> dict[str, str]:
    """Version headers, and the 42 CFR 2.32 notice headers when the resource is Part 2 data."""
    headers = _version_headers(row)
    if row.restriction & PART2:
        headers.update(part2.notice_headers(disclosures.part2_consents_of(grants, row)))
    return headers


def _not_modified(request: Request, row: StoredRow) -> bool:
    """Conditional read (FHIR R4 3.1.0.8.3; RFC 9110 13.1.2): If-None-Match names the version the caller has
    (weak comparison, so W/"3" and "3" are the same version), or "*"; without it, If-Modified-Since."""
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None:
        tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
        return "*" in tags or f'"{row.version_id}"' in tags
    if_modified_since = request.headers.get("if-modified-since")
    if if_modified_since:
        try:
            since = parsedate_to_datetime(if_modified_since)
        except (TypeError, ValueError):
            return False
        return since.tzinfo is not None and row.last_updated // 1000 <= int(since.timestamp())
    return False


def _lenient(request: Request) -> bool:
    prefer = request.headers.get("prefer", "")
    return "handling=lenient" in prefer.replace(" ", "").lower()


def _negotiate(request: Request) -> None:
    fmt = request.query_params.get("_format")
    if fmt is not None and "json" not in fmt:
        raise _NotAcceptable()
    accept = request.headers.get("accept", "")
    if accept and "xml" in accept and "json" not in accept and "*/*" not in accept:
        raise _NotAcceptable()


class _NotAcceptable(Exception):
    pass


def _check_params(params: Sequence[tuple[str, str]], allowed: frozenset[str], lenient: bool) -> None:
    refuse_forbidden_characters(params)
    for name, _ in params:
        if name not in allowed and not lenient:
            raise UnknownParameter(f"unsupported parameter '{name}'")


def _since(params: Sequence[tuple[str, str]]) -> int | None:
    for name, value in params:
        if name == "_since":
            try:
                return instant_ms(value)
            except ValueError as exc:
                raise BadRequest("_since must be a FHIR instant") from exc
    return None


class MetricsMiddleware:
    """Counts every request by route template and status (never by concrete path: ids stay out of labels), and
    answers an unexpected error itself with a 500 OperationOutcome: below Starlette's ServerErrorMiddleware, which
    re-raises to the server, so the client's keep-alive connection survives."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        started = False

        async def capture_started(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await capture(message)

        try:
            await self.app(scope, receive, capture_started)
        except Exception as exc:
            if started:
                raise
            log.error("unexpected error", extra={"error": type(exc).__name__})  # never the message: may quote data
            await outcome_response(500, "exception", "internal error")(scope, receive, capture)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.record_requests.labels(route=template, status=str(status)).inc()
            self.metrics.request_seconds.labels(route=template, status=str(status)).observe(time.perf_counter() - start)


def create_app(api: RecordApi) -> FastAPI:
    app = FastAPI(title="carebus record", version="1", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(MetricsMiddleware, metrics=api.metrics)
    add_operational_routes(app, api.metrics, api.readiness)
    settings = api.settings
    topic = FHIR_BUNDLES.name(settings.topic_prefix)

    # --- errors ---------------------------------------------------------------------------------------

    @app.exception_handler(RecordAccessError)
    def _access_error(request: Request, exc: RecordAccessError) -> Response:
        headers = {"WWW-Authenticate": 'Bearer realm="carebus-record"'} if exc.status == 401 else None
        code = "login" if exc.status == 401 else "forbidden"
        return outcome_response(exc.status, code, exc.message, headers)

    @app.exception_handler(ResourceNotFound)
    def _not_found(request: Request, exc: ResourceNotFound) -> Response:
        return outcome_response(404, "not-found", exc.message)

    @app.exception_handler(ResourceGone)
    def _gone(request: Request, exc: ResourceGone) -> Response:
        return outcome_response(410, "deleted", exc.message)

    @app.exception_handler(InvalidInput)
    def _invalid(request: Request, exc: InvalidInput) -> Response:
        code = "not-supported" if isinstance(exc, UnknownParameter) else "invalid"
        return outcome_response(400, code, exc.message)

    @app.exception_handler(StoreUnavailable)
    def _store_down(request: Request, exc: StoreUnavailable) -> Response:
        log.warning("record store unavailable", extra={"path_template": str(request.scope.get("route", ""))})
        return outcome_response(503, "transient", "the record store is unavailable; retry later", {"Retry-After": "5"})

    @app.exception_handler(BrokerUnavailable)
    def _broker_down(request: Request, exc: BrokerUnavailable) -> Response:
        return outcome_response(
            503, "transient", "Kafka did not acknowledge the write; retry later", {"Retry-After": "5"}
        )

    @app.exception_handler(_NotAcceptable)
    def _not_acceptable(request: Request, exc: _NotAcceptable) -> Response:
        return outcome_response(406, "not-supported", "this server serves application/fhir+json only")

    @app.exception_handler(RequestValidationError)
    def _validation(request: Request, exc: RequestValidationError) -> Response:
        fields = sorted({".".join(str(p) for p in e.get("loc", ())) for e in exc.errors()})
        return outcome_response(400, "invalid", f"invalid request: {', '.join(fields)}")

    @app.exception_handler(StarletteHTTPException)
    def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not-found", 405: "not-supported"}.get(exc.status_code, "processing")
        return outcome_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error", extra={"error": type(exc).__name__})
        return outcome_response(500, "exception", "internal error")

    # --- CapabilityStatement -----------------------------------------------------------------------------

    @app.get("/metadata")
    def metadata(request: Request) -> Response:
        _negotiate(request)
        statement = capability_statement(api.base_url(request), api.known_types())
        return fhir_response(orjson.dumps(statement))

    app.include_router(outcomes_router(api))  # Measure, $evaluate-measure, Task updates (before generic routes)
    app.include_router(subscription_router(api))  # /Subscription (notify), before the generic routes
    app.include_router(contract_router())  # /docs, /openapi.json: not FHIR paths

    # --- identity administration -----------------------------------------------------------------------

    @app.get("/admin/identity/candidates")
    def review_candidates(request: Request) -> Response:
        """Demographic near-matches: identity administration (the Linkage write scope), paged by _count/_offset."""
        access = api.authenticate(request)
        if access.patient is not None:
            raise Forbidden("patient-bound tokens cannot review identity candidates")
        access.require_write("Linkage")
        params = request.query_params.multi_items()
        _check_params(params, frozenset({"_count", "_offset"}), lenient=False)
        paging = parse_paging(params, settings.record_default_page_size, settings.record_max_page_size)
        found = api.store.review_candidates()
        page = found[paging.offset : paging.offset + paging.count]
        body: dict[str, Any] = {
            "total": len(found),
            "offset": paging.offset,
            "count": paging.count,
            "candidates": [{"patients": list(c.patients), "basis": c.basis} for c in page],
        }
        if paging.offset + paging.count < len(found) and paging.count > 0:
            body["next"] = (
                f"{api.base_url(request)}/admin/identity/candidates"
                f"?_count={paging.count}&_offset={paging.offset + paging.count}"
            )
        return Response(orjson.dumps(body), media_type="application/json")

    @app.get("/admin/identity/persons/{patient_id}")
    def person(patient_id: str, request: Request) -> Response:
        access = api.authenticate(request)
        access.require_read("Patient")
        if access.patient is not None:
            raise Forbidden("patient-bound tokens cannot inspect identity links")
        found = api.store.person(f"Patient/{patient_id}")
        links = [
            {"patients": list(pair), "kind": a.kind, "survivor": a.survivor} for pair, a in sorted(found.pairs.items())
        ]
        return Response(
            orjson.dumps({"members": list(found.members), "assertions": links}), media_type="application/json"
        )

    async def _publish_link(request: Request, unlink: bool) -> Response:
        access = api.authenticate(request)
        access.require_write("Linkage")
        if api.publish is None:
            raise StoreUnavailable("no Kafka producer configured")
        try:
            body = LinkRequest.model_validate(orjson.loads(await request.body()))
            command = command_of(body, unlink)
        except (orjson.JSONDecodeError, ValidationError, ValueError) as exc:
            raise BadRequest("body must be {'patients': [a, b], 'kind': 'link'|'merge', 'survivor'?}") from exc
        for ref in command.patients:
            row = api.store.read("Patient", ref.removeprefix("Patient/"))
            if row is None:
                raise ResourceNotFound(f"{ref} is not in the record")
        event_id = str(uuid.uuid4())
        now = api.clock()
        bundle = linkage_bundle(command, event_id, now)
        record = OutboundRecord(
            topic=topic,
            key=f"{ADMIN_SOURCE}|{command.patients[0].removeprefix('Patient/')}",
            value=orjson.dumps(bundle),
            headers=bundle_headers(
                str(bundle["id"]), event_id, LINKAGE_EVENT_TYPE, request.headers.get("x-correlation-id", event_id),
                (), source=RECORD_SOURCE, time=now,
            ),
        )
        await api.publish([record])
        log.info(
            "identity command published",
            extra={"action": command.action, "event_id": event_id, "linkage": command.linkage_id()},
        )
        return Response(
            orjson.dumps(
                {
                    "status": "accepted",
                    "action": command.action,
                    "linkage": f"Linkage/{command.linkage_id()}",
                    "event_id": event_id,
                }
            ),
            status_code=202,
            media_type="application/json",
        )

    @app.post("/admin/identity/link")
    async def link(request: Request) -> Response:
        return await _publish_link(request, unlink=False)

    @app.post("/admin/identity/unlink")
    async def unlink(request: Request) -> Response:
        return await _publish_link(request, unlink=True)

    app.include_router(disclosure_router(api))  # Patient/$disclosures (specific routes before the generic ones)

    # --- Patient/$everything ---------------------------------------------------------------------------

    @app.get("/Patient/{patient_id}/$everything")
    def everything(patient_id: str, request: Request) -> Response:
        _negotiate(request)
        access = api.authenticate(request)
        access.require_read("Patient")
        params = request.query_params.multi_items()
        _check_params(params, _EVERYTHING_PARAMS, _lenient(request))
        paging = parse_paging(params, settings.record_default_page_size, settings.record_max_page_size)
        row = api.store.read("Patient", patient_id)
        if row is None:
            api.missing(access, request, f"Patient/{patient_id} is not known")
        compartment = api.compartment(access)
        api.check_row(access, row, compartment, "operation", request, f"Patient/{patient_id} is not known")
        if row.deleted:
            raise ResourceGone(f"Patient/{patient_id} is deleted")
        members = frozenset(api.store.person(f"Patient/{patient_id}").members)
        if compartment is not None:
            members &= compartment
        requested: set[str] | None = None
        for name, value in params:
            if name == "_type":
                requested = (requested or set()) | {t for t in value.split(",") if t}
        readable = {t for t in (requested or api.known_types()) if access.may_read(t)}
        private = any(not access.may_read(t) for t in PRIVATE_TYPES)
        types = frozenset(readable) if requested is not None or not access.may_read("*") or private else None
        assert api.gate is not None
        grants = api.gate.grants(access, members)
        page = api.store.everything(
            EverythingQuery(members, types, _since(params), paging.count, paging.offset),
            grants.view(compartment),
        )
        base = api.base_url(request)
        notice = disclosures.part2_notice(access, grants, page.rows, base, api.now_ms())
        api.audit_page(access, grants, "operation", page.rows, request, withheld_patients=page.withheld_patients)
        echo = [(n, v) for n, v in params if n in ("_type", "_since")]
        body = render.searchset(
            base,
            f"Patient/{patient_id}/$everything",
            echo,
            page,
            paging.count,
            paging.offset,
            api.body_renderer(),
            str(uuid.uuid4()),
            api.now_ms(),
            disclosures.told_withheld(access, page.withheld),
            disclosures.generic_notice(access),
            [notice] if notice else [],
        )
        return fhir_response(body)

    # --- history -----------------------------------------------------------------------------------------

    def _history(request: Request, resource_type: str, resource_id: str | None) -> Response:
        _negotiate(request)
        access = api.authenticate(request)
        api.check_type(resource_type)
        access.require_read(resource_type)
        params = request.query_params.multi_items()
        _check_params(params, _HISTORY_PARAMS, _lenient(request))
        paging = parse_paging(params, settings.record_default_page_size, settings.record_max_page_size)
        compartment = api.compartment(access)
        assert api.gate is not None
        interaction: Interaction = "history-instance" if resource_id is not None else "history-type"
        if resource_id is not None:
            if not _ID.match(resource_id):
                raise ResourceNotFound("not a resource id")
            not_found = f"{resource_type}/{resource_id} is not known"
            current = api.store.read(resource_type, resource_id)
            if current is None:
                api.missing(access, request, not_found, compartment_known=True)
            grants = api.check_row(access, current, compartment, interaction, request, not_found)
        else:
            grants = api.gate.grants(access, compartment)
        page = api.store.history(
            HistoryQuery(resource_type, resource_id, _since(params), paging.count, paging.offset),
            grants.view(compartment),
        )
        base = api.base_url(request)
        notice = disclosures.part2_notice(access, grants, page.rows, base, api.now_ms())
        api.audit_page(access, grants, interaction, page.rows, request, withheld_patients=page.withheld_patients)
        path = f"{resource_type}/{resource_id}/_history" if resource_id else f"{resource_type}/_history"
        echo = [(n, v) for n, v in params if n == "_since"]
        body = render.history(
            base,
            path,
            echo,
            page,
            paging.count,
            paging.offset,
            str(uuid.uuid4()),
            api.now_ms(),
            disclosures.told_withheld(access, page.withheld),
            disclosures.generic_notice(access),
            [notice] if notice else [],
        )
        return fhir_response(body)

    @app.get("/{resource_type}/_history")
    def type_history(resource_type: str, request: Request) -> Response:
        return _history(request, resource_type, None)

    @app.get("/{resource_type}/{resource_id}/_history")
    def instance_history(resource_type: str, resource_id: str, request: Request) -> Response:
        return _history(request, resource_type, resource_id)

    @app.get("/{resource_type}/{resource_id}/_history/{version_id}")
    def vread(resource_type: str, resource_id: str, version_id: str, request: Request) -> Response:
        _negotiate(request)
        access = api.authenticate(request)
        api.check_type(resource_type)
        access.require_read(resource_type)
        not_found = f"{resource_type}/{resource_id} has no version {version_id}"
        if not _VERSION.match(version_id) or not _ID.match(resource_id):
            raise ResourceNotFound("unknown version")
        row = api.store.vread(resource_type, resource_id, int(version_id))
        if row is None:
            api.missing(access, request, not_found)
        grants = api.check_row(access, row, api.compartment(access), "vread", request, not_found)
        if row.deleted:
            raise ResourceGone(f"{resource_type}/{resource_id} version {version_id} is a deletion")
        assert row.body is not None
        api.audit_page(access, grants, "vread", [row], request, query=False)
        return fhir_response(row.body, headers=_served_headers(row, grants))

    # --- read and search ---------------------------------------------------------------------------------

    @app.get("/{resource_type}/{resource_id}")
    def read(resource_type: str, resource_id: str, request: Request) -> Response:
        _negotiate(request)
        access = api.authenticate(request)
        api.check_type(resource_type)
        access.require_read(resource_type)
        not_found = f"{resource_type}/{resource_id} is not known"
        if not _ID.match(resource_id):
            raise ResourceNotFound("not a resource id")
        row = api.store.read(resource_type, resource_id)
        if row is None:
            api.missing(access, request, not_found)
        grants = api.check_row(access, row, api.compartment(access), "read", request, not_found)
        if row.deleted:
            raise ResourceGone(f"{resource_type}/{resource_id} is deleted")
        if _not_modified(request, row):  # the caller has this version already: nothing is disclosed
            return Response(status_code=304, headers=_version_headers(row))
        api.audit_page(access, grants, "read", [row], request, query=False)
        return fhir_response(api.served_body(row), headers=_served_headers(row, grants))

    def _search(request: Request, resource_type: str, params: Sequence[tuple[str, str]]) -> Response:
        _negotiate(request)
        access = api.authenticate(request)
        api.check_type(resource_type)
        access.require_read(resource_type)
        query = parse_search(
            resource_type,
            params,
            settings.record_default_page_size,
            settings.record_max_page_size,
            _lenient(request),
        )
        compartment = api.compartment(access)
        patients: set[str] | None = None
        for criterion in query.criteria:
            if isinstance(criterion, PatientCriterion):
                if compartment is not None and not set(criterion.patient_refs) <= compartment:
                    raise Forbidden("the search names a patient outside the token's patient compartment")
                refs = {m for ref in criterion.patient_refs for m in api.store.person(ref).members}
                patients = refs if patients is None else patients & refs
        if compartment is not None:
            patients = set(compartment) if patients is None else patients & compartment
        assert api.gate is not None
        grants = api.gate.grants(access, patients)
        page = api.store.search(query, grants.view(compartment))
        base = api.base_url(request)
        notice = disclosures.part2_notice(access, grants, page.rows, base, api.now_ms())
        if resource_type not in PRIVATE_TYPES:  # reading the audit trail is not itself a disclosure of care data
            api.audit_page(access, grants, "search-type", page.rows, request,
                           withheld_patients=page.withheld_patients)
        body = render.searchset(
            base,
            resource_type,
            query.echo,
            page,
            query.count,
            query.offset,
            api.body_renderer(),
            str(uuid.uuid4()),
            api.now_ms(),
            disclosures.told_withheld(access, page.withheld),
            disclosures.generic_notice(access),
            [notice] if notice else [],
        )
        return fhir_response(body)

    @app.get("/{resource_type}")
    def search(resource_type: str, request: Request) -> Response:
        return _search(request, resource_type, request.query_params.multi_items())

    @app.post("/{resource_type}/_search")
    async def search_post(resource_type: str, request: Request) -> Response:
        form = parse_qsl((await request.body()).decode(errors="replace"), keep_blank_values=True)
        params = [*request.query_params.multi_items(), *form]
        return await run_in_threadpool(_search, request, resource_type, params)

    return app
