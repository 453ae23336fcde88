"""Operations commands: `persist`, `sync status|now`, `config sample|check`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .. import config
from ..http import routes
from .client import client, client_flags


def add_persist(sub: Any) -> None:
    """`persist`."""
    pe = sub.add_parser("persist", help="persist the in-memory buffer to Parquet now")
    client_flags(pe)
    pe.set_defaults(func=_persist)


def add_sync(sub: Any) -> None:
    """`sync status` and `sync now [--timeout]`."""
    sy = sub.add_parser(
        "sync",
        help="object store sync: status, or upload now",
        description="Show the S3 upload queue, or start an upload pass at once.",
    ).add_subparsers(metavar="WHAT")
    ss = sy.add_parser("status", help="queued files and bytes, oldest unsynced age, last success and error")
    client_flags(ss)
    ss.set_defaults(func=_sync, now=False)
    sn = sy.add_parser("now", help="upload what is queued now and print the status after the pass")
    client_flags(sn)
    sn.add_argument("--timeout", default="60s", help="longest to wait for the pass (default 60s)")
    sn.set_defaults(func=_sync, now=True)


def add_config(sub: Any) -> None:
    """`config sample` and `config check [--config]`: no server needed."""
    cfg = sub.add_parser("config", help="check a configuration").add_subparsers(metavar="WHAT")
    sample = cfg.add_parser("sample", help="print a config.toml with every setting at its default")
    sample.set_defaults(func=lambda a: print(config.sample(), end="") or 0)
    cc = cfg.add_parser("check", help="validate settings and print each with its source")
    cc.add_argument("--config", help="config file to check")
    cc.set_defaults(func=_config_check)


def _config_check(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    if cfg.mqtt.broker:
        from ..mqtt.ingest import MqttIngest

        MqttIngest(cfg.mqtt)  # subscriptions, credentials and TLS files, as serve checks them
    from ..http.tls import ServerTls
    from ..lifecycle import network_exposure

    ServerTls.of(cfg.http)  # the certificate and key, as serve loads them

    if network_exposure(cfg):  # a refusal is the same ConfigError serve stops with
        print(
            f"warning: auth is off and http.bind {cfg.http.bind} is reachable from the network"
            " (confirmed by auth.allow_unauthenticated_network)",
            file=sys.stderr,
        )
    width = max(len(s.name) for s in config.SETTINGS)
    for name, value, source in config.describe(cfg):
        print(f"{name:<{width}}  {value}  ({source})")
    return 0


def _sync(args: argparse.Namespace) -> int:
    c = client(args)
    if args.now:
        print("uploading queued files...", file=sys.stderr)
        doc = json.loads(c.request("POST", routes.SYNC, {"timeout": args.timeout}))
    else:
        doc = json.loads(c.request("GET", routes.SYNC))
    if not doc.get("enabled"):
        print("sync is not configured (set sync.bucket in the config file)")
    rows: list[tuple[str, Any]] = []
    for key, value in doc.items():  # the disk budget is a nested object: disk.used_bytes...
        items = value.items() if isinstance(value, dict) else [("", value)]
        rows += [(f"{key}.{k}" if k else key, v) for k, v in items]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    return 0 if doc.get("enabled") else 1


def _persist(args: argparse.Namespace) -> int:
    doc = json.loads(client(args).request("POST", routes.PERSIST))
    print(f"persisted {doc['files']} file(s) in {doc['seconds']}s")
    return 0
