"""Query results as pretty tables, drawn as arrow's pretty printer (comfy-table) draws them."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from .bodies import Body, chunks, string_bytes
from .values import display_values


def render_pretty(table: pa.Table, body: Body) -> None:
    """An ASCII table as arrow's pretty printer (comfy-table) draws it.

    Two passes over the result, chunk by chunk: the widths, then the rows; the display text of
    one chunk at a time is held, never that of the whole table.
    """
    names = table.column_names
    if not names:
        body.add(b"++\n++")
        return
    widths = [len(name.encode()) for name in names]
    simple = all(_is_simple(name) for name in names)
    for texts in _pretty_texts(table):
        widths = [
            max(w, pc.max(pc.binary_length(col)).as_py() or 0) for w, col in zip(widths, texts, strict=True)
        ]
        # every row is at least as wide as the widest cells so far: the body's lower bound
        body.check((table.num_rows + 4) * (sum(widths) + 3 * len(widths) + 2))
        simple = simple and all(
            pc.all(pc.string_is_ascii(col)).as_py() is not False
            and not pc.any(pc.match_substring(col, "\n")).as_py()
            for col in texts
        )
    if not simple:
        _pretty_general(table, names, body)
        return
    border = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    header = "| " + " | ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)) + " |"
    body.add(f"{border}\n{header}\n{border}\n".encode())
    for texts in _pretty_texts(table):  # ASCII without newlines: pad and join column-wise
        padded = [pc.utf8_rpad(col, w, " ") for col, w in zip(texts, widths, strict=True)]
        rows = pc.binary_join_element_wise("| ", pc.binary_join_element_wise(*padded, " | "), " |\n", "")
        body.add(string_bytes(rows))
    body.add(border.encode())


def _pretty_texts(table: pa.Table) -> Iterator[list[pa.Array]]:
    for cols in chunks(table):
        yield [pc.fill_null(display_values(col), "") for col in cols]


def _is_simple(text: str) -> bool:
    return text.isascii() and "\n" not in text


def _pretty_general(table: pa.Table, names: list[str], body: Body) -> None:
    """The general case: wide characters and multi-line cells, one chunk of rows at a time."""
    widths = [max(_width(line) for line in name.split("\n")) for name in names]
    for texts in _pretty_texts(table):
        body.check(body.size)
        for i, col in enumerate(texts):
            widths[i] = max(
                [widths[i], *(_width(line) for cell in col.to_pylist() for line in cell.split("\n"))]
            )
    border = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    body.add((border + "\n" + _pretty_lines([names], widths) + border + "\n").encode())
    for texts in _pretty_texts(table):
        rows = [list(row) for row in zip(*(col.to_pylist() for col in texts), strict=True)]
        body.add(_pretty_lines(rows, widths).encode())
    body.add(border.encode())


def _pretty_lines(rows: list[list[str]], widths: list[int]) -> str:
    """Rows drawn as `| a | b |` lines; a multi-line cell makes its row several lines tall."""
    lines = []
    for row in rows:
        cells = [cell.split("\n") for cell in row]
        for sub in range(max(len(cell) for cell in cells)):
            parts = [
                _pad(cell[sub] if sub < len(cell) else "", w) for cell, w in zip(cells, widths, strict=True)
            ]
            lines.append("| " + " | ".join(parts) + " |\n")
    return "".join(lines)


def _width(text: str) -> int:
    """Display width: East Asian wide characters take two cells."""
    if text.isascii():
        return len(text)
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _pad(text: str, width: int) -> str:
    return text + " " * (width - _width(text))
