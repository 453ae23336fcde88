"""Arrow to plain Python, as a plugin's `query()` returns rows.

Every Arrow type becomes plain Python: timestamps and durations become int nanoseconds, dates
and times ISO strings, decimals float, lists lists, structs and maps dicts.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

_NS_PER_UNIT = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}


def table_to_rows(table: pa.Table | pa.RecordBatch) -> list[dict[str, Any]]:
    """Rows of `table` as dicts: timestamps int ns, tags str, NULL None (see module docstring)."""
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    names = table.column_names
    if not names:
        return [{} for _ in range(table.num_rows)]
    columns = [_chunked_to_list(col) for col in table.columns]
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]


def _chunked_to_list(column: pa.ChunkedArray) -> list[Any]:
    values: list[Any] = []
    for chunk in column.chunks:
        values.extend(array_to_list(chunk))
    return values


def array_to_list(arr: pa.Array) -> list[Any]:
    """One Arrow array as plain Python values; never needs pandas."""
    try:
        return _convert(arr)
    except Exception:  # a type we did not foresee: text beats failing the plugin's query
        try:
            return arr.cast(pa.string()).to_pylist()
        except Exception:
            return [None if not s.is_valid else repr(s) for s in arr]


def _scaled(arr: pa.Array, unit: str) -> list[Any]:
    factor = _NS_PER_UNIT[unit]
    ints = arr.cast(pa.int64()).to_pylist()
    # Python ints: seconds far from 1970 still scale exactly instead of overflowing int64.
    return ints if factor == 1 else [None if v is None else v * factor for v in ints]


def _time_of_day(ns: int | None) -> str | None:
    if ns is None:
        return None
    seconds, frac = divmod(ns, 1_000_000_000)
    minutes, sec = divmod(seconds, 60)
    hours, minute = divmod(minutes, 60)
    text = f"{hours:02d}:{minute:02d}:{sec:02d}"
    return f"{text}.{frac:09d}".rstrip("0") if frac else text


def _regroup(arr: pa.Array, flat: list[Any]) -> list[Any]:
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
    if (
        pa.types.is_list(t)
        or pa.types.is_large_list(t)
        or pa.types.is_fixed_size_list(t)
        or pa.types.is_list_view(t)
        or pa.types.is_large_list_view(t)
    ):
        return _regroup(arr, _convert(arr.flatten()))
    if pa.types.is_struct(t):
        names = [t.field(i).name for i in range(t.num_fields)]
        children = [_convert(child) for child in arr.flatten()]
        valid = arr.is_valid().to_pylist()
        rows = list(zip(*children, strict=True)) if children else [()] * len(arr)
        return [
            dict(zip(names, row, strict=True)) if ok else None for ok, row in zip(valid, rows, strict=True)
        ]
    if t == pa.month_day_nano_interval():
        return [
            None if v is None else {"months": v.months, "days": v.days, "nanoseconds": v.nanoseconds}
            for v in arr.to_pylist()
        ]
    return arr.to_pylist()


def _map_dict(pairs: list[dict[str, Any]]) -> dict[Any, Any] | list[Any]:
    try:
        return {p["key"]: p["value"] for p in pairs}
    except TypeError:  # an unhashable key (a list): keep the pairs
        return [(p["key"], p["value"]) for p in pairs]
