"""S3Client: the few S3 requests pyarrow cannot make safely, signed with AWS Signature Version 4.

pyarrow's output stream completes a multipart upload whenever it is closed, even after an
error, and its `delete_file` writes a zero-byte "folder" marker for the parent. So large
uploads (parts sent, then completed only once every byte was read and sent, aborted
otherwise), deletes and the start-up listing go through this client. It needs static
credentials (`Credentials`); the AWS SDK's other sources (instance roles) stay pyarrow's.

Every failure is an OSError (S3Error for an answer, with its status and S3 error code).
Connection failures, 5xx and 429 are retried a few times; a connection gets CONNECT_TIMEOUT
to open and REQUEST_TIMEOUT per read. TLS verifies against the system's trust store, or the
bundle named by SSL_CERT_FILE (pyarrow is given the same file). No HTTP proxy is used (nor
does pyarrow use one).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import os
import re
import ssl
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

#: Socket timeouts, seconds: an unreachable endpoint fails an attempt instead of hanging it.
CONNECT_TIMEOUT = 5.0
REQUEST_TIMEOUT = 30.0
#: Tries per request (connection errors, 5xx, 429), with a short pause between them.
ATTEMPTS = 3
_PAUSE = 0.25
#: Bytes written to the socket per step of a body (throttling granularity).
SEND_CHUNK = 256 * 1024
#: Most bytes of an answer read (S3's XML answers are small; a listing of 1000 keys ~300 KB).
MAX_ANSWER = 4 << 20
_RETRY_STATUS = {429, 500, 502, 503, 504}
_DNS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class Credentials:
    """Static credentials, resolved once at start; pyarrow and this client get the same."""

    key_id: str
    secret: str
    token: str = ""


class S3Error(OSError):
    """S3 answered with an error: `status`, and `code` from its XML body ("" if none)."""

    def __init__(self, message: str, status: int, code: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def virtual_hosted(endpoint: str, bucket: str, path_style: bool) -> bool:
    """Whether requests go to `<bucket>.<host>` (else `<host>/<bucket>`), as botocore decides.

    Path style when asked, when the endpoint's host is an IP address (or localhost), and when
    the bucket is no DNS label (a dotted name would not match the TLS certificate either).
    """
    if path_style and endpoint:
        return False
    if not _DNS_BUCKET.match(bucket):
        return False
    if not endpoint:
        return True
    host = urllib.parse.urlsplit(endpoint).hostname or ""
    if host == "localhost":
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return True
    return False


def ca_file() -> str | None:
    """The CA bundle both clients trust instead of the system's: SSL_CERT_FILE, if set."""
    return os.environ.get("SSL_CERT_FILE") or None


class S3Client:
    """Signed requests to one bucket. Thread-safe: one connection per request."""

    def __init__(self, endpoint: str, bucket: str, region: str, path_style: bool, creds: Credentials) -> None:
        self.bucket, self.region, self.creds = bucket, region, creds
        self.virtual = virtual_hosted(endpoint, bucket, path_style)
        if endpoint:
            parts = urllib.parse.urlsplit(endpoint)
            self.scheme, base = parts.scheme, parts.netloc
        else:
            self.scheme, base = "https", f"s3.{region}.amazonaws.com"
        self.host = f"{bucket}.{base}" if self.virtual else base
        self._ssl = ssl.create_default_context(cafile=ca_file()) if self.scheme == "https" else None

    def path(self, key: str) -> str:
        """The escaped request path of an object ("" key: the bucket)."""
        quoted = urllib.parse.quote(key, safe="/-_.~")
        return f"/{quoted}" if self.virtual else f"/{self.bucket}/{quoted}" if key else f"/{self.bucket}"

    # -- requests ----------------------------------------------------------------------------
    def request(
        self,
        method: str,
        key: str,
        query: dict[str, str] | None = None,
        body: bytes | memoryview = b"",
        pace: Callable[[int], None] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """Send one signed request (retried on connection errors, 5xx, 429); any status is returned."""
        query = query or {}
        digest = hashlib.sha256(body).hexdigest()
        for attempt in range(ATTEMPTS):
            try:
                status, headers, answer = self._once(method, key, query, body, digest, pace)
            except (OSError, http.client.HTTPException) as e:
                if attempt + 1 == ATTEMPTS:
                    raise OSError(f"{method} {self.describe(key)} failed: {_reason(e)}") from None
            else:
                if status not in _RETRY_STATUS or attempt + 1 == ATTEMPTS:
                    return status, headers, answer
            time.sleep(_PAUSE * 4**attempt)
        raise AssertionError("unreachable")

    def _once(
        self,
        method: str,
        key: str,
        query: dict[str, str],
        body: bytes | memoryview,
        digest: str,
        pace: Callable[[int], None] | None,
    ) -> tuple[int, dict[str, str], bytes]:
        path = self.path(key)
        headers = sign(method, self.host, path, query, self.region, self.creds, datetime.now(UTC), digest)
        headers["content-length"] = str(len(body))
        target = path + ("?" + _canonical_query(query) if query else "")
        conn = self._connect()
        try:
            conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for name, value in headers.items():
                conn.putheader(name, value)
            conn.endheaders()
            view = memoryview(body)
            for i in range(0, len(view), SEND_CHUNK):
                chunk = view[i : i + SEND_CHUNK]
                if pace is not None:
                    pace(len(chunk))
                conn.send(chunk)
            resp = conn.getresponse()
            answer = resp.read(MAX_ANSWER)
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, answer
        finally:
            conn.close()

    def _connect(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        if self._ssl is not None:
            conn = http.client.HTTPSConnection(self.host, timeout=CONNECT_TIMEOUT, context=self._ssl)
        else:
            conn = http.client.HTTPConnection(self.host, timeout=CONNECT_TIMEOUT)
        conn.connect()
        if conn.sock is not None:
            conn.sock.settimeout(REQUEST_TIMEOUT)
        return conn

    def describe(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def error(self, method: str, key: str, status: int, answer: bytes) -> S3Error:
        code = _text(answer, "Code")
        detail = _text(answer, "Message") or answer.decode(errors="replace").replace("\n", " ")[:200]
        return S3Error(
            f"{method} {self.describe(key)} answered {status} {code}: {detail}".strip(), status, code
        )

    # -- operations ----------------------------------------------------------------------------
    def delete(self, key: str) -> None:
        """Delete an object; one already gone is fine (404 NoSuchKey only, not any 404)."""
        status, _, answer = self.request("DELETE", key)
        if status in (200, 204) or (status == 404 and _text(answer, "Code") == "NoSuchKey"):
            return
        raise self.error("DELETE", key, status, answer)

    def keys(self, prefix: str, max_pages: int) -> tuple[list[str], bool]:
        """Keys under `prefix`, at most `max_pages` pages of 1000; True if more were left unlisted."""
        keys: list[str] = []
        token = ""
        for _ in range(max_pages):
            query = {"list-type": "2", "prefix": prefix, "max-keys": "1000"}
            if token:
                query["continuation-token"] = token
            status, _, answer = self.request("GET", "", query)
            if status != 200:
                raise self.error("GET", prefix, status, answer)
            root = ET.fromstring(answer)
            keys += [el.text or "" for el in _find(root, "Key")]
            token = next((el.text or "" for el in _find(root, "NextContinuationToken")), "")
            if not token:
                return keys, False
        return keys, True

    def upload(self, key: str, parts: Iterator[bytes], pace: Callable[[int], None]) -> None:
        """A multipart upload completed only once `parts` is exhausted; aborted on any exception
        (a stop, a local read error, the network), so no part of it ever becomes visible."""
        status, _, answer = self.request("POST", key, {"uploads": ""})
        upload_id = _text(answer, "UploadId") if status == 200 else ""
        if not upload_id:
            raise self.error("POST", key, status, answer)
        try:
            etags: list[str] = []
            for data in parts:
                etags.append(self._part(key, upload_id, len(etags) + 1, data, pace))
                del data  # one part in memory at a time
            self._complete(key, upload_id, etags)
        except BaseException:
            try:
                self.request("DELETE", key, {"uploadId": upload_id})  # the AbortMultipartUpload
            except OSError:
                pass  # never completed, so never visible; a bucket lifecycle rule reclaims its parts
            raise

    def _part(self, key: str, upload_id: str, n: int, data: bytes, pace: Callable[[int], None]) -> str:
        query = {"partNumber": str(n), "uploadId": upload_id}
        status, headers, answer = self.request("PUT", key, query, data, pace)
        if status != 200 or "etag" not in headers:
            raise self.error("PUT", key, status, answer)
        return headers["etag"]

    def _complete(self, key: str, upload_id: str, etags: list[str]) -> None:
        body = "".join(
            f"<Part><PartNumber>{n}</PartNumber><ETag>{_xml(etag)}</ETag></Part>"
            for n, etag in enumerate(etags, 1)
        )
        xml = f"<CompleteMultipartUpload>{body}</CompleteMultipartUpload>".encode()
        status, _, answer = self.request("POST", key, {"uploadId": upload_id}, xml)
        if status == 404 and _text(answer, "Code") == "NoSuchUpload":
            return  # a retry of a completion that went through: the verification after decides
        # S3 can answer 200 and still fail (the error is then in the body).
        if status != 200 or b"<Error>" in answer:
            raise self.error("POST", key, status, answer)


def sign(
    method: str,
    host: str,
    path: str,
    query: dict[str, str],
    region: str,
    creds: Credentials,
    now: datetime,
    payload_sha256: str,
) -> dict[str, str]:
    """Headers of a request signed with AWS Signature Version 4 (service s3); `path` is escaped."""
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    day = stamp[:8]
    headers = {"host": host, "x-amz-content-sha256": payload_sha256, "x-amz-date": stamp}
    if creds.token:
        headers["x-amz-security-token"] = creds.token
    names = sorted(headers)
    signed = ";".join(names)
    canonical = "\n".join(
        [
            method,
            path,
            _canonical_query(query),
            *(f"{n}:{headers[n]}" for n in names),
            "",
            signed,
            payload_sha256,
        ]
    )
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    k = ("AWS4" + creds.secret).encode()
    for part in (day, region, "s3", "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={creds.key_id}/{scope}, SignedHeaders={signed}, Signature={signature}"
    )
    return headers


def _canonical_query(query: dict[str, str]) -> str:
    def q(s: str) -> str:
        return urllib.parse.quote(s, safe="-_.~")

    return "&".join(f"{q(k)}={q(v)}" for k, v in sorted(query.items()))


def _find(root: ET.Element, name: str) -> list[ET.Element]:
    """Elements named `name` anywhere below `root`, whatever their XML namespace."""
    return [el for el in root.iter() if el.tag == name or el.tag.endswith("}" + name)]


def _text(answer: bytes, name: str) -> str:
    try:
        root = ET.fromstring(answer)
    except ET.ParseError:
        return ""
    return next((el.text or "" for el in _find(root, name)), "")


def _xml(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _reason(e: BaseException) -> str:
    return getattr(e, "strerror", None) or str(e) or type(e).__name__
