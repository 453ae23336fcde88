"""The CLI's structure: every API path it calls comes from http/routes.py, and the parser
dispatches each command to a function of its own group."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from appliance.cli import main
from appliance.http import routes

CLI = Path(main.__file__).parent


def test_no_api_path_is_typed_in_the_cli() -> None:
    literals = [
        f"{path.name}:{node.lineno}: {node.value!r}"
        for path in sorted(CLI.glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "/api/" in node.value
    ]
    assert not literals, "use appliance.http.routes constants:\n" + "\n".join(literals)
    assert routes.WRITE_LP.startswith("/api/")  # the check above looks for the right thing


@pytest.mark.parametrize(
    ("argv", "module"),
    [
        (["serve"], "serve"),
        (["w", "-d", "x", "m v=1"], "write"),
        (["q", "-d", "x", "SELECT 1"], "query"),
        (["create", "database", "x"], "manage"),
        (["create", "trigger", "t", "--trigger-spec", "all_tables", "--path", "p.py"], "engine"),
        (["disable", "trigger", "t"], "engine"),
        (["show", "plugins"], "engine"),
        (["sync", "now"], "ops"),
        (["config", "check"], "ops"),
    ],
)
def test_each_command_dispatches_to_its_group(argv: list[str], module: str) -> None:
    args = main._parser().parse_args(argv)
    assert args.func.__module__ == f"appliance.cli.{module}"
