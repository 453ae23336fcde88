"""Admin tokens: `apiv3_` + 64 random bytes, stored only as SHA-512 hashes in LMDB."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import lmdb
import msgpack

from .errors import Conflict
from .wal import Wal

log = logging.getLogger("appliance.auth")

TOKEN_PREFIX = "apiv3_"
ADMIN_TOKEN_NAME = "_admin"
ADMIN_TOKEN_FILE = "admin-token"


@dataclass(frozen=True)
class TokenInfo:
    id: int
    name: str
    hash: str
    created_at: int  # ms since epoch
    expiry: int | None


def hash_token(token: str) -> str:
    return hashlib.sha512(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(64)).decode().rstrip("=")


class Tokens:
    """The token store; `verify` is a constant-time check against the known hashes."""

    def __init__(self, wal: Wal) -> None:
        self.wal = wal
        self._lock = threading.Lock()
        self._by_hash: dict[str, TokenInfo] = {}
        with wal.read() as txn:
            for key, value in txn.cursor(db=wal.dbs["tokens"]):
                info = TokenInfo(**msgpack.unpackb(value))
                self._by_hash[bytes(key).decode()] = info

    def verify(self, token: str) -> bool:
        digest = hash_token(token)
        with self._lock:
            info = self._by_hash.get(digest)
        if info is None or not hmac.compare_digest(info.hash, digest):
            return False
        return info.expiry is None or info.expiry > time.time() * 1000

    def admin(self) -> TokenInfo | None:
        with self._lock:
            return next((t for t in self._by_hash.values() if t.name == ADMIN_TOKEN_NAME), None)

    def create_admin(self, regenerate: bool = False) -> tuple[str, TokenInfo]:
        """Create (or with regenerate, replace) the operator admin token; returns it once."""
        with self._lock:
            old = [t for t in self._by_hash.values() if t.name == ADMIN_TOKEN_NAME]
            if old and not regenerate:
                raise Conflict("the admin token already exists; use --regenerate to replace it")
            token = new_token()
            info = TokenInfo(
                id=max((t.id for t in self._by_hash.values()), default=0) + 1,
                name=ADMIN_TOKEN_NAME,
                hash=hash_token(token),
                created_at=int(time.time() * 1000),
                expiry=None,
            )

            def step(txn: lmdb.Transaction, wal: Wal) -> None:
                for t in old:
                    txn.delete(t.hash.encode(), db=wal.dbs["tokens"])
                txn.put(info.hash.encode(), msgpack.packb(asdict(info)), db=wal.dbs["tokens"])

            self.wal.submit(fn=step).result()
            for t in old:
                del self._by_hash[t.hash]
            self._by_hash[info.hash] = info
        return token, info


def write_token_file(data_dir: Path, token: str) -> Path:
    """Store the admin token readable by its owner only (mode 0600), atomically."""
    path = data_dir / ADMIN_TOKEN_FILE
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, (token + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def bootstrap_admin(tokens: Tokens, data_dir: Path) -> None:
    """On first start, create the admin token and leave it in <data-dir>/admin-token."""
    if tokens.admin() is not None:
        return
    token, _ = tokens.create_admin()
    path = write_token_file(data_dir, token)
    log.info("created the admin token; it is in %s (mode 0600)", path)
