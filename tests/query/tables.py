"""Tables and helpers shared by the query format tests."""

from __future__ import annotations

import json

import pyarrow as pa

from appliance.query.formats import render

NS = 1_000_000_000
T0 = 1_740_515_974 * NS  # 2025-02-25T20:39:34


def ts(*values: int | None, unit: str = "ns", tz: str | None = None) -> pa.Array:
    """A timestamp column in `unit` (and zone `tz`)."""
    return pa.array(list(values), pa.timestamp(unit, tz))


def rows(table: pa.Table) -> list[dict]:
    """The rows of a table as its JSON body reads back."""
    return json.loads(render(table, "json"))


def weather() -> pa.Table:
    """Three rows with a dictionary tag, nulls in every other column and sub-second times."""
    return pa.table(
        {
            "device": pa.array(["dev1", "dev2", "dev1"]).dictionary_encode(),
            "temp": pa.array([21.5, None, 19.0]),
            "hum": pa.array([40, 41, None], pa.int64()),
            "ok": pa.array([True, None, False]),
            "status": pa.array(["ok", "bad", None]),
            "time": ts(T0, T0 + 500_000_000, T0 + 1_000),
        }
    )
