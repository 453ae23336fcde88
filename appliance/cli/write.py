"""`appliance write`: line protocol from arguments, a file or stdin, to the server (routes.WRITE_LP)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..http import routes
from .client import client, client_flags, database


def add_parser(sub: Any) -> None:
    """`write` (alias `w`) and its flags."""
    w = sub.add_parser(
        "write",
        aliases=["w"],
        help="write line protocol",
        description="Write line protocol from arguments, --file or stdin.",
    )
    client_flags(w, database=True)
    w.add_argument("lines", nargs="*", help="line protocol (default: read --file or stdin)")
    w.add_argument("-f", "--file", help="read line protocol from this file")
    w.add_argument("-p", "--precision", help="timestamp precision: auto, s, ms, us, ns")
    w.add_argument(
        "--accept-partial",
        action="store_true",
        default=None,
        help="store the good lines when some are bad (the server's default)",
    )
    w.add_argument("--no-sync", action="store_true", help="acknowledge before the WAL commit")
    w.set_defaults(func=_write)


def _write(args: argparse.Namespace) -> int:
    if args.lines:
        body = "\n".join(args.lines).encode()
    elif args.file:
        body = Path(args.file).read_bytes()
    else:
        body = sys.stdin.buffer.read()
    params = {
        "db": database(args),
        "precision": args.precision,
        "accept_partial": "true" if args.accept_partial else None,
        "no_sync": "true" if args.no_sync else None,
    }
    client(args).request("POST", routes.WRITE_LP, params, body, "text/plain")
    print("success", file=sys.stderr)
    return 0
