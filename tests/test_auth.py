"""Tokens and permissions: the parser, and the store's promises (hashed, never reused, a failed
revoke is not half done, a bad stored permission grants nothing, last use survives a restart)."""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path
from typing import Any

import msgpack
import pytest

from appliance.auth import ADMIN, Grant, Permission, Tokens
from appliance.errors import BadRequest, WalError
from appliance.storage.store import Store
from tests.server import wait_for


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("db:plant:read", Permission("db", ("plant",), ("read",))),
        ("db:plant,lab:read,write", Permission("db", ("plant", "lab"), ("read", "write"))),
        (" DB:plant/weekly:Write ", Permission("db", ("plant/weekly",), ("write",))),
        ("db:a,*:read", Permission("db", ("*",), ("read",))),
        ("system:health,metrics:read", Permission("system", ("health", "metrics"), ("read",))),
        ("system:*:read", Permission("system", ("*",), ("read",))),
        ("db:a,a:read,read", Permission("db", ("a",), ("read",))),
    ],
)
def test_permissions_parse_as_influxdb3_enterprise_writes_them(text: str, parsed: Permission) -> None:
    assert Permission.parse(text) == parsed
    assert Permission.parse(str(parsed)) == parsed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("plant:read", "RESOURCE_TYPE:NAMES:ACTIONS"),
        ("db:a:read:x", "RESOURCE_TYPE:NAMES:ACTIONS"),
        ("table:t:read", "unknown resource type"),
        ("db::read", "needs 1 to 256 names"),
        ("db:a,,b:read", "needs 1 to 256 names"),
        ("db:" + ",".join(f"d{i}" for i in range(257)) + ":read", "needs 1 to 256 names"),
        ("db:a:delete", "invalid action 'delete' for db"),
        ("db:a:", "invalid action"),
        ("system:health:write", "invalid action 'write' for system"),
        ("system:tokens:read", "unknown system resource 'tokens'"),
        ("db:../etc:read", "invalid database name"),
        ("db:a\x00b:read", "invalid database name"),
        ("*:*:*", "unknown resource type"),
    ],
)
def test_bad_permissions_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("*", r"\*")):
        Permission.parse(text)


def test_a_grant_allows_exactly_its_permissions() -> None:
    grant = Grant("g", (Permission.parse("db:a,b:read"), Permission.parse("db:c:write")))
    assert grant.may("db", "a", "read") and grant.may("db", "b", "read") and grant.may("db", "c", "write")
    assert not grant.may("db", "a", "write") and not grant.may("db", "c", "read")
    assert not grant.may("db", "a/rp", "read") and not grant.may("system", "health", "read")
    assert not grant.admin and Grant("x", (ADMIN,)).may("system", "anything", "read")


def _reopen(store: Store, tmp_path: Path) -> Tokens:
    """The tokens as the next start reads them from LMDB."""
    return Tokens(store, tmp_path)


def test_ids_are_never_reused(store: Store, tmp_path: Path) -> None:
    tokens = Tokens(store, tmp_path)
    _, first = tokens.create("first", (Permission.parse("db:a:read"),), None)
    _, second = tokens.create("second", (Permission.parse("db:a:read"),), None)
    tokens.delete("second")
    _, third = _reopen(store, tmp_path).create("third", (Permission.parse("db:a:read"),), None)
    assert (first.id, second.id, third.id) == (1, 2, 3)


def test_a_failed_revoke_keeps_the_token_so_a_retry_revokes_it(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = Tokens(store, tmp_path)
    secret, _ = tokens.create("grafana", (Permission.parse("db:a:read"),), None)
    real_submit = store.submit

    def failing(fn: Any, size: int = 0) -> Future[Any]:
        raise WalError("the write was not accepted: the disk is gone")

    monkeypatch.setattr(store, "submit", failing)
    with pytest.raises(WalError):
        tokens.delete("grafana")
    monkeypatch.setattr(store, "submit", real_submit)
    assert tokens.authenticate(secret) is not None  # still valid, as LMDB says
    tokens.delete("grafana")
    assert tokens.authenticate(secret) is None
    assert _reopen(store, tmp_path).authenticate(secret) is None


def test_a_stored_permission_that_no_longer_parses_grants_nothing(store: Store, tmp_path: Path) -> None:
    tokens = Tokens(store, tmp_path)
    secret, info = tokens.create("old", (Permission.parse("db:a:read"),), None)
    record = {**info.__dict__, "permissions": ["db:a:read", "db:bad name:read"]}

    db = store.database(b"tokens")

    def corrupt(txn: Any) -> None:
        txn.put(info.hash.encode(), msgpack.packb(record), db=db)

    store.submit(corrupt).result()
    reopened = _reopen(store, tmp_path).authenticate(secret)
    assert reopened is not None and reopened.grant.permissions == ()


def test_last_use_survives_a_restart_and_names_are_checked(store: Store, tmp_path: Path) -> None:
    tokens = Tokens(store, tmp_path)
    secret, _ = tokens.create("grafana", (Permission.parse("db:a:read"),), None)
    assert tokens.authenticate(secret) is not None
    used = next(t for t in tokens.infos() if t.name == "grafana").last_used
    assert used is not None
    wait_for(
        lambda: next(t for t in _reopen(store, tmp_path).infos() if t.name == "grafana").last_used == used
    )
    for bad in ("", " padded", "tab\tname", "_admin", "n" * 201):
        with pytest.raises(BadRequest):
            tokens.create(bad, (Permission.parse("db:a:read"),), None)
