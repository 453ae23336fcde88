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
from .fileio import fsync_dir, write_private
from .storage.store import Store

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

    def __init__(self, store: Store, data_dir: Path) -> None:
        self.store = store
        self._db = store.database(b"tokens")
        self.data_dir = data_dir
        self._lock = threading.Lock()
        self._create_lock = threading.Lock()
        self._by_hash: dict[str, TokenInfo] = {}
        with store.read() as txn:
            for key, value in txn.cursor(db=self._db):
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
        """Create (or with regenerate, replace) the operator admin token; returns it once.

        The token reaches `<data-dir>/admin-token.new` before its hash is committed and is
        renamed to `admin-token` after, so a crash in between never leaves an admin token
        nobody knows (start-up adopts a pending `.new` whose hash was committed).
        """
        with self._create_lock:  # not self._lock: verify() must not wait for this commit
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

            def step(txn: lmdb.Transaction) -> None:
                for t in old:
                    txn.delete(t.hash.encode(), db=self._db)
                txn.put(info.hash.encode(), msgpack.packb(asdict(info)), db=self._db)

            pending = write_private(self.data_dir / (ADMIN_TOKEN_FILE + ".new"), token + "\n")
            fsync_dir(self.data_dir)  # the pending file exists durably before its hash does
            self.store.submit(step).result()
            os.replace(pending, self.data_dir / ADMIN_TOKEN_FILE)
            fsync_dir(self.data_dir)
            with self._lock:
                for t in old:
                    del self._by_hash[t.hash]
                self._by_hash[info.hash] = info
        return token, info


def bootstrap_admin(tokens: Tokens) -> None:
    """On first start, create the admin token and leave it in <data-dir>/admin-token."""
    pending = tokens.data_dir / (ADMIN_TOKEN_FILE + ".new")
    if pending.exists():
        token = pending.read_text().strip()
        if tokens.verify(token):  # committed before a crash: finish the rename
            os.replace(pending, tokens.data_dir / ADMIN_TOKEN_FILE)
        else:
            pending.unlink()
    if tokens.admin() is not None:
        return
    tokens.create_admin()
    log.info("created the admin token; it is in %s (mode 0600)", tokens.data_dir / ADMIN_TOKEN_FILE)
