"""Arrow tables to plain Python rows: the one conversion every caller that hands rows out uses.

Plugins see query results, WAL batches and dry-run writes as lists of dicts, never Arrow or
pandas. Every Arrow type becomes plain Python: timestamps and durations int nanoseconds (as
Python ints, so seconds far from 1970 scale exactly), tags (dictionaries) their str, dates and
times of day ISO strings, decimals float, lists lists, structs and maps dicts, NULL None.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ..lineprotocol.syntax import NS_PER_SECOND, NS_PER_UNIT


def table_rows(table: pa.Table | pa.RecordBatch, *, omit_nulls: bool = False) -> list[dict[str, Any]]:
    """Rows of `table` as dicts by column name; with `omit_nulls`, a NULL leaves its key out."""
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    columns = dict(zip(table.column_names, table.columns, strict=True))
    return column_rows(columns, table.num_rows, omit_nulls=omit_nulls)


def column_rows(
    columns: Mapping[str, pa.Array | pa.ChunkedArray], num_rows: int, *, omit_nulls: bool = False
) -> list[dict[str, Any]]:
    """Rows of equally long columns (in the mapping's order) as dicts; NULLs as in table_rows."""
    names = list(columns)
    if not names:
        return [{} for _ in range(num_rows)]
    values = [_column_values(col) for col in columns.values()]
    if omit_nulls:
        return [
            {n: v for n, v in zip(names, row, strict=True) if v is not None}
            for row in zip(*values, strict=True)
        ]
    return [dict(zip(names, row, strict=True)) for row in zip(*values, strict=True)]


def _column_values(column: pa.Array | pa.ChunkedArray) -> list[Any]:
    if isinstance(column, pa.Array):
        return array_values(column)
    values: list[Any] = []
    for chunk in column.chunks:
        values.extend(array_values(chunk))
    return values


def array_values(arr: pa.Array) -> list[Any]:
    """One Arrow array as plain Python values; never needs pandas, never raises for a type."""
    try:
        return _convert(arr)
    except Exception:  # a type we did not foresee: text beats failing the caller
        try:
            return arr.cast(pa.string()).to_pylist()
        except Exception:
            return [None if not s.is_valid else repr(s) for s in arr]


def _scaled(arr: pa.Array, unit: str) -> list[Any]:
    """Counts of `unit` as int ns (Python ints: no int64 overflow for seconds far from 1970)."""
    factor = NS_PER_UNIT[unit]
    ints = arr.cast(pa.int64()).to_pylist()
    return ints if factor == 1 else [None if v is None else v * factor for v in ints]


def _time_of_day(ns: int | None) -> str | None:
    if ns is None:
        return None
    seconds, frac = divmod(ns, NS_PER_SECOND)
    minutes, sec = divmod(seconds, 60)
    hours, minute = divmod(minutes, 60)
    text = f"{hours:02d}:{minute:02d}:{sec:02d}"
    return f"{text}.{frac:09d}".rstrip("0") if frac else text


def _regroup(arr: pa.Array, flat: list[Any]) -> list[Any]:
    """The flattened values of a list array cut back into its lists (None for a null list)."""
    lengths = pc.list_value_length(arr).to_pylist()
    out: list[Any] = []
    pos = 0
    for n in lengths:
        if n is None:
            out.append(None)
        else:
            out.append(flat[pos : pos + n])
            pos += n
    return out


def is_list_type(t: pa.DataType) -> bool:
    """Any of Arrow's list types (list, large, fixed-size, views)."""
    return (
        pa.types.is_list(t)
        or pa.types.is_large_list(t)
        or pa.types.is_fixed_size_list(t)
        or pa.types.is_list_view(t)
        or pa.types.is_large_list_view(t)
    )


def _convert(arr: pa.Array) -> list[Any]:
    t = arr.type
    if isinstance(t, pa.ExtensionType):
        return _convert(arr.storage)
    if pa.types.is_dictionary(t):
        return _convert(arr.dictionary_decode())
    if pa.types.is_run_end_encoded(t):
        return _convert(pc.run_end_decode(arr))
    if pa.types.is_timestamp(t) or pa.types.is_duration(t):
        return _scaled(arr, t.unit)
    if pa.types.is_time(t):
        return [_time_of_day(v) for v in _scaled(arr, t.unit)]
    if pa.types.is_date(t):
        return [None if d is None else d.isoformat() for d in arr.to_pylist()]
    if pa.types.is_decimal(t):
        return [None if d is None else float(d) for d in arr.to_pylist()]
    if pa.types.is_float16(t):
        return arr.cast(pa.float64()).to_pylist()
    if pa.types.is_null(t):
        return [None] * len(arr)
    if pa.types.is_map(t):
        entries_type = pa.list_(pa.struct([("key", t.key_type), ("value", t.item_type)]))
        pairs = _convert(arr.cast(entries_type))
        return [None if p is None else _map_dict(p) for p in pairs]
    if is_list_type(t):
        return _regroup(arr, _convert(arr.flatten()))
    if pa.types.is_struct(t):
        return _struct_dicts(arr)
    if t == pa.month_day_nano_interval():
        return [
            None if v is None else {"months": v.months, "days": v.days, "nanoseconds": v.nanoseconds}
            for v in arr.to_pylist()
        ]
    return arr.to_pylist()


def _struct_dicts(arr: pa.StructArray) -> list[Any]:
    t = arr.type
    names = [t.field(i).name for i in range(t.num_fields)]
    children = [_convert(child) for child in arr.flatten()]
    valid = arr.is_valid().to_pylist()
    rows = list(zip(*children, strict=True)) if children else [()] * len(arr)
    return [dict(zip(names, row, strict=True)) if ok else None for ok, row in zip(valid, rows, strict=True)]


def _map_dict(pairs: list[dict[str, Any]]) -> dict[Any, Any] | list[Any]:
    try:
        return {p["key"]: p["value"] for p in pairs}
    except TypeError:  # an unhashable key (a list): keep the pairs
        return [(p["key"], p["value"]) for p in pairs]
