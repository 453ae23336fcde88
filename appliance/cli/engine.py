"""The processing engine commands: triggers (create, delete, enable, disable, show), plugin dry
runs (`test`), `show plugins` and `install package`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..http import routes
from .client import CliError, client, client_flags, database
from .query import show_query


def add_create_trigger(create: Any) -> None:
    """`create trigger NAME --trigger-spec ... --path ...`."""
    tr = create.add_parser(
        "trigger",
        help="create a processing-engine trigger",
        description="Create a trigger that runs a plugin on writes, on a schedule or on HTTP requests.",
    )
    client_flags(tr, database=True)
    tr.add_argument("name", help="trigger name, unique in its database")
    tr.add_argument(
        "--trigger-spec",
        required=True,
        help="table:NAME, all_tables, every:DURATION, cron:EXPR, request:PATH (or path:PATH)",
    )
    tr.add_argument(
        "--path",
        "--plugin-filename",
        dest="plugin",
        required=True,
        help="plugin file or package directory, relative to the plugin directory, or gh:PATH",
    )
    tr.add_argument("--trigger-arguments", help="arguments passed to the plugin as args: k=v,k2=v2")
    tr.add_argument("--disabled", action="store_true", help="create it disabled")
    tr.add_argument("--run-asynchronous", action="store_true", help="run events concurrently, unordered")
    tr.add_argument(
        "--error-behavior",
        default="log",
        choices=["log", "retry", "disable"],
        help="on a plugin error: log it, retry with backoff, or disable the trigger",
    )
    tr.add_argument(
        "--no-auth",
        action="store_true",
        help=f"request triggers: serve {routes.ENGINE_PREFIX}PATH without a token (local webhooks)",
    )
    tr.set_defaults(func=_create_trigger)


def add_delete_trigger(delete: Any) -> None:
    """`delete trigger NAME [--force]`."""
    dt = delete.add_parser("trigger", help="delete a trigger")
    client_flags(dt, database=True)
    dt.add_argument("name")
    dt.add_argument("--force", action="store_true", help="delete it even while enabled")
    dt.set_defaults(func=_delete_trigger)


def add_set_state(sub: Any) -> None:
    """`enable trigger NAME` and `disable trigger NAME`."""
    for verb, disabled in (("enable", False), ("disable", True)):
        parser = sub.add_parser(verb, help=f"{verb} a trigger").add_subparsers(metavar="WHAT")
        p_tr = parser.add_parser("trigger", help=f"{verb} a trigger")
        client_flags(p_tr, database=True)
        p_tr.add_argument("name")
        p_tr.set_defaults(func=_set_trigger_state, disabled=disabled)


def add_show(show: Any) -> None:
    """`show plugins` and `show triggers`."""
    sp = show.add_parser("plugins", help="list the plugin files on the server")
    client_flags(sp, database=True)
    sp.set_defaults(func=_show_plugins)
    sw = show.add_parser("triggers", help="list the triggers of a database")
    client_flags(sw, database=True)
    sw.set_defaults(func=_show_triggers)


def add_test(sub: Any) -> None:
    """`test wal_plugin` and `test schedule_plugin`."""
    test = sub.add_parser("test", help="run a plugin once without side effects").add_subparsers(
        metavar="WHAT"
    )
    tw = _test_parser(test, "wal_plugin", "call process_writes with line protocol you give", _test_wal_plugin)
    tw.add_argument("--lp", help="line protocol to feed the plugin")
    tw.add_argument("--file", help="read the line protocol from this local file")
    ts = _test_parser(test, "schedule_plugin", "call process_scheduled_call once", _test_schedule_plugin)
    ts.add_argument("--schedule", help="cron expression giving the call time (default: every second)")


def _test_parser(test: Any, name: str, help: str, func: Any) -> argparse.ArgumentParser:
    """`test wal_plugin` and `test schedule_plugin`: the flags both take."""
    p: argparse.ArgumentParser = test.add_parser(
        name,
        help=help,
        description=f"{help[0].upper()}{help[1:]}: real queries, writes reported, not committed.",
    )
    client_flags(p, database=True)
    p.add_argument("filename", help="plugin file, relative to the server's plugin directory")
    p.add_argument("--input-arguments", help="args for the plugin: k=v,k2=v2")
    p.add_argument("--cache-name", help="cache namespace to use (default _shared_test)")
    p.set_defaults(func=func)
    return p


def add_install(sub: Any) -> None:
    """`install package PKG... | -r requirements.txt`."""
    inst = sub.add_parser("install", help="install Python packages for plugins").add_subparsers(
        metavar="WHAT"
    )
    ip = inst.add_parser(
        "package",
        help="pip-install packages into the plugin environment",
        description="Install packages on the server, into <plugin-dir>/.packages.",
    )
    client_flags(ip)
    ip.add_argument(
        "packages",
        nargs="*",
        help="package requirements, e.g. requests==2.32.3, requests[socks]>=2, git+https://host/repo.git@tag"
        " or a wheel in the server's plugin directory",
    )
    ip.add_argument(
        "-r",
        "--requirements",
        help="a requirements file in the server's plugin directory (its name relative to that directory)",
    )
    ip.set_defaults(func=_install_package)


def _create_trigger(args: argparse.Namespace) -> int:
    from ..engine.triggers import parse_trigger_arguments

    payload = {
        "db": database(args),
        "trigger_name": args.name,
        "plugin_filename": args.plugin,
        "trigger_specification": args.trigger_spec,
        "trigger_settings": {"run_async": args.run_asynchronous, "error_behavior": args.error_behavior},
        "trigger_arguments": parse_trigger_arguments(args.trigger_arguments),
        "disabled": args.disabled,
        "no_auth": args.no_auth,
    }
    client(args).json("POST", routes.TRIGGER, payload)
    print(f"Trigger {args.name!r} created")
    return 0


def _delete_trigger(args: argparse.Namespace) -> int:
    params = {"db": database(args), "trigger_name": args.name, "force": "true" if args.force else None}
    client(args).request("DELETE", routes.TRIGGER, params)
    print(f"Trigger {args.name!r} deleted")
    return 0


def _set_trigger_state(args: argparse.Namespace) -> int:
    verb = "disable" if args.disabled else "enable"
    params = {"db": database(args), "trigger_name": args.name}
    path = routes.TRIGGER_DISABLE if args.disabled else routes.TRIGGER_ENABLE
    client(args).request("POST", path, params)
    print(f"Trigger {args.name!r} {verb}d")
    return 0


def _show_triggers(args: argparse.Namespace) -> int:
    return show_query(args, "SELECT * FROM system.processing_engine_triggers ORDER BY trigger_name")


def _show_plugins(args: argparse.Namespace) -> int:
    return show_query(
        args, "SELECT plugin_name, file_path, size_bytes FROM system.plugin_files ORDER BY file_path"
    )


def _test_wal_plugin(args: argparse.Namespace) -> int:
    lp = Path(args.file).read_text() if args.file else args.lp
    if not lp:
        raise CliError("no line protocol given: pass --lp '...' or --file FILE")
    return _run_test(args, routes.PLUGIN_TEST_WAL, {"input_lp": lp})


def _test_schedule_plugin(args: argparse.Namespace) -> int:
    return _run_test(args, routes.PLUGIN_TEST_SCHEDULE, {"schedule": args.schedule})


def _run_test(args: argparse.Namespace, path: str, given: dict[str, Any]) -> int:
    """POST a dry run and print its report; exit 1 when the plugin reported errors."""
    from ..engine.triggers import parse_trigger_arguments

    payload = {
        "filename": args.filename,
        "database": database(args),
        "input_arguments": parse_trigger_arguments(args.input_arguments),
        "cache_name": args.cache_name,
        **given,
    }
    result = json.loads(client(args).json("POST", path, payload))
    print(json.dumps(result, indent=2))
    return 1 if result.get("errors") else 0


def _install_package(args: argparse.Namespace) -> int:
    if args.requirements:
        payload: dict[str, Any] = {"requirements_location": args.requirements}
        client(args).json("POST", routes.INSTALL_REQUIREMENTS, payload)
    elif args.packages:
        client(args).json("POST", routes.INSTALL_PACKAGES, {"packages": args.packages})
    else:
        raise CliError("nothing to install: name packages or pass -r requirements.txt")
    print("installed")
    return 0
