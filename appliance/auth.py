"""Tokens: `apiv3_` + 64 random bytes, stored only as SHA-512 hashes in LMDB, each with what it may do.

An admin token may do everything. A resource token carries permissions in InfluxDB 3 Enterprise's
`RESOURCE_TYPE:NAMES:ACTIONS` form: `db:plant,lab:read,write` (or `db:*:read`) for data, and
`system:health:read` / `system:metrics:read` (or `system:*:read`) for the operations endpoints.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import lmdb
import msgpack

from .errors import ApplianceError, BadRequest, CatalogError, Conflict, NotFound
from .fileio import fsync_dir, write_private
from .storage.catalog import check_database_name
from .storage.store import Store

log = logging.getLogger("appliance.auth")

TOKEN_PREFIX = "apiv3_"
ADMIN_TOKEN_NAME = "_admin"
ADMIN_TOKEN_FILE = "admin-token"
#: The permissions of an admin token, as InfluxDB 3 shows them.
ADMIN_PERMISSIONS = ("*:*:*",)
#: What each resource type grants, by action.
RESOURCE_ACTIONS = {"db": ("read", "write"), "system": ("read",)}
#: The system resources a token may be granted: the operations endpoints that tell internals.
SYSTEM_RESOURCES = ("health", "metrics")
#: "Last used" reaches LMDB at most this often per token (it is exact in memory).
LAST_USED_FLUSH_MS = 60_000
MAX_NAME_CHARS = 200
#: Most names one permission may list.
MAX_NAMES = 256
#: The key of the next token id in the tokens database (the other keys are 128-digit hashes).
NEXT_ID_KEY = b"next_id"


@dataclass(frozen=True)
class Permission:
    """One grant: `actions` on the resources of one type named in `names` ("*" for all)."""

    resource: str
    names: tuple[str, ...]
    actions: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Permission:
        """`db:A,B:read,write`, `db:*:read`, `system:health:read`; ValueError saying what is wrong."""
        parts = text.strip().split(":")
        if len(parts) != 3:
            raise ValueError(
                f"invalid permission {text[:100]!r}: write it as RESOURCE_TYPE:NAMES:ACTIONS,"
                " e.g. db:plant:read or db:plant,lab:read,write or system:health:read"
            )
        resource, names, actions = parts
        return cls.of(resource, names.split(","), actions.split(","))

    @classmethod
    def of(cls, resource: str, names: list[str], actions: list[str]) -> Permission:
        """A checked permission from its three parts; ValueError naming the part that is wrong."""
        allowed = RESOURCE_ACTIONS.get(resource.strip().lower())
        if allowed is None:
            raise ValueError(f"unknown resource type {resource[:40]!r} in a permission: use db or system")
        resource = resource.strip().lower()
        names_t = tuple(dict.fromkeys(n.strip() for n in names))
        actions_t = tuple(dict.fromkeys(a.strip().lower() for a in actions))
        if not names_t or "" in names_t or len(names_t) > MAX_NAMES:
            raise ValueError(f"a {resource} permission needs 1 to {MAX_NAMES} names (or *), none empty")
        if resource == "system" and (bad := [n for n in names_t if n not in (*SYSTEM_RESOURCES, "*")]):
            raise ValueError(
                f"unknown system resource {bad[0][:40]!r}: use {', '.join(SYSTEM_RESOURCES)} or *"
            )
        if resource == "db":
            for n in names_t:
                _check_database(n)
        if not actions_t or (bad := [a for a in actions_t if a not in allowed]):
            raise ValueError(
                f"invalid action {(bad or [''])[0][:20]!r} for {resource}: use {', '.join(allowed)}"
            )
        return cls(resource, ("*",) if "*" in names_t else names_t, actions_t)

    def allows(self, resource: str, name: str, action: str) -> bool:
        """Whether this grant covers `action` on the resource `name` of type `resource`."""
        if self.resource == "*":
            return True
        return (
            self.resource == resource and action in self.actions and ("*" in self.names or name in self.names)
        )

    def __str__(self) -> str:
        return f"{self.resource}:{','.join(self.names)}:{','.join(self.actions)}"


def _check_database(name: str) -> None:
    if name != "*":
        try:
            check_database_name(name)
        except CatalogError as e:
            raise ValueError(f"{e.message} (in a permission)") from None


def parse_permissions(texts: list[str]) -> tuple[Permission, ...]:
    """Several permissions; BadRequest naming the first bad one."""
    try:
        return tuple(Permission.parse(t) for t in texts)
    except ValueError as e:
        raise BadRequest(str(e)) from None


@dataclass(frozen=True)
class TokenInfo:
    """A token as stored: never the token itself, only its hash."""

    id: int
    name: str
    hash: str
    created_at: int  # ms since epoch
    expiry: int | None  # ms since epoch
    permissions: tuple[str, ...] = ADMIN_PERMISSIONS
    last_used: int | None = None  # ms since epoch, as last flushed to LMDB

    @property
    def admin(self) -> bool:
        """Whether this token may do everything."""
        return self.permissions == ADMIN_PERMISSIONS

    @functools.cached_property
    def grant(self) -> Grant:
        """What a request carrying this token may do (parsed once per record). A stored permission
        that no longer parses grants nothing: the token gets 403s, and the log says to recreate it."""
        if self.admin:
            return Grant(self.name, (ADMIN,))
        try:
            return Grant(self.name, tuple(Permission.parse(p) for p in self.permissions))
        except ValueError as e:
            log.error(
                "token %r has a permission that is no longer valid (%s); it may do nothing: recreate it",
                self.name,
                e,
            )
            return Grant(self.name, ())

    def expired(self, now_ms: float) -> bool:
        """Whether the token has expired at `now_ms`."""
        return self.expiry is not None and self.expiry <= now_ms


ADMIN = Permission("*", ("*",), ("*",))


@dataclass(frozen=True)
class Grant:
    """What the bearer of a verified token may do; the name says whose it is in errors and logs."""

    name: str
    permissions: tuple[Permission, ...]

    @property
    def admin(self) -> bool:
        """Whether the token may do everything."""
        return ADMIN in self.permissions

    def may(self, resource: str, name: str, action: str) -> bool:
        """Whether `action` on `resource` `name` is granted."""
        return any(p.allows(resource, name, action) for p in self.permissions)

    def describe(self) -> str:
        """The grants, as `create token --permission` takes them."""
        return " ".join(map(str, self.permissions))


#: The grant of every request while auth is off.
OPEN = Grant("(auth off)", (ADMIN,))


def hash_token(token: str) -> str:
    return hashlib.sha512(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(64)).decode().rstrip("=")


def _load(record: Any) -> TokenInfo:
    fields = dict(record)
    # Records written before resource tokens existed were all admin tokens.
    fields["permissions"] = tuple(fields.get("permissions") or ADMIN_PERMISSIONS)
    return TokenInfo(**fields)


class Tokens:
    """The token store; `authenticate` checks a token against the known hashes."""

    def __init__(self, store: Store, data_dir: Path) -> None:
        self.store = store
        self._db = store.database(b"tokens")
        self.data_dir = data_dir
        self._lock = threading.Lock()
        self._create_lock = threading.Lock()
        self._by_hash: dict[str, TokenInfo] = {}
        self._used: dict[str, int] = {}  # hash -> ms of the last request that carried it
        self._next_id = 1  # ids are never reused, so logs and `show tokens` never mix two tokens up
        with store.read() as txn:
            for key, value in txn.cursor(db=self._db):
                if bytes(key) == NEXT_ID_KEY:
                    self._next_id = max(self._next_id, int(msgpack.unpackb(value)))
                    continue
                info = _load(msgpack.unpackb(value))
                self._by_hash[bytes(key).decode()] = info
                self._next_id = max(self._next_id, info.id + 1)

    def authenticate(self, token: str) -> TokenInfo | None:
        """The token's record when it is known and has not expired; notes its use."""
        digest = hash_token(token)
        with self._lock:
            info = self._by_hash.get(digest)
        if info is None or not hmac.compare_digest(info.hash, digest):
            return None
        now = int(time.time() * 1000)
        if info.expired(now):
            return None
        self._note_use(info, now)
        return info

    def admin(self) -> TokenInfo | None:
        """The operator admin token's record, if one was created."""
        with self._lock:
            return next((t for t in self._by_hash.values() if t.name == ADMIN_TOKEN_NAME), None)

    def infos(self) -> list[TokenInfo]:
        """Every token, by id, with its last use as known in memory."""
        with self._lock:
            infos = [
                replace(t, last_used=self._used.get(t.hash, t.last_used)) for t in self._by_hash.values()
            ]
        return sorted(infos, key=lambda t: t.id)

    def create(
        self, name: str, permissions: tuple[Permission, ...] | None, expiry_ms: int | None
    ) -> tuple[str, TokenInfo]:
        """A new named token (admin when `permissions` is None); returns it once. 409 if the name is taken."""
        _check_name(name)
        perms = ADMIN_PERMISSIONS if permissions is None else tuple(str(p) for p in permissions)
        if not perms:
            raise BadRequest("a resource token needs at least one permission, e.g. db:plant:read")
        with self._create_lock:
            with self._lock:
                if any(t.name == name for t in self._by_hash.values()):
                    raise Conflict(
                        f"a token named {name!r} already exists; delete it first or pick another name"
                    )
            token, info = self._new(name, perms, expiry_ms)
            self.store.submit(lambda txn: self._put_new(txn, info)).result()
            with self._lock:
                self._by_hash[info.hash] = info
        log.info("created token %r (%s)", name, " ".join(perms))
        return token, info

    def delete(self, name: str) -> None:
        """Revoke the token called `name` at once; 404 if there is none."""
        if name == ADMIN_TOKEN_NAME:
            raise BadRequest("the operator admin token cannot be deleted; replace it with --regenerate")
        with self._create_lock:
            with self._lock:
                found = [t for t in self._by_hash.values() if t.name == name]
            if not found:
                raise NotFound(f"no token named {name!r} (see `appliance show tokens`)")

            def step(txn: lmdb.Transaction) -> None:
                for t in found:
                    txn.delete(t.hash.encode(), db=self._db)

            with self._lock:  # refused from now on, even before the commit
                for t in found:
                    self._by_hash.pop(t.hash, None)
            try:
                self.store.submit(step).result()
            except BaseException:
                with self._lock:  # not deleted on disk: back, so a retry deletes it for good
                    self._by_hash.update((t.hash, t) for t in found)
                raise
            with self._lock:
                for t in found:
                    self._used.pop(t.hash, None)
        log.info("deleted token %r", name)

    def create_admin(self, regenerate: bool = False) -> tuple[str, TokenInfo]:
        """Create (or with regenerate, replace) the operator admin token; returns it once.

        The token reaches `<data-dir>/admin-token.new` before its hash is committed and is
        renamed to `admin-token` after, so a crash in between never leaves an admin token
        nobody knows (start-up adopts a pending `.new` whose hash was committed).
        """
        with self._create_lock:  # not self._lock: authenticate() must not wait for this commit
            with self._lock:
                old = [t for t in self._by_hash.values() if t.name == ADMIN_TOKEN_NAME]
            if old and not regenerate:
                raise Conflict("the admin token already exists; use --regenerate to replace it")
            token, info = self._new(ADMIN_TOKEN_NAME, ADMIN_PERMISSIONS, None)

            def step(txn: lmdb.Transaction) -> None:
                for t in old:
                    txn.delete(t.hash.encode(), db=self._db)
                self._put_new(txn, info)

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

    def _new(self, name: str, permissions: tuple[str, ...], expiry_ms: int | None) -> tuple[str, TokenInfo]:
        """A new token and its record (called under _create_lock, so ids are unique)."""
        token = new_token()
        info = TokenInfo(
            self._next_id, name, hash_token(token), int(time.time() * 1000), expiry_ms, permissions
        )
        self._next_id += 1
        return token, info

    def _put(self, txn: lmdb.Transaction, info: TokenInfo) -> None:
        record = asdict(info)
        record["permissions"] = list(info.permissions)
        txn.put(info.hash.encode(), msgpack.packb(record), db=self._db)

    def _put_new(self, txn: lmdb.Transaction, info: TokenInfo) -> None:
        """A new token's record, and the id the next one gets (ids are never handed out twice)."""
        self._put(txn, info)
        txn.put(NEXT_ID_KEY, msgpack.packb(info.id + 1), db=self._db)

    def _note_use(self, info: TokenInfo, now: int) -> None:
        """Remember the use; write it to LMDB when the stored value is a minute old (never waits)."""
        with self._lock:
            self._used[info.hash] = now
            if info.last_used is not None and now - info.last_used < LAST_USED_FLUSH_MS:
                return
            current = self._by_hash.get(info.hash)
            if current is None:
                return
            updated = replace(current, last_used=now)
            self._by_hash[info.hash] = updated

        def step(txn: lmdb.Transaction) -> None:
            if txn.get(updated.hash.encode(), db=self._db) is not None:  # not deleted meanwhile
                self._put(txn, updated)

        try:
            self.store.submit(step)
        except ApplianceError:
            pass  # stopping: the last use is kept in memory only


def _check_name(name: str) -> None:
    if not name.strip() or len(name) > MAX_NAME_CHARS or not name.isprintable() or name != name.strip():
        raise BadRequest(
            f"a token name is 1 to {MAX_NAME_CHARS} printable characters, without spaces at either end"
        )
    if name == ADMIN_TOKEN_NAME:
        raise BadRequest(f"{ADMIN_TOKEN_NAME!r} is the operator admin token's name; pick another")


def bootstrap_admin(tokens: Tokens) -> None:
    """On first start, create the admin token and leave it in <data-dir>/admin-token."""
    pending = tokens.data_dir / (ADMIN_TOKEN_FILE + ".new")
    if pending.exists():
        token = pending.read_text().strip()
        if tokens.authenticate(token) is not None:  # committed before a crash: finish the rename
            os.replace(pending, tokens.data_dir / ADMIN_TOKEN_FILE)
        else:
            pending.unlink()
    if tokens.admin() is not None:
        return
    tokens.create_admin()
    log.info("created the admin token; it is in %s (mode 0600)", tokens.data_dir / ADMIN_TOKEN_FILE)
