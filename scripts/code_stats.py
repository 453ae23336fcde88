"""Figures about the source tree: module sizes, function lengths, sleeps in test bodies.

Usage: python scripts/code_stats.py [ROOT]   (ROOT defaults to the checkout holding this script)
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


def _sleeps(tree: ast.AST) -> int:
    """Calls of time.sleep / asyncio.sleep / sleep inside test_* functions."""
    count = 0
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef) and fn.name.startswith("test"):
            for n in ast.walk(fn):
                if isinstance(n, ast.Call):
                    f = n.func
                    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
                    count += name == "sleep"
    return count


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent
    sizes: list[tuple[int, str]] = []
    lengths: list[int] = []
    for path in sorted((root / "appliance").rglob("*.py")):
        text = path.read_text()
        sizes.append((text.count("\n"), str(path.relative_to(root))))
        lengths += _functions(ast.parse(text))
    sleeps = sum(_sleeps(ast.parse(p.read_text())) for p in (root / "tests").rglob("test_*.py"))
    sizes.sort(reverse=True)
    q = statistics.quantiles(lengths, n=10)
    print(f"modules: {len(sizes)}, lines: {sum(s for s, _ in sizes)}")
    print(f"modules over 400 lines: {sum(s > 400 for s, _ in sizes)}")
    print(f"largest: {', '.join(f'{n} {s}' for s, n in sizes[:8])}")
    print(f"functions: {len(lengths)}, length median {statistics.median(lengths):.0f}, p90 {q[8]:.0f}")
    print(f"sleep calls in test functions: {sleeps}")


if __name__ == "__main__":
    main()
