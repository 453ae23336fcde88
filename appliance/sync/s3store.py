"""S3Store: the ObjectStore (store.py) of an S3-compatible bucket: put, verify and delete Parquet objects.

The bucket holds complete data objects and nothing else: `<prefix>/<db>/<table>/date=…/node=…/<file>`.

With static credentials (resolved once, `resolve_credentials`, and the same given to pyarrow)
uploads go through S3Client (s3.py): a file up to PART bytes is one PUT, a larger one a
multipart upload that is completed only after every byte was read from the local file and
sent; a local read error, a network failure or a stop aborts it. Either way no part of a
file is ever visible: a PUT and a completed multipart upload are atomic in S3 and MinIO,
and one cut short by kill -9 or a power cut is never completed (its parts stay invisible
until a bucket lifecycle rule for incomplete multipart uploads reclaims them). The file is
sent again whole after a restart (same key, same bytes, idempotent). Afterwards the object
is checked (size, and the row count in its Parquet footer); a wrong one is deleted and sent
again. Deletes are one signed `DeleteObject` each, so no "folder" marker is left behind.

Without static credentials (an instance role: the AWS SDK's chain) pyarrow does it all:
its stream publishes whatever was written when it is closed, even after an error, so a
large file is read once before its stream opens (a bad disk fails then), and its deletes
leave zero-byte folder markers (logged once).
"""

from __future__ import annotations

import configparser
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..config import SyncSettings
from ..errors import ConfigError
from .s3 import CONNECT_TIMEOUT, REQUEST_TIMEOUT, Credentials, S3Client, ca_file, virtual_hosted
from .store import Stopped, Throttle

log = logging.getLogger("appliance.sync")

#: Files up to this size go as one PUT; larger ones as a multipart upload of parts this size
#: (at most this much of a file is in memory per upload). S3's smallest part is 5 MiB.
PART = 8 << 20
#: Bytes read from the local file per step of pyarrow's stream (throttling granularity).
CHUNK = 256 * 1024
#: Pages of 1000 keys listed at start-up when looking for strays left by earlier versions.
STRAY_PAGES = 10


class S3Store:
    """One bucket and prefix (an ObjectStore); every method raises OSError when the store fails."""

    def __init__(self, settings: SyncSettings) -> None:
        self.bucket = settings.bucket
        self.prefix = settings.prefix
        self.endpoint = settings.endpoint
        self.throttle = Throttle(settings.bandwidth_limit)
        self.region = settings.region
        self.path_style = settings.path_style
        creds = resolve_credentials(settings)
        self._options = _s3_options(settings, creds)
        self.s3 = (
            S3Client(settings.endpoint, self.bucket, self.region, self.path_style, creds)
            if creds is not None
            else None
        )
        self._warned_unsigned = False
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
        """`s3://<bucket>/<key>`."""
        return f"s3://{self.bucket}/{self.key(rel)}"

    def put(self, local: Path, rel: str, rows: int, stop: threading.Event) -> None:
        """Upload to the key, then verify (size and the Parquet footer's row count).

        Never publishes part of a file; a stop aborts the upload (Stopped). A wrong object
        is deleted before the error is raised.
        """
        if stop.is_set():
            raise Stopped(rel)
        final = f"{self.bucket}/{self.key(rel)}"
        size = local.stat().st_size

        def pace(n: int) -> None:
            if not stop.is_set():  # a stop lifts the throttle: a PUT under way finishes quickly
                self.throttle.take(n)

        if self.s3 is None:
            self._put_pyarrow(local, final, size, pace)
        elif size <= PART:
            data = _read_exactly(local.open("rb"), size, local)
            self._check(self.s3.request("PUT", self.key(rel), body=data, pace=pace), "PUT", rel)
        else:
            self.s3.upload(self.key(rel), _parts(local, size, stop, rel), pace)
        try:
            self._verify(final, size, rows)
        except OSError:
            self.delete(rel)  # never leave a wrong object under a data key
            raise

    def _check(self, answer: tuple[int, dict[str, str], bytes], method: str, rel: str) -> None:
        assert self.s3 is not None
        status, _, body = answer
        if status != 200:
            raise self.s3.error(method, self.key(rel), status, body)

    def _put_pyarrow(self, local: Path, final: str, size: int, pace: Callable[[int], None]) -> None:
        """The fallback without static credentials (see the module's doc)."""
        with local.open("rb") as src:
            if size <= PART:
                whole = memoryview(_read_exactly(src, size, local))
                with self.fs.open_output_stream(final) as out:
                    for i in range(0, size, CHUNK):
                        pace(len(whole[i : i + CHUNK]))
                        out.write(whole[i : i + CHUNK])
                return
            while src.read(CHUNK):  # a read error here fails before anything is published
                pass
            src.seek(0)
            with self.fs.open_output_stream(final) as out:
                while chunk := src.read(CHUNK):
                    pace(len(chunk))
                    out.write(chunk)

    def _verify(self, path: str, size: int, rows: int) -> None:
        import pyarrow.parquet as pq

        info = self.fs.get_file_info(path)
        if info.size != size:
            raise OSError(f"verification failed for {path}: {info.size} bytes in the store, {size} local")
        with self.fs.open_input_file(path) as f:
            found = pq.ParquetFile(f).metadata.num_rows
        if found != rows:
            raise OSError(f"verification failed for {path}: {found} rows in the store, {rows} local")

    def head(self, rel: str) -> int | None:
        """The object's size, None when there is none."""
        from pyarrow import fs

        info = self.fs.get_file_info(f"{self.bucket}/{self.key(rel)}")
        return None if info.type == fs.FileType.NotFound else int(info.size)

    def delete(self, rel: str) -> None:
        """Delete an object (one that is already gone is fine), leaving no folder marker."""
        self._delete_key(self.key(rel))

    def _delete_key(self, key: str) -> None:
        if self.s3 is not None:
            self.s3.delete(key)
            return
        if not self._warned_unsigned:
            self._warned_unsigned = True
            log.warning(
                "sync: no static credentials (sync.access_key_id, AWS_ACCESS_KEY_ID or a credentials"
                " file): deletes go through pyarrow, which leaves zero-byte folder markers in the bucket"
            )
        from pyarrow import fs

        if self.fs.get_file_info(f"{self.bucket}/{key}").type != fs.FileType.NotFound:
            self.fs.delete_file(f"{self.bucket}/{key}")  # writes a marker for the parent folder

    def remove_strays(self) -> int:
        """Delete what earlier versions left under the prefix: `_staging/` copies and zero-byte
        folder markers (keys ending in `/`). A bounded listing; returns how many went."""
        if self.s3 is None:
            return 0
        staging, more_staging = self.s3.keys(self.key("_staging/"), STRAY_PAGES)
        everything, more = self.s3.keys(self.key(""), STRAY_PAGES)
        strays = sorted(set(staging) | {k for k in everything if k.endswith("/")})
        for key in strays:
            self._delete_key(key)
        if strays:
            log.warning(
                "sync: removed %d object(s) earlier versions left under %s: %s",
                len(strays),
                self.url(""),
                ", ".join(strays[:10]) + (" …" if len(strays) > 10 else ""),
            )
        if more or more_staging:
            log.info(
                "sync: more than %d keys under %s; only the first were checked for strays",
                STRAY_PAGES * 1000,
                self.url(""),
            )
        return len(strays)


def _read_exactly(src: Any, n: int, local: Path) -> bytes:
    """`n` bytes of an open file (closed after), or OSError: a short read is never sent."""
    with src:
        data = src.read(n)
    if len(data) != n:
        raise OSError(f"{local}: read {len(data)} of {n} bytes; the file changed or the disk failed")
    return bytes(data)


def _parts(local: Path, size: int, stop: threading.Event, rel: str) -> Iterator[bytes]:
    """The file in PART-sized pieces, each read whole; a stop or a short read raises (aborting)."""
    with local.open("rb") as src:
        sent = 0
        while sent < size:
            if stop.is_set():
                raise Stopped(rel)
            want = min(PART, size - sent)
            data = src.read(want)
            if len(data) != want:
                raise OSError(
                    f"{local}: read {sent + len(data)} of {size} bytes; the file changed or the disk failed"
                )
            sent += want
            yield data


def resolve_credentials(settings: SyncSettings) -> Credentials | None:
    """Static credentials, once, in the documented order (pyarrow and the signer get the same):
    sync.access_key_id/secret_access_key; AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (and
    AWS_SESSION_TOKEN); sync.credentials_file's [sync.profile]; the AWS shared credentials file
    (AWS_SHARED_CREDENTIALS_FILE or ~/.aws/credentials; profile AWS_PROFILE, else sync.profile).
    None: the AWS SDK's other sources (an instance role), through pyarrow only."""
    if settings.access_key_id:
        if not settings.secret_access_key:
            raise ConfigError("sync.access_key_id is set but sync.secret_access_key is empty")
        return Credentials(settings.access_key_id, settings.secret_access_key)
    env = os.environ
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return Credentials(
            env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], env.get("AWS_SESSION_TOKEN", "")
        )
    if settings.credentials_file:
        return Credentials(*_credentials_file(Path(settings.credentials_file), settings.profile))
    shared = Path(env.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials").expanduser()
    if not shared.is_file():
        return None
    try:
        return Credentials(*_credentials_file(shared, env.get("AWS_PROFILE") or settings.profile))
    except ConfigError:
        return None  # not ours to judge: the AWS SDK reads it its own way


def _s3_options(settings: SyncSettings, creds: Credentials | None) -> dict[str, Any]:
    """S3FileSystem arguments from the [sync] settings; credentials never leave this dict."""
    options: dict[str, Any] = {
        "region": settings.region,
        "connect_timeout": CONNECT_TIMEOUT,
        "request_timeout": REQUEST_TIMEOUT,
        # Path style for an IP address or localhost endpoint too, as botocore does.
        "force_virtual_addressing": bool(settings.endpoint)
        and virtual_hosted(settings.endpoint, settings.bucket, settings.path_style),
        "allow_delayed_open": True,  # a small object goes as one PUT, not a three-request multipart upload
    }
    if ca_file():
        options["tls_ca_file_path"] = ca_file()
    if settings.endpoint:
        scheme, _, host = settings.endpoint.partition("://")
        options["endpoint_override"] = host
        options["scheme"] = scheme
    if creds is not None:
        options["access_key"], options["secret_key"] = creds.key_id, creds.secret
        if creds.token:
            options["session_token"] = creds.token
    # Otherwise the AWS SDK's own chain (an instance role).
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
