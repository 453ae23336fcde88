"""`appliance query`: one SQL statement to the server (routes.QUERY_SQL), printed or saved; also the SQL
behind the `show ...` commands."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..http import routes
from .client import CliError, client, client_flags, database, print_body


def add_parser(sub: Any) -> None:
    """`query` (alias `q`) and its flags."""
    q = sub.add_parser("query", aliases=["q"], help="run a SQL query", description="Run a SQL query.")
    client_flags(q, database=True)
    q.add_argument("sql", nargs="?", help="the SQL statement (or use --file)")
    q.add_argument("-f", "--file", help="read the SQL from this file")
    q.add_argument("--format", default="pretty", choices=["pretty", "json", "jsonl", "csv", "parquet"])
    q.add_argument("-o", "--output", help="write the result to this file")
    q.set_defaults(func=_query)


def _query(args: argparse.Namespace) -> int:
    sql = Path(args.file).read_text() if args.file else args.sql
    if not sql:
        raise CliError("no query given: pass the SQL as an argument or with --file")
    out = client(args).json("POST", routes.QUERY_SQL, {"db": database(args), "q": sql, "format": args.format})
    if args.output:
        Path(args.output).write_bytes(out)
    elif args.format == "parquet":
        raise CliError("parquet output is binary: write it to a file with -o FILE")
    else:
        print_body(out)
    return 0


def show_query(args: argparse.Namespace, sql: str) -> int:
    """The `show ...` commands: one SQL query on the database, printed as a table."""
    print_body(
        client(args).json("POST", routes.QUERY_SQL, {"db": database(args), "q": sql, "format": "pretty"})
    )
    return 0
