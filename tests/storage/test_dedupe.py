"""Last-write-wins dedupe and the search for persisted files sharing a point."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from appliance.storage.dedupe import conform
from appliance.storage.dedupe import last_write_wins as dedupe


def test_dedupe_merges_copies_field_by_field() -> None:
    schema = pa.schema(
        [
            ("host", pa.dictionary(pa.int32(), pa.string())),
            ("time", pa.timestamp("ns")),
            ("a", pa.float64()),
            ("b", pa.int64()),
        ]
    )
    first = pa.RecordBatch.from_pydict(
        {
            "host": ["x", "y"],
            "time": pa.array([1, 1]).cast(pa.timestamp("ns")),
            "a": [1.0, 2.0],
            "b": [10, None],
        }
    )
    second = pa.RecordBatch.from_pydict(
        {"host": ["x"], "time": pa.array([1]).cast(pa.timestamp("ns")), "b": [20]}
    )
    t = dedupe(conform([first, second], schema))
    rows = t.drop_columns(["time"]).to_pylist()
    assert rows == [{"host": "x", "a": 1.0, "b": 20}, {"host": "y", "a": 2.0, "b": None}]
    assert t.schema == schema


def test_dedupe_treats_missing_tags_as_one_series() -> None:
    schema = pa.schema(
        [("host", pa.dictionary(pa.int32(), pa.string())), ("time", pa.timestamp("ns")), ("a", pa.float64())]
    )
    b = pa.RecordBatch.from_pydict(
        {
            "host": [None, None, "z"],
            "time": pa.array([5, 5, 5]).cast(pa.timestamp("ns")),
            "a": [1.0, 2.0, 3.0],
        }
    )
    assert dedupe(conform([b], schema)).column("a").to_pylist() == [2.0, 3.0]


def test_colliding_finds_only_files_sharing_a_point(tmp_path: Path) -> None:
    from appliance.storage import dedupe
    from appliance.storage.manifest import ParquetFile
    from appliance.storage.parquet import write_parquet

    schema = pa.schema(
        [("host", pa.dictionary(pa.int32(), pa.string())), ("time", pa.timestamp("ns")), ("v", pa.float64())]
    )

    def table(hosts: list[str | None], times: list[int]) -> pa.Table:
        b = pa.RecordBatch.from_pydict(
            {"host": hosts, "time": pa.array(times).cast(pa.timestamp("ns")), "v": [1.0] * len(times)}
        )
        return conform([b], schema)

    files = []
    cases: list[tuple[list[str | None], list[int]]] = [([None, "a"], [5, 5]), (["b"], [100])]
    for i, (hosts, times) in enumerate(cases):
        write_parquet(table(hosts, times), tmp_path / f"f{i}.parquet")
        files.append(ParquetFile(f"f{i}.parquet", 1, "db", 2, "t", 0, len(times), min(times), max(times), i))
    assert dedupe.colliding(tmp_path, files, table(["c"], [5]), schema) == []
    assert dedupe.colliding(tmp_path, files, table([None], [5]), schema) == [files[0]]
    assert dedupe.colliding(tmp_path, files, table(["b", "a"], [100, 6]), schema) == [files[1]]
    merged = dedupe.merge(tmp_path, [files[0]], table([None], [5]), schema)
    assert merged.num_rows == 2
