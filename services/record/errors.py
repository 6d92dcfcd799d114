"""Errors of the record service, under the carebus tree (services/common/errors.py).

    CarebusError
    ├── InvalidInput
    │   ├── BadBundle             a bundle-topic record that is not a usable FHIR Bundle (dead-lettered)
    │   │   └── ForbiddenCharacter  ... holding a character FHIR text may not contain (U+0000, non-characters)
    │   └── BadRequest            an API request the server will not answer as asked (400)
    │       └── UnknownParameter  a search parameter (or modifier/prefix) this server does not support (400)
    ├── RecordAccessError         the request is not allowed (never names the data that was protected)
    │   ├── NotAuthenticated      no token, or an unknown one (401)
    │   └── Forbidden             a known token without the scope, compartment or clearance (403)
    ├── ResourceNotFound          unknown type, id or version (404)
    ├── ResourceGone              the resource (or version) is deleted (410)
    └── InfrastructureError
        └── StoreUnavailable      the database cannot be reached or failed: retried, nothing committed
                                  (services/common/errors.py, raised by services/common/sql.py)

Messages carry resource types, ids, parameter names and counts only: never values that may be PHI.
"""

from __future__ import annotations

from services.common.errors import CarebusError, InvalidInput
from services.common.errors import StoreUnavailable as StoreUnavailable  # the store layer's (services/common/sql.py)


class BadBundle(InvalidInput):
    reason = "bad-bundle"


class ForbiddenCharacter(BadBundle):
    reason = "forbidden-character"


class BadRequest(InvalidInput):
    reason = "bad-request"


class UnknownParameter(BadRequest):
    reason = "unknown-parameter"


class RecordAccessError(CarebusError):
    """Access refused. ``status`` is the HTTP status to answer with."""

    status = 403

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotAuthenticated(RecordAccessError):
    status = 401


class Forbidden(RecordAccessError):
    status = 403


class ResourceNotFound(CarebusError):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ResourceGone(CarebusError):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
