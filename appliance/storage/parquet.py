"""Parquet files on local disk: their gen1 windows, safe path parts, and crash-safe writes.

A file is written to a temporary name, fsynced, renamed into place and its folder fsynced; only
then may the manifest record it (storage/persist.py).
"""

from __future__ import annotations

import hashlib
import os
import urllib.parse
from pathlib import Path

import pyarrow as pa

from ..fileio import fsync_dir, make_dirs

ROW_GROUP_ROWS = 1_000_000


def lowest_window(gen1_ns: int) -> int:
    """The earliest gen1 window start that int64 nanoseconds hold."""
    return -((1 << 63) // gen1_ns) * gen1_ns


def window_of(time_ns: int, gen1_ns: int) -> int:
    """The start of the gen1 window holding `time_ns` (never below what int64 holds)."""
    return max(time_ns // gen1_ns * gen1_ns, lowest_window(gen1_ns))


def path_part(name: str) -> str:
    """A name as one safe path component: escaped, "." and ".." too, and short enough for any file system."""
    quoted = urllib.parse.quote(name, safe="")
    if quoted in (".", ".."):
        return quoted.replace(".", "%2E")
    if len(quoted) > _MAX_PART:  # keep it readable and unique: a prefix plus a hash of the name
        digest = hashlib.sha256(name.encode()).hexdigest()[:16]
        return f"{quoted[: _MAX_PART - 17].rstrip('%0123456789ABCDEF')}~{digest}"
    return quoted


_MAX_PART = 200  # file systems allow 255 bytes per path component


def write_parquet(table: pa.Table, path: Path) -> None:
    """Write zstd Parquet via a temp file, fsync it, rename it into place, fsync the folder."""
    import pyarrow.parquet as pq  # on first persist: ~12 MB an idle server does not need

    make_dirs(path.parent)
    tmp = path.with_name(path.name + ".tmp")
    try:
        pq.write_table(
            table,
            tmp,
            compression="zstd",
            row_group_size=ROW_GROUP_ROWS,
            use_dictionary=True,
            write_statistics=True,
        )
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_parquet(path: Path) -> pa.Table:
    """A whole local Parquet file as one table."""
    import pyarrow.parquet as pq

    return pq.read_table(path)
