"""Logging to stderr (journald) with per-component levels: `info,appliance.wal=debug`."""

from __future__ import annotations

import logging
import sys

from .errors import ConfigError

_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def setup(log_filter: str) -> None:
    """Configure the root handler and levels from a filter like `info,appliance.wal=debug`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("appliance").setLevel(logging.INFO)
    logging.getLogger("appliance.access").setLevel(logging.WARNING)
    for part in filter(None, (p.strip() for p in log_filter.split(","))):
        name, _, level = part.rpartition("=")
        if level.lower() not in _LEVELS:
            raise ConfigError(
                f"invalid log filter {part!r}: use a level (debug, info, warn, error),"
                " optionally as component=level"
            )
        logging.getLogger(name or "appliance").setLevel(_LEVELS[level.lower()])
