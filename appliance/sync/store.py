"""ObjectStore: put, verify and delete Parquet objects in an S3-compatible bucket.

The bucket holds the data objects and nothing else: `<prefix>/<db>/<table>/date=…/node=…/<file>`.

An upload goes straight to its key. A single PUT, and a multipart upload once completed, is
atomic in S3 and MinIO: an upload cut short (kill -9, power cut, a stop) is never visible and
is sent again whole after the restart (same key, same bytes, idempotent). pyarrow publishes
whatever was written when a stream is closed, even after an error, so nothing may interrupt a
stream once it is open: a stop lets the file finish unthrottled (or the process exit cut it),
and the local file is read in full before the stream opens when it is small. Afterwards the
object is checked (size, and the row count in its Parquet footer); a wrong one is deleted and
sent again.

Deletes are one signed `DeleteObject` request (SigV4, below) rather than pyarrow's
`delete_file`, which writes a zero-byte "folder" marker (`…/node=…/`) for the parent after
every delete. Without static credentials (an instance role: the AWS SDK's chain) pyarrow's
delete is the fallback, markers included (logged once).
"""

from __future__ import annotations

import configparser
import hashlib
import hmac
import http.client
import logging
import os
import threading
import time
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import ConfigError

log = logging.getLogger("appliance.sync")

#: Files up to this size are read into memory before their stream opens (no local read can then
#: fail mid-stream); larger ones are streamed in CHUNKs.
WHOLE_FILE = 8 << 20
#: Bytes read from the local file and written to the object per step (throttling granularity).
CHUNK = 256 * 1024
#: Socket timeouts, seconds: an unreachable endpoint fails an attempt instead of hanging it.
CONNECT_TIMEOUT = 5.0
REQUEST_TIMEOUT = 30.0


class Stopped(Exception):
    """The appliance is stopping: the upload was not started (it will be sent after the restart)."""


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
        self.region = config.sync_region
        self.path_style = config.sync_path_style
        self._options = _s3_options(config)
        self._profile = (config.sync_credentials_file, config.sync_profile)
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
        return f"s3://{self.bucket}/{self.key(rel)}"

    def put(self, local: Path, rel: str, rows: int, stop: threading.Event) -> None:
        """Upload to the key, then verify (size and the Parquet footer's row count).

        Nothing raised between opening the stream and closing it (that would publish a part):
        a stop only lifts the throttle. A wrong object is deleted before the error is raised.
        """
        if stop.is_set():
            raise Stopped(rel)
        final = f"{self.bucket}/{self.key(rel)}"
        size = local.stat().st_size
        with local.open("rb") as src:
            whole = src.read() if size <= WHOLE_FILE else None
            with self.fs.open_output_stream(final) as out:
                if whole is not None:
                    self._send(out, memoryview(whole), stop)
                else:
                    self._stream(src, out, stop)
        try:
            self._verify(final, size, rows)
        except OSError:
            self.delete(rel)  # never leave a wrong object under a data key
            raise

    def _send(self, out: Any, data: memoryview, stop: threading.Event) -> None:
        for i in range(0, len(data), CHUNK):
            chunk = data[i : i + CHUNK]
            if not stop.is_set():
                self.throttle.take(len(chunk))
            out.write(chunk)

    def _stream(self, src: Any, out: Any, stop: threading.Event) -> None:
        """Copy a large file; a read error ends the copy early (caught by the size check after)."""
        while True:
            try:
                chunk = src.read(CHUNK)
            except OSError as e:
                log.error("reading %s failed mid-upload: %s", src.name, e)
                return
            if not chunk:
                return
            if not stop.is_set():
                self.throttle.take(len(chunk))
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

    def delete(self, rel: str) -> None:
        """Delete an object (one that is already gone is fine), leaving no folder marker."""
        key = self.key(rel)
        if self._signed("DELETE", key):
            return
        from pyarrow import fs

        if self.fs.get_file_info(f"{self.bucket}/{key}").type != fs.FileType.NotFound:
            self.fs.delete_file(f"{self.bucket}/{key}")  # writes a marker for the parent folder

    # -- signed requests (AWS Signature Version 4) ----------------------------------------------
    def _signed(self, method: str, key: str) -> bool:
        """Send one bodiless signed request; False without static credentials. Raises OSError."""
        creds = self._credentials()
        if creds is None:
            if not self._warned_unsigned:
                self._warned_unsigned = True
                log.warning(
                    "sync: no static credentials (sync.access_key_id, AWS_ACCESS_KEY_ID or a credentials"
                    " file): deletes go through pyarrow, which leaves zero-byte folder markers in the bucket"
                )
            return False
        scheme, host, path = self._address(key)
        headers = _sign(method, host, path, self.region, creds, datetime.now(UTC))
        conn_type = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
        conn = conn_type(host, timeout=REQUEST_TIMEOUT)
        try:
            conn.request(method, path, headers=headers)
            resp = conn.getresponse()
            body = resp.read(2048)
        finally:
            conn.close()
        if resp.status >= 300 and not (method == "DELETE" and resp.status == 404):
            detail = body.decode(errors="replace").replace("\n", " ")[:300]
            raise OSError(f"{method} {self.url(key)} answered {resp.status}: {detail}")
        return True

    def _address(self, key: str) -> tuple[str, str, str]:
        """(scheme, host, escaped path) of an object, path-style or virtual-hosted as pyarrow does."""
        quoted = urllib.parse.quote(key, safe="/-_.~")
        if self.endpoint:
            scheme, _, host = self.endpoint.partition("://")
            if self.path_style:
                return scheme, host, f"/{self.bucket}/{quoted}"
            return scheme, f"{self.bucket}.{host}", f"/{quoted}"
        aws = f"s3.{self.region}.amazonaws.com"
        if "." in self.bucket:  # a dotted name does not match the TLS certificate as a host
            return "https", aws, f"/{self.bucket}/{quoted}"
        return "https", f"{self.bucket}.{aws}", f"/{quoted}"

    def _credentials(self) -> tuple[str, str, str] | None:
        """Static credentials as the AWS SDK would find them first; None for its other sources."""
        o = self._options
        if "access_key" in o:
            return o["access_key"], o["secret_key"], o.get("session_token", "")
        env = os.environ
        if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
            return env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], env.get("AWS_SESSION_TOKEN", "")
        path, profile = self._profile
        shared = Path(path) if path else Path(env.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"))
        shared = shared.expanduser()
        if not shared.is_file():
            return None
        try:
            return _credentials_file(shared, env.get("AWS_PROFILE", profile) if not path else profile)
        except ConfigError:
            return None


def _sign(
    method: str, host: str, path: str, region: str, creds: tuple[str, str, str], now: datetime
) -> dict[str, str]:
    """Headers of a bodiless request signed with AWS Signature Version 4 (service s3)."""
    key_id, secret, token = creds
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    day = stamp[:8]
    empty = hashlib.sha256(b"").hexdigest()
    headers = {"host": host, "x-amz-content-sha256": empty, "x-amz-date": stamp}
    if token:
        headers["x-amz-security-token"] = token
    names = sorted(headers)
    signed = ";".join(names)
    canonical = "\n".join([method, path, "", *(f"{n}:{headers[n]}" for n in names), "", signed, empty])
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    k = ("AWS4" + secret).encode()
    for part in (day, region, "s3", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={key_id}/{scope}, SignedHeaders={signed}, Signature={signature}"
    )
    return headers


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
