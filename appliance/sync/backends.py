"""open_store: the object store backend that `sync.bucket` names.

`sync.bucket` is an S3 bucket name, or a `file:///absolute/folder` URL for a folder standing
in for a bucket (a mounted NAS). The backend is picked by that scheme from OBJECT_STORES.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from pathlib import Path

from ..config import SyncSettings
from ..errors import ConfigError
from .filestore import FileStore
from .s3store import S3Store
from .store import ObjectStore


def endpoint_label(settings: SyncSettings) -> str:
    """The endpoint as status and logs show it: AWS when none is set for an S3 bucket, local for a folder."""
    if scheme(settings.bucket) == "file":
        return "local"
    return settings.endpoint or "AWS"


def scheme(bucket: str) -> str:
    """`file` for a `file://` URL, else `s3` (a plain bucket name)."""
    return "file" if bucket.startswith("file:") else "s3"


def _file_store(settings: SyncSettings) -> FileStore:
    url = urllib.parse.urlsplit(settings.bucket)
    if url.netloc not in ("", "localhost") or not url.path.startswith("/"):
        raise ConfigError(f"sync.bucket {settings.bucket!r}: a folder is given as file:///absolute/path")
    return FileStore(Path(urllib.parse.unquote(url.path)), settings.prefix, settings.bandwidth_limit)


#: Backends by the scheme of `sync.bucket`.
OBJECT_STORES: dict[str, Callable[[SyncSettings], ObjectStore]] = {"s3": S3Store, "file": _file_store}


def open_store(settings: SyncSettings) -> ObjectStore:
    """The object store `sync.bucket` names (ConfigError for bad settings); nothing is contacted."""
    return OBJECT_STORES[scheme(settings.bucket)](settings)
