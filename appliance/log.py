"""Logging to stderr (journald) with per-component levels: `info,appliance.wal=debug`.

Text lines are `LEVEL component: message`, with a timestamp unless journald reads them
(JOURNAL_STREAM set: journald stamps lines itself and takes the `<N>` prefix as the syslog
priority). `json` writes one object per line. Every line passes a filter that masks tokens
and passwords, whatever logged them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any

from .errors import ConfigError

_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
FORMATS = ("text", "json")

#: syslog priorities journald reads from a `<N>` line prefix.
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

#: Secrets that must never reach a log line: API tokens, credentials in headers and URLs, passwords.
_SECRETS = [
    (re.compile(r"apiv3_[A-Za-z0-9_\-]+"), "apiv3_***"),
    (re.compile(r"\b(Bearer|bearer|Token|Basic) +[A-Za-z0-9_\-=+/.]+"), r"\1 ***"),  # HTTP credentials
    (re.compile(r"(\w+://)[^\s/?#@]*(?::[^\s@]*)?@"), r"\1***@"),  # user:password@ in URLs
    (re.compile(r"([?&](?:p|u|password|token)=)[^&\s\"']*"), r"\1***"),  # v1 `p=` query parameters
    (
        re.compile(
            r"(?<![A-Za-z0-9])((?:[A-Za-z0-9]+_)*(?:password|passwd|secret(?:_access)?_key|session_token|token))"
            r"([\"']?\s*[=:]\s*[\"']?)[^\s\"',}&]+",
            re.IGNORECASE,
        ),
        r"\1\2***",
    ),
]


def redact(text: str) -> str:
    """Mask anything that looks like a token or password."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class _Redacting(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


class _Text(logging.Formatter):
    def __init__(self, journald: bool) -> None:
        super().__init__(
            "%(levelname)s %(name)s: %(message)s"
            if journald
            else "%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        text = redact(super().format(record))  # tracebacks too
        if self.journald:
            prefix = f"<{_PRIORITY.get(record.levelno, 6)}>"
            text = "\n".join(prefix + line for line in text.split("\n"))
        return text


class _Json(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "component": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps({k: redact(v) for k, v in doc.items()}, ensure_ascii=False)


def setup(log_filter: str, log_format: str = "text") -> None:
    """Configure the root handler and levels from a filter like `info,appliance.wal=debug`.

    Called again on SIGHUP: levels and format change in place.
    """
    levels = parse_filter(log_filter)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Json() if log_format == "json" else _Text(journald="JOURNAL_STREAM" in os.environ))
    handler.addFilter(_Redacting())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    for name in _configured:  # a reload forgets levels the new filter no longer sets
        logging.getLogger(name).setLevel(logging.NOTSET)
    _configured.clear()
    root.setLevel(logging.WARNING)
    logging.getLogger("appliance").setLevel(logging.INFO)
    logging.getLogger("appliance.access").setLevel(logging.WARNING)
    for name, level in levels:
        logging.getLogger(name).setLevel(level)
        _configured.add(name)


_configured: set[str] = set()


def parse_filter(log_filter: str) -> list[tuple[str, int]]:
    """`info,appliance.wal=debug` as (logger, level) pairs; ConfigError names a bad part."""
    out = []
    for part in filter(None, (p.strip() for p in log_filter.split(","))):
        name, _, level = part.rpartition("=")
        if level.lower() not in _LEVELS:
            raise ConfigError(
                f"invalid log filter {part!r}: use a level (debug, info, warn, error),"
                " optionally as component=level"
            )
        out.append((name or "appliance", _LEVELS[level.lower()]))
    return out


class QuietLog:
    """At most one line per `interval` seconds for each kind of repeated trouble (client errors,
    failing commits), saying how many were not logged; a flood never floods the journal."""

    def __init__(
        self, logger: logging.Logger, interval: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def log(self, level: int, kind: str, message: str, exc_info: BaseException | None = None) -> None:
        """Log `message` unless this kind was logged less than `interval` ago; `exc_info`'s
        traceback goes with the first line of a kind only."""
        now = self.clock()
        first = kind not in self._last
        if not first and now - self._last[kind] < self.interval:
            self._skipped[kind] = self._skipped.get(kind, 0) + 1
            return
        skipped = self._skipped.pop(kind, 0)
        self._last[kind] = now
        self.logger.log(
            level,
            "%s%s",
            message,
            f" ({skipped} more since the last such line)" if skipped else "",
            exc_info=exc_info if first else None,
        )

    def info(self, kind: str, message: str) -> None:
        self.log(logging.INFO, kind, message)
