"""What a client-given name or value may hold: one rule per kind of text, one function that checks it.

Names (trigger names, and the specs that name request paths) follow the rule of table and column
names (`lineprotocol.syntax.name_problem`): no control, zero-width, bidi-override or other invisible character
makes two names look alike. Everything else (plugin filenames,
argument keys and values, pip requirements) may hold any character a file system or a plugin
takes, NBSP and emoji sequences included, but never a control character (Cc: NUL, ESC, ...) or a
lone surrogate (Cs), which cannot be stored, logged or encoded as UTF-8. Multi-line values (SQL,
JSON, PEM) keep their tabs and line breaks.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from ..errors import BadRequest
from ..lineprotocol.syntax import name_problem

_LINE_CONTROLS = frozenset("\t\n\r")


@dataclass(frozen=True)
class TextRule:
    """How long a text may be and which characters it may not hold."""

    limit: int
    #: The rule of table and column names (trigger names): no invisible look-alikes either.
    printable: bool = False
    #: Tabs and line breaks allowed (multi-line values).
    multiline: bool = False
    empty_ok: bool = False
    #: Quote the text in the error (not a value that may be a secret).
    show: bool = True


def text_problem(text: str, rule: TextRule) -> str | None:
    """Why `text` breaks `rule` (a short reason naming the character or length), or None if it does not."""
    if not text and not rule.empty_ok:
        return "it is empty"
    if len(text) > rule.limit:
        return f"it has {len(text)} characters, at most {rule.limit} are allowed"
    if rule.printable:
        problem = name_problem(text) if text else None
        return f"it {problem}" if problem else None
    for c in text:
        if unicodedata.category(c) in ("Cc", "Cs") and not (rule.multiline and c in _LINE_CONTROLS):
            return f"it contains the control character U+{ord(c):04X}"
    return None


def check_text(text: str, what: str, rule: TextRule) -> None:
    """BadRequest naming `what`, the (shortened) text and the reason, when `text` breaks `rule`."""
    reason = text_problem(text, rule)
    if reason is None:
        return
    if not rule.show or not text:
        raise BadRequest(f"invalid {what}: {reason}")
    shown = repr(text[:40])[1:-1] + ("..." if len(text) > 40 else "")
    raise BadRequest(f"invalid {what} '{shown}': {reason}")
