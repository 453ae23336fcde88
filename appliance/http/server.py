"""The aiohttp application: middleware for errors, Host checks, auth and CORS, and the route table."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import logging
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from ..auth import OPEN
from ..errors import (
    ApplianceError,
    BadRequest,
    BodyTimeout,
    LineProtocolError,
    MisdirectedHost,
    PermissionDenied,
    Unauthorized,
)
from ..metrics import HTTP_REFUSED
from . import routes
from .access import GRANT, Handler, Need, check_route, checked
from .body import PEER_SHARE, BodyReader, ByteBudget, hold_bodies
from .body import READER as BODY_READER
from .connections import track_requests
from .handlers import configure, engine, ops, query, write
from .handlers.common import SERVICES, error_style, json_response
from .services import HttpServices

log = logging.getLogger("appliance.http")


def create(services: HttpServices) -> web.Application:
    """Build the web application around the services of a running App."""
    settings = services.settings
    web_app = web.Application(
        middlewares=[track_requests, _errors, _check_host, _auth, hold_bodies],
        # Bodies are read and gunzipped only in body.BodyReader: a clear 400 for bad gzip, and
        # the size limit applies after decompression.
        handler_args={"auto_decompress": False},
    )
    web_app[SERVICES] = services
    web_app[write.WRITE_SLOTS] = asyncio.Semaphore(write.WRITE_CONCURRENCY)
    decode_pool = ThreadPoolExecutor(2, thread_name_prefix="http-gunzip")
    web_app[BODY_READER] = BodyReader(
        settings.body,
        ByteBudget(settings.max_buffered_bytes, PEER_SHARE * settings.body.max_size),
        decode_pool,
    )

    async def stop_pool(_: web.Application) -> None:
        decode_pool.shutdown(wait=False, cancel_futures=True)

    web_app.on_cleanup.append(stop_pool)
    web_app.on_shutdown.append(query.stop_queries)  # before aiohttp waits for in-flight requests
    _add_routes(web_app)
    web_app.on_response_prepare.append(_cors)
    return web_app


#: Every route: method, path (http/routes.py), handler and what the caller needs (http/access.py).
#: A route missing here is not served; tests/http/test_access.py checks each need against real requests.
ROUTES: tuple[tuple[str, str, Handler, Need], ...] = (
    ("POST", routes.WRITE_LP, write.write_lp, Need.WRITE),
    ("POST", routes.WRITE_V2, write.write_v2, Need.WRITE),
    ("POST", routes.WRITE_V1, write.write_v1, Need.WRITE),
    ("GET", routes.QUERY_SQL, query.query_sql, Need.READ),
    ("POST", routes.QUERY_SQL, query.query_sql, Need.READ),
    ("GET", routes.QUERY_INFLUXQL, query.influxql, Need.READ),
    ("POST", routes.QUERY_INFLUXQL, query.influxql, Need.READ),
    ("GET", routes.QUERY_V1, query.influxql, Need.READ),
    ("POST", routes.QUERY_V1, query.influxql, Need.READ),
    ("GET", routes.HEALTH, ops.health, Need.PUBLIC),
    ("GET", routes.HEALTH_V1, ops.health, Need.PUBLIC),
    ("GET", routes.PING, ops.ping, Need.PUBLIC),
    ("POST", routes.PING, ops.ping, Need.PUBLIC),
    ("GET", routes.CONFIGURE_DATABASE, configure.list_databases, Need.TOKEN),
    ("POST", routes.CONFIGURE_DATABASE, configure.create_database, Need.ADMIN),
    ("PUT", routes.CONFIGURE_DATABASE, configure.update_database, Need.ADMIN),
    ("DELETE", routes.CONFIGURE_DATABASE, configure.delete_database, Need.ADMIN),
    ("POST", routes.CONFIGURE_RETENTION, configure.set_retention, Need.ADMIN),
    ("DELETE", routes.CONFIGURE_RETENTION, configure.clear_retention, Need.ADMIN),
    ("POST", routes.CONFIGURE_TABLE, configure.create_table, Need.ADMIN),
    ("DELETE", routes.CONFIGURE_TABLE, configure.delete_table, Need.ADMIN),
    ("POST", routes.TOKEN_ADMIN, configure.create_admin_token, Need.ADMIN),  # no token for the first one
    ("POST", routes.TOKEN_ADMIN_REGENERATE, configure.regenerate_admin_token, Need.ADMIN),
    ("POST", routes.TOKEN_NAMED_ADMIN, configure.create_named_admin_token, Need.ADMIN),
    ("POST", routes.TOKEN_RESOURCE, configure.create_resource_token, Need.ADMIN),
    ("GET", routes.TOKEN, configure.list_tokens, Need.ADMIN),
    ("DELETE", routes.TOKEN, configure.delete_token, Need.ADMIN),
    ("POST", routes.PERSIST, ops.persist, Need.ADMIN),
    ("GET", routes.METRICS, ops.metrics, Need.METRICS),
    ("GET", routes.SYNC, ops.sync_status, Need.ADMIN),
    ("POST", routes.SYNC, ops.sync_now, Need.ADMIN),
    ("POST", routes.TRIGGER, engine.create_trigger, Need.ADMIN),
    ("DELETE", routes.TRIGGER, engine.delete_trigger, Need.ADMIN),
    ("POST", routes.TRIGGER_ENABLE, engine.enable_trigger, Need.ADMIN),
    ("POST", routes.TRIGGER_DISABLE, engine.disable_trigger, Need.ADMIN),
    ("POST", routes.INSTALL_PACKAGES, engine.install_packages, Need.ADMIN),
    ("POST", routes.INSTALL_REQUIREMENTS, engine.install_requirements, Need.ADMIN),
    ("POST", routes.PLUGIN_TEST_WAL, engine.test_wal_plugin, Need.ADMIN),
    ("POST", routes.PLUGIN_TEST_SCHEDULE, engine.test_schedule_plugin, Need.ADMIN),
    ("GET", routes.ENGINE, engine.engine_request, Need.REQUEST_TRIGGER),
    ("POST", routes.ENGINE, engine.engine_request, Need.REQUEST_TRIGGER),
)
#: What each (method, path) needs; HEAD is GET's.
NEEDS: web.AppKey[dict[tuple[str, str], Need]] = web.AppKey("needs", dict)


def _add_routes(web_app: web.Application) -> None:
    """The route table into the router, and each route's need where the auth middleware finds it."""
    needs: dict[tuple[str, str], Need] = {}
    for method, path, handler, need in ROUTES:
        if method == "GET":
            route = web_app.router.add_get(path, handler)  # and HEAD
            needs["HEAD", route.resource.canonical] = need  # type: ignore[union-attr]
        else:
            route = web_app.router.add_route(method, path, handler)
        needs[method, route.resource.canonical] = need  # type: ignore[union-attr]
    web_app[NEEDS] = needs


async def _cors(request: web.Request, response: web.StreamResponse) -> None:
    """CORS headers only for the origins listed in http.cors_origins (none by default)."""
    allowed = request.app[SERVICES].settings.cors_origins
    if not allowed:
        return
    response.headers.add("Vary", "Origin")
    origin = request.headers.get("Origin")
    if origin and ops.cors_allows(allowed, origin):
        response.headers["Access-Control-Allow-Origin"] = "*" if "*" in allowed else origin


def host_allowed(host_header: str, allowed_hosts: tuple[str, ...]) -> bool:
    """Whether a Host header is one the server answers for: an IP address, a loopback name or
    a name in http.allowed_hosts. A DNS rebinding attack always sends a name of its own."""
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    host = host.rstrip(".")
    if host == "localhost" or host.endswith(".localhost") or host in allowed_hosts:
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def loopback_bind(bind: str) -> bool:
    host = bind.rpartition(":")[0].strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: Seconds a client is asked to wait before retrying a 503 (busy, shutting down): Telegraf and
#: the InfluxDB client libraries honour Retry-After.
RETRY_AFTER_SECONDS = 5


def error_response(request: web.Request, err: ApplianceError) -> web.Response:
    """Shape an error as the endpoint's InfluxDB counterpart does."""
    response = _error_body(request, err)
    if err.http_status == 503:
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def _error_body(request: web.Request, err: ApplianceError) -> web.Response:
    style = error_style(request)
    status = err.http_status
    if style == "v2":
        return json_response({"code": err.code, "message": _v2_message(err)}, status=status)
    if style == "v1":
        return json_response({"error": _v2_message(err)}, status=status)
    if err.body_kind == "text":
        return web.Response(text=err.message, status=status, content_type="text/plain")
    body: dict[str, object] = {"error": err.message}
    if err.data is not None:
        body["data"] = err.data
    return json_response(body, status=status)


def _v2_message(err: ApplianceError) -> str:
    if isinstance(err, LineProtocolError) and isinstance(err.data, dict):
        d = err.data
        return f"{err.message}: line {d['line_number']}: {d['error_message']} ({d['original_line']!r})"
    return err.message


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApplianceError as e:
        response = error_response(request, e)
        if isinstance(e, BodyTimeout) or request.content.exception() is not None:
            # The rest of the body is not worth waiting for (nor reading for 10 s, as aiohttp
            # does before closing a connection with an unread body), or cannot be read.
            await response.prepare(request)
            await response.write_eof()
            request.protocol.force_close()
        return response
    except ConnectionError:
        raise  # the client went away: aiohttp drops the connection quietly (GuardedHandler)
    except web.HTTPNotFound:
        return web.Response(text="Not found", status=404)
    except web.HTTPException:
        raise  # aiohttp's own answers: 405 for a wrong method, and so on
    except Exception:
        log.exception("unexpected error handling %s %s", request.method, request.path)
        return json_response({"error": "internal error; the details are in the server log"}, status=500)


@web.middleware
async def _check_host(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bound to loopback, with auth off, or with http.allowed_hosts set, answer only Host names
    of our own: a web page that rebinds its name to this address cannot reach the API."""
    settings = request.app[SERVICES].settings
    host = request.headers.get("Host")
    if (
        host is not None
        and (settings.allowed_hosts or not settings.auth_enabled or loopback_bind(settings.bind))
        and not host_allowed(host, settings.allowed_hosts)
    ):
        HTTP_REFUSED.inc(reason="allowed_hosts")
        raise MisdirectedHost(
            f"Host {host[:100]!r} is not served here: use localhost or an IP address, or add the name"
            " to http.allowed_hosts"
        )
    return await handler(request)


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate (401), then check the route's need (403 naming the missing permission)."""
    services = request.app[SERVICES]
    if request.method == "OPTIONS":
        return ops.options(request)  # CORS pre-flight on any path, before routing and auth
    if not services.settings.auth_enabled:
        request[GRANT] = OPEN
        return await handler(request)
    need = _need(request, services)
    token = _token_of(request, quiet=need is Need.PUBLIC)
    info = services.configure.tokens.authenticate(token) if token is not None else None
    if info is not None:
        request[GRANT] = info.grant
    if need is Need.PUBLIC:
        return await handler(request)
    if info is None:
        HTTP_REFUSED.inc(reason="unauthorized")
        raise Unauthorized("the request was not authenticated")
    grant = request[GRANT]
    try:
        check_route(need, grant)
        return await checked(request, handler, need, grant)
    except PermissionDenied:
        HTTP_REFUSED.inc(reason="forbidden")
        raise


def _need(request: web.Request, services: HttpServices) -> Need:
    """What the matched route needs; a path that matches no route needs a valid token (then 404)."""
    resource = request.match_info.route.resource
    if resource is None:
        return Need.TOKEN
    path = resource.canonical
    need = request.app[NEEDS].get((request.method, path))
    if need is None:  # a route added without a decision: refused, never open
        log.error("route %s %s has no access rule; refused", request.method, path)
        return Need.ADMIN
    if need is Need.REQUEST_TRIGGER:
        # no_auth triggers (local webhooks) are open; for the others the handler checks write on
        # the trigger's database, and answers 404 to a token without it.
        trigger = services.engine.engine.request_trigger(request.match_info["path"])
        return Need.PUBLIC if trigger is not None and trigger.no_auth else Need.TOKEN
    if path == routes.METRICS and services.settings.metrics_without_token:
        return Need.PUBLIC
    return need


def _token_of(request: web.Request, quiet: bool = False) -> str | None:
    """The token a request carries: Authorization Bearer/Token/Basic, or v1's `p` parameter.
    A malformed header is a 400 (a 401 for an empty token), or no token at all when `quiet`."""
    try:
        return _parse_token(request)
    except ApplianceError:
        if quiet:
            return None
        raise


def _parse_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header:
        scheme, _, value = header.strip().partition(" ")
        value = value.strip()
        if scheme.lower() in ("bearer", "token"):
            if not value or not value.isascii():  # no token, or bytes no token is made of
                raise Unauthorized("the request was not authenticated")  # as a missing header
            return value
        if scheme.lower() == "basic" and value:
            try:
                return base64.b64decode(value).decode().partition(":")[2]
            except (ValueError, UnicodeDecodeError):
                pass
        raise BadRequest("Authorization header was malformed; use 'Authorization: Bearer <token>'")
    return request.query.get("p") if request.path in (routes.WRITE_V1, routes.QUERY_V1) else None
