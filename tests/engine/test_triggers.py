"""Trigger specs (parsing, normalised text, serde JSON form) and trigger arguments."""

from __future__ import annotations

import json
from typing import Any

import pytest

from appliance.engine.triggers import TriggerSpec, parse_spec, parse_trigger_arguments
from appliance.errors import BadRequest

S = 1_000_000_000
FORMS = (
    "expect one of the following forms: 'table:<TABLE_NAME>', 'all_tables', "
    "'cron:<CRON_EXPRESSION>', 'every:<DURATION>', or 'request:<PATH>'"
)


# -- spec parsing -----------------------------------------------------------------------------


def test_table_spec_trims_the_name() -> None:
    spec = parse_spec("  table:  cpu  ")
    assert spec == TriggerSpec("wal", "table:cpu", table="cpu")


def test_all_tables_spec() -> None:
    assert parse_spec(" all_tables ") == TriggerSpec("wal", "all_tables")


def test_every_spec() -> None:
    spec = parse_spec("every: 1h 30m")
    assert (spec.kind, spec.text, spec.every_ns) == ("schedule", "every:1h 30m", 5400 * S)
    assert spec.cron is None and spec.table is None and spec.path is None


def test_cron_spec_normalises_whitespace() -> None:
    spec = parse_spec("cron:  0  *  * * * * ")
    assert (spec.kind, spec.text, spec.cron) == ("schedule", "cron:0 * * * * *", "0 * * * * *")


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("request:hook", "hook"),
        ("request:/hook", "hook"),
        ("request:a/b/c", "a/b/c"),
        ("path:hook", "hook"),
        ("path:/v1/ingest", "v1/ingest"),
        (" request: spaced ", "spaced"),
    ],
)
def test_request_and_path_specs(text: str, path: str) -> None:
    assert parse_spec(text) == TriggerSpec("request", f"request:{path}", path=path)


@pytest.mark.parametrize(
    "text",
    ["", "tables:cpu", "all_tables:x", "ALL_TABLES", "foo", "cron", "schedule:* * * * * *", "Table:cpu"],
)
def test_unknown_specs_give_the_reference_message(text: str) -> None:
    with pytest.raises(BadRequest) as err:
        parse_spec(text)
    assert err.value.message == f"failed to parse trigger from {text.strip()}: {FORMS}"
    assert err.value.http_status == 400


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("table:", "table name is empty"),
        ("table:   ", "table name is empty"),
        ("request:", "request path is empty"),
        ("path:/", "request path is empty"),
        ("request:a b", "cannot contain"),
        ("request:a?b=1", "cannot contain"),
        ("every:", "empty"),
        ("every:10", "needs a unit"),
        ("every:10 parsecs", "unknown unit 'parsecs'"),
        ("every:1.5h", "fractions are not supported"),
        ("every:5m!", "cannot read '!'"),
        ("every:10S", "unknown unit 'S'"),
        ("every:0s", "shorter than the 1ms minimum"),
        ("every:999us", "shorter than the 1ms minimum"),
        ("every:1y 1s", "longer than the 1 year maximum"),
        ("every:366d", "longer than the 1 year maximum"),
        ("cron:", "has 0"),
        ("cron:* * * *", "has 4"),
        ("cron:* * * * * * * *", "has 8"),
    ],
)
def test_invalid_specs_explain_why(text: str, reason: str) -> None:
    with pytest.raises(BadRequest) as err:
        parse_spec(text)
    message = err.value.message
    assert message.startswith(f"failed to parse trigger from {text.strip()}: {FORMS} (")
    assert reason in message


# -- to_json ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("table:cpu", {"single_table_wal_write": {"table_name": "cpu"}}),
        ("all_tables", "all_tables_wal_write"),
        ("cron:0 * * * * *", {"schedule": {"schedule": "0 * * * * *"}}),
        ("cron:*/5 * * * *", {"schedule": {"schedule": "*/5 * * * *"}}),
        ("every:60s", {"every": {"duration": {"secs": 60, "nanos": 0}}}),
        ("every:1m", {"every": {"duration": {"secs": 60, "nanos": 0}}}),
        ("every:1500ms", {"every": {"duration": {"secs": 1, "nanos": 500_000_000}}}),
        ("request:foo", {"request_path": {"path": "foo"}}),
        ("path:/foo/bar", {"request_path": {"path": "foo/bar"}}),
    ],
)
def test_to_json_matches_influxdb_serde_form(text: str, expected: Any) -> None:
    out = parse_spec(text).to_json()
    assert json.loads(out) == expected
    assert " " not in out.replace("0 * * * * *", "").replace("*/5 * * * *", "")  # compact, like serde_json


def test_to_json_exact_strings() -> None:
    assert parse_spec("table:cpu").to_json() == '{"single_table_wal_write":{"table_name":"cpu"}}'
    assert parse_spec("all_tables").to_json() == '"all_tables_wal_write"'
    assert parse_spec("every:60s").to_json() == '{"every":{"duration":{"secs":60,"nanos":0}}}'
    assert parse_spec("request:foo").to_json() == '{"request_path":{"path":"foo"}}'
    assert (
        parse_spec("table:température").to_json() == '{"single_table_wal_write":{"table_name":"température"}}'
    )


# -- trigger arguments ------------------------------------------------------------------------


def test_trigger_arguments() -> None:
    assert parse_trigger_arguments("k=v,k2=v2") == {"k": "v", "k2": "v2"}
    assert parse_trigger_arguments("url=http://h/?a=b,empty=") == {"url": "http://h/?a=b", "empty": ""}
    assert parse_trigger_arguments("a=1, b=2,") == {"a": "1", "b": "2"}
    assert parse_trigger_arguments("a=1,a=2") == {"a": "2"}
    assert parse_trigger_arguments("msg=hello world") == {"msg": "hello world"}


@pytest.mark.parametrize("text", [None, "", "   ", ","])
def test_trigger_arguments_empty(text: str | None) -> None:
    assert parse_trigger_arguments(text) is None


@pytest.mark.parametrize(("text", "item"), [("a=1,oops", "'oops'"), ("=v", "'=v'"), ("novalue", "'novalue'")])
def test_trigger_arguments_errors(text: str, item: str) -> None:
    with pytest.raises(BadRequest, match=f"invalid trigger argument {item}"):
        parse_trigger_arguments(text)
