"""Arrow values as text, column by column, as arrow-rs prints them in query results.

The output follows what InfluxDB 3 Core produces with arrow-rs (`arrow_json`, `arrow_csv`,
`arrow::util::pretty`), checked against DataFusion's own writers:

- timestamps print like chrono's `NaiveDateTime` Debug: `2025-02-25T20:19:34.984098`, with a
  fraction of 0, 3, 6 or 9 digits (`.500`, not `.5`); zoned ones get `Z` or `+02:00`;
- JSON omits null columns from objects, writes NaN and infinities as `null` (arrow-json does
  the same: JSON has no NaN), binary as hex, decimals as bare numbers, durations as ISO 8601;
- floats print as Rust's `{:?}` does (`1.0`, `1e20`, `1e-7`, `0.30000000000000004`);
- CSV quotes only fields holding `"`, `,`, CR or LF; nulls and empty strings are both empty.

Everything is converted column by column with pyarrow compute; Python runs per value only
for rare types (binary, intervals) and for strings holding control characters.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal

import pyarrow as pa
import pyarrow.compute as pc

from ..lineprotocol.syntax import NS_PER_SECOND, NS_PER_UNIT
from .rows import is_list_type


def _null_strings(n: int) -> pa.Array:
    return pa.nulls(n, pa.string())


def _quote(text: pa.Array) -> pa.Array:
    """Wrap text known to need no JSON escaping (digits, dates, hex) in quotes."""
    return pc.binary_join_element_wise('"', text, '"', "")


def _json_string(text: pa.Array) -> pa.Array:
    """JSON string literals, escaped as serde_json does; nulls stay null."""
    text = pc.cast(text, pa.string())
    if pc.any(pc.match_substring(text, "\\")).as_py():
        text_escaped = pc.replace_substring(text, "\\", "\\\\")
    else:
        text_escaped = text
    if pc.any(pc.match_substring(text, '"')).as_py():
        text_escaped = pc.replace_substring(text_escaped, '"', '\\"')
    literal = _quote(text_escaped)
    control = pc.fill_null(pc.match_substring_regex(text, r"[\x00-\x1f]"), False)
    if pc.any(control).as_py():  # rare: let json.dumps do the \n, \t, \u00XX escapes
        fixed = [json.dumps(v, ensure_ascii=False) for v in pc.filter(text, control).to_pylist()]
        literal = pc.replace_with_mask(literal, control, pa.array(fixed, pa.string()))
    return literal


def json_values(arr: pa.Array) -> pa.Array:
    """Each value as JSON text; null where the value is null (and so omitted)."""
    t = arr.type
    if pa.types.is_dictionary(t):
        return pc.take(json_values(arr.dictionary), arr.indices)
    if pa.types.is_null(t):
        return _null_strings(len(arr))
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return _json_string(arr)
    if pa.types.is_boolean(t) or pa.types.is_integer(t) or pa.types.is_decimal(t):
        return display_values(arr)
    if pa.types.is_floating(t):
        return pc.if_else(pc.is_finite(arr), _float_text(arr, json_style=True), "null")
    if is_list_type(t):
        return _list_text(arr, _json_element, ",")
    if pa.types.is_struct(t):
        return _struct_json(arr)
    if pa.types.is_map(t):
        return _map_text(arr, json_output=True)
    if pa.types.is_temporal(t) or _is_binary(t):
        return _quote(display_values(arr))
    return _json_string(display_values(arr))


def _json_element(arr: pa.Array) -> pa.Array:
    """JSON text of list elements, where nulls print as `null`."""
    return pc.fill_null(json_values(arr), "null")


def display_values(arr: pa.Array) -> pa.Array:
    """Each value as arrow's display text (CSV cells, pretty tables); nulls stay null."""
    t = arr.type
    if pa.types.is_dictionary(t):
        return pc.take(display_values(arr.dictionary), arr.indices)
    if pa.types.is_null(t):
        return _null_strings(len(arr))
    if pa.types.is_boolean(t):
        return pc.if_else(arr, "true", "false")
    if pa.types.is_floating(t):
        return _float_text(arr)
    if pa.types.is_timestamp(t):
        return _timestamp_text(arr)
    if pa.types.is_date32(t):
        return pc.cast(arr, pa.string())
    if pa.types.is_date64(t):
        return _timestamp_text(pc.cast(pc.cast(arr, pa.int64()), pa.timestamp("ms")))
    if pa.types.is_time(t):
        return _time_text(arr)
    if pa.types.is_duration(t):
        return _duration_text(arr)
    if _is_binary(t):
        return pa.array([None if v is None else v.hex() for v in arr.to_pylist()], pa.string())
    if is_list_type(t):
        return _list_text(arr, lambda a: pc.fill_null(display_values(a), ""), ", ")
    if pa.types.is_struct(t):
        return _struct_display(arr)
    if pa.types.is_map(t):
        return _map_text(arr, json_output=False)
    if pa.types.is_interval(t):
        return pa.array([None if v is None else _interval_text(v) for v in arr.to_pylist()], pa.string())
    try:  # strings, integers, decimals: arrow's own cast is the display text
        return pc.cast(arr, pa.string())
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
        return pa.array([None if v is None else str(v) for v in arr.to_pylist()], pa.string())


def _is_binary(t: pa.DataType) -> bool:
    return (
        pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_fixed_size_binary(t)
        or pa.types.is_binary_view(t)
    )


def _float_text(arr: pa.Array, *, json_style: bool = False) -> pa.Array:
    """Floats as arrow-rs prints them: shortest round-trip digits, `.0` on whole numbers.

    Display text (CSV, pretty) follows the `ryu` crate: exponent form outside [1e-5, 1e16)
    (float32: [1e-6, 1e13)), `NaN`, `inf`. JSON follows `lexical` as arrow-json does:
    exponent form outside [1e-5, 1e10) with a `1.0e20` mantissa.
    """
    single = pa.types.is_float32(arr.type) or pa.types.is_float16(arr.type)
    arr = pc.cast(arr, pa.float32()) if pa.types.is_float16(arr.type) else arr
    band = (-5, 10) if json_style else (-6, 13) if single else (-5, 16)
    text = pc.cast(arr, pa.string())  # shortest round-trip digits, arrow C++'s own notation
    finite = pc.fill_null(pc.is_finite(arr), False)
    magnitude = pc.abs(arr)
    scientific = pc.and_(
        pc.not_equal(magnitude, 0),
        pc.or_(pc.less(magnitude, 10.0 ** band[0]), pc.greater_equal(magnitude, 10.0 ** band[1])),
    )
    has_exponent = pc.fill_null(pc.match_substring(text, "e"), False)
    wrong = pc.fill_null(pc.and_(finite, pc.xor(scientific, has_exponent)), False)
    if pc.any(wrong).as_py():  # arrow chose the other notation: re-print those few values
        fixed = [_reprint_float(v, band) for v in pc.filter(text, wrong).to_pylist()]
        text = pc.replace_with_mask(text, wrong, pa.array(fixed, pa.string()))
    if pc.any(pc.match_substring_regex(text, r"e(\+|-0)")).as_py():
        text = pc.replace_substring_regex(text, r"e\+?(-?)0*(\d)", r"e\1\2")  # 1e+20 -> 1e20
    if json_style:
        text = pc.replace_substring_regex(text, r"^(-?\d)e", r"\1.0e")  # 1e20 -> 1.0e20
    plain = pc.invert(pc.fill_null(pc.match_substring_regex(text, "[.eni]"), True))
    text = pc.if_else(plain, pc.binary_join_element_wise(text, ".0", ""), text)
    return pc.if_else(pc.is_nan(arr), "NaN", text)


def _reprint_float(shortest: str, band: tuple[int, int]) -> str:
    """Re-print shortest digits: plain when 10**band[0] <= |v| < 10**band[1], else 1.5e20."""
    sign, digit_tuple, exponent = Decimal(shortest).as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple)).rstrip("0") or "0"
    exponent += len(digit_tuple) - len(digits)
    point = len(digits) + exponent  # the value is 0.<digits> * 10**point
    prefix = "-" if sign else ""
    if band[0] < point <= band[1]:
        plain = format(Decimal((0, tuple(int(c) for c in digits), exponent)), "f")
        return prefix + (plain if "." in plain else plain + ".0")
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{prefix}{mantissa}e{point - 1}"


def _split_seconds(counts: pa.Array, unit: str) -> tuple[pa.Array, pa.Array]:
    """Whole seconds (floored) and nanoseconds 0..999999999 of int64 counts of `unit`."""
    if unit == "s":
        return counts, pc.multiply(counts, 0)
    per_second = NS_PER_SECOND // NS_PER_UNIT[unit]
    seconds = pc.divide(counts, per_second)  # truncates toward zero
    rest = pc.subtract(counts, pc.multiply(seconds, per_second))
    negative = pc.less(rest, 0)
    if pc.any(negative).as_py():
        seconds = pc.if_else(negative, pc.subtract(seconds, 1), seconds)
        rest = pc.if_else(negative, pc.add(rest, per_second), rest)
    return seconds, pc.multiply(rest, NS_PER_UNIT[unit])


def _fraction_text(nanos: pa.Array) -> pa.Array:
    """chrono's fraction: none, or 3, 6 or 9 digits, whichever shows every non-zero digit."""
    ms, us = NS_PER_UNIT["ms"], NS_PER_UNIT["us"]
    millis, micros = pc.divide(nanos, ms), pc.divide(nanos, us)
    ms_exact = pc.equal(pc.multiply(millis, ms), nanos)
    us_exact = pc.equal(pc.multiply(micros, us), nanos)
    digits = pc.if_else(
        ms_exact,
        pc.utf8_lpad(pc.cast(millis, pa.string()), 3, "0"),
        pc.if_else(
            us_exact,
            pc.utf8_lpad(pc.cast(micros, pa.string()), 6, "0"),
            pc.utf8_lpad(pc.cast(nanos, pa.string()), 9, "0"),
        ),
    )
    return pc.if_else(pc.equal(nanos, 0), "", pc.binary_join_element_wise(".", digits, ""))


def _timestamp_text(arr: pa.Array) -> pa.Array:
    """`YYYY-MM-DDTHH:MM:SS[.fff|.ffffff|.fffffffff]`, plus `Z`/`+HH:MM` when zoned."""
    unit, tz = arr.type.unit, arr.type.tz
    wall = arr if tz is None else pc.local_timestamp(arr)
    seconds, nanos = _split_seconds(pc.cast(wall, pa.int64()), unit)
    base = pc.cast(pc.cast(seconds, pa.timestamp("s")), pa.string())  # "YYYY-MM-DD HH:MM:SS"
    base = pc.replace_substring(base, " ", "T", max_replacements=1)
    text = pc.binary_join_element_wise(base, _fraction_text(nanos), "")
    if tz is None:
        return text
    return pc.binary_join_element_wise(text, _offset_text(wall, arr, unit), "")


def _offset_text(wall: pa.Array, utc: pa.Array, unit: str) -> pa.Array:
    """`Z` for a zero offset (as chrono's to_rfc3339 with use_z), else `+HH:MM`."""
    diff = pc.subtract(pc.cast(wall, pa.int64()), pc.cast(utc, pa.int64()))
    minutes = pc.divide(diff, 60 * NS_PER_SECOND // NS_PER_UNIT[unit])
    sign = pc.if_else(pc.less(minutes, 0), "-", "+")
    minutes = pc.abs(minutes)
    hours = pc.divide(minutes, 60)
    mins = pc.subtract(minutes, pc.multiply(hours, 60))
    two = lambda a: pc.utf8_lpad(pc.cast(a, pa.string()), 2, "0")  # noqa: E731
    offset = pc.binary_join_element_wise(sign, two(hours), ":", two(mins), "")
    return pc.if_else(pc.equal(minutes, 0), "Z", offset)


def _time_text(arr: pa.Array) -> pa.Array:
    """Time of day as chrono's NaiveTime Debug: `HH:MM:SS` plus the 0/3/6/9-digit fraction."""
    seconds, nanos = _split_seconds(pc.cast(arr, pa.int64()), arr.type.unit)
    clock = pc.utf8_slice_codeunits(pc.cast(pc.cast(seconds, pa.timestamp("s")), pa.string()), 11, 19)
    return pc.binary_join_element_wise(clock, _fraction_text(nanos), "")


def _duration_text(arr: pa.Array) -> pa.Array:
    """ISO 8601 as chrono prints a TimeDelta: `PT90.5S`, `-PT1S`, `P0D`."""
    counts = pc.cast(arr, pa.int64())
    seconds, nanos = _split_seconds(pc.abs(counts), arr.type.unit)
    fraction = pc.utf8_rtrim(pc.utf8_lpad(pc.cast(nanos, pa.string()), 9, "0"), "0")
    fraction = pc.if_else(pc.equal(nanos, 0), "", pc.binary_join_element_wise(".", fraction, ""))
    sign = pc.if_else(pc.less(counts, 0), "-", "")
    text = pc.binary_join_element_wise(sign, "PT", pc.cast(seconds, pa.string()), fraction, "S", "")
    return pc.if_else(pc.equal(counts, 0), "P0D", text)


def _interval_text(value: object) -> str:
    """Intervals, as arrow displays them (`1 mons 2 days 3 hours`)."""
    months = getattr(value, "months", 0)
    days = getattr(value, "days", 0)
    nanos = getattr(value, "nanoseconds", 0)
    if isinstance(value, int):
        months = value
    parts = [f"{months} mons"] if months else []
    parts += [f"{days} days"] if days else []
    if nanos:
        sign, nanos = ("-" if nanos < 0 else ""), abs(nanos)
        hours, nanos = divmod(nanos, 3_600_000_000_000)
        mins, nanos = divmod(nanos, 60_000_000_000)
        secs, nanos = divmod(nanos, NS_PER_SECOND)
        parts += [f"{sign}{hours} hours"] if hours else []
        parts += [f"{sign}{mins} mins"] if mins else []
        if secs or nanos:
            frac = f".{nanos:09d}".rstrip("0").rstrip(".")
            parts.append(f"{sign}{secs}{frac} secs")
    return " ".join(parts) or "0 secs"


def _list_text(arr: pa.Array, element: Callable[[pa.Array], pa.Array], sep: str) -> pa.Array:
    """`[a<sep>b]` for every list, elements rendered by `element`; null lists stay null."""
    t = arr.type
    if pa.types.is_fixed_size_list(t) or pa.types.is_list_view(t) or pa.types.is_large_list_view(t):
        arr = pc.cast(arr, pa.large_list(t.value_type))
    lists_type = pa.LargeListArray if pa.types.is_large_list(arr.type) else pa.ListArray
    texts = lists_type.from_arrays(arr.offsets, element(arr.values), mask=arr.is_null())
    return pc.binary_join_element_wise("[", pc.binary_join(texts, sep), "]", "")


def _struct_json(arr: pa.StructArray) -> pa.Array:
    """JSON objects, null members omitted; null structs stay null."""
    fields = arr.flatten()
    if not fields:
        return pc.if_else(arr.is_null(), pa.scalar(None, pa.string()), "{}")
    members = [
        pc.binary_join_element_wise(
            "," + json.dumps(arr.type.field(i).name, ensure_ascii=False) + ":", json_values(f), ""
        )
        for i, f in enumerate(fields)
    ]
    joined = pc.binary_join_element_wise(*members, "", null_handling="replace", null_replacement="")
    obj = pc.binary_join_element_wise("{", pc.utf8_slice_codeunits(joined, 1), "}", "")
    return pc.if_else(arr.is_null(), pa.scalar(None, pa.string()), obj)


def _struct_display(arr: pa.StructArray) -> pa.Array:
    """`{a: 1, b: }` as arrow displays structs."""
    fields = arr.flatten()
    members = [
        pc.binary_join_element_wise(arr.type.field(i).name + ": ", pc.fill_null(display_values(f), ""), "")
        for i, f in enumerate(fields)
    ]
    inner = pc.binary_join_element_wise(*members, ", ") if members else pa.array([""] * len(arr))
    obj = pc.binary_join_element_wise("{", inner, "}", "")
    return pc.if_else(arr.is_null(), pa.scalar(None, pa.string()), obj)


def _map_text(arr: pa.MapArray, *, json_output: bool) -> pa.Array:
    """Maps as JSON objects (null values omitted) or as `{k: v, k2: }`."""
    if json_output:
        keys = _json_string(display_values(arr.keys)).to_pylist()
        values = json_values(arr.items).to_pylist()
    else:
        keys = pc.fill_null(display_values(arr.keys), "").to_pylist()
        values = pc.fill_null(display_values(arr.items), "").to_pylist()
    offsets, valid = arr.offsets.to_pylist(), arr.is_valid().to_pylist()
    out: list[str | None] = []
    for row in range(len(arr)):
        pairs = zip(
            keys[offsets[row] : offsets[row + 1]], values[offsets[row] : offsets[row + 1]], strict=True
        )
        if not valid[row]:
            out.append(None)
        elif json_output:
            out.append("{" + ",".join(f"{k}:{v}" for k, v in pairs if v is not None) + "}")
        else:
            out.append("{" + ", ".join(f"{k}: {v}" for k, v in pairs) + "}")
    return pa.array(out, pa.string())
