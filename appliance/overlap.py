"""Late rewrites: find points that a Parquet file and newer rows both hold, and merge them.

A point is its table, tag set and timestamp. Rows written after their point was persisted
must replace it, not sit beside it. The check is cheap in the common case: only files
whose time range overlaps the new rows are read, and only their key columns within the
overlap; a full merge happens only when a point really was written twice.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from .buffer import conform, dedupe, tag_columns
from .manifest import ParquetFile
from .model import TIME_COLUMN

_NULL_TAG = "\x00"  # stands in for an absent tag so that joins match absent with absent


def time_range(table: pa.Table) -> tuple[int, int]:
    """Smallest and largest timestamp (ns) of a non-empty table."""
    times = table.column(TIME_COLUMN).cast(pa.int64())
    bounds = pc.min_max(times).as_py()
    return int(bounds["min"]), int(bounds["max"])


def _keys(table: pa.Table, tags: list[str]) -> pa.Table:
    cols = {}
    for t in tags:
        col = table.column(t) if t in table.column_names else pa.nulls(table.num_rows, pa.string())
        cols[t] = pc.fill_null(col.cast(pa.string()), _NULL_TAG)
    cols[TIME_COLUMN] = table.column(TIME_COLUMN).cast(pa.int64())
    return pa.table(cols)


def _file_keys(path: Path, schema: pa.Schema, lo: int, hi: int) -> pa.Table:
    import pyarrow.parquet as pq

    present = set(pq.read_schema(path).names)
    tags = tag_columns(schema)
    t = pq.read_table(
        path,
        columns=[c for c in [*tags, TIME_COLUMN] if c in present],
        filters=[
            (TIME_COLUMN, ">=", pa.scalar(lo, pa.timestamp("ns"))),
            (TIME_COLUMN, "<=", pa.scalar(hi, pa.timestamp("ns"))),
        ],
    )
    return _keys(t, tags)


def colliding(root: Path, files: list[ParquetFile], rows: pa.Table, schema: pa.Schema) -> list[ParquetFile]:
    """The files that hold at least one point also present in `rows`."""
    if rows.num_rows == 0:
        return []
    lo, hi = time_range(rows)
    candidates = [f for f in files if f.max_time >= lo and f.min_time <= hi]
    if not candidates:
        return []
    tags = tag_columns(schema)
    new_keys = _keys(rows, tags)
    hits = []
    for f in candidates:
        old = _file_keys(root / f.path, schema, max(lo, f.min_time), min(hi, f.max_time))
        if old.num_rows and old.join(new_keys, keys=old.column_names, join_type="inner").num_rows:
            hits.append(f)
    return hits


def merge(root: Path, files: list[ParquetFile], rows: pa.Table, schema: pa.Schema) -> pa.Table:
    """One copy of every point in `files` and `rows`; `rows` win, then newer files."""
    import pyarrow.parquet as pq

    ordered = sorted(files, key=lambda f: (f.created_ns, f.path))
    tables = [pq.read_table(root / f.path) for f in ordered] + [rows]
    batches = [b for t in tables for b in t.to_batches()]
    return dedupe(conform(batches, schema))
