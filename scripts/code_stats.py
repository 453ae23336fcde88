"""Figures about the source tree: module sizes, function lengths, sleeps in test bodies.

Usage: python scripts/code_stats.py [--sleeps] [ROOT]   (ROOT defaults to the checkout holding this script)
--sleeps also lists each sleep call in a test function, as path:line.
"""

from __future__ import annotations

import ast
import statistics
import sys
from pathlib import Path


def _functions(tree: ast.AST) -> list[int]:
    return [
        n.end_lineno - n.lineno + 1  # type: ignore[operator]
        for n in ast.walk(tree)
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
    ]


def _sleeps(tree: ast.AST) -> list[int]:
    """Line numbers of time.sleep / asyncio.sleep / sleep calls inside test_* functions."""
    lines = []
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef) and fn.name.startswith("test"):
            for n in ast.walk(fn):
                if isinstance(n, ast.Call):
                    f = n.func
                    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
                    if name == "sleep":
                        lines.append(n.lineno)
    return sorted(lines)


def main() -> None:
    args = sys.argv[1:]
    list_sleeps = "--sleeps" in args
    args = [a for a in args if a != "--sleeps"]
    root = Path(args[0]) if args else Path(__file__).resolve().parent.parent
    sizes: list[tuple[int, str]] = []
    lengths: list[int] = []
    for path in sorted((root / "appliance").rglob("*.py")):
        text = path.read_text()
        sizes.append((text.count("\n"), str(path.relative_to(root))))
        lengths += _functions(ast.parse(text))
    sleeps = [
        f"{p.relative_to(root)}:{line}"
        for p in sorted((root / "tests").rglob("test_*.py"))
        for line in _sleeps(ast.parse(p.read_text()))
    ]
    sizes.sort(reverse=True)
    q = statistics.quantiles(lengths, n=10)
    print(f"modules: {len(sizes)}, lines: {sum(s for s, _ in sizes)}")
    print(f"modules over 400 lines: {sum(s > 400 for s, _ in sizes)}")
    print(f"largest: {', '.join(f'{n} {s}' for s, n in sizes[:8])}")
    print(f"functions: {len(lengths)}, length median {statistics.median(lengths):.0f}, p90 {q[8]:.0f}")
    print(f"sleep calls in test functions: {len(sleeps)}")
    if list_sleeps:
        print("\n".join(f"  {s}" for s in sleeps))


if __name__ == "__main__":
    main()
