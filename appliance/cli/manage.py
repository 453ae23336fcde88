"""`create`/`delete`/`show` for databases and tables, and `create token`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..http import routes
from .client import client, client_flags, print_body
from .query import show_query


def add_create_database(create: Any) -> None:
    """`create database NAME [--retention-period]`."""
    cd = create.add_parser("database", help="create a database")
    client_flags(cd)
    cd.add_argument("name")
    cd.add_argument("--retention-period", help="e.g. 30d; data older than this is removed")
    cd.set_defaults(func=_create_database)


def add_create_token(create: Any) -> None:
    """`create token --admin [--regenerate]`."""
    ct = create.add_parser("token", help="create or regenerate the admin token")
    client_flags(ct)
    ct.add_argument("--admin", action="store_true", required=True, help="the operator admin token")
    ct.add_argument("--regenerate", action="store_true", help="replace the existing admin token")
    ct.set_defaults(func=_create_token)


def add_delete_database(delete: Any) -> None:
    """`delete database NAME`."""
    dd = delete.add_parser("database", help="delete a database and its data")
    client_flags(dd)
    dd.add_argument("name")
    dd.set_defaults(func=_delete_database)


def add_show(show: Any) -> None:
    """`show databases` and `show tables`."""
    sd = show.add_parser("databases", help="list databases")
    client_flags(sd)
    sd.set_defaults(func=_show_databases)
    st = show.add_parser("tables", help="list the tables of a database")
    client_flags(st, database=True)
    st.set_defaults(func=_show_tables)


def _create_database(args: argparse.Namespace) -> int:
    payload: dict[str, Any] = {"db": args.name}
    if args.retention_period:
        payload["retention_period"] = args.retention_period
    client(args).json("POST", routes.CONFIGURE_DATABASE, payload)
    print(f"Database {args.name!r} created")
    return 0


def _delete_database(args: argparse.Namespace) -> int:
    client(args).request("DELETE", routes.CONFIGURE_DATABASE, {"db": args.name})
    print(f"Database {args.name!r} deleted")
    return 0


def _show_databases(args: argparse.Namespace) -> int:
    print_body(client(args).request("GET", routes.CONFIGURE_DATABASE, {"format": "pretty"}))
    return 0


def _show_tables(args: argparse.Namespace) -> int:
    return show_query(
        args,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name",
    )


def _create_token(args: argparse.Namespace) -> int:
    path = routes.TOKEN_ADMIN_REGENERATE if args.regenerate else routes.TOKEN_ADMIN
    doc = json.loads(client(args).request("POST", path))
    print(f"New admin token (shown once; the server also stored it in its admin-token file):\n{doc['token']}")
    return 0
