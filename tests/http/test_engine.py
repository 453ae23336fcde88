"""The processing engine endpoints in-process: a trigger is created from its JSON, a dry run
reports its plugin's writes, and an unknown request path answers JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from appliance.app import App
from appliance.http import routes
from tests.http.conftest import call

PLUGIN = """
def process_writes(influxdb3_local, table_batches, args=None):
    influxdb3_local.info("saw", len(table_batches))
    influxdb3_local.write(LineBuilder("seen").int64_field("n", len(table_batches)))
"""


def test_a_dry_run_reports_the_plugins_writes_without_committing_them(app: App) -> None:
    plugin_dir = Path(app.config.engine.plugin_dir)
    plugin_dir.mkdir(parents=True, exist_ok=True)
    (plugin_dir / "seen.py").write_text(PLUGIN)

    async def scenario(client: TestClient) -> tuple[int, Any]:
        r = await client.post(
            routes.PLUGIN_TEST_WAL, json={"filename": "seen.py", "database": "home", "input_lp": "m v=1i 1"}
        )
        return r.status, await r.json()

    status, report = call(app, scenario)
    assert status == 200, report
    assert report["errors"] == [] and "INFO: saw 1" in report["log_lines"]
    assert report["database_writes"] == {"home": ["seen n=1i"]}
    assert not [d for d in app.catalog.databases() if d.name == "home"]


def test_trigger_requests_missing_a_member_get_400(app: App) -> None:
    async def scenario(client: TestClient) -> list[tuple[int, Any]]:
        bad = await client.post(routes.TRIGGER, json={"db": "home", "trigger_name": "t"})
        settings = await client.post(routes.TRIGGER, json={"trigger_settings": "fast"})
        return [(r.status, await r.json()) for r in (bad, settings)]

    bad, settings = call(app, scenario)
    assert bad == (400, {"error": "missing or invalid 'plugin_filename' in request body"})
    assert settings[0] == 400 and "'trigger_settings' must be an object" in settings[1]["error"]


def test_an_unknown_request_trigger_path_answers_json(app: App) -> None:
    async def scenario(client: TestClient) -> tuple[int, Any]:
        r = await client.get(routes.ENGINE_PREFIX + "nothing/here")
        return r.status, await r.json()

    status, body = call(app, scenario)
    assert status == 404 and isinstance(body, dict)
