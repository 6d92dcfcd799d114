"""Paths a web API's client tries for its description (/docs, /redoc, /openapi.json): the record API is FHIR R4,
described by its CapabilityStatement, so these answer a plain 404 pointing there instead of being read as a
resource type by the generic FHIR routes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

NOT_FHIR_PATHS = ("/docs", "/redoc", "/openapi.json", "/swagger.json", "/docs/oauth2-redirect")
NOTICE = "the record API is FHIR R4: its contract is the CapabilityStatement at GET /metadata"


def contract_router() -> APIRouter:
    router = APIRouter()

    async def not_here() -> JSONResponse:
        return JSONResponse({"title": "Not Found", "status": 404, "detail": NOTICE}, status_code=404,
                            media_type="application/problem+json", headers={"Link": '</metadata>; rel="describedby"'})

    for path in NOT_FHIR_PATHS:
        router.add_api_route(path, not_here, methods=["GET"], include_in_schema=False)
    return router
