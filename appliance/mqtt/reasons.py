"""Why an MQTT message, or parts of it, did not become line protocol: Reasons, PayloadError,
and the wording shared by topic parsing, JSON conversion and retagging.

Names and values are quoted in JSON string syntax and shortened, so a reason stays one line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from ..lineprotocol.syntax import carry_problem, encodable
from ..model import MAX_LINE_ERRORS

#: Reasons listed per message, as many as a write lists rejected lines; past this many they are
#: only counted (Reasons.omitted).
MAX_REASONS = MAX_LINE_ERRORS


class Reasons(list[str]):
    """Why parts of a payload were left out: the first `limit` reasons listed, the rest counted.

    A list, so code that appends reasons needs no change; memory stays bounded whatever the
    payload holds (a million bad lines or JSON elements cost one counter).
    """

    def __init__(self, limit: int = MAX_REASONS) -> None:
        super().__init__()
        self.limit = limit
        self.omitted = 0

    def append(self, reason: str) -> None:
        if len(self) < self.limit:
            super().append(reason)
        else:
            self.omitted += 1

    def extend(self, reasons: Iterable[str]) -> None:
        for reason in reasons:
            self.append(reason)
        if isinstance(reasons, Reasons):
            self.omitted += reasons.omitted

    @property
    def total(self) -> int:
        """Every reason noted, listed or not."""
        return len(self) + self.omitted


class PayloadError(ValueError):
    """A message that cannot become line protocol; str() is a one-line reason a user can act on."""


def why_unwritable(text: str, kind: str) -> str | None:
    """Why line protocol cannot carry `text` as a `kind` (measurement, tag key...), or None."""
    reason = carry_problem(text, kind)
    return None if reason is None else f"{kind} {quote(text)} {reason}"


def json_kind(value: Any) -> str:
    """What a JSON value is, as a message names it ("an object", "null"...)."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    return "null" if value is None else "a number"


def quote(text: str) -> str:
    """A name or value quoted for a message (JSON string syntax), shortened when long."""
    return shorten(json.dumps(text, ensure_ascii=not encodable(text)))


def shorten(text: str, limit: int = 60) -> str:
    """`text` cut to `limit` characters, "..." marking the cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
