"""Command line: `appliance serve` and client commands mirroring `influxdb3`; parsing and dispatch
only. Each command group lives in its own module; every API path comes from http/routes.py."""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..engine.packages import run_pip
from ..errors import ApplianceError
from . import engine, manage, ops, query, serve, write
from .client import CliError


def main(argv: list[str] | None = None) -> int:
    """Run one command; the process exit code (1 with one line on stderr for a clear error)."""
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["_pip"]:  # pip's own flags (--version, -q...) must not meet argparse
        return run_pip(args_in[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (CliError, ApplianceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # files named on the command line: missing, unreadable, unwritable
        print(f"error: {e.strerror}: {e.filename}" if e.filename else f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    """Every command, in the order `appliance --help` lists them."""
    p = argparse.ArgumentParser(
        prog="appliance",
        description="Edge time-series database: InfluxDB 3 compatible writes, SQL queries, Parquet.",
    )
    p.add_argument("--version", action="version", version=f"appliance {__version__}")
    sub = p.add_subparsers(metavar="COMMAND")
    serve.add_parser(sub)
    write.add_parser(sub)
    query.add_parser(sub)
    create = sub.add_parser("create", help="create a database, trigger or token").add_subparsers(
        metavar="WHAT"
    )
    manage.add_create_database(create)
    engine.add_create_trigger(create)
    manage.add_create_token(create)
    delete = sub.add_parser("delete", help="delete a database, trigger or token").add_subparsers(
        metavar="WHAT"
    )
    engine.add_delete_trigger(delete)
    engine.add_set_state(sub)
    manage.add_delete_database(delete)
    manage.add_delete_token(delete)
    show = sub.add_parser("show", help="list databases, tables, tokens, plugins or triggers").add_subparsers(
        metavar="WHAT"
    )
    manage.add_show(show)
    engine.add_show(show)
    engine.add_test(sub)
    engine.add_install(sub)
    ops.add_persist(sub)
    ops.add_sync(sub)
    ops.add_config(sub)
    return p
