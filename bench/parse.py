"""Line protocol parser throughput: lines/s from bytes to ParseResult, on one core."""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance.lineprotocol import parser as lineprotocol  # noqa: E402
from appliance.lineprotocol.parser import _Body, parse  # noqa: E402
from appliance.lineprotocol.vector import try_parse  # noqa: E402
from appliance.model import ParseResult, Precision  # noqa: E402

Parser = Callable[[bytes, Precision, int], ParseResult]

T0 = 1_700_000_000_000_000_000


def iot_lines(n: int, seed: int = 1) -> list[bytes]:
    """The common IoT shape: 1000 devices, 3 tags, float/int/bool/string fields, ns timestamps."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        dev = rnd.randrange(1000)
        out.append(
            f"weather,device=dev{dev:04d},site=s{dev % 10},kind=th "
            f"temp={rnd.uniform(-20, 40):.2f},hum={rnd.randrange(100)}i,ok={'true' if i % 7 else 'false'},"
            f'status="ok" {T0 + i * 1_000_000}'.encode()
        )
    return out


def escaped_lines(n: int, seed: int = 2) -> list[bytes]:
    """Escapes in names and tag values, quoted strings with spaces, escaped quotes and commas."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        dev = rnd.randrange(1000)
        out.append(
            f"weather\\ station,device=dev\\ {dev:04d},site=s\\,{dev % 10} "
            f"temp={rnd.uniform(-20, 40):.2f},hum={rnd.randrange(100)}i,"
            f'note="door \\"{i % 3}\\" open, fan on",ok=t {T0 + i * 1_000_000}'.encode()
        )
    return out


def with_bad_lines(lines: list[bytes], body_lines: int) -> list[bytes]:
    """Two rejected lines per body (a type conflict and a bad value): the mixed-table finisher."""
    out = list(lines)
    for i in range(0, len(out), body_lines):
        out[i + 10] = out[i + 10].replace(b"hum=", b"hum=1.5,x=")
        out[i + 20] = out[i + 20].replace(b"hum=", b"hum=x")
    return out


def vectorised_only(body: bytes, precision: Precision, now_ns: int) -> ParseResult:
    """The whole-body vectorised route alone; the body must be regular."""
    result = try_parse(body, precision, now_ns, scan=lineprotocol.scan)
    if result is None:
        raise SystemExit("the vectorised route declined a body it should take")
    return result


def exact_only(body: bytes, precision: Precision, now_ns: int) -> ParseResult:
    """The line-by-line routes parse() falls back to (cached fast route, exact scanner)."""
    return _Body(body, precision, now_ns, fast=True).result()


def measure(
    name: str,
    lines: list[bytes],
    body_lines: int,
    repeat: int,
    precision: Precision = Precision.NS,
    parser: Parser = parse,
) -> float:
    bodies = [b"\n".join(lines[i : i + body_lines]) for i in range(0, len(lines), body_lines)]
    best = float("inf")
    errors = 0
    for _ in range(repeat):
        start = time.perf_counter()
        errors = sum(len(parser(body, precision, T0).errors) for body in bodies)
        best = min(best, time.perf_counter() - start)
    rate = len(lines) / best
    sys.stdout.write(f"{name:<48} {rate:>10,.0f} lines/s  ({errors} rejected)\n")
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lines", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    iot, escaped = iot_lines(args.lines), escaped_lines(args.lines)
    measure("iot, one 200k-line body", iot, args.lines, args.repeat)
    measure("iot, 5000-line bodies", iot, 5000, args.repeat)
    measure("iot, 5000-line bodies, vectorised route only", iot, 5000, args.repeat, parser=vectorised_only)
    measure("iot, 5000-line bodies, line-by-line routes only", iot, 5000, args.repeat, parser=exact_only)
    measure("iot, 5000-line bodies, precision=auto", iot, 5000, args.repeat, Precision.AUTO)
    measure("iot, 5000-line bodies, 2 bad lines each", with_bad_lines(iot, 5000), 5000, args.repeat)
    measure("escapes + quoted strings, one 200k-line body", escaped, args.lines, args.repeat)
    measure("escapes + quoted strings, 5000-line bodies", escaped, 5000, args.repeat)


if __name__ == "__main__":
    main()
