"""The operations endpoints: health, ping, CORS pre-flight, metrics, persist and sync control."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from ... import __version__
from ...errors import BadRequest, Forbidden, NotFound
from ...metrics import REGISTRY
from ...units import parse_duration_ns
from ..access import may_see
from ..services import OpsAccess
from .common import in_pool, json_response, services

#: What /health and /ping call the product (InfluxDB 2 clients read `name`, v3 ones `product_name`).
PRODUCT = "appliance"
_CORS_METHODS = "GET, POST, PUT, DELETE"
_CORS_HEADERS = "Authorization, Content-Type, Content-Encoding, Accept"


def _access(request: web.Request) -> OpsAccess:
    return services(request).ops


#: The one message a caller without details gets per state (error texts stay behind the token).
_STATE_MESSAGES = {"ok": "ready for queries and writes", "degraded": "degraded", "failed": "failed"}


async def health(request: web.Request) -> web.Response:
    """Each component's state, shaped as InfluxDB 2's /health too (name, message, status pass or
    fail, checks), so its clients' health() works; `state` is ok, degraded or failed; 503 when
    failed. Without the right to details it tells the state only (public_health)."""
    report = _access(request).health()
    state = report["status"]
    shaped = full_health(report) if may_see(request, "health") else public_health(report)
    return json_response(shaped, status=503 if state == "failed" else 200)


def public_health(report: dict[str, Any]) -> dict[str, Any]:
    """What anyone may see: the overall and each component's state, built from an allow-list
    (only `status` is copied), so a field a component adds later never leaks."""
    state = str(report["status"])
    components = report["components"]
    return {
        "name": PRODUCT,
        "message": _STATE_MESSAGES.get(state, "failed"),
        "status": _pass_or_fail(state),
        "state": state,
        "checks": [{"name": str(n), "status": _pass_or_fail(c["status"])} for n, c in components.items()],
        "components": {str(n): {"status": str(c["status"])} for n, c in components.items()},
    }


def full_health(report: dict[str, Any]) -> dict[str, Any]:
    """The whole report for a caller who may see details: errors, counters, version."""
    components = report["components"]
    problems = [f"{n}: {c.get('error') or c['status']}" for n, c in components.items() if c["status"] != "ok"]
    return public_health(report) | {
        "message": "; ".join(problems) or _STATE_MESSAGES["ok"],
        "version": __version__,
        "commit": "",
        "components": components,
    }


def _pass_or_fail(state: str) -> str:
    return "fail" if state == "failed" else "pass"


async def ping(request: web.Request) -> web.Response:
    """InfluxDB 3's 200 JSON; 204 (as InfluxDB 1 and 2) for HEAD and for a client that does not
    accept JSON, such as the v1 `influxdb` client (Accept: application/x-msgpack). Version and
    process id only for a caller who may see details."""
    # The version headers go to everyone: the v1 `influxdb` client's ping() returns the
    # X-Influxdb-Version header, and influxdb-client's version() reads it too.
    headers = {"X-Influxdb-Version": __version__, "X-Influxdb-Build": PRODUCT}
    if request.method == "HEAD" or not _accepts_json(request.headers.get("Accept")):
        return web.Response(status=204, headers=headers)
    body: dict[str, str] = {"product_name": PRODUCT}
    if may_see(request, "health"):
        body |= {"version": __version__, "revision": "", "process_id": _access(request).process_id}
    return json_response(body, headers=headers)


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
    allowed = services(request).settings.cors_origins
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


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text; gauges read live state, so render off the event loop."""
    text = await in_pool(_access(request).pool, REGISTRY.render)
    return web.Response(
        body=text.encode(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
    )


async def persist(request: web.Request) -> web.Response:
    """POST /api/v3/persist: persist the buffer now; how many files and how long it took."""
    started = time.monotonic()
    files = await asyncio.wrap_future(_access(request).persist())
    return json_response({"files": files, "seconds": round(time.monotonic() - started, 3)})


# -- object store sync ---------------------------------------------------------
#: Longest POST /api/v3/sync waits for its pass before answering with the status so far.
SYNC_NOW_SECONDS = 60.0
SYNC_NOW_MAX_SECONDS = 600.0


async def sync_status(request: web.Request) -> web.Response:
    """GET /api/v3/sync: the upload queue and the local disk budget."""
    access = _access(request)
    return json_response(await in_pool(access.pool, access.sync_status))


async def sync_now(request: web.Request) -> web.Response:
    """POST /api/v3/sync?timeout=...: start an upload pass, wait for it (bounded), then the status."""
    access = _access(request)
    if access.sync_now is None:
        raise NotFound("sync is not configured: set sync.bucket (see README, Object store sync)")
    raw = request.query.get("timeout")
    try:
        timeout = min(parse_duration_ns(raw) / 1e9 if raw else SYNC_NOW_SECONDS, SYNC_NOW_MAX_SECONDS)
    except ValueError as e:
        raise BadRequest(f"invalid timeout: {e}") from None
    try:
        await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(access.sync_now())), timeout)
    except TimeoutError:
        pass  # the pass goes on; the status says how far it got
    return json_response(await in_pool(access.pool, access.sync_status))
