#!/usr/bin/env python3
"""Measure the glibc floor of a build: the newest GLIBC_x.y symbol version any ELF file needs.

Scans every ELF file (by its \\x7fELF magic) under the given folders and files with binutils'
`readelf -V --dyn-syms --wide`, which reads any architecture's ELF (an aarch64 bundle can be
checked on an x86_64 machine). From each file's "Version needs" section it collects the GLIBC_x.y
versions required (from libc.so.6, libm.so.6, libpthread, libdl, librt, ld-linux...) and, from
its undefined dynamic symbols, which functions need them. The floor is the highest of them: the
oldest glibc the bundle can start on.

Also reported, for information: the highest GLIBCXX_/CXXABI_ versions (libstdc++) needed and not
defined by a libstdc++ among the scanned files (those must come from the target system).

Exit status: 0 when the floor is at most --max (or no --max), 1 when it is above, 2 on usage
errors (no readelf, no ELF file found, a path that does not exist).

Stdlib only; python3 >= 3.9.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ELF_MAGIC = b"\x7fELF"
GLIBC_RE = re.compile(r"^GLIBC_(\d+(?:\.\d+)+)$")
CXX_RE = re.compile(r"^(GLIBCXX|CXXABI)_(\d+(?:\.\d+)+)$")
# "  0x0010:   Name: GLIBC_2.2.5  Flags: none  Version: 9" (needs) and
# "  0x001c: Rev: 1  Flags: none  Index: 2  Cnt: 1  Name: GLIBCXX_3.4" (definitions)
NEED_FILE_RE = re.compile(r"^\s*\S+:\s+Version:\s+\d+\s+File:\s+(\S+)")
NEED_NAME_RE = re.compile(r"^\s*\S+:\s+Name:\s+(\S+)\s+Flags:")
DEF_NAME_RE = re.compile(r"^\s*\S+:\s+Rev:\s+\d+\s+Flags:\s+(\S+)\s+.*\bName:\s+(\S+)")
# "     7: 0000000000000000     0 FUNC    GLOBAL DEFAULT  UND __libc_start_main@GLIBC_2.34 (6)"
UND_SYM_RE = re.compile(r"^\s*\d+:\s+\S+\s+\S+\s+\S+\s+\S+\s+\S+\s+UND\s+([^@\s]+)@([^\s(]+)")

Version = tuple[int, ...]


def parse_version(text: str) -> Version:
    """'2.31' -> (2, 31); accepts 'GLIBC_2.31' and 'glibc 2.31' too."""
    m = re.search(r"(\d+(?:\.\d+)+)", text)
    if not m:
        raise ValueError(f"not a version: {text!r}")
    return tuple(int(p) for p in m.group(1).split("."))


def fmt(v: Version) -> str:
    return ".".join(str(p) for p in v)


@dataclass
class ElfVersions:
    """What one ELF file's readelf output says about symbol versions."""

    needs: dict[str, set[str]] = field(default_factory=dict)  # library -> version names needed
    defines: set[str] = field(default_factory=set)  # version names this file defines
    symbols: dict[str, list[str]] = field(default_factory=dict)  # version name -> undefined symbols

    def glibc(self) -> Version | None:
        found = [
            parse_version(m.group(1)) for vs in self.needs.values() for v in vs if (m := GLIBC_RE.match(v))
        ]
        return max(found) if found else None


def parse_readelf(text: str) -> ElfVersions:
    """Parse `readelf -V --dyn-syms --wide` output (either option alone works too)."""
    out = ElfVersions()
    section = ""
    lib = ""
    for line in text.splitlines():
        if line.startswith("Version needs section"):
            section, lib = "needs", ""
            continue
        if line.startswith("Version definition section"):
            section = "defs"
            continue
        if line.startswith(("Version symbols section", "Symbol table", "No version information")):
            section = "dynsym" if line.startswith("Symbol table") else ""
            continue
        if section == "needs":
            if m := NEED_FILE_RE.match(line):
                lib = m.group(1)
                out.needs.setdefault(lib, set())
            elif (m := NEED_NAME_RE.match(line)) and lib:
                out.needs[lib].add(m.group(1))
        elif section == "defs":
            if (m := DEF_NAME_RE.match(line)) and m.group(1) != "BASE":
                out.defines.add(m.group(2))
        elif section == "dynsym" and (m := UND_SYM_RE.match(line)):
            out.symbols.setdefault(m.group(2), []).append(m.group(1))
    return out


def is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == ELF_MAGIC
    except OSError:
        return False


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Regular files under the paths, symlinks skipped (their targets are in the bundle too)."""
    for path in paths:
        if path.is_file():
            yield path
            continue
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                f = Path(root) / name
                if not f.is_symlink() and f.is_file():
                    yield f


def readelf(paths: list[Path]) -> dict[Path, str]:
    """readelf's output per file, many files per run (a run costs far more than a file under
    emulation, where an aarch64 root's readelf runs under qemu)."""
    out: dict[Path, str] = {}
    for i in range(0, len(paths), 64):
        batch = paths[i : i + 64]
        proc = subprocess.run(
            ["readelf", "-V", "--dyn-syms", "--wide", *map(str, batch)],
            capture_output=True,
            text=True,
            errors="replace",
            env={**os.environ, "LC_ALL": "C"},
        )
        if proc.returncode != 0 and not proc.stdout:
            raise RuntimeError(f"readelf failed on {batch[0]}...: {proc.stderr.strip()}")
        if len(batch) == 1:
            out[batch[0]] = proc.stdout
            continue
        # With several files, each one's output follows a "File: NAME" line.
        by_name = {str(p): p for p in batch}
        lines: dict[Path, list[str]] = {}
        current: list[str] = []
        for line in proc.stdout.splitlines():
            if line.startswith("File: ") and line[6:] in by_name:
                current = lines.setdefault(by_name[line[6:]], [])
            else:
                current.append(line)
        out.update((path, "\n".join(text)) for path, text in lines.items())
    return out


@dataclass
class Report:
    files: dict[str, ElfVersions]  # display name -> versions
    scanned: int  # files looked at (ELF or not)

    def floor(self) -> Version | None:
        found = [v for e in self.files.values() if (v := e.glibc()) is not None]
        return max(found) if found else None

    def by_glibc(self) -> dict[Version, list[str]]:
        """Each file under the highest glibc version it needs, newest first."""
        levels: dict[Version, list[str]] = {}
        for name, e in self.files.items():
            v = e.glibc()
            if v is not None:
                levels.setdefault(v, []).append(name)
        return dict(sorted(levels.items(), reverse=True))

    def symbols_for(self, name: str, version: Version) -> list[str]:
        return sorted(set(self.files[name].symbols.get(f"GLIBC_{fmt(version)}", [])))

    def cxx_unmet(self) -> dict[str, tuple[Version, list[str]]]:
        """Highest GLIBCXX_/CXXABI_ need not defined by a scanned file: kind -> (version, files)."""
        defined = set().union(*(e.defines for e in self.files.values())) if self.files else set()
        best: dict[str, tuple[Version, list[str]]] = {}
        for name, e in self.files.items():
            for vs in e.needs.values():
                for v in vs:
                    m = CXX_RE.match(v)
                    if not m or v in defined:
                        continue
                    kind, ver = m.group(1), parse_version(m.group(2))
                    if kind not in best or ver > best[kind][0]:
                        best[kind] = (ver, [name])
                    elif ver == best[kind][0]:
                        best[kind][1].append(name)
        return best


def scan(paths: list[Path]) -> Report:
    files: dict[str, ElfVersions] = {}
    scanned = 0
    names: dict[Path, str] = {}
    for path in paths:
        base = path if path.is_dir() else path.parent
        for f in iter_files([path]):
            scanned += 1
            if is_elf(f):
                names[f] = str(path / f.relative_to(base)) if path.is_dir() else str(path)
    for f, text in readelf(list(names)).items():
        files[names[f]] = parse_readelf(text)
    return Report(files, scanned)


def to_json(report: Report, maximum: Version | None) -> dict[str, object]:
    floor = report.floor()
    return {
        "glibc_floor": fmt(floor) if floor else None,
        "max": fmt(maximum) if maximum else None,
        "ok": maximum is None or floor is None or floor <= maximum,
        "files_scanned": report.scanned,
        "elf_files": len(report.files),
        "by_glibc": {
            fmt(v): [{"file": n, "symbols": report.symbols_for(n, v)} for n in sorted(names)]
            for v, names in report.by_glibc().items()
        },
        "cxx_unmet": {k: {"version": fmt(v), "files": sorted(n)} for k, (v, n) in report.cxx_unmet().items()},
    }


def describe(report: Report, top: int, maximum: Version | None) -> list[str]:
    floor = report.floor()
    lines = [
        f"glibc floor: {'GLIBC_' + fmt(floor) if floor else 'none (no GLIBC versions needed)'}"
        f" ({len(report.files)} ELF files of {report.scanned} scanned)"
    ]
    for i, (v, names) in enumerate(report.by_glibc().items()):
        if i >= top and not (maximum and v > maximum):
            break
        above = bool(maximum and v > maximum)
        shown_files = len(names) if above else 5  # all of them when they break the build
        lines.append(
            f"  GLIBC_{fmt(v)} needed by {len(names)} file(s){'  ABOVE the maximum' if above else ''}:"
        )
        for n in sorted(names)[:shown_files]:
            syms = report.symbols_for(n, v)
            shown = ", ".join(syms[:4]) + (f", ... ({len(syms)})" if len(syms) > 4 else "")
            lines.append(f"    {n}" + (f"  ({shown})" if shown else ""))
        if len(names) > shown_files:
            lines.append(f"    ... and {len(names) - shown_files} more")
    unmet = report.cxx_unmet()
    if unmet:
        for kind, (v, names) in sorted(unmet.items()):
            more = f" and {len(names) - 3} more" if len(names) > 3 else ""
            lines.append(
                f"  not met by a bundled libstdc++ (the system's must have it): {kind}_{fmt(v)}"
                f" by {', '.join(sorted(names)[:3])}{more}"
            )
    elif any(CXX_RE.match(v) for e in report.files.values() for vs in e.needs.values() for v in vs):
        lines.append("  libstdc++ needs: all met by the bundled libstdc++")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Print the glibc floor (newest GLIBC_x.y symbol version needed) of every ELF file "
        "under the given folders and files, and fail when it is above --max.",
        epilog="Example: packaging/glibc_floor.py dist/appliance-onedir dist/appliance --max 2.31",
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="DIR_OR_FILE")
    parser.add_argument("--max", help="the declared floor, X.Y: exit 1 when a file needs a newer glibc")
    parser.add_argument(
        "--json", type=Path, metavar="FILE", help="also write the measurements to FILE as JSON"
    )
    parser.add_argument("--top", type=int, default=3, help="how many glibc levels to list (default 3)")
    args = parser.parse_args(argv)

    try:
        maximum = parse_version(args.max) if args.max else None
    except ValueError:
        parser.error(f"--max must look like 2.31, not {args.max!r}")
    if shutil.which("readelf") is None:
        print(
            "glibc_floor.py: readelf not found: install binutils (Debian: apt-get install binutils)",
            file=sys.stderr,
        )
        return 2
    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        print(f"glibc_floor.py: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        report = scan(args.paths)
    except RuntimeError as e:
        print(f"glibc_floor.py: {e}", file=sys.stderr)
        return 2
    if not report.files:
        print(f"glibc_floor.py: no ELF file under {', '.join(map(str, args.paths))}", file=sys.stderr)
        return 2

    print("\n".join(describe(report, args.top, maximum)))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(to_json(report, maximum), indent=2) + "\n")
    floor = report.floor()
    if maximum is not None and floor is not None and floor > maximum:
        above = sum(len(n) for v, n in report.by_glibc().items() if v > maximum)
        print(
            f"glibc_floor.py: FAILED: the glibc floor is {fmt(floor)}, above the declared maximum "
            f"{fmt(maximum)}: {above} file(s) need a newer glibc (listed above as ABOVE the maximum) and "
            f"would not load on a glibc {fmt(maximum)} system. "
            "Build on a system with that glibc (its libpython, libstdc++ and other libraries are what get "
            "bundled), or declare a higher floor.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
