"""A query result's HTTP body as it is built: pieces under a size limit and a deadline, and the
result's columns a chunk of rows at a time."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pyarrow as pa

from ..errors import QueryTimeout, QueryTooLarge

#: Rows converted per step: bounds the temporary string arrays (and their int32 offsets).
CHUNK_ROWS = 131_072


class Body:
    """A response body as a list of pieces, at most max_bytes in all (query.max_result_bytes)."""

    def __init__(self, max_bytes: int | None, deadline: float | None = None) -> None:
        self.max_bytes, self.deadline = max_bytes, deadline
        self.pieces: list[bytes] = []
        self.size = 0

    def check(self, size: int) -> None:
        """Raise once the body would pass its limit (size) or its time is up."""
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise QueryTimeout(
                "query exceeded its time limit while its result was rendered (query.timeout);"
                " add a LIMIT, narrow the time range, or use format=parquet"
            )
        if self.max_bytes is not None and size > self.max_bytes:
            raise QueryTooLarge(
                f"query result rendered is over {self.max_bytes} bytes (query.max_result_bytes);"
                " add a LIMIT, select fewer columns, aggregate, or use format=parquet"
            )

    def add(self, piece: bytes | memoryview) -> None:
        """Append a piece, raising first if it would take the body past its limit."""
        self.check(self.size + len(piece))
        self.pieces.append(bytes(piece))
        self.size += len(piece)


def chunks(table: pa.Table) -> Iterator[list[pa.Array]]:
    """The table's columns as contiguous arrays, CHUNK_ROWS rows at a time (one copy per chunk)."""
    for start in range(0, table.num_rows, CHUNK_ROWS):
        piece = table.slice(start, CHUNK_ROWS)
        yield [_contiguous(col) for col in piece.columns]


def _contiguous(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        return col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    return col


def string_bytes(strings: pa.Array) -> memoryview:
    """The concatenated UTF-8 of a null-free string array, without copying."""
    if len(strings) == 0:
        return memoryview(b"")
    _, offsets_buffer, data = strings.buffers()
    offsets = memoryview(offsets_buffer).cast("i")
    start, end = offsets[strings.offset], offsets[strings.offset + len(strings)]
    return memoryview(data)[start:end] if data is not None else memoryview(b"")
