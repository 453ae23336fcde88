"""Pretty tables, as arrow's pretty printer draws them."""

from __future__ import annotations

import pyarrow as pa

from appliance.query.formats import render
from tests.query.tables import T0, ts, weather

# --- pretty ---------------------------------------------------------------------------------


def test_pretty_table() -> None:
    table = pa.table({"device": ["dev1", "dev22"], "temp": [21.5, None], "time": ts(T0, T0 + 500_000_000)})
    assert render(table, "pretty").decode() == (
        "+--------+------+-------------------------+\n"
        "| device | temp | time                    |\n"
        "+--------+------+-------------------------+\n"
        "| dev1   | 21.5 | 2025-02-25T20:39:34     |\n"
        "| dev22  |      | 2025-02-25T20:39:34.500 |\n"
        "+--------+------+-------------------------+"
    )


def test_pretty_empty_result_shows_the_header() -> None:
    assert render(weather().slice(0, 0).select(["device", "hum"]), "pretty").decode() == (
        "+--------+-----+\n| device | hum |\n+--------+-----+\n+--------+-----+"
    )


def test_pretty_no_columns() -> None:
    assert render(pa.table({}), "pretty") == b"++\n++"


def test_pretty_wide_characters_and_multiline_cells() -> None:
    table = pa.table({"a": ["é中文", "line\ntwo"], "b": ["x", "y"]})
    assert render(table, "pretty").decode() == (
        "+-------+---+\n"
        "| a     | b |\n"
        "+-------+---+\n"
        "| é中文 | x |\n"
        "| line  | y |\n"
        "| two   |   |\n"
        "+-------+---+"
    )


def test_pretty_nested_values_as_arrow_displays_them() -> None:
    table = pa.table(
        {
            "lst": pa.array([[1, 2, None]], pa.list_(pa.int64())),
            "st": pa.array([{"a": 1, "b": None}], pa.struct([("a", pa.int64()), ("b", pa.int64())])),
            "m": pa.array([[("k1", 1), ("k2", None)]], pa.map_(pa.string(), pa.int64())),
        }
    )
    lines = render(table, "pretty").decode().splitlines()
    assert lines[3] == "| [1, 2, ] | {a: 1, b: } | {k1: 1, k2: } |"
