"""FileStore: the ObjectStore (store.py) of a local folder standing in for a bucket.

For a mounted NAS path (`sync.bucket = "file:///mnt/nas/appliance"`) and for fast component
tests. Objects sit under the bucket's relative layout, `<root>/<prefix>/<db>/<table>/date=…/
node=…/<file>`. Each put copies into a hidden temp file beside the object, fsyncs it, checks it
(size and the Parquet footer's row count), then renames it over the key and fsyncs the folder:
a reader never sees part of a file, and a crash leaves at most a temp file, which
`remove_strays` deletes at the next start.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO

from ..fileio import fsync_dir, make_dirs
from .store import Stopped, Throttle

#: Bytes copied per step (throttling and stop granularity).
CHUNK = 256 * 1024
#: Temp files are `.<random>.tmp` beside their object (mkstemp's short names fit NAME_MAX).
TEMP_PREFIX, TEMP_SUFFIX = ".", ".tmp"


class FileStore:
    """A folder and prefix as a bucket (an ObjectStore); every method raises OSError when the folder fails."""

    def __init__(self, root: Path, prefix: str = "", bandwidth_limit: int = 0) -> None:
        self.root = root
        self.prefix = prefix
        self.throttle = Throttle(bandwidth_limit)

    def key(self, rel: str) -> str:
        """`<prefix>/<db>/<table>/date=…/node=…/<file>`, the local path relative to parquet/."""
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def url(self, rel: str) -> str:
        """`file://<root>/<key>`."""
        return f"file://{self.root}/{self.key(rel)}"

    def put(self, local: Path, rel: str, rows: int, stop: threading.Event) -> None:
        """Copy to a temp file, fsync, verify, rename over the key; a stop or failure leaves nothing."""
        if stop.is_set():
            raise Stopped(rel)
        final = self.root / self.key(rel)
        make_dirs(final.parent)
        fd, name = tempfile.mkstemp(dir=final.parent, prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX)
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as out, local.open("rb") as src:
                self._copy(src, out, stop, rel)
                out.flush()
                os.fsync(out.fileno())
            _verify(tmp, local.stat().st_size, rows)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(final.parent)

    def _copy(self, src: BinaryIO, out: BinaryIO, stop: threading.Event, rel: str) -> None:
        while chunk := src.read(CHUNK):
            if stop.is_set():
                raise Stopped(rel)
            self.throttle.take(len(chunk))
            out.write(chunk)

    def head(self, rel: str) -> int | None:
        """The object's size, None when there is none."""
        try:
            return (self.root / self.key(rel)).stat().st_size
        except FileNotFoundError:
            return None

    def delete(self, rel: str) -> None:
        """Delete an object (one already gone is fine) and the folders it leaves empty."""
        path = self.root / self.key(rel)
        path.unlink(missing_ok=True)
        top = self.root / self.prefix if self.prefix else self.root
        for folder in path.parents:
            if folder == top or top not in folder.parents:
                break
            with contextlib.suppress(OSError):  # not empty (or gone): S3 has no folders either way
                folder.rmdir()
                continue
            break

    def remove_strays(self) -> int:
        """Delete the temp files an interrupted put left under the prefix; how many went."""
        top = self.root / self.prefix if self.prefix else self.root
        strays = [p for p in top.rglob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}") if p.is_file()]
        for p in strays:
            p.unlink(missing_ok=True)
        return len(strays)


def _verify(path: Path, size: int, rows: int) -> None:
    """OSError unless the copy has the local size and the expected Parquet row count."""
    import pyarrow.parquet as pq

    found_size = path.stat().st_size
    if found_size != size:
        raise OSError(f"verification failed for {path}: {found_size} bytes copied, {size} local")
    found = pq.ParquetFile(path).metadata.num_rows
    if found != rows:
        raise OSError(f"verification failed for {path}: {found} rows in the copy, {rows} local")
