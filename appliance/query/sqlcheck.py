"""Cheap checks before DataFusion runs a query: text size, expression depth, built value sizes.

DataFusion's planner recurses once per operator of a chain such as `1+1+...+1`: 10,000 terms
overflow a thread's stack (a segfault, nothing logged) and planning time grows with the square
of the chain (5,000 terms: 20 s of CPU that no timeout can interrupt). Its parser already refuses
more than 50 nested parentheses or calls, but operator chains are flat to the parser. So they
are measured here in one linear pass over the tokens that skips string literals (also E'..' with
backslash escapes and $tag$..$tag$), quoted names and (nested) comments exactly where DataFusion's
tokenizer ends them. `--` and `/*` always open a comment, even right after an operator. A quote or
comment that does not close is refused: the scanner never guesses where DataFusion would read code.

The measure over-estimates on purpose: the depth at an operator is the number of operators met
since the last comma, clause keyword or CASE branch at its own level, plus those of the enclosing
levels; AND/OR chains are measured apart from the operators of their terms (they overflow the
stack sooner: see MAX_LOGIC_DEPTH). The cost sums that depth over every operator (about what
planning pays, a chain of n costs n²/2), so many moderate chains cannot add up to minutes either.
"""

from __future__ import annotations

import ast
import re
from typing import NamedTuple

from ..errors import QueryError

#: Deepest chain of operators other than AND/OR (arithmetic, `||`, comparisons, casts) in one
#: expression. Measured with DataFusion 55 here: a chain of 2,000 plans and runs in ~4 s of CPU
#: that no timeout interrupts, 4,000 in ~17 s; about 10,000 overflow the stack of the engine's
#: threads (a segfault; a larger stack does not help, the crash is in execution too).
MAX_EXPRESSION_DEPTH = 2000
#: Deepest AND/OR chain: 3,000 `x <> n AND ...` terms already segfault (2,750 did not), OR
#: chains near 10,000; 750 keeps a 4x margin (their comparisons are part of each term).
MAX_LOGIC_DEPTH = 750
#: Planning cost budget (sum of depths): two chains of the maximum depth.
MAX_EXPRESSION_COST = MAX_EXPRESSION_DEPTH * MAX_EXPRESSION_DEPTH
#: Nesting of parentheses and brackets (DataFusion's own parser stops at 50).
MAX_NESTING = 100

_IDENT_START = r"A-Za-z_@#\u0080-\U0010ffff"
_TOKEN = re.compile(
    r"""
      (?P<skip>\s+
        | --[^\n]*
        | [Ee]'(?:[^'\\]|\\.|'')*'
        | '(?:[^']|'')*'
        | "(?:[^"]|"")*"
        | `[^`]*`
        | \$(?P<tag>[A-Za-z0-9_]*)\$.*?\$(?P=tag)\$
        | \d+(?:\.\d*)?(?:[eE][+-]?\d+)?
        | \$\w++(?!\$)
        | (?![Ee]')[IDENT_START][IDENT_START0-9$]*)
    | (?P<unclosed>[Ee]?'|"|`|\$\w*\$)
    | (?P<comment>/\*)
    | (?P<open>[(\[])
    | (?P<close>[)\]])
    | (?P<comma>[,;])
    | (?P<op>(?:(?!--|/\*)[-+*/%<>=!|&^~:?])+)
    | (?P<other>.)
    """.replace("IDENT_START", _IDENT_START),
    re.VERBOSE | re.DOTALL,
)
_WORD_OPERATORS = frozenset(
    {"not", "is", "like", "ilike", "between", "in", "similar", "collate", "div", "at"}
)
_LOGIC_OPERATORS = frozenset({"and", "or"})
#: Keywords that start a new expression at the same level (a clause of a SELECT)...
_CLAUSES = frozenset(
    {"select", "from", "where", "group", "having", "order", "limit", "offset", "union", "join", "on"}
)
#: ... unless they continue an expression after this word (`a IS DISTINCT FROM b`, `WITHIN GROUP`).
_NOT_CLAUSE_AFTER = {"from": "distinct", "group": "within"}
#: A CASE opens a level that END closes; its branches start new expressions in it.
_BRANCHES = frozenset({"when", "then", "else"})
_COMMENT_EDGE = re.compile(r"/\*|\*/")


def check_sql(sql: str, max_bytes: int) -> None:
    """Raise QueryError when the query is longer than max_bytes or its expressions too deep."""
    size = len(sql.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise QueryError(
            f"query text is {size} bytes, more than query.max_sql_bytes ({max_bytes});"
            " shorten it (a long IN list can often be a time range or a join instead)"
        )
    depth = expression_depth(sql)
    if depth.load > 1 or depth.cost > MAX_EXPRESSION_COST:
        raise QueryError(
            f"query too complex: its expressions chain {depth.terms} operators and {depth.logic} AND/OR"
            f" (at most {MAX_EXPRESSION_DEPTH} operators, {MAX_LOGIC_DEPTH} AND/OR, and about two"
            " chains of that length in all); split it, or use IN (...) / NOT IN (...) lists instead of"
            " long OR / AND chains"
        )


class Depth(NamedTuple):
    """How deep a query's expressions go: see expression_depth."""

    #: Deepest chain of operators other than AND/OR, enclosing levels included.
    terms: int
    #: Deepest AND/OR chain, enclosing levels included.
    logic: int
    #: Sum of the depth at every operator: about what planning pays.
    cost: int
    #: The worst moment's share of the limits (terms and AND/OR together); over 1 is refused.
    load: float


def expression_depth(sql: str) -> Depth:
    """The deepest operator chains of `sql` and the planning cost (see the module docstring).

    An AND/OR chain counts its AND/OR operators; the comparisons and arithmetic of each of its
    terms make that term's own chain, which the next AND/OR ends. Commas, clause keywords and
    CASE/WHEN/THEN/ELSE/END start a new chain at their level; brackets open a level inside it.
    """
    levels = [[0, 0]]  # per level: operators of the current term, AND/OR so far
    cases = [False]  # per level: whether a CASE opened it
    previous = ""
    terms = logic = deepest_terms = deepest_logic = cost = 0
    load = 0.0
    pos = 0
    while pos < len(sql):
        match = _TOKEN.match(sql, pos)
        assert match is not None  # `other` matches any single character
        pos = match.end()
        kind = match.lastgroup
        added = joined = 0  # operators added to the current term / to the AND/OR chain
        level = levels[-1]
        if kind != "skip":
            previous = ""
        if kind == "skip":
            word, after = match.group().lower(), previous
            if not (word.isspace() or word.startswith("--")):
                previous = word
            if word in _WORD_OPERATORS or (word == "from" and after == "distinct"):
                added = 1
            elif word in _LOGIC_OPERATORS:
                terms -= level[0]
                level[0] = 0
                joined = 1
            elif word == "case":
                levels.append([0, 0])
                cases.append(True)
            elif word == "end" and cases[-1]:
                closed = levels.pop()
                cases.pop()
                terms, logic = terms - closed[0], logic - closed[1]
            elif (word in _CLAUSES and _NOT_CLAUSE_AFTER.get(word) != after) or (
                word in _BRANCHES and cases[-1]
            ):
                terms, logic = terms - level[0], logic - level[1]
                level[:] = [0, 0]
        elif kind == "unclosed" or (kind == "comment" and (pos := _comment_end(sql, pos)) < 0):
            raise QueryError(
                f"query refused: the quote or comment at character {match.start() + 1} is not closed"
                " where it can be read safely; close it (strings end with ', names with \", comments"
                " with */, $tag$ strings with the same $tag$)"
            )
        elif kind == "op":
            added = (len(match.group()) + 1) // 2  # `||`, `::`, `<=` are one operator
        elif kind == "open":
            if match.group() == "[":
                added = 1  # a subscript nests its value
            levels.append([0, 0])
            cases.append(False)
        elif kind == "close":
            while len(levels) > 1:  # with any CASE left open inside the brackets
                closed = levels.pop()
                terms, logic = terms - closed[0], logic - closed[1]
                if not cases.pop():
                    break
        elif kind == "comma":
            terms, logic = terms - level[0], logic - level[1]
            level[:] = [0, 0]
        if len(levels) > MAX_NESTING:
            return Depth(MAX_NESTING * MAX_EXPRESSION_DEPTH, 0, MAX_EXPRESSION_COST + 1, float(MAX_NESTING))
        if added or joined:
            level[0] += added
            level[1] += joined  # a subscript's `[` counts in the level that holds it
            terms, logic = terms + added, logic + joined
            deepest_terms, deepest_logic = max(deepest_terms, terms), max(deepest_logic, logic)
            load = max(load, terms / MAX_EXPRESSION_DEPTH + logic / MAX_LOGIC_DEPTH)
            cost += (terms + logic) * (added + joined)
    return Depth(deepest_terms, deepest_logic, cost, load)


def _comment_end(sql: str, pos: int) -> int:
    """The end of a block comment opened just before `pos` (they nest, as DataFusion reads them); -1 if none."""
    nested = 1
    for edge in _COMMENT_EDGE.finditer(sql, pos):
        nested += 1 if edge.group() == "/*" else -1
        if nested == 0:
            return edge.end()
    return -1


#: Builtins that build a value whose size is an argument's value: the index of that argument.
_SIZED = {"lpad": 1, "rpad": 1, "repeat": 1, "array_repeat": 1, "array_resize": 1}
#: Scalar list builders: ([start,] stop[, step]) make a list of (stop - start) / step values.
_RANGES = ("range", "generate_series")
_CALL = re.compile(r"\b(" + "|".join([*_SIZED, *_RANGES]) + r")\(")
_INT_IN_PLAN = re.compile(r"\bU?Int\d+\((-?\d+)\)")
_TEXT_LITERAL = re.compile(r'(?:Large)?Utf8(?:View)?\("((?:[^"\\]|\\.)*)"\)')


#: Rows in one of DataFusion's batches (its default batch_size): a function applied to every row
#: builds this many values at once.
BATCH_ROWS = 8192


def value_budget(memory_bytes: int) -> int:
    """Bytes the size-building calls of one row may make: a batch of such rows fits in memory_bytes."""
    return max(memory_bytes // BATCH_ROWS, 4096)


def check_sizes(plan: str, max_bytes: int) -> None:
    """Refuse queries whose size-building calls make more than max_bytes per row (value_budget).

    lpad, rpad, repeat, array_repeat, array_resize and the scalar range/generate_series allocate
    outside DataFusion's memory pool, once per row of a batch, and constant folding runs them while
    planning. So they are read in the unoptimised plan's text (parameters already bound): their size
    arguments must be constants (number literals, arithmetic and casts of them, or $parameters),
    and their sizes, nested ones multiplied, must fit in max_bytes together. `repeat` over column
    values is checked per batch instead, by its replacement function.
    """
    total = 0
    literals = [m.span() for m in _TEXT_LITERAL.finditer(plan)]
    for call in _CALL.finditer(plan):
        if any(begin < call.start() < end for begin, end in literals):
            continue  # text inside a string literal
        name, size = call.group(1), _call_size(plan, call)
        if size is None:
            raise QueryError(
                f"query refused: the size arguments of {name}() must be constants or $parameters (not"
                " columns): the values it builds are not counted in query.memory_limit"
            )
        total += size
        if total > max_bytes:
            raise QueryError(
                f"query refused: {name}() and the like would build about {total} bytes per row, more"
                f" than {max_bytes} bytes (query.memory_limit / {BATCH_ROWS}, the rows of one batch)"
            )


def _call_size(text: str, call: re.Match[str]) -> int | None:
    """Bytes one call builds; 0 when unsized here, None when a size argument is not a constant."""
    name, args = call.group(1), _arguments(text, call.end())
    if any(arg.startswith("$") for arg in args):
        return 0  # an alias repeating the query's text; the bound call is read where it is used
    if name in _RANGES:
        if not any(args):
            return 0  # the table function: it streams its rows in batches
        numbers = [_constant(arg) for arg in args]
        if None in numbers:
            return None
        start, stop, step, *_ = ([0, *numbers] if len(numbers) == 1 else numbers) + [1]
        return abs((stop or 0) - (start or 0)) // max(abs(step or 1), 1) * 8
    index = _SIZED[name]
    if len(args) <= index:
        return 0
    count = _constant(args[index])
    if count is None:
        # repeat's replacement checks the values of each batch; the others build unchecked.
        return 0 if name == "repeat" else None
    if name in ("lpad", "rpad"):
        unit = 1
    else:
        unit = _largest(args[0], 1 if name == "repeat" else 8) if args else 8
    return max(count, 0) * unit


_CAST_OPEN = re.compile(r"\b(?:TRY_)?CAST\(")
_CAST_CLOSE = re.compile(r" AS U?Int\d+\)")
_CONSTANT_TEXT = re.compile(r"[\d\s+\-*/%()]+")


def _constant(arg: str) -> int | None:
    """The value of a plan argument made of integer literals, + - * / %, and integer casts."""
    text = _INT_IN_PLAN.sub(r"(\1)", _CAST_CLOSE.sub(")", _CAST_OPEN.sub("(", arg)))
    if not _CONSTANT_TEXT.fullmatch(text):
        return None
    try:
        return _evaluate(ast.parse(text, mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        return None


def _evaluate(node: ast.AST) -> int:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _evaluate(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp):
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        if isinstance(node.op, (ast.Div, ast.FloorDiv)):
            return int(left / right) if abs(left) < 1 << 53 else left // right  # SQL truncates
        if isinstance(node.op, ast.Mod):
            return left % right
    raise ValueError("not a constant")


def _largest(text: str, floor: int) -> int:
    """A value's size estimate: its longest text literal or largest sized call, at least floor."""
    sizes = [floor, *(len(m.group(1)) for m in _TEXT_LITERAL.finditer(text))]
    sizes += [_call_size(text, call) or 0 for call in _CALL.finditer(text)]
    return max(sizes)


def _arguments(text: str, start: int) -> list[str]:
    """The top-level, comma-separated arguments of a call whose `(` ends just before `start`."""
    args, depth, quoted, begin = [], 0, False, start
    i = start
    while i < len(text):
        ch = text[i]
        if quoted:
            if ch == "\\":
                i += 1
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch in "([":
            depth += 1
        elif ch in ")]" and depth:
            depth -= 1
        elif ch == ")" or (ch == "," and depth == 0):
            args.append(text[begin:i].strip())
            if ch == ")":
                return args
            begin = i + 1
        i += 1
    return args
