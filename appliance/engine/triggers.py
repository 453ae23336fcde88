"""Trigger specifications, names and arguments: what a trigger definition may hold (pure).

`parse_spec` turns `table:NAME`, `all_tables`, `every:DURATION`, `cron:EXPR`, `request:PATH`
(or `path:PATH`) into a `TriggerSpec`, with InfluxDB 3's error message for anything else.
When a schedule fires is `schedule.Schedule`'s job (cron expressions: `cron`); what a request
plugin's return value becomes is `responses`'.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import BadRequest
from ..lineprotocol.syntax import NS_PER_SECOND, NS_PER_UNIT
from .cron import compile_cron
from .humantime import parse_humantime_ns
from .names import TextRule, check_text, text_problem

TriggerKind = Literal["wal", "schedule", "request"]

_SPEC_FORMS = (
    "expect one of the following forms: 'table:<TABLE_NAME>', 'all_tables', "
    "'cron:<CRON_EXPRESSION>', 'every:<DURATION>', or 'request:<PATH>'"
)


_MIN_EVERY_NS = NS_PER_UNIT["ms"]  # InfluxDB panics below 1 ms (its millisecond divisor becomes zero)
_MAX_EVERY_NS = parse_humantime_ns("1y")


@dataclass(frozen=True)
class TriggerSpec:
    """A parsed trigger specification; `text` is its normalised form, as stored in the catalog."""

    kind: TriggerKind
    text: str
    table: str | None = None  # WAL triggers: None means all tables
    every_ns: int | None = None
    cron: str | None = None
    path: str | None = None

    def to_json(self) -> str:
        """The serde-JSON form InfluxDB 3 shows in `system.processing_engine_triggers`."""
        value: Any
        if self.kind == "wal":
            value = (
                "all_tables_wal_write"
                if self.table is None
                else {"single_table_wal_write": {"table_name": self.table}}
            )
        elif self.every_ns is not None:
            secs, nanos = divmod(self.every_ns, NS_PER_SECOND)
            value = {"every": {"duration": {"secs": secs, "nanos": nanos}}}
        elif self.cron is not None:
            value = {"schedule": {"schedule": self.cron}}
        else:
            value = {"request_path": {"path": self.path}}
        # serde_json writes compact JSON and leaves non-ASCII characters alone.
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


#: Longest trigger specification (a cron expression with long lists stays far below it).
MAX_SPEC = 4096


def _bad_spec(spec: str, reason: str | None = None) -> BadRequest:
    shown = spec if len(spec) <= 200 else spec[:200] + "..."
    message = f"failed to parse trigger from {shown}: {_SPEC_FORMS}"
    return BadRequest(f"{message} ({reason})" if reason else message)


def parse_spec(text: str) -> TriggerSpec:
    """Parse a trigger specification string; raises BadRequest with InfluxDB 3's message if invalid."""
    spec = text.strip()
    bad = text_problem(spec, _SPEC)
    if bad is not None:
        raise _bad_spec(repr(spec)[1:-1], bad)
    if spec == "all_tables":
        return TriggerSpec("wal", spec)
    prefix, sep, rest = spec.partition(":")
    if not sep:
        raise _bad_spec(spec)
    rest = rest.strip()
    if prefix == "table":
        if not rest:
            raise _bad_spec(spec, "the table name is empty")
        return TriggerSpec("wal", f"table:{rest}", table=rest)
    if prefix == "every":
        try:
            ns = parse_humantime_ns(rest)
        except ValueError as exc:
            raise _bad_spec(spec, str(exc)) from None
        if ns < _MIN_EVERY_NS:
            raise _bad_spec(spec, f"every: {rest} is shorter than the 1ms minimum")
        if ns > _MAX_EVERY_NS:
            raise _bad_spec(spec, f"every: {rest} is longer than the 1 year maximum")
        return TriggerSpec("schedule", f"every:{rest}", every_ns=ns)
    if prefix == "cron":
        expr = " ".join(rest.split())
        try:
            compile_cron(expr)
        except ValueError as exc:
            raise _bad_spec(spec, f"cron: {exc}") from None
        return TriggerSpec("schedule", f"cron:{expr}", cron=expr)
    if prefix in ("request", "path"):
        # The path is served at /api/v3/engine/<PATH>, so a leading slash would only double up.
        path = rest.lstrip("/")
        if not path:
            raise _bad_spec(spec, "the request path is empty")
        if any(c.isspace() or c in "?#" for c in path):
            raise _bad_spec(spec, "a request path cannot contain whitespace, '?' or '#'")
        return TriggerSpec("request", f"request:{path}", path=path)
    raise _bad_spec(spec)


#: Longest trigger name, in characters.
MAX_TRIGGER_NAME = 255
#: At most this many trigger arguments, keys of at most MAX_ARGUMENT_KEY characters and values of at
#: most MAX_ARGUMENT_VALUE: a definition stays small enough to list, log and store.
MAX_ARGUMENTS = 256
MAX_ARGUMENT_KEY = 255
MAX_ARGUMENT_VALUE = 65_536


TRIGGER_NAME = TextRule(MAX_TRIGGER_NAME, printable=True)
ARGUMENT_KEY = TextRule(MAX_ARGUMENT_KEY)
ARGUMENT_VALUE = TextRule(MAX_ARGUMENT_VALUE, multiline=True, empty_ok=True, show=False)
_SPEC = TextRule(MAX_SPEC, printable=True, empty_ok=True)


def check_trigger_name(name: str, what: str = "trigger name") -> None:
    """A trigger name is 1 to MAX_TRIGGER_NAME printable characters; BadRequest naming the problem if not."""
    check_text(name, what, TRIGGER_NAME)


def check_arguments(args: Mapping[str, str] | None) -> None:
    """Trigger or dry-run arguments: bounded count and sizes, no control characters (BadRequest if not).

    Values may span lines (SQL, JSON, a PEM certificate): tabs and line breaks are kept.
    """
    if not args:
        return
    if len(args) > MAX_ARGUMENTS:
        raise BadRequest(f"too many trigger arguments: {len(args)}, at most {MAX_ARGUMENTS} are allowed")
    for key, value in args.items():
        check_text(key, "trigger argument name", ARGUMENT_KEY)
        check_text(value, f"value of trigger argument {key!r}", ARGUMENT_VALUE)


def parse_trigger_arguments(text: str | None) -> dict[str, str] | None:
    """Parse `--trigger-arguments k=v,k2=v2` (each item split at its first `=`); None when empty."""
    if text is None or not text.strip():
        return None
    args: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue  # a trailing or doubled comma carries no argument
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise BadRequest(f"invalid trigger argument {item.strip()!r}: write it as KEY=VALUE")
        args[key] = value
    return args or None
