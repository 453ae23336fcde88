"""Thin HTTP handlers: parse the request, call the service that owns the work, shape the reply."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pyarrow as pa
from aiohttp import web
from aiohttp.payload import AsyncIterablePayload

from .. import __version__
from ..app import ADMIT_TIMEOUT_SECONDS, App
from ..engine.store import TriggerDef
from ..errors import (
    SHUTTING_DOWN,
    BadRequest,
    CatalogError,
    Forbidden,
    LimitExceeded,
    MethodDisabled,
    NotFound,
    NotImplementedYet,
    PartialWrite,
    QueryError,
    QueryTimeout,
    UnsupportedMediaType,
)
from ..metrics import REGISTRY
from ..model import ColumnType, Precision
from ..query import formats
from ..query.service import timeout_message
from ..storage.catalog import MAX_RETENTION_NS
from ..units import parse_duration_ns
from ..write import WriteRequest
from . import routes
from .body import READER as BODY_READER

APP_KEY: web.AppKey[App] = web.AppKey("app", App)
#: Set by the auth middleware on endpoints that need no token: whether a valid one came anyway.
AUTHENTICATED: web.RequestKey[bool] = web.RequestKey("authenticated", bool)
#: Writes being parsed and committed at once; more wait with their body read (http.max_buffered_bytes).
WRITE_SLOTS: web.AppKey[asyncio.Semaphore] = web.AppKey("write_slots", asyncio.Semaphore)
WRITE_CONCURRENCY = 8

_ERROR_STYLES = {routes.WRITE_V2: "v2", routes.WRITE_V1: "v1", routes.QUERY_V1: "v1"}


def json_response(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response without the spaces json.dumps adds by default."""
    return web.json_response(data, status=status, headers=headers, dumps=_compact)


def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def error_style(request: web.Request) -> str:
    """Which error body shape the endpoint uses: v3, v2 ({code, message}) or v1 ({error})."""
    return _ERROR_STYLES.get(request.path, "v3")


# -- helpers -------------------------------------------------------------------
def _param(request: web.Request, name: str) -> str:
    value = request.query.get(name)
    if not value:
        raise BadRequest(f"missing query parameter '{name}'")
    return value


def _flag(request: web.Request, name: str, default: bool) -> bool:
    value = request.query.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise BadRequest(f"invalid value {value!r} for query parameter '{name}': use true or false")


def _precision(request: web.Request, default: Precision) -> Precision:
    try:
        return Precision.parse(request.query.get("precision"), default)
    except ValueError as e:
        raise BadRequest(str(e)) from None


#: Largest body of a JSON API request (queries, configuration, plugins): 413 above it.
MAX_JSON_BODY = 1024 * 1024
#: A JSON body larger than this is decoded on a thread, off the event loop.
_JSON_ON_LOOP = 64 * 1024


async def _json_body(request: web.Request, limit: int = MAX_JSON_BODY) -> dict[str, Any]:
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


async def _in_pool(request: web.Request, pool: str, fn: Any, *args: Any) -> Any:
    app = request.app[APP_KEY]
    executor = {
        "write": app.write_pool,
        "admin": app.admin_pool,
        "engine": app.engine_pool,
    }[pool]
    return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)


# -- writes --------------------------------------------------------------------
async def _write(
    request: web.Request, db: str, precision: Precision, accept_partial: bool, no_sync: bool = False
) -> web.Response:
    """One write. The body is read first (a slow client holds no slot, only the bytes it sent,
    within http.max_buffered_bytes); then at most WRITE_SLOTS writes are processed at a time."""
    app = request.app[APP_KEY]
    await _admit(app)
    async with request.app[BODY_READER].received(request) as data, request.app[WRITE_SLOTS]:
        if not data.strip():
            raise BadRequest("incoming write was empty")
        req = WriteRequest(db, data, precision, accept_partial, no_sync)
        try:
            report = await _in_pool(request, "write", app.writes.submit, req)
        except LimitExceeded:
            raise
        except CatalogError as e:
            raise BadRequest(e.message) from None  # write errors are JSON, unlike catalog errors
        if report.committed is not None:
            await asyncio.wrap_future(report.committed)
    if report.errors:
        raise PartialWrite(
            report.summary(),
            data=[e.to_json() for e in report.errors],
            http_status=422 if report.limit_hit else 400,
        )
    return web.Response(status=204)


async def _admit(app: App) -> None:
    """Wait (without a thread) while the buffer is at twice its cap; 503 after ADMIT_TIMEOUT_SECONDS."""
    deadline = time.monotonic() + ADMIT_TIMEOUT_SECONDS
    while app.buffer.nbytes >= 2 * app.buffer.max_bytes:
        if time.monotonic() > deadline:
            app.buffer.admit(0)  # raises the 503 with its explanation
        await asyncio.sleep(0.05)


async def write_lp(request: web.Request) -> web.Response:
    return await _write(
        request,
        _param(request, "db"),
        _precision(request, Precision.AUTO),
        accept_partial=_flag(request, "accept_partial", True),
        no_sync=_flag(request, "no_sync", False),
    )


async def write_v2(request: web.Request) -> web.Response:
    return await _write(
        request, _param(request, "bucket"), _precision(request, Precision.NS), accept_partial=False
    )


async def write_v1(request: web.Request) -> web.Response:
    db = _param(request, "db")
    rp = request.query.get("rp", "")
    if rp and rp not in ("autogen", "default"):
        db = f"{db}/{rp}"
    return await _write(request, db, _precision(request, Precision.NS), accept_partial=False)


# -- queries -------------------------------------------------------------------
async def query_sql(request: web.Request) -> web.Response:
    app = request.app[APP_KEY]
    if request.method == "POST":
        # Room for a query of query.max_sql_bytes, escaped, and its parameters: a longer text gets
        # query.max_sql_bytes' own 400, not a 413.
        body = await _json_body(request, max(MAX_JSON_BODY, 2 * app.queries.limits.max_sql_bytes))
        db, sql, fmt, params = body.get("db"), body.get("q"), body.get("format"), body.get("params")
    else:
        db, sql, fmt = request.query.get("db"), request.query.get("q"), request.query.get("format")
        params = _json_param(request.query.get("params"))
    db, sql = _text(db, "db"), _text(sql, "q")
    if fmt is not None and not isinstance(fmt, str):
        raise BadRequest("'format' must be a string: json, jsonl, csv, parquet or pretty")
    if params is not None and not isinstance(params, dict):
        raise BadRequest("'params' must be a JSON object of name: value")
    chosen = formats.choose_format(fmt, request.headers.get("Accept"))

    def run() -> list[bytes]:  # query and rendering in one hop to the query pool, off the event loop
        limits = app.queries.limits
        deadline = time.monotonic() + limits.timeout_ns / 1e9  # the query's and its rendering's
        table = app.queries.execute(db, sql, params)
        return formats.render_pieces(table, chosen, limits.max_result_bytes, deadline)

    pieces = await _run_query(app, run)
    headers = {"Content-Type": formats.content_type(chosen), "Content-Length": str(sum(map(len, pieces)))}
    return web.Response(body=AsyncIterablePayload(_drain(pieces)), headers=headers)


async def _drain(pieces: list[bytes]) -> AsyncIterator[bytes]:
    """Each piece of a body once, releasing it as it is sent."""
    pieces.reverse()
    while pieces:
        yield pieces.pop()


#: Beyond its own deadline (the engine stops the query there), how long the handler still waits.
QUERY_GRACE_SECONDS = 5.0


async def _run_query(app: App, run: Any) -> list[bytes]:
    """Run `run` on the query pool once a slot is free; the slot is held until the thread is done."""
    timeout = app.queries.limits.timeout_ns / 1e9
    try:
        # Not wait_for: on Python 3.11 it can drop a permit that was granted as the timeout fired.
        # Semaphore.acquire gives a granted permit back itself if it is cancelled.
        async with asyncio.timeout(timeout):
            await app.query_slots.acquire()
    except TimeoutError:
        raise QueryError(
            f"too many queries running (query.max_concurrent = {app.config.query.max_concurrent}); retry later",
            http_status=503,
        ) from None
    # No await between the acquire and the hand-off: the permit belongs to the thread's future.
    try:
        future = asyncio.get_running_loop().run_in_executor(app.query_pool, run)
    except RuntimeError:  # the pool is shut down: the server is stopping
        app.query_slots.release()
        raise QueryError(f"query refused: {SHUTTING_DOWN}", http_status=503) from None
    future.add_done_callback(lambda _: app.query_slots.release())
    try:
        return await asyncio.wait_for(asyncio.shield(future), timeout + QUERY_GRACE_SECONDS)
    except TimeoutError:
        raise QueryTimeout(timeout_message(app.queries.limits)) from None


async def stop_queries(web_app: web.Application) -> None:
    """On shutdown: running queries end now (503) rather than hold the stop for their timeout."""
    web_app[APP_KEY].queries.close()


def _text(value: Any, name: str) -> str:
    if not value:
        raise BadRequest(f"missing query parameter '{name}'")
    if not isinstance(value, str):
        raise BadRequest(f"'{name}' must be a string")
    return value


def _json_param(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError as e:
        raise BadRequest(f"query parameter 'params' is not valid JSON: {e}") from None


async def influxql(request: web.Request) -> web.Response:
    raise NotImplementedYet("InfluxQL is not supported yet; send SQL to /api/v3/query_sql instead")


# -- health --------------------------------------------------------------------
#: What /health and /ping call the product (InfluxDB 2 clients read `name`, v3 ones `product_name`).
PRODUCT = "appliance"
_CORS_METHODS = "GET, POST, PUT, DELETE"
_CORS_HEADERS = "Authorization, Content-Type, Content-Encoding, Accept"


async def health(request: web.Request) -> web.Response:
    """Each component's state, shaped as InfluxDB 2's /health too (name, message, status pass or
    fail, checks, version), so its clients' health() works; `state` is ok, degraded or failed.
    Without a valid token (auth on) it tells the state only: no component details or errors."""
    report = request.app[APP_KEY].health()
    state = report.pop("status")
    details = request.get(AUTHENTICATED, True)
    problems = [
        f"{name}: {c.get('error') or c['status']}" if details else f"{name}: {c['status']}"
        for name, c in report["components"].items()
        if c["status"] != "ok"
    ]
    shaped = {
        "name": PRODUCT,
        "message": "; ".join(problems) or "ready for queries and writes",
        "status": "fail" if state == "failed" else "pass",
        "state": state,
        "version": __version__,
        "commit": "",
        "checks": [
            {"name": name, "status": "fail" if c["status"] == "failed" else "pass"}
            for name, c in report["components"].items()
        ],
        **(report if details else {}),
    }
    return json_response(shaped, status=503 if state == "failed" else 200)


async def ping(request: web.Request) -> web.Response:
    """InfluxDB 3's 200 JSON; 204 (as InfluxDB 1 and 2) for HEAD and for a client that does not
    accept JSON, such as the v1 `influxdb` client (Accept: application/x-msgpack)."""
    app = request.app[APP_KEY]
    headers = {"X-Influxdb-Version": __version__, "X-Influxdb-Build": PRODUCT}
    if request.method == "HEAD" or not _accepts_json(request.headers.get("Accept")):
        return web.Response(status=204, headers=headers)
    return json_response(
        {"product_name": PRODUCT, "version": __version__, "revision": "", "process_id": app.process_id},
        headers=headers,
    )


def _accepts_json(accept: str | None) -> bool:
    if accept is None:
        return True
    kinds = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    return bool(kinds & {"application/json", "application/*", "*/*", ""})


def cors_allows(allowed: tuple[str, ...], origin: str) -> bool:
    """Whether a browser page from `origin` may call the API (http.cors_origins)."""
    return "*" in allowed or origin.rstrip("/").lower() in allowed


def options(request: web.Request) -> web.Response:
    """CORS pre-flight: answered only for origins in http.cors_origins (403 for others)."""
    origin = request.headers.get("Origin")
    allowed = request.app[APP_KEY].config.http.cors_origins
    if origin is None:
        return web.Response(status=204, headers={"Allow": f"{_CORS_METHODS}, OPTIONS"})
    if not cors_allows(allowed, origin):
        raise Forbidden(
            f"cross-origin requests from {origin[:100]!r} are not allowed; list the origin in"
            " http.cors_origins to let a web page call the API"
        )
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Methods": _CORS_METHODS,
            "Access-Control-Allow-Headers": _CORS_HEADERS,
            "Access-Control-Max-Age": "600",
        },
    )


# -- configuration -------------------------------------------------------------
async def list_databases(request: web.Request) -> web.Response:
    fmt = request.query.get("format")
    if not fmt:
        raise BadRequest("missing query parameter 'format' (use format=json)")
    app = request.app[APP_KEY]
    rows = [{"iox::database": d.name} for d in app.catalog.databases()]
    table = pa.Table.from_pylist(rows, schema=pa.schema([("iox::database", pa.string())]))
    chosen = formats.choose_format(fmt, None)
    return web.Response(
        body=formats.render(table, chosen), headers={"Content-Type": formats.content_type(chosen)}
    )


def _retention(value: Any) -> int | None:
    if value in (None, ""):
        return None
    try:
        ns = parse_duration_ns(str(value))
    except ValueError as e:
        raise BadRequest(f"invalid retention_period: {e}") from None
    if ns <= 0:
        raise BadRequest(
            "invalid retention_period: it must be longer than zero (omit it to keep data forever)"
        )
    if ns > MAX_RETENTION_NS:
        raise BadRequest("invalid retention_period: at most 100 years (omit it to keep data forever)")
    return ns


async def create_database(request: web.Request) -> web.Response:
    body = await _json_body(request)
    name = _required(body, "db")
    await _in_pool(
        request,
        "admin",
        request.app[APP_KEY].catalog.create_database,
        name,
        _retention(body.get("retention_period")),
    )
    return web.Response(status=200)


async def update_database(request: web.Request) -> web.Response:
    body = await _json_body(request)
    await _in_pool(
        request,
        "admin",
        request.app[APP_KEY].catalog.set_retention,
        _required(body, "db"),
        _retention(body.get("retention_period")),
    )
    return web.Response(status=200)


async def delete_database(request: web.Request) -> web.Response:
    await _in_pool(request, "admin", request.app[APP_KEY].catalog.delete_database, _param(request, "db"))
    return web.Response(status=200)


async def set_retention(request: web.Request) -> web.Response:
    await _in_pool(
        request,
        "admin",
        request.app[APP_KEY].catalog.set_retention,
        _param(request, "db"),
        _retention(_param(request, "duration")),
    )
    return web.Response(status=204)


async def clear_retention(request: web.Request) -> web.Response:
    await _in_pool(request, "admin", request.app[APP_KEY].catalog.set_retention, _param(request, "db"), None)
    return web.Response(status=204)


async def create_table(request: web.Request) -> web.Response:
    body = await _json_body(request)
    db, table = _required(body, "db"), _required(body, "table")
    tags, fields = body.get("tags"), body.get("fields")
    if not isinstance(tags, list) or not isinstance(fields, list):
        raise BadRequest("'tags' (a list of names) and 'fields' (a list of {name, type}) are required")
    if not all(isinstance(t, str) for t in tags):
        raise BadRequest("'tags' must be a list of names (strings)")
    typed: dict[str, ColumnType] = {}
    for f in fields:
        if (
            not isinstance(f, dict)
            or not isinstance(f.get("name"), str)
            or not isinstance(f.get("type"), str)
        ):
            raise BadRequest('each field must be {"name": "...", "type": "utf8|int64|uint64|float64|bool"}')
        try:
            typed[f["name"]] = ColumnType.from_api(f["type"])
        except ValueError as e:
            raise BadRequest(str(e)) from None
    await _in_pool(request, "admin", request.app[APP_KEY].catalog.create_table, db, table, tags, typed)
    return web.Response(status=200)


async def delete_table(request: web.Request) -> web.Response:
    await _in_pool(
        request,
        "admin",
        request.app[APP_KEY].catalog.delete_table,
        _param(request, "db"),
        _param(request, "table"),
    )
    return web.Response(status=200)


def _required(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"missing or invalid '{key}' in request body")
    return value


# -- tokens and persistence ----------------------------------------------------
async def create_admin_token(request: web.Request) -> web.Response:
    return await _admin_token(request, regenerate=False)


async def regenerate_admin_token(request: web.Request) -> web.Response:
    return await _admin_token(request, regenerate=True)


async def _admin_token(request: web.Request, regenerate: bool) -> web.Response:
    app = request.app[APP_KEY]
    if not app.config.auth.enabled:
        raise MethodDisabled("endpoint disabled, started without auth")
    token, info = await _in_pool(request, "admin", app.tokens.create_admin, regenerate)
    return json_response(
        {
            "id": info.id,
            "name": info.name,
            "token": token,
            "hash": info.hash,
            "created_at": info.created_at,
            "expiry": info.expiry,
        },
        status=201,
    )


async def persist(request: web.Request) -> web.Response:
    app = request.app[APP_KEY]
    started = time.monotonic()
    files = await asyncio.wrap_future(app.persister.request())
    return json_response({"files": files, "seconds": round(time.monotonic() - started, 3)})


# -- metrics -------------------------------------------------------------------
async def metrics(request: web.Request) -> web.Response:
    """Prometheus text; gauges read live state, so render off the event loop."""
    text = await _in_pool(request, "admin", REGISTRY.render)
    return web.Response(
        body=text.encode(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
    )


# -- object store sync ---------------------------------------------------------
#: Longest POST /api/v3/sync waits for its pass before answering with the status so far.
SYNC_NOW_SECONDS = 60.0
SYNC_NOW_MAX_SECONDS = 600.0


async def sync_status(request: web.Request) -> web.Response:
    app = request.app[APP_KEY]
    return json_response(await _in_pool(request, "admin", app.sync_status))


async def sync_now(request: web.Request) -> web.Response:
    app = request.app[APP_KEY]
    if app.syncer is None:
        raise NotFound("sync is not configured: set sync.bucket (see README, Object store sync)")
    raw = request.query.get("timeout")
    try:
        timeout = min(parse_duration_ns(raw) / 1e9 if raw else SYNC_NOW_SECONDS, SYNC_NOW_MAX_SECONDS)
    except ValueError as e:
        raise BadRequest(f"invalid timeout: {e}") from None
    try:
        await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(app.syncer.sync_now())), timeout)
    except TimeoutError:
        pass  # the pass goes on; the status says how far it got
    return json_response(await _in_pool(request, "admin", app.sync_status))


# -- processing engine ---------------------------------------------------------
async def create_trigger(request: web.Request) -> web.Response:
    body = await _json_body(request)
    settings = body.get("trigger_settings") or {}
    arguments = body.get("trigger_arguments")
    if not isinstance(settings, dict) or (arguments is not None and not isinstance(arguments, dict)):
        raise BadRequest("'trigger_settings' must be an object and 'trigger_arguments' an object or null")
    trigger = TriggerDef(
        name=_required(body, "trigger_name"),
        database=_required(body, "db"),
        plugin_filename=_required(body, "plugin_filename"),
        spec=_required(body, "trigger_specification"),
        run_async=bool(settings.get("run_async", False)),
        error_behavior=str(settings.get("error_behavior", "log")).lower(),
        arguments={str(k): str(v) for k, v in arguments.items()} if arguments else None,
        disabled=bool(body.get("disabled", False)),
        no_auth=bool(body.get("no_auth", False)),
    )
    await _in_pool(request, "admin", request.app[APP_KEY].engine.create_trigger, trigger)
    return web.Response(status=200)


async def delete_trigger(request: web.Request) -> web.Response:
    if request.query.get("db"):
        db, name, force = (
            _param(request, "db"),
            _param(request, "trigger_name"),
            _flag(request, "force", False),
        )
    else:
        body = await _json_body(request)
        db, name, force = _required(body, "db"), _required(body, "trigger_name"), bool(body.get("force"))
    await _in_pool(request, "admin", request.app[APP_KEY].engine.delete_trigger, db, name, force)
    return web.Response(status=200)


async def enable_trigger(request: web.Request) -> web.Response:
    return await _set_disabled(request, False)


async def disable_trigger(request: web.Request) -> web.Response:
    return await _set_disabled(request, True)


async def _set_disabled(request: web.Request, disabled: bool) -> web.Response:
    engine = request.app[APP_KEY].engine
    await _in_pool(
        request,
        "admin",
        engine.set_disabled,
        _param(request, "db"),
        _param(request, "trigger_name"),
        disabled,
    )
    return web.Response(status=200)


async def engine_request(request: web.Request) -> web.Response:
    """`/api/v3/engine/<path>`: the request trigger's plugin answers, on the engine pool."""
    app = request.app[APP_KEY]
    headers = {k.lower(): v for k, v in request.headers.items() if k.lower() != "authorization"}
    async with request.app[BODY_READER].received(request) as body:  # counted while the plugin runs
        status, out_headers, out = await _in_pool(
            request,
            "engine",
            app.engine.handle_request,
            request.match_info["path"],
            dict(request.query),
            headers,
            body,
        )
    return web.Response(status=status, headers=out_headers, body=out)


async def test_wal_plugin(request: web.Request) -> web.Response:
    body = await _json_body(request)
    return await _dry_run(request, body, "wal", str(body.get("input_lp") or ""))


async def test_schedule_plugin(request: web.Request) -> web.Response:
    body = await _json_body(request)
    return await _dry_run(request, body, "schedule", body.get("schedule"))


async def _dry_run(request: web.Request, body: dict[str, Any], kind: str, given: str | None) -> web.Response:
    """Both dry-run endpoints: the plugin, its database, what it is fed, arguments and cache name."""
    result = await _in_pool(
        request,
        "engine",
        request.app[APP_KEY].engine.test_plugin,
        kind,
        _required(body, "filename"),
        _required(body, "database"),
        given,
        _arguments(body.get("input_arguments")),
        body.get("cache_name"),
    )
    return json_response(result)


def _arguments(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadRequest("'input_arguments' must be an object of name: value")
    return {str(k): str(v) for k, v in value.items()}


async def install_packages(request: web.Request) -> web.Response:
    body = await _json_body(request)
    packages = body.get("packages")
    if not isinstance(packages, list) or not all(isinstance(p, str) for p in packages):
        raise BadRequest("'packages' must be a list of package specifiers")
    await _in_pool(request, "admin", request.app[APP_KEY].engine.packages.install, packages)
    return web.Response(status=200)


async def install_requirements(request: web.Request) -> web.Response:
    body = await _json_body(request)
    location = _required(body, "requirements_location")
    await _in_pool(request, "admin", request.app[APP_KEY].engine.packages.install, [], location)
    return web.Response(status=200)
