"""One exception tree: every error carries a machine code and the HTTP status it maps to."""

from __future__ import annotations

from typing import Any


class ApplianceError(Exception):
    """Base of every error the appliance reports to a user."""

    code = "internal error"
    http_status = 500
    #: "text" (plain text body, as InfluxDB 3's catalog errors) or "json" ({"error": ...}).
    body_kind = "json"

    def __init__(self, message: str, *, data: Any = None, http_status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data
        if http_status is not None:
            self.http_status = http_status


class BadRequest(ApplianceError):
    code = "invalid"
    http_status = 400


class Unauthorized(ApplianceError):
    code = "unauthorized"
    http_status = 401


class Forbidden(ApplianceError):
    code = "forbidden"
    http_status = 403
    body_kind = "text"


class PermissionDenied(ApplianceError):
    """A valid token without the right for the request: the message names the missing permission."""

    code = "forbidden"
    http_status = 403


class NotFound(ApplianceError):
    code = "not found"
    http_status = 404
    body_kind = "text"


class MethodDisabled(ApplianceError):
    """An endpoint switched off by configuration (token endpoints without auth)."""

    http_status = 405


class UnsupportedMediaType(ApplianceError):
    http_status = 415


class NotImplementedYet(ApplianceError):
    code = "not implemented"
    http_status = 501


class Conflict(ApplianceError):
    code = "conflict"
    http_status = 409
    body_kind = "text"


class TooLarge(ApplianceError):
    code = "request too large"
    http_status = 413


class BodyTimeout(ApplianceError):
    """A request body that did not arrive in time (http.body_timeout); the connection is closed."""

    code = "request timeout"
    http_status = 408


class Busy(ApplianceError):
    """The server is at a capacity limit (request bodies in memory); the client should retry."""

    code = "unavailable"
    http_status = 503


class MisdirectedHost(ApplianceError):
    """A Host header the server does not answer for (DNS rebinding guard)."""

    code = "forbidden"
    http_status = 421
    body_kind = "text"


class LineProtocolError(ApplianceError):
    """A write whose lines were (partly) rejected; `data` lists the per-line errors."""

    code = "invalid"
    http_status = 400


class CatalogError(ApplianceError):
    code = "invalid"
    http_status = 400
    body_kind = "text"


class LimitExceeded(CatalogError):
    """A catalog limit (databases, tables, columns) would be exceeded."""

    http_status = 422
    body_kind = "json"


class PartialWrite(LineProtocolError):
    """Some lines were stored, others rejected; 422 when a catalog limit was the reason."""


class WalError(ApplianceError):
    code = "internal error"
    http_status = 503


class StorageFull(WalError):
    """Nothing could be stored for lack of space: 507. `kind` is "disk", "map" (the WAL's LMDB map)
    or "budget" (storage.max_disk_bytes holds only data not yet uploaded)."""

    code = "unavailable"  # the InfluxDB v2 code closest to "retry once there is room"
    http_status = 507

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class QueryError(ApplianceError):
    code = "invalid"
    http_status = 400
    body_kind = "text"


class DatabaseNotFound(ApplianceError):
    """A query named a database that does not exist (JSON body, as InfluxDB 3 answers)."""

    code = "not found"
    http_status = 404


class QueryTimeout(QueryError):
    http_status = 408


class QueryTooLarge(QueryError):
    http_status = 413


class ConfigError(ApplianceError):
    code = "invalid"
    http_status = 500


#: What a request refused or cut short by a stop is told (503, to retry once the server is back).
SHUTTING_DOWN = "the server is shutting down; retry once it is back"
