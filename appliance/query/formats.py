"""Query results to HTTP bodies: the format a request asks for, its Content-Type, and the body.

JSON, JSON lines and CSV are drawn in textformats.py, pretty tables in pretty.py, both from the
value text of values.py (which follows InfluxDB 3 Core's arrow-rs output); Parquet is written
here. Bodies are built in pieces under a size limit and a deadline (bodies.py).
"""

from __future__ import annotations

import io
from collections.abc import Callable

import pyarrow as pa

from ..errors import BadRequest
from . import bodies
from .bodies import Body
from .pretty import render_pretty
from .textformats import render_csv, render_json, render_jsonl

FORMATS = ("json", "jsonl", "csv", "parquet", "pretty")
_FORMAT_SPELLINGS = {
    "json": "json",
    "jsonl": "jsonl",
    "json_lines": "jsonl",
    "csv": "csv",
    "parquet": "parquet",
    "pretty": "pretty",
}
_ACCEPT_TYPES = {
    "application/json": "json",
    "*/*": "json",
    "text/csv": "csv",
    "text/plain": "pretty",
    "application/vnd.apache.parquet": "parquet",
}
_CONTENT_TYPES = {
    "json": "application/json",
    "jsonl": "application/jsonl",
    "csv": "text/csv",
    "parquet": "application/vnd.apache.parquet",
    "pretty": "text/plain; charset=utf-8",
}


def choose_format(format_param: str | None, accept: str | None) -> str:
    """The output format of a query: `format` wins over the `Accept` header."""
    if format_param is not None and format_param.strip():
        fmt = _FORMAT_SPELLINGS.get(format_param.strip().lower())
        if fmt is None:
            valid = ", ".join(_FORMAT_SPELLINGS)
            raise BadRequest(f"invalid format ({format_param}), valid formats are: {valid}")
        return fmt
    return _format_from_accept(accept)


def _format_from_accept(accept: str | None) -> str:
    """Map an Accept header as InfluxDB 3 does, plus media-type lists with q-values."""
    if accept is None or not accept.strip():
        return "json"
    exact = _ACCEPT_TYPES.get(accept.strip().lower())
    if exact is not None:
        return exact
    if "text/html" in accept.lower():  # a browser: InfluxDB 3 answers JSON
        return "json"
    ranked: list[tuple[float, int, str]] = []
    for position, entry in enumerate(accept.split(",")):
        media, *params = (part.strip() for part in entry.split(";"))
        fmt = _ACCEPT_TYPES.get(media.lower())
        quality = _quality(params)
        if fmt is not None and quality > 0:
            ranked.append((-quality, position, fmt))
    if not ranked:
        raise BadRequest(f"invalid mime type ({accept})")
    return min(ranked)[2]


def _quality(params: list[str]) -> float:
    """The q-value among media-type parameters (1.0 when absent or unreadable)."""
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                return float(value.strip())
            except ValueError:
                return 1.0
    return 1.0


def content_type(fmt: str) -> str:
    """The Content-Type header of a response body in `fmt`."""
    return _CONTENT_TYPES[fmt]


def render(table: pa.Table | pa.RecordBatch, fmt: str) -> bytes:
    """Serialise a (small) query result in one of FORMATS, whole."""
    return b"".join(render_pieces(table, fmt))


def render_pieces(
    table: pa.Table | pa.RecordBatch, fmt: str, max_bytes: int | None = None, deadline: float | None = None
) -> list[bytes]:
    """The body in pieces of about CHUNK_ROWS rows (sent as they are, never joined in memory).

    The size limit is checked as the body grows, and for pretty tables before any row is drawn,
    so a body over the limit is never built whole; past `deadline` (time.monotonic) it stops.
    """
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    renderers: dict[str, Callable[[pa.Table, Body], None]] = {
        "json": render_json,
        "jsonl": render_jsonl,
        "csv": render_csv,
        "parquet": _render_parquet,
        "pretty": render_pretty,
    }
    if fmt not in renderers:
        raise BadRequest(f"invalid format ({fmt})")
    body = Body(max_bytes, deadline)
    renderers[fmt](table, body)
    return body.pieces


def _render_parquet(table: pa.Table, body: Body) -> None:
    if table.num_rows == 0:
        return
    import pyarrow.parquet as pq  # loaded on first use; an idle server does not need it

    sink = io.BytesIO()
    with pq.ParquetWriter(sink, table.schema, compression="zstd") as writer:
        for batch in table.to_batches(bodies.CHUNK_ROWS):  # compressed: smaller than the Arrow result
            writer.write_batch(batch)
            body.check(sink.tell())
    body.add(sink.getbuffer())
