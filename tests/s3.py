"""A real S3 endpoint for tests: moto's server on a loopback port, optionally behind an outage switch.

`S3().start()` runs moto (`ThreadedMotoServer`, a thread of this process) on a free 127.0.0.1 port
and creates the bucket. `S3(proxied=True)` also puts a `Proxy` in front of it: `endpoint` is then
the proxy's, and `down()` / `up()` take it away and bring it back (moto keeps its state in memory,
so stopping moto itself would lose every object). The inspection helpers (`keys`, `get`,
`download`) talk to moto directly, so they work during an outage too, and also on an unstarted
`S3(port=...)` handle for a moto that another process runs (bench/sync.py does that).

moto's backends are global to the process: every `S3` in one process sees the same buckets.
`start()` therefore resets moto's state only when no other `S3` of this process is running.

Still-running servers and proxies are listed in `RUNNING_S3` / `RUNNING_PROXIES`; `reap()` stops
them (call it from a fixture: a failed assertion skips `stop()`).

`python tests/s3.py` is a self-check: it writes, lists, reads and downloads objects through a
proxy, and checks that `down()` refuses connections and `up()` serves them again.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
import threading
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

if __package__ in (None, ""):  # `python tests/s3.py`: make `tests.server` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.server import free_port

#: Servers started and not yet stopped; `reap()` stops them.
RUNNING_S3: list[S3] = []
#: Proxies started and not yet stopped (including those of `RUNNING_S3`); `reap()` stops them.
RUNNING_PROXIES: list[Proxy] = []

_CHUNK = 256 * 1024


def reap() -> None:
    """Stop every S3 server and proxy still running (for a test fixture's teardown)."""
    while RUNNING_S3:
        RUNNING_S3[-1].stop()
    while RUNNING_PROXIES:
        RUNNING_PROXIES[-1].stop()


# --- the outage switch ------------------------------------------------------------------------


class Proxy:
    """A TCP proxy on 127.0.0.1 to `target_port` that can be switched off and on.

    One accept thread, two pump threads per connection; stdlib sockets only. `down()` closes the
    listening socket and resets every open connection (new connections are refused); `up()`
    listens on the same port again."""

    def __init__(self, target_port: int, port: int = 0) -> None:
        self.target_port = target_port
        self.port = port or free_port()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._stopping = threading.Event()
        #: client socket -> (upstream socket, its two pump threads, how many of them still run)
        self._conns: dict[socket.socket, tuple[socket.socket, list[threading.Thread], list[int]]] = {}
        self.connections = 0  # accepted since start(), for tests that want to see traffic

    @property
    def is_up(self) -> bool:
        return self._listener is not None

    def start(self) -> Proxy:
        """Listen and serve; returns self."""
        if self not in RUNNING_PROXIES:
            RUNNING_PROXIES.append(self)
        self.up()
        return self

    def up(self) -> None:
        """Listen again on the same port (no-op when already up)."""
        if self._listener is not None:
            return
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(("127.0.0.1", self.port))
            listener.listen(128)
        except OSError:
            listener.close()
            raise
        listener.settimeout(0.05)  # the accept loop notices down() within this
        self._stopping.clear()
        self._listener = listener
        self._acceptor = threading.Thread(
            target=self._accept_loop, args=(listener,), name=f"s3-proxy-{self.port}", daemon=True
        )
        self._acceptor.start()

    def down(self) -> None:
        """Stop listening and reset every open connection; returns once they are all closed."""
        listener, acceptor = self._listener, self._acceptor
        self._listener = self._acceptor = None
        self._stopping.set()
        if acceptor is not None:
            acceptor.join()
        if listener is not None:
            listener.close()
        with self._lock:
            conns = list(self._conns.items())
        for client, (upstream, _, _) in conns:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    # An abortive close: the peer sees a reset, not a clean end of stream.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # wakes the pump threads blocked in recv
        for _, (_, pumps, _) in conns:
            for t in pumps:
                t.join(5)

    def stop(self) -> None:
        """down() for good."""
        self.down()
        with contextlib.suppress(ValueError):
            RUNNING_PROXIES.remove(self)

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                self._serve(client)
            except OSError:
                client.close()  # moto unreachable: the client sees its connection closed

    def _serve(self, client: socket.socket) -> None:
        client.settimeout(None)
        upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
        upstream.settimeout(None)
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pumps = [
            threading.Thread(target=self._pump, args=(client, upstream, client), daemon=True),
            threading.Thread(target=self._pump, args=(upstream, client, client), daemon=True),
        ]
        with self._lock:
            self._conns[client] = (upstream, pumps, [len(pumps)])
            self.connections += 1
        for t in pumps:
            t.start()

    def _pump(self, src: socket.socket, dst: socket.socket, key: socket.socket) -> None:
        """Copy src to dst until src ends (then half-close dst) or either fails; the connection's
        last pump to finish closes both sockets."""
        try:
            while data := src.recv(_CHUNK):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        finally:
            with self._lock:
                upstream, _, running = self._conns[key]
                running[0] -= 1
                last = running[0] == 0
                if last:
                    del self._conns[key]
            if last:
                key.close()
                upstream.close()


# --- moto ---------------------------------------------------------------------------------------


def _quiet_werkzeug() -> None:
    """Keep werkzeug's per-request log lines (INFO) off stderr; warnings still show."""
    logger = logging.getLogger("werkzeug")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.WARNING)


def _ignore_dropped(request: Any, client_address: Any) -> None:
    """socketserver's handle_error without the traceback: a proxy reset is expected here."""
    exc = sys.exc_info()[1]
    if not isinstance(exc, OSError):
        print(f"moto: error serving {client_address}: {exc!r}", file=sys.stderr)


@dataclass
class S3:
    """moto's S3 on 127.0.0.1:`port` with one bucket; `proxied=True` adds a `Proxy` outage switch."""

    port: int = field(default_factory=free_port)
    bucket: str = "edge"
    access_key: str = "testing"
    secret_key: str = "testing"
    region: str = "us-east-1"
    proxied: bool = False
    proxy: Proxy | None = field(default=None, init=False, repr=False)
    _server: Any = field(default=None, init=False, repr=False)
    _client: Any = field(default=None, init=False, repr=False)

    @property
    def endpoint(self) -> str:
        """What the code under test should use: the proxy's URL when proxied, else moto's."""
        port = self.proxy.port if self.proxy is not None else self.port
        return f"http://127.0.0.1:{port}"

    @property
    def direct_endpoint(self) -> str:
        """moto's own URL (never affected by `down()`)."""
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """AWS credentials and region for a client process's environment."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }

    # --- life cycle -------------------------------------------------------------------------------

    def start(self) -> S3:
        """Start moto (and the proxy), reset moto's state if no other S3 runs here, create the bucket."""
        from moto.server import ThreadedMotoServer

        if self._server is not None:
            raise RuntimeError(f"S3 on port {self.port} is already running")
        _quiet_werkzeug()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        server.start()
        self._server = server
        if server._server is not None:
            server._server.handle_error = _ignore_dropped  # type: ignore[method-assign]
        RUNNING_S3.append(self)
        try:
            if len(RUNNING_S3) == 1:
                self.reset()
            self.create_bucket(self.bucket)
            if self.proxied:
                self.proxy = Proxy(self.port).start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the proxy and moto, close the listening socket and the boto3 client."""
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None
        if self._client is not None:
            self._client.close()
            self._client = None
        server, self._server = self._server, None
        if server is not None:
            server.stop()
            if server._server is not None:
                server._server.server_close()  # ThreadedMotoServer.stop() leaves the socket open
        with contextlib.suppress(ValueError):
            RUNNING_S3.remove(self)

    def down(self) -> None:
        """Outage: the proxy stops listening and resets its connections (needs proxied=True)."""
        self._need_proxy().down()

    def up(self) -> None:
        """End the outage: the proxy listens on the same port again."""
        self._need_proxy().up()

    def _need_proxy(self) -> Proxy:
        if self.proxy is None:
            raise RuntimeError("down()/up() need S3(proxied=True) and start()")
        return self.proxy

    def reset(self) -> None:
        """Forget every bucket and object of this process's moto (moto's /moto-api/reset)."""
        req = urllib.request.Request(f"{self.direct_endpoint}/moto-api/reset", data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()

    # --- inspection (direct to moto) --------------------------------------------------------------

    def client(self) -> Any:
        """A boto3 S3 client for moto itself (path-style, no retries); closed by stop()."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
            )
            self._client = boto3.session.Session().client(
                "s3",
                endpoint_url=self.direct_endpoint,
                aws_access_key_id=self.access_key,
                aws_secret_access_key=self.secret_key,
                region_name=self.region,
                config=config,
            )
        return self._client

    def create_bucket(self, name: str) -> None:
        """Create a bucket (fine if this process's moto already has it)."""
        client = self.client()
        kwargs: dict[str, Any] = {"Bucket": name}
        if self.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            client.create_bucket(**kwargs)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass

    def objects(self, prefix: str = "") -> list[dict[str, Any]]:
        """ListObjectsV2 entries (Key, Size, LastModified, ETag...) under `prefix`, every page."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [obj for page in pages for obj in page.get("Contents", [])]

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key in the bucket under `prefix` (a plain string prefix), sorted."""
        return sorted(obj["Key"] for obj in self.objects(prefix))

    def get(self, key: str) -> bytes:
        """One object's bytes."""
        body = self.client().get_object(Bucket=self.bucket, Key=key)["Body"]
        try:
            return bytes(body.read())
        finally:
            body.close()

    def put(self, key: str, data: bytes) -> None:
        """Write one object (test setup)."""
        self.client().put_object(Bucket=self.bucket, Key=key, Body=data)

    def download(self, prefix: str, dest: Path) -> list[Path]:
        """Every object under the folder `prefix` into `dest`, at its key's path relative to `prefix`.

        `prefix` is a folder: "fleet" and "fleet/" both mean the keys starting with "fleet/"
        ("" means the whole bucket), and "fleet/db/t.parquet" lands at `dest/db/t.parquet`."""
        folder = prefix.strip("/") + "/" if prefix.strip("/") else ""
        written = []
        for key in self.keys(folder):
            rel = PurePosixPath(key[len(folder) :])
            if key.endswith("/") or not rel.parts or ".." in rel.parts or rel.is_absolute():
                continue  # folder markers, and nothing may land outside dest
            path = dest.joinpath(*rel.parts)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(self.get(key))
            written.append(path)
        return written


# --- self-check ---------------------------------------------------------------------------------


def _refused(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            r.read()
    except OSError:
        return True
    return False


def _self_check(base: Path) -> None:
    s3 = S3(proxied=True).start()
    assert s3.proxy is not None
    try:
        for i in range(1005):  # more than one ListObjectsV2 page
            s3.put(f"fleet/db/t/{i:04d}.bin", str(i).encode())
        s3.put("other/x", b"x")
        assert len(s3.keys("fleet/")) == 1005, len(s3.keys("fleet/"))
        assert s3.get("fleet/db/t/0042.bin") == b"42"
        paths = s3.download("fleet", base / "dl")
        assert len(paths) == 1005 and (base / "dl/db/t/0007.bin").read_bytes() == b"7"
        print(f"moto {s3.direct_endpoint}: put, list (paginated), get, download ok")

        url = f"{s3.endpoint}/{s3.bucket}?list-type=2&max-keys=1"
        with urllib.request.urlopen(url, timeout=5) as r:  # anonymous GET: moto does not check auth
            assert r.status == 200, r.status
        s3.down()
        assert _refused(url), "the proxy still answers after down()"
        assert s3.keys("other/") == ["other/x"], "the direct endpoint must not be affected"
        s3.up()
        with urllib.request.urlopen(url, timeout=5) as r:
            assert r.status == 200, r.status
        print(f"proxy {s3.endpoint}: up, down (refused), up again ok; {s3.proxy.connections} connections")
    finally:
        s3.stop()
    assert not RUNNING_S3 and not RUNNING_PROXIES, (RUNNING_S3, RUNNING_PROXIES)


if __name__ == "__main__":
    import tempfile
    import warnings

    warnings.simplefilter("error")
    with tempfile.TemporaryDirectory(prefix="s3-check-") as tmp:
        try:
            _self_check(Path(tmp))
        finally:
            reap()
    print("OK")
