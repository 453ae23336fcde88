"""query.rows: Arrow to plain Python rows, as plugins receive query results, WAL batches and dry runs."""

from __future__ import annotations

import datetime
import decimal

import pyarrow as pa

from appliance.query.rows import array_values, column_rows, table_rows


def test_every_type_becomes_plain_python() -> None:
    table = pa.table(
        {
            "time": pa.array([1_700_000_000_123_456_789, None], pa.timestamp("ns")),
            "time_s": pa.array([2, None], pa.timestamp("s", tz="UTC")),
            "host": pa.array(["a", None]).dictionary_encode(),
            "u": pa.array([2**64 - 1, None], pa.uint64()),
            "half": pa.array([1.5, None], pa.float16()),
            "n": pa.array([None, None], pa.null()),
            "day": pa.array([datetime.date(2024, 1, 2), None], pa.date32()),
            "dec": pa.array([decimal.Decimal("1.25"), None], pa.decimal128(5, 2)),
            "ts_list": pa.array([[1, None], None], pa.list_(pa.timestamp("ms"))),
            "rec": pa.array([{"a": 1}, None], pa.struct([("a", pa.int64())])),
            "dur": pa.array([5, None], pa.duration("us")),
            "tod": pa.array([3_723_000_000_001, None], pa.time64("ns")),
            "map": pa.array([[("k", 1)], None], pa.map_(pa.string(), pa.int64())),
            "iv": pa.array([pa.MonthDayNano([1, 2, 3]), None], pa.month_day_nano_interval()),
        }
    )
    first, second = table_rows(table)
    assert first == {
        "time": 1_700_000_000_123_456_789,
        "time_s": 2_000_000_000,
        "host": "a",
        "u": 2**64 - 1,
        "half": 1.5,
        "n": None,
        "day": "2024-01-02",
        "dec": 1.25,
        "ts_list": [1_000_000, None],
        "rec": {"a": 1},
        "dur": 5_000,
        "tod": "01:02:03.000000001",
        "map": {"k": 1},
        "iv": {"months": 1, "days": 2, "nanoseconds": 3},
    }
    assert set(second.values()) == {None}
    assert type(first["host"]) is str and type(first["time"]) is int


def test_seconds_far_from_1970_scale_exactly() -> None:
    far = 9_000_000_000_000  # seconds: past int64 once in ns
    assert array_values(pa.array([far], pa.duration("s"))) == [far * 1_000_000_000]


def test_omit_nulls_leaves_the_key_out() -> None:
    batch = pa.record_batch({"host": pa.array(["a", None]).dictionary_encode(), "v": pa.array([None, 2.0])})
    assert table_rows(batch, omit_nulls=True) == [{"host": "a"}, {"v": 2.0}]
    assert table_rows(batch) == [{"host": "a", "v": None}, {"host": None, "v": 2.0}]


def test_columns_chunks_slices_and_empty() -> None:
    chunked = pa.chunked_array([pa.array([1, 2], pa.timestamp("ns")), pa.array([3], pa.timestamp("ns"))])
    sliced = pa.array([[1], [2, 3], None, [4]], pa.list_(pa.timestamp("ns"))).slice(1, 3)
    assert table_rows(pa.table({"t": chunked, "l": sliced})) == [
        {"t": 1, "l": [2, 3]},
        {"t": 2, "l": None},
        {"t": 3, "l": [4]},
    ]
    assert table_rows(pa.table({"t": pa.array([], pa.timestamp("ns"))})) == []
    assert table_rows(pa.table({"t": [1, 2]}).select([])) == [{}, {}]
    assert table_rows(pa.record_batch({"x": pa.array(["a"]).dictionary_encode()})) == [{"x": "a"}]
    assert column_rows({"b": pa.array([1]), "a": pa.array([None])}, 1, omit_nulls=True) == [{"b": 1}]
    assert list(column_rows({"b": pa.array([1]), "a": pa.array([2])}, 1)[0]) == ["b", "a"]


def test_an_extension_type_reads_as_its_storage() -> None:
    class Odd(pa.ExtensionType):
        def __init__(self) -> None:
            super().__init__(pa.int64(), "test.odd")

        def __arrow_ext_serialize__(self) -> bytes:
            return b""

        @classmethod
        def __arrow_ext_deserialize__(cls, storage_type: pa.DataType, serialized: bytes) -> Odd:
            return cls()

    arr = pa.ExtensionArray.from_storage(Odd(), pa.array([7, None]))
    assert array_values(arr) == [7, None]  # an extension type: its storage's values
