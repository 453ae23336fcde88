"""Who may call what, over HTTP: every route of the route table against every kind of token.

The table is driven by http/server.py's ROUTES: a route added without a sample request here fails
`test_every_route_has_a_sample`, so no route can be served without a decision that is tested.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from appliance import app as app_module
from appliance.auth import Permission
from appliance.http import routes
from appliance.http.access import Need
from appliance.http.server import ROUTES
from appliance.metrics import HTTP_REFUSED
from tests.http.conftest import build_app, call

#: A request per route that is harmless for an admin (it may fail with 400/404/409, never change
#: what the other cases see): query string, JSON body.
SAMPLES: dict[tuple[str, str], tuple[dict[str, str], dict[str, Any] | None]] = {
    ("POST", routes.WRITE_LP): ({"db": "{db}"}, None),
    ("POST", routes.WRITE_V2): ({"bucket": "{db}"}, None),
    ("POST", routes.WRITE_V1): ({"db": "{db}"}, None),
    ("GET", routes.QUERY_SQL): ({"db": "{db}", "q": "SELECT 1"}, None),
    ("POST", routes.QUERY_SQL): ({}, {"db": "{db}", "q": "SELECT 1"}),
    ("GET", routes.QUERY_INFLUXQL): ({"db": "{db}", "q": "SHOW MEASUREMENTS"}, None),
    ("POST", routes.QUERY_INFLUXQL): ({"db": "{db}", "q": "SHOW MEASUREMENTS"}, None),
    ("GET", routes.QUERY_V1): ({"db": "{db}", "q": "SHOW MEASUREMENTS"}, None),
    ("POST", routes.QUERY_V1): ({"db": "{db}", "q": "SHOW MEASUREMENTS"}, None),
    ("GET", routes.HEALTH): ({}, None),
    ("GET", routes.HEALTH_V1): ({}, None),
    ("GET", routes.PING): ({}, None),
    ("POST", routes.PING): ({}, None),
    ("GET", routes.CONFIGURE_DATABASE): ({"format": "json"}, None),
    ("POST", routes.CONFIGURE_DATABASE): ({}, {"db": "a"}),  # exists: 409
    ("PUT", routes.CONFIGURE_DATABASE): ({}, {"db": "nope"}),
    ("DELETE", routes.CONFIGURE_DATABASE): ({"db": "nope"}, None),
    ("POST", routes.CONFIGURE_RETENTION): ({"db": "nope", "duration": "1d"}, None),
    ("DELETE", routes.CONFIGURE_RETENTION): ({"db": "nope"}, None),
    ("POST", routes.CONFIGURE_TABLE): ({}, {"db": "nope"}),
    ("DELETE", routes.CONFIGURE_TABLE): ({"db": "nope", "table": "t"}, None),
    ("POST", routes.TOKEN_ADMIN): ({}, None),  # exists: 409
    ("POST", routes.TOKEN_ADMIN_REGENERATE): ({}, None),  # replaces _admin, which no case uses
    ("POST", routes.TOKEN_NAMED_ADMIN): ({}, {"token_name": "admin-x"}),  # taken: 409
    ("POST", routes.TOKEN_RESOURCE): ({}, {"token_name": "admin-x", "permissions": ["db:a:read"]}),
    ("GET", routes.TOKEN): ({}, None),
    ("DELETE", routes.TOKEN): ({"token_name": "nope"}, None),
    ("POST", routes.PERSIST): ({}, None),
    ("GET", routes.METRICS): ({}, None),
    ("GET", routes.SYNC): ({}, None),
    ("POST", routes.SYNC): ({}, None),
    ("POST", routes.TRIGGER): ({}, {"db": "nope"}),
    ("DELETE", routes.TRIGGER): ({"db": "nope", "trigger_name": "t"}, None),
    ("POST", routes.TRIGGER_ENABLE): ({"db": "nope", "trigger_name": "t"}, None),
    ("POST", routes.TRIGGER_DISABLE): ({"db": "nope", "trigger_name": "t"}, None),
    ("POST", routes.INSTALL_PACKAGES): ({}, {"packages": 5}),
    ("POST", routes.INSTALL_REQUIREMENTS): ({}, {}),
    ("POST", routes.PLUGIN_TEST_WAL): ({}, {"database": "a"}),
    ("POST", routes.PLUGIN_TEST_SCHEDULE): ({}, {"database": "a"}),
    ("GET", routes.ENGINE): ({}, None),
    ("POST", routes.ENGINE): ({}, None),
}

#: Tokens by role, with their permissions (None: a named admin token).
ROLES: dict[str, tuple[str, ...] | None] = {
    "admin": None,
    "read_a": ("db:a:read",),
    "write_a": ("db:a:write",),
    "read_all": ("db:*:read",),
    "write_all": ("db:*:write",),
    "metrics": ("system:metrics:read",),
    "health": ("system:health:read",),
    "system_all": ("system:*:read",),
}


def _allowed(need: Need, role: str, db: str) -> bool:
    """The decision the route table promises, written out independently of http/access.py."""
    if role == "admin" or need in (Need.PUBLIC, Need.TOKEN):
        return True
    if need is Need.READ:
        return role == "read_all" or (role == "read_a" and db == "a")
    if need is Need.WRITE:
        return role == "write_all" or (role == "write_a" and db == "a")
    if need is Need.METRICS:
        return role in ("metrics", "system_all")
    return False


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[app_module.App, dict[str, str]]]:
    """An App with auth on, databases a and b, and one token per role."""
    app = build_app(tmp_path_factory.mktemp("access") / "data", **{"auth.enabled": True})
    for db in ("a", "b"):
        app.catalog.create_database(db, None)
    tokens = {}
    for role, perms in ROLES.items():
        parsed = None if perms is None else tuple(Permission.parse(p) for p in perms)
        tokens[role], _ = app.tokens.create(f"{role}-x" if role == "admin" else role, parsed, None)
    yield app, tokens
    app.stop()


def _route_cases() -> list[tuple[str, str, Need]]:
    """Every route, and HEAD for every GET (aiohttp serves it with the GET handler)."""
    cases: list[tuple[str, str, Need]] = [
        (method, path, need) for method, path, _, need in ROUTES if need is not Need.REQUEST_TRIGGER
    ]
    return cases + [("HEAD", path, need) for method, path, need in cases if method == "GET"]


def test_every_route_has_a_sample() -> None:
    missing = [(m, p) for m, p, _, _ in ROUTES if (m, p) not in SAMPLES]
    assert not missing, f"routes without an access test sample: {missing}"


def test_every_served_route_has_a_need(secured: tuple[app_module.App, dict[str, str]]) -> None:
    from appliance.http import server as http_server
    from appliance.lifecycle import http_services

    web_app = http_server.create(http_services(secured[0]))
    needs = web_app[http_server.NEEDS]
    served = {(r.method, r.resource.canonical) for r in web_app.router.routes() if r.resource is not None}
    assert served and served <= set(needs), f"served without a need: {served - set(needs)}"


async def _send(client: TestClient, method: str, path: str, db: str, token: str | None) -> tuple[int, str]:
    params, body = SAMPLES["GET" if method == "HEAD" else method, path]
    params = {k: v.replace("{db}", db) for k, v in params.items()}
    data = json.dumps(body).replace("{db}", db) if body is not None else b"m v=1i"
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    url = path.replace("{path:.+}", "hook")
    async with client.request(method, url, params=params, data=data, headers=headers) as r:
        return r.status, await r.text()


@pytest.mark.parametrize(("method", "path", "need"), _route_cases())
def test_each_route_allows_exactly_its_tokens(
    secured: tuple[app_module.App, dict[str, str]], method: str, path: str, need: Need
) -> None:
    app, tokens = secured

    async def scenario(client: TestClient) -> dict[tuple[str, str], tuple[int, str]]:
        out = {("none", "a"): await _send(client, method, path, "a", None)}
        for role, token in tokens.items():
            for db in ("a", "b"):
                out[(role, db)] = await _send(client, method, path, db, token)
        return out

    results = call(app, scenario)
    status, _ = results[("none", "a")]
    assert (status in (401, 403)) is (need is not Need.PUBLIC), results[("none", "a")]
    if need is not Need.PUBLIC:
        assert status == 401
    for (role, db), (status, text) in results.items():
        if role == "none":
            continue
        if _allowed(need, role, db):
            assert status not in (401, 403), (role, db, status, text)
        else:
            assert status == 403, (role, db, status, text)
            if method != "HEAD":  # a HEAD answer has no body
                assert "permission denied: this needs" in text and f"token {role!r} has" in text


def test_a_403_names_the_missing_permission(secured: tuple[app_module.App, dict[str, str]]) -> None:
    app, tokens = secured

    async def scenario(client: TestClient) -> list[tuple[int, Any]]:
        auth = {"Authorization": f"Bearer {tokens['read_a']}"}
        write = await client.post(routes.WRITE_LP, params={"db": "a"}, data=b"m v=1i", headers=auth)
        other = await client.get(routes.QUERY_SQL, params={"db": "b", "q": "SELECT 1"}, headers=auth)
        admin = await client.post(routes.CONFIGURE_DATABASE, json={"db": "c"}, headers=auth)
        return [(r.status, await r.json()) for r in (write, other, admin)]

    before = {r: HTTP_REFUSED.value(reason=r) for r in ("forbidden", "unauthorized")}
    (ws, write), (os_, other), (as_, admin) = call(app, scenario)
    assert HTTP_REFUSED.value(reason="forbidden") == before["forbidden"] + 3
    assert HTTP_REFUSED.value(reason="unauthorized") == before["unauthorized"]
    assert ws == 403 and "db:a:write" in write["error"] and "db:a:read" in write["error"]
    assert os_ == 403 and "db:b:read" in other["error"]
    assert as_ == 403 and "an admin token" in admin["error"]
    assert app.catalog.get("c") is None


def test_list_databases_shows_only_the_tokens_databases(
    secured: tuple[app_module.App, dict[str, str]],
) -> None:
    app, tokens = secured

    async def scenario(client: TestClient) -> dict[str, list[str]]:
        out = {}
        for role in ("read_a", "read_all", "metrics"):
            r = await client.get(
                routes.CONFIGURE_DATABASE,
                params={"format": "json"},
                headers={"Authorization": f"Bearer {tokens[role]}"},
            )
            out[role] = [row["iox::database"] for row in await r.json()]
        return out

    shown = call(app, scenario)
    assert shown == {"read_a": ["a"], "read_all": ["a", "b"], "metrics": []}


def test_revoked_and_expired_tokens_get_401(tmp_path: Path) -> None:
    app = build_app(tmp_path / "data", **{"auth.enabled": True})
    try:
        app.catalog.create_database("a", None)
        perms = (Permission.parse("db:a:read"),)
        revoked, _ = app.tokens.create("revoked", perms, None)
        expired, _ = app.tokens.create("expired", perms, 1)  # 1 ms after the epoch
        kept, _ = app.tokens.create("kept", perms, None)
        app.tokens.delete("revoked")

        async def scenario(client: TestClient) -> list[int]:
            statuses = []
            for token in (revoked, expired, kept):
                r = await client.get(
                    routes.QUERY_SQL,
                    params={"db": "a", "q": "SELECT 1"},
                    headers={"Authorization": f"Bearer {token}"},
                )
                statuses.append(r.status)
            return statuses

        before = HTTP_REFUSED.value(reason="unauthorized")
        assert call(app, scenario) == [401, 401, 200]
        assert HTTP_REFUSED.value(reason="unauthorized") == before + 2
    finally:
        app.stop()


NOT_FOUND = b'{"error":"not found"}'
PLUGIN = (
    "def process_request(influxdb3_local, query_parameters, request_headers, request_body, args=None):\n"
    "    return {'seen': True}\n"
)


def test_system_tables_show_a_resource_token_only_its_database(tmp_path: Path) -> None:
    """sync_queue, plugin_files and the trigger tables: every database for an admin, one for a token."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    for name in ("a_hook.py", "b_hook.py"):
        (plugins / name).write_text(PLUGIN)
    app = build_app(
        tmp_path / "data",
        **{
            "auth.enabled": True,
            "sync.bucket": f"file://{tmp_path}/bucket",
            "engine.plugin_dir": str(plugins),
        },
    )
    try:
        read_a, _ = app.tokens.create("read_a", (Permission.parse("db:a:read"),), None)
        admin = (tmp_path / "data" / "admin-token").read_text().strip()

        async def scenario(client: TestClient) -> dict[str, dict[str, list[Any]]]:
            auth = {"Authorization": f"Bearer {admin}"}
            for db in ("a", "b"):
                r = await client.post(routes.WRITE_LP, params={"db": db}, data=b"m v=1i 1", headers=auth)
                assert r.status == 204
                trigger = {
                    "db": db,
                    "trigger_name": f"{db}_hook",
                    "plugin_filename": f"{db}_hook.py",
                    "trigger_specification": f"request:{db}_hook",
                }
                r = await client.post(routes.TRIGGER, json=trigger, headers=auth)
                assert r.status == 200, await r.text()
            assert (await client.post(routes.PERSIST, headers=auth)).status == 200
            out = {}
            for who, token in (("admin", admin), ("read_a", read_a)):
                seen: dict[str, list[Any]] = {}
                for table, column in (
                    ("sync_queue", "path"),
                    ("plugin_files", "file_name"),
                    ("processing_engine_triggers", "trigger_name"),
                ):
                    r = await client.get(
                        routes.QUERY_SQL,
                        params={"db": "a", "q": f"SELECT {column} FROM system.{table} ORDER BY 1"},
                        headers={"Authorization": f"Bearer {token}"},
                    )
                    assert r.status == 200, await r.text()
                    seen[table] = [row[column] for row in await r.json()]
                out[who] = seen
            return out

        seen = call(app, scenario)
        assert [p.split("/")[0] for p in seen["admin"]["sync_queue"]] == ["a", "b"]
        assert [p.split("/")[0] for p in seen["read_a"]["sync_queue"]] == ["a"]
        assert seen["admin"]["plugin_files"] == ["a_hook.py", "b_hook.py"]
        assert seen["read_a"]["plugin_files"] == ["a_hook.py"]
        assert seen["read_a"]["processing_engine_triggers"] == ["a_hook"]
    finally:
        app.stop()


def test_a_request_trigger_needs_write_on_its_database_unless_no_auth(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "hook.py").write_text(PLUGIN)
    app = build_app(tmp_path / "data", **{"auth.enabled": True, "engine.plugin_dir": str(plugins)})
    try:
        app.catalog.create_database("a", None)
        tokens = {
            role: app.tokens.create(role, (Permission.parse(p),), None)[0]
            for role, p in (("write_a", "db:a:write"), ("read_a", "db:a:read"), ("write_b", "db:b:write"))
        }
        admin = (tmp_path / "data" / "admin-token").read_text().strip()

        async def scenario(client: TestClient) -> dict[str, int]:
            for name, no_auth in (("closed", False), ("open", True)):
                trigger = {
                    "db": "a",
                    "trigger_name": name,
                    "plugin_filename": "hook.py",
                    "trigger_specification": f"request:{name}",
                    "no_auth": no_auth,
                }
                r = await client.post(
                    routes.TRIGGER, json=trigger, headers={"Authorization": f"Bearer {admin}"}
                )
                assert r.status == 200, await r.text()
            out = {}
            for role, token in (*tokens.items(), ("none", None)):
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                for name in ("closed", "open", "missing"):
                    r = await client.post(routes.ENGINE_PREFIX + name, data=b"{}", headers=headers)
                    out[f"{role} {name}"] = r.status
                    if r.status == 404:
                        assert await r.read() == NOT_FOUND
            return out

        # A token that may not call a trigger learns nothing of it: 404, as for a path with no trigger.
        assert call(app, scenario) == {
            "write_a closed": 200,
            "write_a open": 200,
            "write_a missing": 404,
            "read_a closed": 404,
            "read_a open": 200,
            "read_a missing": 404,
            "write_b closed": 404,
            "write_b open": 200,
            "write_b missing": 404,
            "none closed": 401,
            "none open": 200,
            "none missing": 401,
        }
    finally:
        app.stop()


def test_health_details_need_admin_or_system_health_read(
    secured: tuple[app_module.App, dict[str, str]],
) -> None:
    app, tokens = secured

    async def scenario(client: TestClient) -> dict[str, bool]:
        out = {}
        for role in ("admin", "health", "read_a", "metrics"):
            r = await client.get(routes.HEALTH, headers={"Authorization": f"Bearer {tokens[role]}"})
            out[role] = "version" in await r.json()
        return out

    assert call(app, scenario) == {"admin": True, "health": True, "read_a": False, "metrics": False}


def test_a_database_route_that_never_checks_is_refused_not_served(
    secured: tuple[app_module.App, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fail-closed net: a READ route whose handler forgets require_database answers 403 to a
    resource token (never its data or error text), and a route added without a need is admin-only."""
    from aiohttp import web

    from appliance.errors import NotFound
    from appliance.http import server as http_server

    async def leaky(request: web.Request) -> web.Response:
        if request.query.get("fail"):
            raise NotFound("database b holds secret_table")
        return web.Response(text="rows of every database")

    async def undecided(request: web.Request) -> web.Response:
        return web.Response(text="undecided")

    monkeypatch.setattr(http_server, "ROUTES", (*http_server.ROUTES, ("GET", "/leaky", leaky, Need.READ)))
    real_create = http_server.create

    def create(services: Any) -> web.Application:
        web_app = real_create(services)
        web_app.router.add_get("/undecided", undecided)  # not in ROUTES: no need recorded
        return web_app

    monkeypatch.setattr(http_server, "create", create)
    app, tokens = secured

    async def scenario(client: TestClient) -> dict[str, tuple[int, str]]:
        out = {}
        for role, path in (
            ("read_a", "/leaky?db=a"),
            ("read_a", "/leaky?db=a&fail=1"),
            ("admin", "/leaky"),
            ("read_all", "/undecided"),
            ("admin", "/undecided"),
        ):
            r = await client.get(path, headers={"Authorization": f"Bearer {tokens[role]}"})
            out[f"{role} {path}"] = (r.status, await r.text())
        return out

    seen = call(app, scenario)
    assert seen["read_a /leaky?db=a"][0] == 403 and "rows" not in seen["read_a /leaky?db=a"][1]
    assert (
        seen["read_a /leaky?db=a&fail=1"][0] == 403 and "secret" not in seen["read_a /leaky?db=a&fail=1"][1]
    )
    assert seen["admin /leaky"] == (200, "rows of every database")
    assert seen["read_all /undecided"][0] == 403 and seen["admin /undecided"] == (200, "undecided")
