"""`create`/`delete`/`show` for databases, tables and tokens."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from ..http import routes
from ..units import parse_duration_ns
from .client import CliError, client, client_flags, print_body
from .query import show_query


def add_create_database(create: Any) -> None:
    """`create database NAME [--retention-period]`."""
    cd = create.add_parser("database", help="create a database")
    client_flags(cd)
    cd.add_argument("name")
    cd.add_argument("--retention-period", help="e.g. 30d; data older than this is removed")
    cd.set_defaults(func=_create_database)


def add_create_token(create: Any) -> None:
    """`create token --admin [--regenerate | --name NAME]` or `create token --name NAME --permission P...`."""
    ct = create.add_parser(
        "token",
        help="create a token: an admin token, or one that may only read or write named databases",
        description="Create a token; it is printed once. Examples:\n"
        '  appliance create token --name grafana --permission "db:plant:read" --expiry 1y\n'
        '  appliance create token --name sensors --permission "db:plant,lab:write"\n'
        '  appliance create token --name prometheus --permission "system:metrics:read"\n'
        "  appliance create token --admin --regenerate",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    client_flags(ct)
    ct.add_argument(
        "--admin", action="store_true", help="an admin token (without --name: the operator token)"
    )
    ct.add_argument("--regenerate", action="store_true", help="replace the operator admin token")
    ct.add_argument("--name", help="the token's name (shown by `show tokens`, used by `delete token`)")
    ct.add_argument(
        "--permission",
        action="append",
        default=[],
        metavar="TYPE:NAMES:ACTIONS",
        help="what the token may do: db:NAME[,NAME...]:read[,write] (db:* for every database),"
        " system:health:read, system:metrics:read (system:*:read); repeat for more",
    )
    ct.add_argument("--expiry", help="lifetime, e.g. 30d or 1y (default: until deleted)")
    ct.add_argument("--format", choices=("text", "json"), default="text", help="output (default text)")
    ct.set_defaults(func=_create_token)


def add_delete_token(delete: Any) -> None:
    """`delete token --name NAME`."""
    dt = delete.add_parser("token", help="revoke a token at once")
    client_flags(dt)
    dt.add_argument("--name", "--token-name", dest="name", required=True, help="the token's name")
    dt.set_defaults(func=_delete_token)


def add_delete_database(delete: Any) -> None:
    """`delete database NAME`."""
    dd = delete.add_parser("database", help="delete a database and its data")
    client_flags(dd)
    dd.add_argument("name")
    dd.set_defaults(func=_delete_database)


def add_show(show: Any) -> None:
    """`show databases`, `show tables` and `show tokens`."""
    sd = show.add_parser("databases", help="list databases")
    client_flags(sd)
    sd.set_defaults(func=_show_databases)
    st = show.add_parser("tables", help="list the tables of a database")
    client_flags(st, database=True)
    st.set_defaults(func=_show_tables)
    sk = show.add_parser("tokens", help="list tokens: name, permissions, created, expiry, last used")
    client_flags(sk)
    sk.add_argument("--format", choices=("pretty", "json", "jsonl", "csv"), default="pretty")
    sk.set_defaults(func=_show_tokens)


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
    if args.admin and args.permission:
        raise CliError("--admin and --permission do not go together: an admin token may do everything")
    if args.regenerate and (args.name or not args.admin):
        raise CliError("--regenerate replaces the operator admin token: use it with --admin alone")
    expiry = _expiry_secs(args.expiry)
    api = client(args)
    if args.admin and args.name is None:
        if expiry is not None:
            raise CliError("the operator admin token does not expire; give --name for a named admin token")
        path = routes.TOKEN_ADMIN_REGENERATE if args.regenerate else routes.TOKEN_ADMIN
        doc = json.loads(api.request("POST", path))
    elif not args.name or (not args.admin and not args.permission):
        raise CliError('give --name and at least one --permission (e.g. "db:plant:read"), or --admin')
    elif args.admin:
        doc = json.loads(
            api.json("POST", routes.TOKEN_NAMED_ADMIN, {"token_name": args.name, "expiry_secs": expiry})
        )
    else:
        payload = {"token_name": args.name, "permissions": args.permission, "expiry_secs": expiry}
        doc = json.loads(api.json("POST", routes.TOKEN_RESOURCE, payload))
    if args.format == "json":
        print(json.dumps(doc, indent=2))
        return 0
    operator = args.admin and args.name is None
    where = " (the server also stored it in its admin-token file)" if operator else ""
    print(f"New token {doc['name']!r}, shown once{where}; store it now:\n{doc['token']}")
    print(f"permissions: {' '.join(doc.get('permissions') or ['*:*:*'])}")
    print(f"expires: {_ms_text(doc.get('expiry')) if doc.get('expiry') else 'never (until deleted)'}")
    return 0


def _expiry_secs(text: str | None) -> int | None:
    if not text:
        return None
    try:
        return max(1, parse_duration_ns(text) // 1_000_000_000)
    except ValueError as e:
        raise CliError(f"--expiry: {e}") from None


def _ms_text(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _delete_token(args: argparse.Namespace) -> int:
    client(args).request("DELETE", routes.TOKEN, {"token_name": args.name})
    print(f"Token {args.name!r} deleted")
    return 0


def _show_tokens(args: argparse.Namespace) -> int:
    print_body(client(args).request("GET", routes.TOKEN, {"format": args.format}))
    return 0
