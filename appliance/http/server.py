"""The aiohttp application: middleware for errors, Host checks, auth and CORS, and the route table."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from ..app import App
from ..errors import (
    ApplianceError,
    BadRequest,
    BodyTimeout,
    LineProtocolError,
    MisdirectedHost,
    Unauthorized,
)
from ..metrics import HTTP_REFUSED
from . import handlers, routes
from .body import PEER_SHARE, BodyLimits, BodyReader, ByteBudget, hold_bodies
from .body import READER as BODY_READER
from .connections import track_requests

log = logging.getLogger("appliance.http")

APP_KEY: web.AppKey[App] = handlers.APP_KEY
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create(app: App) -> web.Application:
    """Build the web application around a running App."""
    config = app.config
    web_app = web.Application(
        middlewares=[track_requests, _errors, _check_host, _auth, hold_bodies],
        # Bodies are read and gunzipped only in body.BodyReader: a clear 400 for bad gzip, and
        # the size limit applies after decompression.
        handler_args={"auto_decompress": False},
    )
    web_app[APP_KEY] = app
    web_app[handlers.WRITE_SLOTS] = asyncio.Semaphore(handlers.WRITE_CONCURRENCY)
    decode_pool = ThreadPoolExecutor(2, thread_name_prefix="http-gunzip")
    web_app[BODY_READER] = BodyReader(
        BodyLimits(
            config.http.max_request_size,
            config.http.body_timeout / 1e9,
            config.http.body_min_rate,
            config.http.body_idle_timeout / 1e9,
        ),
        ByteBudget(config.http.max_buffered_bytes, PEER_SHARE * config.http.max_request_size),
        decode_pool,
    )

    async def stop_pool(_: web.Application) -> None:
        decode_pool.shutdown(wait=False, cancel_futures=True)

    web_app.on_cleanup.append(stop_pool)
    web_app.on_shutdown.append(handlers.stop_queries)  # before aiohttp waits for in-flight requests
    r = web_app.router
    r.add_post(routes.WRITE_LP, handlers.write_lp)
    r.add_post(routes.WRITE_V2, handlers.write_v2)
    r.add_post(routes.WRITE_V1, handlers.write_v1)
    r.add_route("GET", routes.QUERY_SQL, handlers.query_sql)
    r.add_route("POST", routes.QUERY_SQL, handlers.query_sql)
    for path in (routes.QUERY_INFLUXQL, routes.QUERY_V1):
        r.add_route("GET", path, handlers.influxql)
        r.add_route("POST", path, handlers.influxql)
    r.add_get(routes.HEALTH, handlers.health)
    r.add_get(routes.HEALTH_V1, handlers.health)
    r.add_get(routes.PING, handlers.ping)
    r.add_post(routes.PING, handlers.ping)
    r.add_get(routes.CONFIGURE_DATABASE, handlers.list_databases)
    r.add_post(routes.CONFIGURE_DATABASE, handlers.create_database)
    r.add_put(routes.CONFIGURE_DATABASE, handlers.update_database)
    r.add_delete(routes.CONFIGURE_DATABASE, handlers.delete_database)
    r.add_post(routes.CONFIGURE_RETENTION, handlers.set_retention)
    r.add_delete(routes.CONFIGURE_RETENTION, handlers.clear_retention)
    r.add_post(routes.CONFIGURE_TABLE, handlers.create_table)
    r.add_delete(routes.CONFIGURE_TABLE, handlers.delete_table)
    r.add_post(routes.TOKEN_ADMIN, handlers.create_admin_token)
    r.add_post(routes.TOKEN_ADMIN_REGENERATE, handlers.regenerate_admin_token)
    r.add_post(routes.PERSIST, handlers.persist)
    r.add_get(routes.METRICS, handlers.metrics)
    r.add_get(routes.SYNC, handlers.sync_status)
    r.add_post(routes.SYNC, handlers.sync_now)
    r.add_post(routes.TRIGGER, handlers.create_trigger)
    r.add_delete(routes.TRIGGER, handlers.delete_trigger)
    r.add_post(routes.TRIGGER_ENABLE, handlers.enable_trigger)
    r.add_post(routes.TRIGGER_DISABLE, handlers.disable_trigger)
    r.add_post(routes.INSTALL_PACKAGES, handlers.install_packages)
    r.add_post(routes.INSTALL_REQUIREMENTS, handlers.install_requirements)
    r.add_post(routes.PLUGIN_TEST_WAL, handlers.test_wal_plugin)
    r.add_post(routes.PLUGIN_TEST_SCHEDULE, handlers.test_schedule_plugin)
    r.add_get(routes.ENGINE, handlers.engine_request)
    r.add_post(routes.ENGINE, handlers.engine_request)
    web_app.on_response_prepare.append(_cors)
    return web_app


async def _cors(request: web.Request, response: web.StreamResponse) -> None:
    """CORS headers only for the origins listed in http.cors_origins (none by default)."""
    allowed = request.app[APP_KEY].config.http.cors_origins
    if not allowed:
        return
    response.headers.add("Vary", "Origin")
    origin = request.headers.get("Origin")
    if origin and handlers.cors_allows(allowed, origin):
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
    style = handlers.error_style(request)
    status = err.http_status
    if style == "v2":
        return handlers.json_response({"code": err.code, "message": _v2_message(err)}, status=status)
    if style == "v1":
        return handlers.json_response({"error": _v2_message(err)}, status=status)
    if err.body_kind == "text":
        return web.Response(text=err.message, status=status, content_type="text/plain")
    body: dict[str, object] = {"error": err.message}
    if err.data is not None:
        body["data"] = err.data
    return handlers.json_response(body, status=status)


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
        return handlers.json_response(
            {"error": "internal error; the details are in the server log"}, status=500
        )


@web.middleware
async def _check_host(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bound to loopback, with auth off, or with http.allowed_hosts set, answer only Host names
    of our own: a web page that rebinds its name to this address cannot reach the API."""
    config = request.app[APP_KEY].config
    host = request.headers.get("Host")
    if (
        host is not None
        and (config.http.allowed_hosts or not config.auth.enabled or loopback_bind(config.http.bind))
        and not host_allowed(host, config.http.allowed_hosts)
    ):
        HTTP_REFUSED.inc(reason="allowed_hosts")
        raise MisdirectedHost(
            f"Host {host[:100]!r} is not served here: use localhost or an IP address, or add the name"
            " to http.allowed_hosts"
        )
    return await handler(request)


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    app = request.app[APP_KEY]
    if request.method == "OPTIONS":
        return handlers.options(request)  # CORS pre-flight on any path, before routing and auth
    if not app.config.auth.enabled:
        return await handler(request)
    if request.path in routes.PUBLIC:
        request[handlers.AUTHENTICATED] = _verified(app, request)  # /health shows details only then
        return await handler(request)
    if request.path == routes.METRICS and "metrics" in app.config.auth.disable_authz:
        return await handler(request)
    if request.path.startswith(routes.ENGINE_PREFIX) and app.engine.is_public(
        request.path[len(routes.ENGINE_PREFIX) :]
    ):
        return await handler(request)  # a request trigger created with no_auth (local webhooks)
    if request.path == routes.TOKEN_ADMIN and app.tokens.admin() is None:
        return await handler(request)  # bootstrap: the first admin token needs no token
    token = _token_of(request)
    if token is None or not app.tokens.verify(token):
        raise Unauthorized("the request was not authenticated")
    return await handler(request)


def _verified(app: App, request: web.Request) -> bool:
    """Whether the request carries a valid token (for endpoints that need none)."""
    try:
        token = _token_of(request)
    except ApplianceError:
        return False
    return token is not None and app.tokens.verify(token)


def _token_of(request: web.Request) -> str | None:
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
