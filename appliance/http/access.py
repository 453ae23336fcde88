"""Who may call what: each route's need, the grant a request carries, and the checks on it.

Every route declares its need in the route table (http/server.py); a route without one is refused.
Routes on a database (writes and queries) are checked by the handler, which names the database to
`require_database` once it has read it (from the query string or the body), so the 403 names the
exact permission. `checked` refuses the answer of a database route whose handler never checked:
a forgotten check fails closed.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..auth import Grant
from ..errors import ApplianceError, BadRequest, PermissionDenied

log = logging.getLogger("appliance.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Need(enum.Enum):
    """What a request must carry to reach a route."""

    PUBLIC = "no token; a valid one shows more"  # /health, /ping
    TOKEN = "any valid token; the answer shows what the token may see"
    READ = "db:<database>:read"
    WRITE = "db:<database>:write"
    METRICS = "system:metrics:read"
    ADMIN = "an admin token"
    # Any token; the handler answers 404 unless it may write to the trigger's database. None for a
    # no_auth trigger.
    REQUEST_TRIGGER = "db:<trigger's database>:write"


#: The verified grant of the request (auth off: everything).
GRANT: web.RequestKey[Grant] = web.RequestKey("grant", Grant)
#: Set once a handler checked the database of a READ or WRITE route.
CHECKED: web.RequestKey[bool] = web.RequestKey("database_checked", bool)

_DATABASE_NEEDS = (Need.READ, Need.WRITE)


def grant_of(request: web.Request) -> Grant | None:
    """The request's verified grant; None on a public route reached without a valid token."""
    return request.get(GRANT)


def require_database(request: web.Request, database: str, action: str) -> None:
    """403 naming the permission unless the request's grant allows `action` on `database`."""
    grant = request.get(GRANT)
    if grant is None or not grant.may("db", database, action):
        raise PermissionDenied(denied(grant, f"db:{database}:{action}"))
    request[CHECKED] = True


def may_see(request: web.Request, system: str) -> bool:
    """Whether the request's token may see the details of the system resource (health, metrics)."""
    grant = request.get(GRANT)
    return grant is not None and grant.may("system", system, "read")


def denied(grant: Grant | None, permission: str) -> str:
    """The 403 message: what was missing and what the token has."""
    has = (
        f"token {grant.name!r} has {grant.describe() or 'no permissions'}" if grant else "no token was given"
    )
    return f"permission denied: this needs {permission}; {has} (an admin can grant it with `appliance create token`)"


def check_route(need: Need, grant: Grant) -> None:
    """The middleware's check before the handler runs; 403 naming what is missing."""
    if need is Need.ADMIN and not grant.admin:
        raise PermissionDenied(denied(grant, "an admin token"))
    if need is Need.METRICS and not grant.may("system", "metrics", "read"):
        raise PermissionDenied(denied(grant, need.value))


async def checked(request: web.Request, handler: Handler, need: Need, grant: Grant) -> web.StreamResponse:
    """Run the route's handler. On a database route, a resource token's answer (or error, other
    than a bad request or the check's own 403) that came without `require_database` is a bug: it
    is logged and refused, never served. Handlers check before they prepare a streamed answer."""
    if need not in _DATABASE_NEEDS or grant.admin:
        return await handler(request)
    try:
        response = await handler(request)
    except (BadRequest, PermissionDenied):
        raise  # a missing parameter or the check itself: nothing about a database is told
    except ApplianceError:
        _unchecked(request, need, grant)
        raise
    _unchecked(request, need, grant)
    return response


def _unchecked(request: web.Request, need: Need, grant: Grant) -> None:
    if not request.get(CHECKED):
        log.error("%s %s answered without checking its database; refused", request.method, request.path)
        raise PermissionDenied(denied(grant, need.value))
