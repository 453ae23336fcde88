"""The configuration endpoints in-process: databases, retention, tables, and the admin token."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from appliance.app import App
from appliance.http import routes
from tests.http.conftest import call


def test_databases_are_created_listed_and_deleted(app: App) -> None:
    async def scenario(client: TestClient) -> list[Any]:
        made = await client.post(routes.CONFIGURE_DATABASE, json={"db": "iot", "retention_period": "7d"})
        listed = await client.get(routes.CONFIGURE_DATABASE, params={"format": "json"})
        rows = await listed.json()
        gone = await client.delete(routes.CONFIGURE_DATABASE, params={"db": "iot"})
        return [made.status, rows, gone.status]

    made, rows, gone = call(app, scenario)
    assert made == 200 and rows == [{"iox::database": "iot"}] and gone == 200
    assert not [d for d in app.catalog.databases() if d.name == "iot"]


def test_bad_configuration_requests_get_400_naming_the_problem(app: App) -> None:
    async def scenario(client: TestClient) -> list[tuple[int, Any]]:
        no_format = await client.get(routes.CONFIGURE_DATABASE)
        forever = await client.post(routes.CONFIGURE_DATABASE, json={"db": "x", "retention_period": "0s"})
        field = await client.post(
            routes.CONFIGURE_TABLE, json={"db": "x", "table": "t", "tags": [], "fields": [{"name": "v"}]}
        )
        token = await client.post(routes.TOKEN_ADMIN)
        return [(r.status, await r.json()) for r in (no_format, forever, field, token)]

    no_format, forever, field, token = call(app, scenario)
    assert no_format == (400, {"error": "missing query parameter 'format' (use format=json)"})
    assert forever[0] == 400 and "longer than zero" in forever[1]["error"]
    assert field[0] == 400 and "each field must be" in field[1]["error"]
    assert token[1] == {"error": "endpoint disabled, started without auth"}


def test_a_table_is_created_with_its_columns(app: App) -> None:
    async def scenario(client: TestClient) -> int:
        r = await client.post(
            routes.CONFIGURE_TABLE,
            json={"db": "x", "table": "t", "tags": ["dev"], "fields": [{"name": "v", "type": "float64"}]},
        )
        return r.status

    assert call(app, scenario) == 200
    db = next(d for d in app.catalog.databases() if d.name == "x")
    assert {"dev", "v"} <= set(db.tables["t"].columns)
