"""Log formatting and redaction: no token or password reaches a log line, whatever logged it."""

from __future__ import annotations

import io
import json
import logging

import pytest

from appliance import log as log_module


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("token apiv3_abcDEF-123_x used", "abcDEF"),
        ("Authorization: Bearer apiv3_x1y2z3", "x1y2z3"),
        ("Authorization: Token abc", "abc"),
        ("mqtt://user:pw123@host:1883", "pw123"),
        ("https://user:pa/ss@host/x", "pa/ss"),
        ("POST /write?db=x&u=bob&p=Sup3rS3cret HTTP/1.1", "Sup3rS3cret"),
        ("password=hunter2 ok", "hunter2"),
        ('{"secret_access_key": "AKIA/xyz"}', "AKIA/xyz"),
        ("mqtt_password=abc123", "abc123"),
        ("AWS_SECRET_ACCESS_KEY=zz/y9", "zz/y9"),
        ("aws_session_token: qq77", "qq77"),
    ],
)
def test_secrets_are_masked(text: str, secret: str) -> None:
    assert secret not in log_module.redact(text)


@pytest.mark.parametrize(
    "text",
    ["created the admin token; it is in /data/admin-token (mode 0600)", "the admin token file", "tokens=3"],
)
def test_ordinary_lines_are_left_alone(text: str) -> None:
    assert log_module.redact(text) == text


def _capture(fmt: str) -> tuple[logging.Logger, io.StringIO]:
    log_module.setup("info", fmt)
    stream = io.StringIO()
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    return logging.getLogger("appliance.test"), stream


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_tracebacks_are_redacted_in_both_formats(fmt: str) -> None:
    logger, stream = _capture(fmt)
    try:
        raise ValueError('{"password": "hunter2", "secret_access_key": "AKIAXYZ"}')
    except ValueError:
        logger.exception("it failed with apiv3_topsecret")
    out = stream.getvalue()
    assert "hunter2" not in out and "AKIAXYZ" not in out and "topsecret" not in out
    if fmt == "json":
        doc = json.loads(out.splitlines()[0])
        assert doc["level"] == "error" and doc["component"] == "appliance.test" and "exception" in doc


def test_a_reload_forgets_levels_the_new_filter_no_longer_sets() -> None:
    log_module.setup("info,appliance.wal=debug")
    assert logging.getLogger("appliance.wal").level == logging.DEBUG
    log_module.setup("info")
    assert logging.getLogger("appliance.wal").getEffectiveLevel() == logging.INFO


def test_quiet_log_writes_one_line_per_interval_and_counts_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    quiet = log_module.QuietLog(logging.getLogger("appliance.test"), interval=60.0)
    with caplog.at_level(logging.INFO, logger="appliance.test"):
        for i in range(5):
            quiet.info("bad-request", f"bad request {i}")
        quiet.log(logging.ERROR, "commit", "commit failed")
        quiet._last["bad-request"] -= 61  # the interval has passed
        quiet.info("bad-request", "bad request 5")
    assert [r.getMessage() for r in caplog.records] == [
        "bad request 0",
        "commit failed",
        "bad request 5 (4 more since the last such line)",
    ]
