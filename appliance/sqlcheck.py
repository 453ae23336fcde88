"""Cheap checks on SQL text before DataFusion plans it: its size and its expression depth.

DataFusion's planner recurses once per operator of a chain such as `1+1+...+1`: 10,000 terms
overflow a thread's stack (a segfault, nothing logged) and planning time grows with the square
of the chain (5,000 terms: 20 s of CPU that no timeout can interrupt). Its parser already refuses
more than 50 nested parentheses or calls, but operator chains are flat to the parser. So they
are measured here in one linear pass over the tokens that skips string literals, quoted names
and comments, as DataFusion's tokenizer reads them.

The measure over-estimates on purpose: the depth at an operator is the number of operators met
since the last comma or clause keyword at its own level, plus those of the enclosing levels.
The cost sums that depth over every operator (about what planning pays, a chain of n costs
n²/2), so many moderate chains cannot add up to minutes either.
"""

from __future__ import annotations

import re

from .errors import QueryError

#: Deepest operator chain a query may hold; 1,000 plans in about 0.5 s here and stays 8x below
#: the depth that overflows an 8 MiB thread stack.
MAX_EXPRESSION_DEPTH = 1000
#: Planning cost budget (sum of depths): two chains of the maximum depth.
MAX_EXPRESSION_COST = MAX_EXPRESSION_DEPTH * MAX_EXPRESSION_DEPTH
#: Nesting of parentheses and brackets (DataFusion's own parser stops at 50).
MAX_NESTING = 100

_TOKEN = re.compile(
    r"""
      (?P<skip>\s+
        | --[^\n]*
        | [Ee]'(?:[^'\\]|\\.|'')*'?
        | '(?:[^']|'')*'?
        | "(?:[^"]|"")*"?
        | `[^`]*`?
        | \d+(?:\.\d*)?(?:[eE][+-]?\d+)?
        | [$:]?[A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_$\u0080-\U0010ffff]*)
    | (?P<comment>/\*)
    | (?P<open>[(\[])
    | (?P<close>[)\]])
    | (?P<comma>[,;])
    | (?P<op>[-+*/%<>=!|&^~:@#?]+)
    | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)
_WORD_OPERATORS = frozenset(
    {"and", "or", "not", "is", "like", "ilike", "between", "in", "similar", "collate", "div", "at"}
)
#: Keywords that start a new expression at the same level (a clause of a SELECT).
_CLAUSES = frozenset(
    {"select", "from", "where", "group", "having", "order", "limit", "offset", "union", "join", "on"}
)
_COMMENT_EDGE = re.compile(r"/\*|\*/")


def check_sql(sql: str, max_bytes: int) -> None:
    """Raise QueryError when the query is longer than max_bytes or its expressions too deep."""
    size = len(sql.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise QueryError(
            f"query text is {size} bytes, more than query.max_sql_bytes ({max_bytes});"
            " shorten it (a long IN list can often be a time range or a join instead)"
        )
    depth, cost = expression_depth(sql)
    if depth > MAX_EXPRESSION_DEPTH or cost > MAX_EXPRESSION_COST:
        raise QueryError(
            f"query too complex: its expressions chain {depth} operators (at most"
            f" {MAX_EXPRESSION_DEPTH}, and at most about {MAX_EXPRESSION_DEPTH} operators in two such"
            " chains); split it, or use IN (...) instead of long OR chains"
        )


def expression_depth(sql: str) -> tuple[int, int]:
    """The deepest operator chain of `sql` and the planning cost (see the module docstring)."""
    levels = [0]
    total = deepest = cost = 0
    pos = 0
    while pos < len(sql):
        match = _TOKEN.match(sql, pos)
        assert match is not None  # `other` matches any single character
        pos = match.end()
        kind = match.lastgroup
        added = 0
        if kind == "skip":
            word = match.group().lower()
            if word in _WORD_OPERATORS:
                added = 1
            elif word in _CLAUSES:
                total -= levels[-1]
                levels[-1] = 0
        elif kind == "comment":
            pos = _comment_end(sql, pos)
        elif kind == "op":
            added = (len(match.group()) + 1) // 2  # `||`, `::`, `<=` are one operator
        elif kind == "open":
            if match.group() == "[":
                added = 1  # a subscript nests its value
            levels.append(0)
            if len(levels) > MAX_NESTING:
                return MAX_NESTING * MAX_EXPRESSION_DEPTH, MAX_EXPRESSION_COST + 1
        elif kind == "close" and len(levels) > 1:
            total -= levels.pop()
        elif kind == "comma":
            total -= levels[-1]
            levels[-1] = 0
        if added:
            levels[-1 if kind != "open" else -2] += added
            total += added
            deepest = max(deepest, total)
            cost += total * added
    return deepest, cost


def _comment_end(sql: str, pos: int) -> int:
    """The end of a block comment opened just before `pos`; they nest, as DataFusion reads them."""
    nested = 1
    for edge in _COMMENT_EDGE.finditer(sql, pos):
        nested += 1 if edge.group() == "/*" else -1
        if nested == 0:
            return edge.end()
    return len(sql)
