"""System tables (`system.*`) served from the appliance's own state."""

from __future__ import annotations

import pyarrow as pa

from ..storage.manifest import Manifest

PARQUET_FILES_SCHEMA = pa.schema(
    [
        ("table_name", pa.string()),
        ("path", pa.string()),
        ("size_bytes", pa.uint64()),
        ("row_count", pa.uint64()),
        ("min_time", pa.int64()),
        ("max_time", pa.int64()),
    ]
)


def parquet_files(manifest: Manifest, db_id: int) -> pa.Table:
    """`system.parquet_files`: one row per Parquet file of the database."""
    files = manifest.files(db_id)
    return pa.table(
        {
            "table_name": [f.table for f in files],
            "path": [f.path for f in files],
            "size_bytes": [f.size_bytes for f in files],
            "row_count": [f.row_count for f in files],
            "min_time": [f.min_time for f in files],
            "max_time": [f.max_time for f in files],
        },
        schema=PARQUET_FILES_SCHEMA,
    )


def build(manifest: Manifest, db_id: int) -> dict[str, pa.Table]:
    """Every system table of one database, by name."""
    return {"parquet_files": parquet_files(manifest, db_id)}
