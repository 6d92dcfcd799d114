"""Why intake refused a request, as exceptions answered in one place (services/intake/app.py's handlers).

    services.common.errors.InvalidInput
    └── RequestRefused             a request intake will not take as sent: ``status``, ``slug``, ``fhir_code``
        ├── NotAuthenticated       401  no bearer token, an unknown one, or none configured at all
        ├── SourceNotPermitted     403  the token is not registered for the source the input names
        ├── UnsupportedMediaType   415
        ├── BodyTooLarge           413  body (or batch) above the configured limit
        └── BadRequest             400  empty batch, no X-Carebus-Source, body not JSON ...
    services.common.errors.InvalidInput (from the contracts and the FHIR check)
    ├── EventValidationError / MalformedJson   422 / 400
    ├── RefusedContent                         422 refused-content
    └── MappingError                           422 (FHIR resource checks)
    BatchRejected                              422 every broken event of a batch, by index

Messages and problems name headers, fields and rules, never values (they may be PHI).
"""

from __future__ import annotations

from services.common.errors import FieldProblem, InvalidInput


class RequestRefused(InvalidInput):
    """A request refused before its content is looked at."""

    reason = "refused"
    status = 400
    slug = "bad-request"
    title = "Bad request"
    fhir_code = "invalid"

    def __init__(self, message: str, problems: list[FieldProblem] | None = None, *, slug: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message, problems)
        if slug is not None:
            self.slug = slug
            self.reason = slug
        self.headers = headers or {}


class NotAuthenticated(RequestRefused):
    reason = "unauthenticated"
    status = 401
    slug = "unauthenticated"
    title = "Authentication required"
    fhir_code = "login"

    def __init__(self, message: str) -> None:
        super().__init__(message, [FieldProblem("Authorization", "bearer-token-required", message)],
                         headers={"WWW-Authenticate": 'Bearer realm="carebus-intake"'})


class SourceNotPermitted(RequestRefused):
    reason = "source-not-permitted"
    status = 403
    slug = "source-not-permitted"
    title = "Source not permitted"
    fhir_code = "forbidden"

    def __init__(self, message: str, location: str) -> None:
        super().__init__(message, [FieldProblem(location, "source-not-permitted", message)])


class UnsupportedMediaType(RequestRefused):
    reason = "unsupported-media-type"
    status = 415
    slug = "unsupported-media-type"
    title = "Unsupported media type"
    fhir_code = "not-supported"


class BodyTooLarge(RequestRefused):
    reason = "too-large"
    status = 413
    slug = "too-large"
    title = "Request too large"
    fhir_code = "too-costly"


class BadRequest(RequestRefused):
    reason = "bad-request"
    status = 400
    slug = "bad-request"
    title = "Bad request"
    fhir_code = "structure"


class BatchRejected(InvalidInput):
    """Events of a request that break their contracts or carebus's content policy; nothing was written.

    ``errors`` are the problem-detail items (``event_index`` for a batch, ``location``, ``rule``, ``message``);
    ``broken`` how many events; ``refused`` whether one of them carries refused content."""

    reason = "invalid-event"

    def __init__(self, errors: list[dict[str, object]], broken: int, total: int, refused: bool) -> None:
        super().__init__(f"{broken} of {total} event(s) rejected; nothing was accepted")
        self.errors = errors
        self.broken = broken
        self.refused = refused
        if refused:
            self.reason = "refused-content"
