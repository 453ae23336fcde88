#!/usr/bin/env python3
"""Regenerate packaging/requirements.lock: the pinned wheels of the frozen build.

The lock holds, with a sha256 for every wheel of both architectures (x86_64 and aarch64,
CPython 3.11, manylinux glibc <= 2.28), exactly what packaging/build.sh installs into its build
venv:

  - the runtime dependencies of pyproject.toml's [project].dependencies, resolved on their own
    (the test and dev extras do not influence them),
  - PyInstaller from [project.optional-dependencies].build and its own dependencies,
  - pip, which the frozen program bundles (`appliance install package` runs it).

How: a throwaway venv made with a Python of the target version; in it, pip resolves the
requirements once per architecture (`pip install --dry-run --report`, wheels only, for the
manylinux platforms up to 2.28, with `platform.machine()` answering for that architecture so
environment markers are evaluated for it); then `pip download` fetches every chosen wheel, and
each file is hashed here and checked against the hash the index published. Local pip
configuration is ignored (PIP_CONFIG_FILE=/dev/null, PIP_* variables dropped except transport
settings), so the lock reflects the index (PyPI by default), not this machine's mirrors,
find-links folders or constraints.

Stdlib only; runs with python3 >= 3.9 (the venv Python must be the target version).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO / "packaging" / "requirements.lock"
DEFAULT_INDEX = "https://pypi.org/simple"
ARCHES = ("x86_64", "aarch64")
GLIBC_MAX = (2, 28)  # the newest manylinux tag accepted: pyarrow's and datafusion's wheels need it
# Network and TLS settings only: they change how pip reaches the index, not what it finds there.
PIP_ENV_KEPT = {
    "PIP_CERT",
    "PIP_CLIENT_CERT",
    "PIP_PROXY",
    "PIP_TIMEOUT",
    "PIP_DEFAULT_TIMEOUT",
    "PIP_RETRIES",
    "PIP_CACHE_DIR",
    "PIP_NO_CACHE_DIR",
    "PIP_DISABLE_PIP_VERSION_CHECK",
}
# Runs pip with platform.machine() answering for the target architecture, so environment
# markers such as `platform_machine == "aarch64"` are evaluated for it, not for this machine.
PIP_AS_MACHINE = (
    "import platform, runpy, sys; machine = sys.argv.pop(1); "
    "platform.machine = lambda: machine; "
    "runpy.run_module('pip', run_name='__main__', alter_sys=True)"
)


def log(msg: str) -> None:
    print(f"lock.py: {msg}", file=sys.stderr, flush=True)


def die(msg: str) -> None:
    log(msg)
    raise SystemExit(1)


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# -- pyproject.toml ---------------------------------------------------------------------------


def _toml_string_list(text: str, table: str, key: str) -> list[str]:
    """The string array `key = [...]` of `[table]`, for Pythons without tomllib (3.9, 3.10)."""
    m = re.search(rf"^\[{re.escape(table)}\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S)
    if not m:
        return []
    body = m.group(1)
    k = re.search(rf"^\s*{re.escape(key)}\s*=\s*\[(.*?)\]", body, re.M | re.S)
    if not k:
        return []
    items = []
    for line in k.group(1).splitlines():
        line = re.sub(r"#[^\"']*$", "", line)  # a trailing comment without quotes in it
        items += re.findall(r"\"([^\"]*)\"|'([^']*)'", line)
    return [a or b for a, b in items]


def project_requirements(pyproject: Path) -> tuple[list[str], list[str]]:
    """([project].dependencies, [project.optional-dependencies].build)."""
    text = pyproject.read_text()
    try:
        import tomllib  # type: ignore[import-not-found,unused-ignore]
    except ModuleNotFoundError:
        return (
            _toml_string_list(text, "project", "dependencies"),
            _toml_string_list(text, "project.optional-dependencies", "build"),
        )
    data = tomllib.loads(text)["project"]
    return list(data.get("dependencies", [])), list(data.get("optional-dependencies", {}).get("build", []))


# -- pip, isolated from local configuration ----------------------------------------------------


def pip_env(announce: bool = False) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k in PIP_ENV_KEPT}
    dropped = sorted(k for k in os.environ if k.startswith("PIP_") and k not in PIP_ENV_KEPT)
    if dropped and announce:
        log(f"ignoring {', '.join(dropped)} and pip's config files (the lock must reflect the index)")
    env.update(
        PIP_CONFIG_FILE=os.devnull,  # no /etc/pip.conf, /etc/xdg/pip, ~/.config/pip
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
        PYTHONNOUSERSITE="1",
    )
    env.pop("PYTHONPATH", None)
    return env


def platform_options(arch: str) -> list[str]:
    """--platform for every manylinux tag a glibc <= GLIBC_MAX system accepts, newest first."""
    major, top = GLIBC_MAX
    opts = []
    for minor in range(top, 4, -1):
        opts += ["--platform", f"manylinux_{major}_{minor}_{arch}"]
    for legacy in ("manylinux2014", "manylinux2010", "manylinux1"):
        opts += ["--platform", f"{legacy}_{arch}"]
    return opts


def target_options(arch: str, python_version: str) -> list[str]:
    return [
        "--only-binary=:all:",
        *platform_options(arch),
        "--python-version",
        python_version,
        "--implementation",
        "cp",
        "--abi",
        "cp" + python_version.replace(".", ""),
    ]


def run(cmd: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout)
        die(f"command failed ({proc.returncode}): {' '.join(cmd[:6])} ...")


# -- resolution and download -------------------------------------------------------------------


@dataclass
class Pinned:
    name: str  # as the index spells it
    version: str
    requires: list[str]
    wheels: dict[str, str] = field(default_factory=dict)  # file name -> sha256
    arches: set[str] = field(default_factory=set)


def resolve(py: Path, arch: str, reqs: list[str], args: argparse.Namespace, tmp: Path) -> dict[str, dict]:
    report = tmp / f"report-{arch}.json"
    cmd = [str(py), "-c", PIP_AS_MACHINE, arch, "install", "--quiet", "--dry-run", "--ignore-installed"]
    cmd += ["--target", str(tmp / f"target-{arch}"), "--report", str(report), "--index-url", args.index_url]
    cmd += target_options(arch, args.python_version) + reqs
    log(f"resolving for {arch} ...")
    run(cmd, pip_env())
    data = json.loads(report.read_text())
    if data.get("environment", {}).get("platform_machine") != arch:
        die(f"pip evaluated markers for {data.get('environment', {}).get('platform_machine')}, not {arch}")
    return {normalize(item["metadata"]["name"]): item for item in data["install"]}


def index_sha256(item: dict) -> str | None:
    info = item.get("download_info", {}).get("archive_info", {})
    if "hashes" in info and "sha256" in info["hashes"]:
        return str(info["hashes"]["sha256"])
    h = info.get("hash", "")
    return h.split("=", 1)[1] if h.startswith("sha256=") else None


def download(py: Path, arch: str, pins: list[str], args: argparse.Namespace, dest: Path) -> None:
    cmd = [str(py), "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(dest)]
    cmd += ["--index-url", args.index_url] + target_options(arch, args.python_version) + pins
    log(f"downloading {len(pins)} wheels for {arch} ...")
    run(cmd, pip_env())


def wheel_glibc(filename: str) -> tuple[int, int] | None:
    """The oldest glibc a wheel's platform tags accept (None: a pure wheel)."""
    tags = filename[: -len(".whl")].split("-")[-1].split(".")
    floors = []
    for tag in tags:
        m = re.match(r"manylinux_(\d+)_(\d+)_", tag)
        if m:
            floors.append((int(m.group(1)), int(m.group(2))))
        elif tag.startswith(("manylinux2014_", "manylinux2010_", "manylinux1_")):
            floors.append(
                {"manylinux2014": (2, 17), "manylinux2010": (2, 12), "manylinux1": (2, 5)}[tag.split("_")[0]]
            )
        elif tag != "any":
            die(f"{filename}: platform tag {tag} is not a manylinux tag")
    # A wheel tagged with several manylinux levels runs on the oldest of them.
    return min(floors) if floors else None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def requirement_names(requires: list[str]) -> set[str]:
    names = set()
    for req in requires:
        if re.search(r"\bextra\s*==", req):
            continue
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
        if m:
            names.add(normalize(m.group(1)))
    return names


# -- the lock file -----------------------------------------------------------------------------


def render(
    pinned: dict[str, Pinned], top: dict[str, str], floors: dict[str, list[str]], args: argparse.Namespace
) -> str:
    lines = [
        "# The pinned wheels of the frozen appliance (packaging/build.sh): one set for x86_64 and",
        f"# aarch64 Linux, CPython {args.python_version}, manylinux wheels needing glibc <= {GLIBC_MAX[0]}.{GLIBC_MAX[1]}.",
        "# Every wheel of both architectures has its sha256 (a pure-Python wheel has one). Install with",
        "#   pip install --require-hashes --only-binary=:all: -r packaging/requirements.lock",
        "#",
        "# Generated by packaging/lock.py, do not edit. It holds pyproject.toml's [project].dependencies",
        "# resolved alone (no test or dev extras), [project.optional-dependencies].build (PyInstaller)",
        "# and pip (bundled in the program), with everything they need, from " + args.index_url + ".",
        "# Regenerate after changing those (or to take new releases):",
        f"#   python{args.python_version} packaging/lock.py            (check only: add --check)",
        "#",
        f"# python-version: {args.python_version}",
    ]
    for arch in ARCHES:
        lines.append(f"# {arch} wheel floors: {'; '.join(floors[arch])}")
    lines.append("")
    for key in sorted(pinned):
        p = pinned[key]
        marker = ""
        if p.arches != set(ARCHES):
            marker = " ; " + " or ".join(f'platform_machine == "{a}"' for a in sorted(p.arches))
        lines.append(f"{p.name}=={p.version}{marker} \\")
        hashes = sorted(p.wheels.items())
        for i, (_fn, digest) in enumerate(hashes):
            cont = " \\" if i < len(hashes) - 1 else ""
            lines.append(f"    --hash=sha256:{digest}{cont}")
        via = sorted(
            {pinned[o].name for o in pinned if key in requirement_names(pinned[o].requires)}
            | ({top[key]} if key in top else set())
        )
        lines.append(f"    # via {', '.join(via)}")
        for fn, _ in hashes:
            lines.append(f"    #   {fn}")
    return "\n".join(lines) + "\n"


def make_lock(args: argparse.Namespace) -> str:
    runtime, build = project_requirements(REPO / "pyproject.toml")
    if not runtime:
        die("no [project].dependencies found in pyproject.toml")
    if not build:
        die("no [project.optional-dependencies].build (PyInstaller) found in pyproject.toml")
    reqs = [*runtime, *build, "pip"]
    top = {}
    for r in runtime:
        top[normalize(re.split(r"[ ;<>=!~\[]", r, maxsplit=1)[0])] = "pyproject.toml [project].dependencies"
    for r in build:
        top[normalize(re.split(r"[ ;<>=!~\[]", r, maxsplit=1)[0])] = (
            "pyproject.toml [project.optional-dependencies].build"
        )
    top["pip"] = "packaging/appliance.spec (bundled)"

    with tempfile.TemporaryDirectory(prefix="appliance-lock-") as tmpname:
        tmp = Path(tmpname)
        pip_env(announce=True)
        log(f"making a throwaway venv with {args.python}")
        subprocess.run([args.python, "-m", "venv", str(tmp / "venv")], check=True)
        py = tmp / "venv" / "bin" / "python"
        got = subprocess.run(
            [str(py), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        if got != args.python_version:
            die(
                f"{args.python} is Python {got}, the lock is for {args.python_version}: pass --python python{args.python_version}"
            )

        pinned: dict[str, Pinned] = {}
        floors: dict[str, list[str]] = {}
        for arch in ARCHES:
            items = resolve(py, arch, reqs, args, tmp)
            dest = tmp / f"wheels-{arch}"
            download(
                py,
                arch,
                [f"{i['metadata']['name']}=={i['metadata']['version']}" for i in items.values()],
                args,
                dest,
            )
            files = {normalize(f.name.split("-")[0]): f for f in dest.glob("*.whl")}
            arch_floors: dict[tuple[int, int], list[str]] = {}
            for key, item in items.items():
                name, version = item["metadata"]["name"], item["metadata"]["version"]
                wheel = files.get(key)
                if wheel is None:
                    die(f"pip download gave no wheel for {name}=={version} ({arch})")
                digest = sha256_file(wheel)
                published = index_sha256(item)
                if published and published != digest:
                    die(f"{wheel.name}: sha256 {digest} differs from the index's {published}")
                if item["download_info"]["url"].rsplit("/", 1)[-1] != wheel.name:
                    log(
                        f"note: {arch}: resolver chose {item['download_info']['url'].rsplit('/', 1)[-1]}, download gave {wheel.name}"
                    )
                floor = wheel_glibc(wheel.name)
                if floor is not None:
                    if floor > GLIBC_MAX:
                        die(
                            f"{wheel.name} needs glibc {floor[0]}.{floor[1]}, above {GLIBC_MAX[0]}.{GLIBC_MAX[1]}"
                        )
                    arch_floors.setdefault(floor, []).append(name)
                p = pinned.get(key)
                if p is None:
                    p = pinned[key] = Pinned(name, version, list(item["metadata"].get("requires_dist", [])))
                elif p.version != version:
                    die(
                        f"{name} resolves to {p.version} on {sorted(p.arches)} but {version} on {arch}: pin it in pyproject.toml"
                    )
                p.wheels[wheel.name] = digest
                p.arches.add(arch)
            floors[arch] = [
                f"glibc {f[0]}.{f[1]}: {', '.join(sorted(names, key=str.lower))}"
                for f, names in sorted(arch_floors.items(), reverse=True)
            ] or ["pure Python only"]
        return render(pinned, top, floors, args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Regenerate packaging/requirements.lock (pinned, hashed wheels for the frozen build, "
        "x86_64 and aarch64). Needs network access to the index.",
        epilog="Example: python3.11 packaging/lock.py && git diff packaging/requirements.lock",
    )
    parser.add_argument(
        "--python",
        default=shutil.which("python3.11") or sys.executable,
        help="interpreter for the throwaway venv; must be the target version (default: python3.11)",
    )
    parser.add_argument("--python-version", default="3.11", help="target CPython version (default 3.11)")
    parser.add_argument("--index-url", default=DEFAULT_INDEX, help=f"package index (default {DEFAULT_INDEX})")
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help="lock file to write (default %(default)s)"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 when the lock differs from a fresh resolution",
    )
    args = parser.parse_args(argv)

    text = make_lock(args)
    if args.check:
        old = args.output.read_text() if args.output.exists() else ""
        if old != text:
            log(f"{args.output} is out of date: run packaging/lock.py (without --check) and commit it")
            return 1
        log(f"{args.output} is up to date")
        return 0
    args.output.write_text(text)
    names = sum(1 for line in text.splitlines() if line and not line.startswith((" ", "#")))
    hashes = text.count("--hash=sha256:")
    log(f"wrote {args.output}: {names} packages, {hashes} wheel hashes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
