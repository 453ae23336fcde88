"""Query result formats: format choice, Content-Type, the render dispatch, chunking and Parquet bodies."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from appliance.errors import BadRequest
from appliance.query import bodies
from appliance.query.formats import choose_format, content_type, render
from tests.query.tables import rows, weather

# --- choose_format / content_type ---------------------------------------------------------


@pytest.mark.parametrize(
    ("param", "expected"),
    [
        ("json", "json"),
        ("jsonl", "jsonl"),
        ("json_lines", "jsonl"),
        ("csv", "csv"),
        ("parquet", "parquet"),
        ("pretty", "pretty"),
        ("JSON", "json"),
    ],
)
def test_format_parameter_spellings(param: str, expected: str) -> None:
    assert choose_format(param, None) == expected


def test_format_parameter_wins_over_accept() -> None:
    assert choose_format("csv", "application/json") == "csv"
    assert choose_format("pretty", "application/jsonl") == "pretty"  # bad Accept is not looked at


def test_unknown_format_parameter_names_the_valid_ones() -> None:
    with pytest.raises(BadRequest) as err:
        choose_format("xml", None)
    assert err.value.http_status == 400
    for name in ("json", "jsonl", "json_lines", "csv", "parquet", "pretty"):
        assert name in err.value.message


def test_empty_format_parameter_falls_back_to_accept() -> None:
    assert choose_format("", "text/csv") == "csv"


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "json"),
        ("", "json"),
        ("   ", "json"),
        ("application/json", "json"),
        ("*/*", "json"),
        ("text/csv", "csv"),
        ("text/plain", "pretty"),
        ("application/vnd.apache.parquet", "parquet"),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", "json"),
        ("text/html", "json"),
        ("Text/CSV", "csv"),
        ("text/csv; charset=utf-8", "csv"),
        ("application/xml, text/csv", "csv"),
        ("text/csv;q=0.5, text/plain", "pretty"),
        ("text/plain;q=0.5, text/csv;q=0.5", "pretty"),
        ("application/jsonl, application/json", "json"),
        ("text/csv, */*;q=0.1", "csv"),
        ("*/*, text/csv", "json"),
    ],
)
def test_accept_header(accept: str | None, expected: str) -> None:
    assert choose_format(None, accept) == expected


@pytest.mark.parametrize(
    "accept", ["application/jsonl", "application/xml", "text/csv;q=0", "image/png, text/xml"]
)
def test_unknown_accept_is_a_bad_request(accept: str) -> None:
    with pytest.raises(BadRequest) as err:
        choose_format(None, accept)
    assert err.value.message == f"invalid mime type ({accept})"


def test_content_types() -> None:
    assert content_type("json") == "application/json"
    assert content_type("jsonl") == "application/jsonl"
    assert content_type("csv") == "text/csv"
    assert content_type("parquet") == "application/vnd.apache.parquet"
    assert content_type("pretty") == "text/plain; charset=utf-8"


def test_render_rejects_unknown_format() -> None:
    with pytest.raises(BadRequest):
        render(pa.table({"a": [1]}), "xml")


def test_sliced_and_chunked_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    table = pa.concat_tables([weather(), weather(), weather()])
    expected = rows(table)
    monkeypatch.setattr(bodies, "CHUNK_ROWS", 2)
    assert rows(table) == expected
    assert rows(table.slice(2, 4)) == expected[2:6]
    for fmt in ("csv", "jsonl", "pretty"):
        monkeypatch.setattr(bodies, "CHUNK_ROWS", 2)
        small = render(table.slice(1, 5), fmt)
        monkeypatch.setattr(bodies, "CHUNK_ROWS", 1000)
        assert small == render(table.slice(1, 5), fmt)


def test_record_batch_is_accepted() -> None:
    batch = pa.record_batch({"a": [1]})
    assert render(batch, "json") == b'[{"a":1}]'


# --- Parquet --------------------------------------------------------------------------------


def test_parquet_round_trip() -> None:
    table = weather()
    body = render(table, "parquet")
    assert body[:4] == b"PAR1"
    back = pq.read_table(io.BytesIO(body))
    assert back.num_rows == 3
    assert pa.types.is_dictionary(back.schema.field("device").type)
    assert back.column("device").to_pylist() == ["dev1", "dev2", "dev1"]
    assert back.column("hum").to_pylist() == [40, 41, None]
    assert (
        back.column("time").cast(pa.int64()).to_pylist() == table.column("time").cast(pa.int64()).to_pylist()
    )
    meta = pq.ParquetFile(io.BytesIO(body)).metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"


def test_parquet_uint64_max_round_trips() -> None:
    table = pa.table({"u": pa.array([2**64 - 1, 0], pa.uint64())})
    assert pq.read_table(io.BytesIO(render(table, "parquet"))).column("u").to_pylist() == [2**64 - 1, 0]


def test_parquet_empty_result_is_empty_body() -> None:
    assert render(weather().slice(0, 0), "parquet") == b""
