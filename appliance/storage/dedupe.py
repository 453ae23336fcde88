"""One row per point: in-memory last-write-wins, and late rewrites merged with Parquet files.

A point is its table, tag set and timestamp. Rows written after their point was persisted
must replace it, not sit beside it. The check is cheap in the common case: only files
whose time range overlaps the new rows are read, and only their key columns within the
overlap; a full merge happens only when a point really was written twice.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from ..model import TIME_COLUMN
from .manifest import ParquetFile

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
    return last_write_wins(conform(batches, schema))


def conform(batches: list[pa.RecordBatch], schema: pa.Schema) -> pa.Table:
    """Cast chunks with differing column sets to one schema; absent columns become null.

    Runs of chunks with the same schema (many small writes of one shape) are cast together,
    one kernel call per column instead of one per chunk. Order is kept: later writes win.
    """
    runs: list[list[pa.RecordBatch]] = []
    for b in batches:
        if runs and runs[-1][0].schema.equals(b.schema):
            runs[-1].append(b)
        else:
            runs.append([b])
    out = []
    for run in runs:
        part = pa.Table.from_batches(run).combine_chunks()  # one chunk: one cast, a faster sort later
        cols = []
        for f in schema:
            i = part.schema.get_field_index(f.name)
            if i < 0:
                cols.append(pa.nulls(part.num_rows, f.type))
            else:
                col = part.column(i)
                cols.append(col if col.type == f.type else col.cast(f.type))
        out.append(pa.Table.from_arrays(cols, schema=schema))
    return pa.concat_tables(out) if out else schema.empty_table()


def tag_columns(schema: pa.Schema) -> list[str]:
    """Tag columns of a storage schema (tags are the dictionary-encoded columns), by name."""
    return sorted(f.name for f in schema if pa.types.is_dictionary(f.type))


def _sort_keys(table: pa.Table, tags: list[str]) -> pa.Table:
    """The identifying columns (tags, time) with tags as plain strings, for sorting and comparing."""
    cols = {}
    for k in [*tags, TIME_COLUMN]:
        col = table.column(k)
        cols[k] = col.cast(pa.string()) if pa.types.is_dictionary(col.type) else col
    return pa.table(cols)


def sort_for_storage(table: pa.Table) -> pa.Table:
    """Sort by tags, then time, as Parquet files are laid out (stable: arrival order kept)."""
    keys = _sort_keys(table, tag_columns(table.schema))
    order = pc.sort_indices(keys, [(k, "ascending", "at_start") for k in keys.column_names])
    return table.take(order)


def last_write_wins(table: pa.Table) -> pa.Table:
    """Sorted by tags then time, with one row per point: later writes win field by field."""
    if table.num_rows < 2:
        return table
    ordered = sort_for_storage(table)
    tags = tag_columns(table.schema)
    keys = _sort_keys(ordered, tags)
    if not _has_adjacent_duplicates(keys):
        return ordered
    fields = [n for n in table.column_names if n not in keys.column_names]
    plain = keys
    for f in fields:
        plain = plain.append_column(f, ordered.column(f))
    # use_threads=False keeps rows in order, so "last" means the latest write.
    grouped = plain.group_by(keys.column_names, use_threads=False).aggregate([(f, "last") for f in fields])
    grouped = grouped.rename_columns([*keys.column_names, *fields])
    return sort_for_storage(grouped.select(table.column_names).cast(table.schema))


def _has_adjacent_duplicates(keys: pa.Table) -> bool:
    n = keys.num_rows
    same = None
    for col in keys.columns:
        if col.null_count:
            col = pc.fill_null(col, "\x00") if pa.types.is_string(col.type) else col
        eq = pc.fill_null(pc.equal(col.slice(1, n - 1), col.slice(0, n - 1)), False)
        same = eq if same is None else pc.and_(same, eq)
    return same is not None and bool(pc.any(same).as_py())
