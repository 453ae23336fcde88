"""ObjectStore: put, verify and delete Parquet objects in an S3-compatible bucket (pyarrow's S3).

An upload goes to `<prefix>/_staging/<path>` first and is copied to its key on the server only
once its size and Parquet footer check out, so no reader ever sees half an object (pyarrow
publishes whatever was written when a stream is closed, even after an error, and cannot
abort one), and the staging area sits outside the table folders (Hive-style readers skip
`_`-prefixed folders anyway). An upload cut half-way is sent again whole: same key, same
bytes, idempotent.
"""

from __future__ import annotations

import configparser
import os
import threading
import time
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import ConfigError

#: Bytes read from the local file and written to the object per step (throttling granularity).
CHUNK = 256 * 1024
#: Socket timeouts, seconds: an unreachable endpoint fails an attempt instead of hanging it.
CONNECT_TIMEOUT = 5.0
REQUEST_TIMEOUT = 30.0


class Stopped(Exception):
    """The appliance is stopping: the upload was cut short (and will be sent again)."""


class Throttle:
    """A token bucket shared by all uploads: at most `rate` bytes per second (0: unlimited)."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._lock = threading.Lock()
        self._next = time.monotonic()

    def take(self, n: int) -> None:
        rate = self.rate  # SIGHUP may change it meanwhile
        if rate <= 0:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + n / rate
        if start > now:
            time.sleep(start - now)


class ObjectStore:
    """One bucket and prefix; every method raises OSError (pyarrow's) when the store fails."""

    def __init__(self, config: Config) -> None:
        self.bucket = config.sync_bucket
        self.prefix = config.sync_prefix
        self.endpoint = config.sync_endpoint
        self.throttle = Throttle(config.sync_bandwidth_limit)
        self._options = _s3_options(config)
        self._fs: Any = None
        self._fs_lock = threading.Lock()

    @property
    def fs(self) -> Any:
        """pyarrow's S3FileSystem, made on first use (importing it costs start-up time)."""
        with self._fs_lock:
            if self._fs is None:
                from pyarrow import fs

                self._fs = fs.S3FileSystem(
                    **self._options,
                    retry_strategy=fs.AwsStandardS3RetryStrategy(max_attempts=2),
                )
            return self._fs

    def key(self, rel: str) -> str:
        """`<prefix>/<db>/<table>/date=…/node=…/<file>`, the local path relative to parquet/."""
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def url(self, rel: str) -> str:
        return f"s3://{self.bucket}/{self.key(rel)}"

    def staging(self, rel: str) -> str:
        return f"{self.bucket}/{self.key('_staging/' + rel)}"

    def put(self, local: Path, rel: str, rows: int, stop: threading.Event) -> None:
        """Upload, verify (size and the Parquet footer's row count), then publish under the key."""
        final = f"{self.bucket}/{self.key(rel)}"
        staged = self.staging(rel)
        size = local.stat().st_size
        with local.open("rb") as src, self.fs.open_output_stream(staged) as out:
            while chunk := src.read(CHUNK):
                if stop.is_set():
                    raise Stopped(rel)  # what was written is published under the staging key only
                self.throttle.take(len(chunk))
                out.write(chunk)
        self._verify(staged, size, rows)
        self.fs.copy_file(staged, final)
        self._verify(final, size, rows)
        self.fs.delete_file(staged)

    def _verify(self, path: str, size: int, rows: int) -> None:
        import pyarrow.parquet as pq

        info = self.fs.get_file_info(path)
        if info.size != size:
            raise OSError(f"verification failed for {path}: {info.size} bytes in the store, {size} local")
        with self.fs.open_input_file(path) as f:
            found = pq.ParquetFile(f).metadata.num_rows
        if found != rows:
            raise OSError(f"verification failed for {path}: {found} rows in the store, {rows} local")

    def delete(self, rel: str) -> None:
        """Delete an object and any staged copy of it; one that is already gone is fine."""
        from pyarrow import fs

        for path in (f"{self.bucket}/{self.key(rel)}", self.staging(rel)):
            if self.fs.get_file_info(path).type != fs.FileType.NotFound:
                self.fs.delete_file(path)


def _s3_options(config: Config) -> dict[str, Any]:
    """S3FileSystem arguments from the [sync] settings; credentials never leave this dict."""
    options: dict[str, Any] = {
        "region": config.sync_region,
        "connect_timeout": CONNECT_TIMEOUT,
        "request_timeout": REQUEST_TIMEOUT,
        "force_virtual_addressing": not config.sync_path_style and bool(config.sync_endpoint),
        "allow_delayed_open": True,  # a small object goes as one PUT, not a three-request multipart upload
    }
    if config.sync_endpoint:
        scheme, _, host = config.sync_endpoint.partition("://")
        options["endpoint_override"] = host
        options["scheme"] = scheme
    key, secret, token = config.sync_access_key_id, config.sync_secret_access_key, ""
    if not key and config.sync_credentials_file and "AWS_ACCESS_KEY_ID" not in os.environ:
        key, secret, token = _credentials_file(Path(config.sync_credentials_file), config.sync_profile)
    if key:
        if not secret:
            raise ConfigError("sync.access_key_id is set but sync.secret_access_key is empty")
        options["access_key"], options["secret_key"] = key, secret
        if token:
            options["session_token"] = token
    # Otherwise the AWS SDK's chain: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, ~/.aws, instance roles.
    return options


def _credentials_file(path: Path, profile: str) -> tuple[str, str, str]:
    """Keys of one profile of an AWS shared credentials file; errors never echo its content."""
    parser = configparser.RawConfigParser()
    try:
        parser.read_string(path.read_text())
        section = parser[profile]
        key, secret = section["aws_access_key_id"].strip(), section["aws_secret_access_key"].strip()
    except OSError as e:
        raise ConfigError(f"sync.credentials_file {path}: cannot read it ({e.strerror})") from None
    except configparser.Error as e:
        line = getattr(e, "lineno", None)
        where = f" near line {line}" if line else ""
        raise ConfigError(f"sync.credentials_file {path}: not an INI credentials file{where}") from None
    except KeyError:
        raise ConfigError(
            f"sync.credentials_file {path}: profile [{profile}] needs aws_access_key_id and aws_secret_access_key"
        ) from None
    return key, secret, section.get("aws_session_token", "").strip()
