"""SyncSettings: the [sync] section as the syncer takes it; open_store: the backend `sync.bucket` names.

`sync.bucket` is an S3 bucket name, or a `file:///absolute/folder` URL for a folder standing
in for a bucket (a mounted NAS). The backend is picked by that scheme from OBJECT_STORES.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..config import Config
from ..errors import ConfigError
from .filestore import FileStore
from .s3store import S3Store
from .store import ObjectStore


@dataclass(frozen=True)
class SyncSettings:
    """What the syncer reads of [sync]; durations in ns as config keeps them."""

    bucket: str
    prefix: str
    endpoint: str
    concurrency: int
    interval: int
    retry_min: int
    retry_max: int
    stale_after: int
    bandwidth_limit: int

    @classmethod
    def from_config(cls, config: Config) -> SyncSettings:
        """The [sync] settings of a loaded Config."""
        return cls(
            config.sync_bucket,
            config.sync_prefix,
            config.sync_endpoint,
            config.sync_concurrency,
            config.sync_interval,
            config.sync_retry_min,
            config.sync_retry_max,
            config.sync_stale_after,
            config.sync_bandwidth_limit,
        )

    @property
    def endpoint_label(self) -> str:
        """The endpoint as status and logs show it: AWS when none is set for an S3 bucket, local for a folder."""
        if scheme(self.bucket) == "file":
            return "local"
        return self.endpoint or "AWS"


def scheme(bucket: str) -> str:
    """`file` for a `file://` URL, else `s3` (a plain bucket name)."""
    return "file" if bucket.startswith("file:") else "s3"


def _file_store(config: Config) -> FileStore:
    url = urllib.parse.urlsplit(config.sync_bucket)
    if url.netloc not in ("", "localhost") or not url.path.startswith("/"):
        raise ConfigError(f"sync.bucket {config.sync_bucket!r}: a folder is given as file:///absolute/path")
    return FileStore(Path(urllib.parse.unquote(url.path)), config.sync_prefix, config.sync_bandwidth_limit)


#: Backends by the scheme of `sync.bucket`.
OBJECT_STORES: dict[str, Callable[[Config], ObjectStore]] = {"s3": S3Store, "file": _file_store}


def open_store(config: Config) -> ObjectStore:
    """The object store `sync.bucket` names (ConfigError for bad settings); nothing is contacted."""
    return OBJECT_STORES[scheme(config.sync_bucket)](config)
