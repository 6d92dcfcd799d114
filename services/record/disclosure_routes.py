"""The accounting of disclosures: ``GET /Patient/{id}/$disclosures?start=&end=`` (own router, included before the
generic routes).

Who received what about this person, when, and under which consent: a searchset Bundle of the person's
successful disclosure AuditEvents (BALP; ``outcome`` 0: every API read / search / $everything that returned the
person's data and every delivered notification), newest first, paged with ``_count`` / ``_offset``. Each entry
names the recipient (agent IRCP, with the permitting consents in ``agent.policy``), the client (agent 110153),
the time (``recorded``), the purpose (``purposeOfEvent``), the disclosed resources and the consents (entities).
Refused attempts (``outcome`` 4) are in ``AuditEvent?patient=&outcome=4``, not in the accounting.

``start`` / ``end``: FHIR dates or instants (inclusive), both optional. Allowed to a privacy officer (a token
with an ``AuditEvent`` read scope) and to the patient themself (a ``patient/`` token of that person: the
patient's right to an accounting, HIPAA 45 CFR 164.528 and 42 CFR 2.24).
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request, Response

from services.record import render
from services.record.access import ALL_CLEARANCES
from services.record.errors import BadRequest, Forbidden, ResourceNotFound
from services.record.fhirdates import date_range
from services.record.search import parse_search
from services.record.store.base import View

if TYPE_CHECKING:
    from services.record.api import RecordApi

_PARAMS = frozenset({"start", "end", "_count", "_offset", "_format", "_pretty"})


def disclosure_router(api: RecordApi) -> APIRouter:
    from services.record.api import _check_params, _lenient, _negotiate, fhir_response

    router = APIRouter()

    @router.get("/Patient/{patient_id}/$disclosures")
    def disclosures(patient_id: str, request: Request) -> Response:
        _negotiate(request)
        access = api.authenticate(request)
        params = request.query_params.multi_items()
        _check_params(params, _PARAMS, _lenient(request))
        ref = f"Patient/{patient_id}"
        if api.store.read("Patient", patient_id) is None:
            raise ResourceNotFound(f"{ref} is not known")
        members = api.store.person(ref).members
        own = access.patient is not None and f"Patient/{access.patient}" in members
        if not own and (access.patient is not None or not access.may_read("AuditEvent")):
            raise Forbidden("the accounting of disclosures needs an AuditEvent read scope or the patient's own token")
        criteria: list[tuple[str, str]] = [("patient", ref), ("outcome", "0"), ("_sort", "-date")]
        for name, value in params:
            if name in ("start", "end"):
                try:
                    date_range(value)
                except ValueError as exc:
                    raise BadRequest(f"{name} must be a FHIR date or instant") from exc
                criteria.append(("date", ("ge" if name == "start" else "le") + value))
            elif name in ("_count", "_offset"):
                criteria.append((name, value))
        query = parse_search(
            "AuditEvent", criteria, api.settings.record_default_page_size, api.settings.record_max_page_size
        )
        page = api.store.search(query, View(ALL_CLEARANCES))
        echo = [(n, v) for n, v in params if n in ("start", "end")]
        body = render.searchset(
            api.base_url(request),
            f"Patient/{patient_id}/$disclosures",
            echo,
            page,
            query.count,
            query.offset,
            lambda row: row.body or b"{}",
            str(uuid.uuid4()),
            api.now_ms(),
            told={},
        )
        return fhir_response(body)

    return router
