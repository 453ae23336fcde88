"""Finishing a parsed body's tables: stored tokens to typed Arrow columns, line by line exact.

The parser stores each line's raw tokens per table and field layout; a Finisher turns them
into a ParsedTable. Column-wise (build() with Arrow kernels) when the table is regular, else
by judging each line as InfluxDB does: values, timestamp syntax, duplicate fields, column
types against the types earlier lines (and the catalog) fixed, timestamp range.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from itertools import repeat
from typing import Any

import pyarrow as pa

from ..model import ColumnType, ParsedTable, Precision
from .columns import (
    Fallback,
    Layout,
    Reject,
    Table,
    Token,
    build,
    check_schema,
    classify,
    kind_codes,
    parse_timestamp,
    scale,
    time_codes,
)


class Finisher:
    """Finishes the tables of one body; `error(line, message)` notes a rejected line."""

    def __init__(
        self,
        precision: Precision,
        default_time: int,
        max_columns: int | None,
        error: Callable[[int, str], None],
    ) -> None:
        self.precision, self.default_time = precision, default_time
        self.max_columns = max_columns
        self.error = error

    def too_many_columns(self, table: Table, layouts: list[Layout], known: Mapping[str, ColumnType]) -> bool:
        """Reject every line of a table whose lines name more columns than a table may hold.

        The catalog would refuse the table's new columns all together anyway; judging it here
        keeps a body of many distinct field names from costing work per column and layout.
        The count is taken before the lines are judged, so the keys of lines later rejected
        for their values count too: near the limit a table can be refused whole although its
        good lines alone would fit (deliberate: judging first is the per-column work avoided).
        """
        if self.max_columns is None:
            return False
        names = {k for lay in layouts for k in lay.keys}
        used = {sid for lay in layouts for sid in lay.flat[1 :: lay.stride]}  # series of kept lines
        names.update(k for sid in used for k in table.series[sid])
        names.update(known)
        names.discard("time")
        if len(names) <= self.max_columns:
            return False
        message = (
            f"Update to schema would exceed number of columns per table limit of {self.max_columns} columns"
        )
        for lay in layouts:
            for ln in lay.flat[0 :: lay.stride]:
                self.error(ln, message)
        return True

    def columnwise(
        self, table: Table, layouts: list[Layout], known: Mapping[str, ColumnType]
    ) -> tuple[int, ParsedTable] | None:
        """Whole columns when the table is regular, else signature-cached line judging."""
        try:
            return build(table, layouts, self.precision, self.default_time, known=known)
        except (Fallback, pa.ArrowException):
            pass
        kept = self._by_signature(table, layouts, known)
        return build(table, layouts, self.precision, self.default_time, kept) if kept[1] else None

    def _by_signature(
        self, table: Table, layouts: list[Layout], known: Mapping[str, ColumnType]
    ) -> tuple[list[list[bool]], dict[str, ColumnType]]:
        """Exact line-by-line decisions, judging in full only lines of a new shape or rejected ones.

        A line's signature is its layout, tag-key set, value kinds and timestamp syntax. Types
        are only ever added, so a line whose signature was accepted before is accepted too and
        costs one set lookup; a value out of range in such a line makes build() fall back.
        Returns the kept-row mask per layout and the types of the kept rows' columns, in order.
        """
        tagsets: dict[frozenset[str], int] = {}
        series_sigs = [tagsets.setdefault(frozenset(tags), len(tagsets)) for tags in table.series]
        # One kernel pass over every value token and one over every timestamp, for all layouts
        # at once: a body whose lines each have their own layout costs no kernel calls per line.
        values: list[Token] = []
        stamps: list[Token] = []
        for lay in layouts:
            flat, stride = lay.flat, lay.stride
            for i in range(len(lay.keys)):
                values += flat[2 + i :: stride]
            stamps += flat[stride - 1 :: stride]
        all_codes, all_times = kind_codes(values), time_codes(stamps)
        sigs: list[list[tuple[int, ...]]] = []
        at = done = 0
        for n, lay in enumerate(layouts):
            flat, stride, count = lay.flat, lay.stride, lay.rows
            codes = [all_codes[at + i * count : at + (i + 1) * count] for i in range(len(lay.keys))]
            at += count * len(lay.keys)
            tagset = [series_sigs[sid] for sid in flat[1::stride]]
            sigs.append(list(zip(repeat(n), tagset, all_times[done : done + count], *codes)))
            done += count
        rows = [(lay.flat[r * lay.stride], n, r) for n, lay in enumerate(layouts) for r in range(lay.rows)]
        if len(layouts) > 1:
            rows.sort()
        keep = [[False] * lay.rows for lay in layouts]
        schema, used = dict(known), dict[str, ColumnType]()
        accepted: set[tuple[int, ...]] = set()
        for ln, n, r in rows:
            sig = sigs[n][r]
            if sig not in accepted:
                try:
                    self._judge(schema, used, table, layouts[n], r * layouts[n].stride)
                except Reject as exc:
                    self.error(ln, str(exc))
                    continue
                accepted.add(sig)
            keep[n][r] = True
        return keep, used

    def row_by_row(
        self, table: Table, layouts: list[Layout], known: Mapping[str, ColumnType]
    ) -> tuple[int, ParsedTable] | None:
        """Exact per-line finishing in Python: the reference the faster finishers must match."""
        rows = sorted((lay.flat[i], i, lay) for lay in layouts for i in range(0, len(lay.flat), lay.stride))
        schema, used = dict(known), dict[str, ColumnType]()
        accepted: list[tuple[int, dict[str, str], dict[str, Any], int]] = []
        for ln, i, lay in rows:
            try:
                typed, time = self._judge(schema, used, table, lay, i)
            except Reject as exc:
                self.error(ln, str(exc))
                continue
            values = {k: v for k, (_, v) in zip(lay.keys, typed, strict=True)}
            accepted.append((ln, table.series[lay.flat[i + 1]], values, time))
        if not accepted:
            return None
        tag_cols = {
            k: pa.array([a[1].get(k) for a in accepted], pa.string())
            for k, kind in used.items()
            if kind is ColumnType.TAG
        }
        field_cols: dict[str, tuple[ColumnType, pa.Array]] = {
            k: (kind, pa.array([a[2].get(k) for a in accepted], kind.arrow_type))
            for k, kind in used.items()
            if kind is not ColumnType.TAG
        }
        time = pa.array([a[3] for a in accepted], pa.int64())
        line_numbers = pa.array([a[0] for a in accepted], pa.int32())
        parsed = ParsedTable(table.name, len(accepted), time, line_numbers, tag_cols, field_cols)
        return accepted[0][0], parsed

    def _judge(
        self, schema: dict[str, ColumnType], used: dict[str, ColumnType], table: Table, lay: Layout, i: int
    ) -> tuple[list[tuple[ColumnType, Any]], int]:
        """Decide the row at flat[i] given the types fixed so far; if accepted, fix its new ones.

        `schema` holds every type fixed (known ones included), `used` the columns of accepted
        rows in first-seen order, which become the table's columns.

        Checks run in InfluxDB's order: values, timestamp syntax, duplicate fields, column
        types, timestamp range. Raises Reject with the first failure.
        """
        tags = table.series[lay.flat[i + 1]]
        end = i + lay.stride - 1  # the timestamp token
        typed = [classify(k, tok) for k, tok in zip(lay.keys, lay.flat[i + 2 : end], strict=True)]
        ts = parse_timestamp(lay.flat[end])
        if lay.dup:
            name = next(k for n, k in enumerate(lay.keys) if k in lay.keys[:n])
            raise Reject(f"invalid line protocol - multiple instances of '{name}' field found")
        check_schema(schema, tags, lay.keys, [kind for kind, _ in typed])
        time = scale(ts, self.precision, self.default_time)
        for k in tags:
            used.setdefault(k, schema.setdefault(k, ColumnType.TAG))
        for k, (kind, _) in zip(lay.keys, typed, strict=True):
            used.setdefault(k, schema.setdefault(k, kind))
        return typed, time
