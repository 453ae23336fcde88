"""Arrow to plain Python, as a plugin's query() returns rows."""

from __future__ import annotations

import pyarrow as pa

from appliance.engine.rows import table_to_rows


def test_query_conversion_chunks_slices_and_empty() -> None:
    chunked = pa.chunked_array(
        [pa.array([1, 2], pa.timestamp("ns")), pa.array([3], pa.timestamp("ns"))],
    )
    sliced = pa.array([[1], [2, 3], None, [4]], pa.list_(pa.timestamp("ns"))).slice(1, 3)
    table = pa.table({"t": chunked, "l": sliced})
    assert table_to_rows(table) == [{"t": 1, "l": [2, 3]}, {"t": 2, "l": None}, {"t": 3, "l": [4]}]
    assert table_to_rows(pa.table({"t": pa.array([], pa.timestamp("ns"))})) == []
    batch = pa.record_batch({"x": pa.array(["a"]).dictionary_encode()})
    assert table_to_rows(batch) == [{"x": "a"}]
