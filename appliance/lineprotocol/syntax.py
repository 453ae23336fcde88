"""Line protocol's rules, in one place: names, escaping, how records split, timestamp units.

Everything that reads or writes line protocol (the parser, MQTT payloads, the plugin
LineBuilder, query formats) takes these rules from here, so a rule cannot drift between
them. Pure functions and constants; nothing here imports another appliance module.
"""

from __future__ import annotations

import re
from decimal import Decimal

TIME_COLUMN = "time"

# -- timestamp units ------------------------------------------------------------------------

#: Nanoseconds per unit, by the names line protocol precisions, MQTT time formats and Arrow
#: time units share.
NS_PER_UNIT = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
NS_PER_SECOND = NS_PER_UNIT["s"]

#: precision=auto (line protocol and MQTT JSON times alike): below 5e9 a number is seconds
#: (until year 2128), below 5e12 milliseconds, below 5e15 microseconds, else nanoseconds.
#: (size limit, ns per unit), ascending.
AUTO_UNITS = ((5_000_000_000, 1_000_000_000), (5_000_000_000_000, 1_000_000), (5_000_000_000_000_000, 1_000))


(_S_BELOW, _S), (_MS_BELOW, _MS), (_US_BELOW, _US) = AUTO_UNITS


def guess_unit(number: int | Decimal) -> int:
    """ns per unit that precision=auto reads a timestamp of this size in (InfluxDB's guess)."""
    size = -number if number < 0 else number  # unrolled: the exact parser route calls this per line
    if size < _S_BELOW:
        return _S
    if size < _MS_BELOW:
        return _MS
    if size < _US_BELOW:
        return _US
    return 1


def truncate(ns: int, unit: int) -> int:
    """Round toward zero to a multiple of unit (Rust integer division)."""
    q = abs(ns) // unit * unit
    return q if ns >= 0 else -q


# -- names ----------------------------------------------------------------------------------

#: What a name or value is, in messages and in carry_problem().
MEASUREMENT, TAG_KEY, TAG_VALUE, FIELD_KEY = "measurement", "tag key", "tag value", "field key"

#: Characters no name (database, table, tag key, field key) may hold: the Unicode categories
#: Cc (controls, NUL), Cf (format: zero-width, bidi overrides, BOM, soft hyphen), Zl, Zp
#: (line and paragraph separators), Cs (surrogates) and Co (private use), as of Unicode 14.
#: A name holding one reads like another name (`usage\u200b` shows as `usage`) or breaks
#: SQL (DataFusion cuts a name at NUL). tests/lineprotocol/test_parser.py checks the list against
#: unicodedata. Values (tag values, strings) may hold them: they are data.
_BAD_NAME_RANGES = (
    (0x0, 0x1F), (0x7F, 0x9F), (0xAD, 0xAD), (0x600, 0x605), (0x61C, 0x61C), (0x6DD, 0x6DD),
    (0x70F, 0x70F), (0x890, 0x891), (0x8E2, 0x8E2), (0x180E, 0x180E), (0x200B, 0x200F),
    (0x2028, 0x202E), (0x2060, 0x2064), (0x2066, 0x206F), (0xD800, 0xF8FF), (0xFEFF, 0xFEFF),
    (0xFFF9, 0xFFFB), (0x110BD, 0x110BD), (0x110CD, 0x110CD), (0x13430, 0x13438),
    (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0001, 0xE0001), (0xE0020, 0xE007F),
    (0xF0000, 0xFFFFD), (0x100000, 0x10FFFD),
)  # fmt: skip
BAD_NAME_CHAR = re.compile("[" + "".join(f"{chr(a)}-{chr(b)}" for a, b in _BAD_NAME_RANGES) + "]")

#: ZERO WIDTH NON-JOINER and JOINER: Cf, but part of how Persian (`می‌خواهم`) and emoji
#: sequences (`🏳️‍🌈`) are written. A name may hold one between two visible characters
#: (roughly as UAX #31 allows them); at the start or end, or beside another invisible
#: character or a space, they are refused like the rest of the class.
JOINERS = "\u200c\u200d"
#: BAD_NAME_CHAR without the joiners: a name free of these needs name_problem only if it holds one.
BAD_NAME_CHAR_BUT_JOINERS = re.compile(
    "["
    + "".join(
        f"{chr(a)}-{chr(b)}"
        for lo, hi in _BAD_NAME_RANGES
        for a, b in ((lo, min(hi, 0x200B)), (max(lo, 0x200E), hi))
        if a <= b
    )
    + "]"
)

#: Characters line protocol has no escape for: a newline ends the line, and the parser ends a
#: name at a tab (not a separator, yet never part of a name).
NEVER_IN_NAMES = ("\n", "\r", "\t")
#: The parser also ends a measurement at a NUL.
NEVER_IN_MEASUREMENT = (*NEVER_IN_NAMES, "\x00")
#: What separates the parts of a series key and fields, by the plural a message names them with.
KEY_SEPARATORS = ((" ", "spaces"), (",", "commas"), ("=", "equals signs"))


def name_problem(name: str) -> str | None:
    """Why `name` cannot name a table, tag or field (None: it can); one rule for every path."""
    if not name:
        return "is empty"
    for m in BAD_NAME_CHAR.finditer(name):
        i = m.start()
        joiner = m.group() in JOINERS
        if joiner and _visible(name, i - 1) and _visible(name, i + 1):
            continue
        return (
            f"contains U+{ord(m.group()):04X} at position {i + 1}; names may not hold control,"
            " zero-width, bidi-override, line-separator or private-use characters"
            + (" (a zero-width joiner or non-joiner only between two visible characters)" if joiner else "")
        )
    return None


def _visible(name: str, i: int) -> bool:
    """Whether name[i] exists and is neither in the bad-name class nor white space."""
    return 0 <= i < len(name) and not name[i].isspace() and BAD_NAME_CHAR.match(name[i]) is None


def encodable(text: str) -> bool:
    """Whether `text` is valid Unicode (no lone surrogate), so it can be written as UTF-8."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def carry_problem(text: str, kind: str) -> str | None:
    """Why line protocol written with escapes cannot carry `text` as a `kind` (None: it can).

    The reason reads after the text (`"a\\tb" contains a tab, ...`). Names must also pass
    name_problem; a tag value is data and need not.
    """
    cannot = ", which line protocol cannot carry"
    if text == "":
        return "is empty"
    if "\n" in text or "\r" in text:
        return "contains a line break" + cannot
    if "\t" in text:
        return "contains a tab" + cannot
    if text.endswith("\\"):
        return "ends with a backslash" + cannot
    if not encodable(text):
        return "is not valid Unicode (lone surrogate)"
    if kind == MEASUREMENT and text[0] == "#":
        return "starts with #, which line protocol reads as a comment"
    if kind in (TAG_KEY, FIELD_KEY) and text == TIME_COLUMN:
        return "is reserved for the timestamp column"
    if kind != TAG_VALUE:
        return name_problem(text)
    return None


# The plugin LineBuilder's rules, worded as the reference LineBuilder words them. They refuse
# separators (a space in a measurement; space, comma or equals in a key) that escaping could
# carry, as the reference does, and leave the Unicode name rule to the write path.


def builder_measurement_problem(measurement: str) -> str | None:
    """Why LineBuilder refuses a measurement (None: it takes it)."""
    if measurement == "":
        return "Measurement name cannot be empty"
    if " " in measurement:
        return "Measurement name cannot contain spaces"
    if any(c in measurement for c in NEVER_IN_MEASUREMENT):
        return f"Measurement name {measurement!r} cannot contain newlines, tabs or NUL"
    if measurement.startswith("#"):  # the line would be read as a comment
        return f"Measurement name {measurement!r} cannot start with '#'"
    if measurement.endswith("\\"):
        return f"Measurement name {measurement!r} cannot end with a backslash"
    return None


def builder_key_problem(key: str, kind: str) -> str | None:
    """Why LineBuilder refuses a `kind` ("tag" or "field") key (None: it takes it)."""
    if not key:
        return f"{kind} key cannot be empty"
    for char, what in KEY_SEPARATORS:
        if char in key:
            return f"{kind} key '{key}' cannot contain {what}"
    if any(c in key for c in NEVER_IN_NAMES):
        return f"{kind} key {key!r} cannot contain newlines or tabs"
    if key.endswith("\\"):
        return f"{kind} key {key!r} cannot end with a backslash"
    return None


def builder_tag_value_problem(key: str, text: str) -> str | None:
    """Why LineBuilder refuses a value of tag `key` (None: it takes it; "" leaves the tag out)."""
    if any(c in text for c in NEVER_IN_NAMES):
        return f"tag '{key}' value {text!r} cannot contain newlines or tabs"
    if text.endswith("\\"):
        return f"tag '{key}' value {text!r} cannot end with a backslash"
    return None


def builder_string_problem(key: str, value: str) -> str | None:
    """Why LineBuilder refuses a value of string field `key` (None: it takes it)."""
    if "\n" in value or "\r" in value:
        return f"string field '{key}' cannot contain newlines"
    return None


# -- escaping -------------------------------------------------------------------------------

# The parser pairs a backslash with the next character and drops it only before these; any
# other escape it keeps literally. So a backslash needs doubling only before one of them.
_ESCAPE_MEASUREMENT = re.compile(r"\\(?=[\\, ])|[, ]")
_ESCAPE_NAME = re.compile(r"\\(?=[\\,= ])|[,= ]")
_ESCAPE_STRING = re.compile(r'[\\"]')
_UNESCAPE_MEASUREMENT = re.compile(r"\\([, \\])")
_UNESCAPE_NAME = re.compile(r"\\([,= \\])")
_UNESCAPE_STRING = re.compile(r'\\(["\\])')
#: The string-value unescape as an RE2 pattern and replacement, for Arrow's regex kernels.
UNESCAPE_STRING_RE2 = (r'\\(["\\])', r"\1")


def escape_measurement(text: str, *, every_backslash: bool = False) -> str:
    """`text` as a measurement: `,` and space escaped; a backslash doubled where the parser
    would drop it, or everywhere with `every_backslash` (both read back as `text`)."""
    if every_backslash:
        return text.replace("\\", "\\\\").replace(",", "\\,").replace(" ", "\\ ")
    return _escape(text, _ESCAPE_MEASUREMENT)


def escape_name(text: str, *, every_backslash: bool = False) -> str:
    """`text` as a tag key, tag value or field key: `,` `=` and space escaped, backslashes as
    in escape_measurement."""
    if every_backslash:
        return text.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")
    return _escape(text, _ESCAPE_NAME)


def escape_string(text: str) -> str:
    """The inside of a string field value: `\\` and `"` escaped (the quotes are the caller's)."""
    return _escape(text, _ESCAPE_STRING)


def _escape(text: str, pattern: re.Pattern[str]) -> str:
    return pattern.sub(lambda m: "\\" + m.group(), text)


def unescape_measurement(raw: str) -> str:
    """A measurement as written to its text: `\\,` `\\ ` and `\\\\` lose their backslash."""
    return _UNESCAPE_MEASUREMENT.sub(r"\1", raw) if "\\" in raw else raw


def unescape_name(raw: str) -> str:
    """A tag key, tag value or field key as written to its text (`\\=` too)."""
    return _UNESCAPE_NAME.sub(r"\1", raw) if "\\" in raw else raw


def unescape_string(raw: str) -> str:
    """The inside of a string field value as written to its text."""
    return _UNESCAPE_STRING.sub(r"\1", raw) if "\\" in raw else raw


_PAIR_OR = {sep: re.compile(r"\\[\s\S]|" + re.escape(sep)) for sep in (" ", ",", "=")}


def split_unescaped(text: str, sep: str, limit: int = -1) -> list[str]:
    """`text` split at `sep` (space, comma or equals) where no backslash escapes it (at most
    `limit` splits)."""
    parts, start = [], 0
    for m in _PAIR_OR[sep].finditer(text):
        if m.group() == sep:
            parts.append(text[start : m.start()])
            start = m.end()
            if len(parts) == limit:
                break
    parts.append(text[start:])
    return parts


# -- records --------------------------------------------------------------------------------

# A backslash always pairs with the next character (`?`: a trailing one stands alone).
_SPLIT_TOKEN = re.compile(r'\\[\s\S]?|[ "=,]')
#: The state of a record being split, between physical lines: past the first space, inside a
#: string, and the `=`/`,` depth.
SplitState = tuple[bool, bool, int]
RECORD_START: SplitState = (False, False, 0)


def split_state(seg: str, fields: bool, quoted: bool, depth: int) -> tuple[bool, bool, int, bool]:
    """Run InfluxDB's line-splitting state machine over one physical line.

    After the first unescaped space, `=` and `,` outside quotes move `depth`; a `"` toggles
    quoting only while depth > 0 (inside a field value). Returns the state and whether the
    line ends in an unpaired backslash, which escapes the newline.
    """
    escaped = False
    for m in _SPLIT_TOKEN.finditer(seg):
        tok = m.group()
        if tok == " ":
            fields = True
        elif tok[0] == "\\":
            escaped = len(tok) == 1
        elif fields:
            if tok == '"':
                if depth > 0:
                    quoted = not quoted
            elif not quoted:
                depth += 1 if tok == "=" else -1
    return fields, quoted, depth, escaped


def continued(line: str, state: SplitState) -> SplitState | None:
    """The state after one physical line of a record, or None if the record ends with it
    (no string left open, no trailing backslash)."""
    fields, quoted, depth, escaped = split_state(line, *state)
    return (fields, quoted, depth) if quoted or escaped else None


def skipped(line: str) -> bool:
    """Whether a physical line (not inside a record) is blank or a comment; `line` has its
    leading spaces and tabs stripped. Unlike InfluxDB, a comment is a whole physical line."""
    return not line or line[0] == "#" or line == "\r"


# Bodies whose every record is closed in the common shape (fields `key=value,...`, strings
# quoted and terminated, no trailing backslash): one C-speed match instead of the state
# machine. Anything it does not match goes to the state machine, which decides.
_CLOSED_KEY = rb'(?:[^\\"=, \n]++|\\[^\n])++'
_CLOSED_VALUE = rb'(?:"(?:[^"\\]++|\\[\s\S])*+"|(?:[^\\", \n]++|\\[^\n])*+)'
_CLOSED_LINE = (
    rb"(?>[ \t]*+#[^\n]*+|[ \t]*+(?:[^ \\\n]++|\\[^\n])*+"
    rb"(?: ++"
    + _CLOSED_KEY
    + b"="
    + _CLOSED_VALUE
    + rb"(?:,"
    + _CLOSED_KEY
    + b"="
    + _CLOSED_VALUE
    + rb')*+(?: [^"\\\n]*+)?)?)'
)
_CLOSED_BODY = re.compile(rb"(?:" + _CLOSED_LINE + rb"\n)*+" + _CLOSED_LINE)


def ends_open(body: bytes) -> bool:
    """Whether the body's last record is left open (an unterminated string or a trailing
    backslash), so text appended after a newline would be read as part of it."""
    if (b'"' not in body and b"\\" not in body) or _CLOSED_BODY.fullmatch(body):
        return False
    return ends_open_exact(body)


def ends_open_exact(body: bytes) -> bool:
    """ends_open by the line-splitting state machine, line by line (the reference)."""
    state: SplitState | None = None
    for line in body.decode("utf-8", errors="replace").split("\n"):
        if state is not None:
            state = continued(line, state)
            continue
        line = line.lstrip(" \t")
        if not skipped(line):
            state = continued(line, RECORD_START)
    return state is not None
