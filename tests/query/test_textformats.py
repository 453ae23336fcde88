"""JSON, JSON lines and CSV bodies: their shape, as DataFusion 55's own writers (arrow-rs) produce it."""

from __future__ import annotations

import json

import pyarrow as pa

from appliance.query.formats import render
from tests.query.tables import rows, weather


def test_json_array_of_objects_with_nulls_omitted() -> None:
    assert render(weather(), "json") == (
        b'[{"device":"dev1","temp":21.5,"hum":40,"ok":true,"status":"ok","time":"2025-02-25T20:39:34"},'
        b'{"device":"dev2","hum":41,"status":"bad","time":"2025-02-25T20:39:34.500"},'
        b'{"device":"dev1","temp":19.0,"ok":false,"time":"2025-02-25T20:39:34.000001"}]'
    )


def test_json_empty_result_is_empty_array() -> None:
    assert render(weather().slice(0, 0), "json") == b"[]"
    assert render(pa.table({"a": pa.array([], pa.int64())}), "json") == b"[]"


def test_json_row_of_only_nulls_is_empty_object() -> None:
    table = pa.table({"a": pa.array([None, 1], pa.int64()), "b": pa.array([None, None], pa.string())})
    assert render(table, "json") == b'[{},{"a":1}]'


def test_json_column_names_are_escaped() -> None:
    assert json.loads(render(pa.table({'we"ird\n': [1]}), "json")) == [{'we"ird\n': 1}]


# --- JSON lines -----------------------------------------------------------------------------


def test_jsonl_one_object_per_line() -> None:
    body = render(weather(), "jsonl")
    assert body.endswith(b"}\n") and body.count(b"\n") == 3
    assert [json.loads(line) for line in body.splitlines()] == rows(weather())


def test_jsonl_empty_result_is_empty_body() -> None:
    assert render(weather().slice(0, 0), "jsonl") == b""


# --- CSV ------------------------------------------------------------------------------------


def test_csv_header_values_and_nulls() -> None:
    assert render(weather(), "csv") == (
        b"device,temp,hum,ok,status,time\n"
        b"dev1,21.5,40,true,ok,2025-02-25T20:39:34\n"
        b"dev2,,41,,bad,2025-02-25T20:39:34.500\n"
        b"dev1,19.0,,false,,2025-02-25T20:39:34.000001\n"
    )


def test_csv_quotes_only_where_needed() -> None:
    table = pa.table({"a,b": ['x"y', "p,q", "line\nbreak", "cr\r", " plain ", "semi;colon", ""]})
    assert render(table, "csv") == (b'"a,b"\n"x""y"\n"p,q"\n"line\nbreak"\n"cr\r"\n plain \nsemi;colon\n\n')


def test_csv_empty_result_is_empty_body() -> None:
    assert render(weather().slice(0, 0), "csv") == b""
