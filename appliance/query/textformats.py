"""Query results as JSON (an array of objects), JSON lines and CSV bodies, as arrow-json and
arrow-csv write them: null members omitted, CSV quoted only where needed."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc

from .bodies import Body, chunks, string_bytes
from .values import display_values, json_values


def _json_objects(table: pa.Table, suffix: str, body: Body) -> None:
    """Add every row as a JSON object followed by `suffix`, null members omitted."""
    prefixes = [pa.scalar("," + json.dumps(name, ensure_ascii=False) + ":") for name in table.column_names]
    if not prefixes:
        body.check(body.size + (2 + len(suffix)) * table.num_rows)
        body.add(("{}" + suffix).encode() * table.num_rows)
        return
    for columns in chunks(table):
        # Each member carries its leading comma; null members vanish; the first comma goes.
        members = [
            pc.binary_join_element_wise(prefix, json_values(col), "")
            for prefix, col in zip(prefixes, columns, strict=True)
        ]
        joined = pc.binary_join_element_wise(*members, "", null_handling="replace", null_replacement="")
        rows = pc.binary_join_element_wise("{", pc.utf8_slice_codeunits(joined, 1), "}" + suffix, "")
        body.add(string_bytes(rows))


def render_json(table: pa.Table, body: Body) -> None:
    """The rows as one JSON array of objects (`[]` when there are none)."""
    if table.num_rows == 0:
        body.add(b"[]")
        return
    body.add(b"[")
    _json_objects(table, ",", body)
    body.pieces[-1] = body.pieces[-1][:-1] + b"]"  # the last row's comma


def render_jsonl(table: pa.Table, body: Body) -> None:
    """The rows as JSON objects, one per line (an empty body when there are none)."""
    if table.num_rows:
        _json_objects(table, "\n", body)


def render_csv(table: pa.Table, body: Body) -> None:
    """The rows as CSV with a header line (an empty body when there are none)."""
    if table.num_rows == 0:
        return
    body.add((",".join(_csv_quote_one(name) for name in table.column_names) + "\n").encode())
    if table.num_columns == 0:
        body.check(body.size + table.num_rows)
        body.add(b"\n" * table.num_rows)
        return
    for columns in chunks(table):
        cells = [_csv_field(display_values(col)) for col in columns]
        rows = pc.binary_join_element_wise(pc.binary_join_element_wise(*cells, ","), "\n", "")
        body.add(string_bytes(rows))


def _csv_field(text: pa.Array) -> pa.Array:
    """RFC 4180 quoting where needed (as arrow-csv): nulls become empty fields."""
    text = pc.fill_null(text, "")
    needs = pc.match_substring_regex(text, '[",\r\n]')
    if not pc.any(needs).as_py():
        return text
    quoted = pc.binary_join_element_wise('"', pc.replace_substring(text, '"', '""'), '"', "")
    return pc.if_else(needs, quoted, text)


def _csv_quote_one(value: str) -> str:
    if any(ch in value for ch in '",\r\n'):
        return '"' + value.replace('"', '""') + '"'
    return value
