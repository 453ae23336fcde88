"""What every handler area shares: the services key, request parsing and JSON replies."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

from aiohttp import web

from ...errors import BadRequest, UnsupportedMediaType
from ...model import Precision
from .. import routes
from ..body import READER as BODY_READER
from ..services import HttpServices

SERVICES: web.AppKey[HttpServices] = web.AppKey("services", HttpServices)

_ERROR_STYLES = {routes.WRITE_V2: "v2", routes.WRITE_V1: "v1", routes.QUERY_V1: "v1"}

T = TypeVar("T")


def services(request: web.Request) -> HttpServices:
    """The services of the application serving `request`."""
    return request.app[SERVICES]


def json_response(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response without the spaces json.dumps adds by default."""
    return web.json_response(data, status=status, headers=headers, dumps=_compact)


def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def error_style(request: web.Request) -> str:
    """Which error body shape the endpoint uses: v3, v2 ({code, message}) or v1 ({error})."""
    return _ERROR_STYLES.get(request.path, "v3")


async def in_pool(executor: Executor, fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking call on one of the service pools, off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)


# -- query string --------------------------------------------------------------
def param(request: web.Request, name: str) -> str:
    """A required query parameter; 400 naming it when missing or empty."""
    value = request.query.get(name)
    if not value:
        raise BadRequest(f"missing query parameter '{name}'")
    return value


def flag(request: web.Request, name: str, default: bool) -> bool:
    """A true/false query parameter; `default` when absent or empty."""
    value = request.query.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise BadRequest(f"invalid value {value!r} for query parameter '{name}': use true or false")


def precision(request: web.Request, default: Precision) -> Precision:
    """The `precision` query parameter; 400 for one that is not a precision."""
    try:
        return Precision.parse(request.query.get("precision"), default)
    except ValueError as e:
        raise BadRequest(str(e)) from None


# -- JSON bodies ---------------------------------------------------------------
#: Largest body of a JSON API request (queries, configuration, plugins): 413 above it.
MAX_JSON_BODY = 1024 * 1024
#: A JSON body larger than this is decoded on a thread, off the event loop.
_JSON_ON_LOOP = 64 * 1024


async def json_body(request: web.Request, limit: int = MAX_JSON_BODY) -> dict[str, Any]:
    """The JSON object a request sends, at most `limit` bytes; its bytes count against
    http.max_buffered_bytes until the handler returns."""
    ctype = request.headers.get("Content-Type", "")
    if ctype and "json" not in ctype:
        raise UnsupportedMediaType("unacceptable content-type, expected: application/json")
    reader = request.app[BODY_READER]
    data = await reader.held(request, limit, f"JSON API requests are at most {limit} bytes")
    try:
        if len(data) > _JSON_ON_LOOP:
            body = await asyncio.get_running_loop().run_in_executor(reader.pool, json.loads, data)
        else:
            body = json.loads(data or b"{}")
    except (ValueError, RecursionError) as e:
        raise BadRequest(f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def required(body: dict[str, Any], key: str) -> str:
    """A required non-empty string member of a JSON body; 400 naming it otherwise."""
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"missing or invalid '{key}' in request body")
    return value
