#!/bin/sh
# Build the appliance's frozen executable with PyInstaller, for the machine this runs on,
# from the pinned wheels of packaging/requirements.lock, and gate it on its glibc floor.
set -eu

usage() {
    cat <<'EOF'
usage: packaging/build.sh [--help]

Builds the frozen appliance with PyInstaller from packaging/appliance.spec, for the
architecture and C library of this machine (PyInstaller cannot cross-compile: build an
aarch64 binary on an aarch64 machine or in an emulated root; see packaging/README.md).

  dist/appliance                    one file; unpacks itself to a temporary folder at each start
  dist/appliance-onedir/appliance   one folder; starts faster; what the systemd unit runs
  dist/build-info.json              what was measured: arch, Python, glibc floor, sizes, lock hash

Steps: a build venv is made with $PYTHON -m venv and filled with exactly the wheels pinned in
packaging/requirements.lock (pip --require-hashes --only-binary=:all:); it is reused while the
lock and the interpreter are unchanged. The appliance itself is taken from this checkout
(PYTHONPATH), not installed. After PyInstaller, every bundled ELF file is scanned
(packaging/glibc_floor.py): if one needs a newer glibc than the declared floor, the build
fails and its outputs are deleted.

environment:
  MODE=onefile|onedir|both    what to build (default both)
  PYTHON=PATH                 the CPython (with its shared libpython) that makes the venv and is
                              bundled; its version must be the lock's (3.11) (default python3)
  VENV=DIR                    the build venv (default build/venv-$(uname -m)); made and
                              replaced by this script only (it refuses a venv it did not make)
  DIST=DIR                    output folder (default dist)
  WORK=DIR                    PyInstaller's work folder (default build/pyinstaller)
  GLIBC_FLOOR=X.Y             fail when a bundled file needs a glibc newer than this
                              (default: this machine's glibc, from getconf GNU_LIBC_VERSION)

Needs binutils (objdump, objcopy, strip, readelf) and the network (PyPI, or the index your
pip configuration names) the first time. `make binary` runs this.
EOF
}

case "${1:-}" in
-h | --help) usage; exit 0 ;;
"") ;;
*) usage >&2; exit 2 ;;
esac

die() {
    echo "build.sh: $*" >&2
    exit 1
}

cd "$(dirname "$0")/.."
REPO=$(pwd -P)
arch=$(uname -m)
MODE=${MODE:-both}
PYTHON=${PYTHON:-python3}
VENV=${VENV:-build/venv-$arch}
DIST=${DIST:-dist}
WORK=${WORK:-build/pyinstaller}
GLIBC_FLOOR=${GLIBC_FLOOR:-}
LOCK=packaging/requirements.lock
case "$MODE" in
onefile | onedir | both) ;;
*) echo "build.sh: MODE must be onefile, onedir or both, not '$MODE'" >&2; exit 2 ;;
esac
export MODE
# The stdlib's distutils, not setuptools' copy (which also warns when the spec looks it up).
export SETUPTOOLS_USE_DISTUTILS=stdlib
# PyInstaller's cache in this build's work folder, not the user's ~/.cache: --clean empties it,
# which broke another build running at the same time.
case "$WORK" in
/*) PYINSTALLER_CONFIG_DIR=$WORK/cache ;;
*) PYINSTALLER_CONFIG_DIR=$PWD/$WORK/cache ;;
esac
export PYINSTALLER_CONFIG_DIR
export PIP_DISABLE_PIP_VERSION_CHECK=1
# Nothing from outside the venv and this checkout: no user site-packages, no caller's PYTHONPATH.
export PYTHONNOUSERSITE=1
unset PYTHONPATH PYTHONHOME

for tool in objdump objcopy strip readelf sha256sum; do
    command -v "$tool" >/dev/null 2>&1 ||
        die "needs '$tool' (binutils, coreutils): install it (Debian: apt-get install binutils coreutils)"
done
[ -f "$LOCK" ] || die "$LOCK is missing: run 'python3.11 packaging/lock.py' to make it"

# The declared glibc floor: GLIBC_FLOOR, else this machine's glibc (a build can never start on
# an older one than its build machine: it bundles that machine's libpython and libstdc++).
build_glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null | sed -n 's/^glibc //p') || build_glibc=
if [ -z "$build_glibc" ]; then
    build_glibc=$(ldd --version 2>/dev/null | sed -n '1s/.* \([0-9][0-9.]*\)$/\1/p') || build_glibc=
fi
if [ -n "$GLIBC_FLOOR" ]; then
    declared=$GLIBC_FLOOR
    declared_from=GLIBC_FLOOR
else
    [ -n "$build_glibc" ] ||
        die "cannot tell this machine's glibc version (getconf GNU_LIBC_VERSION, ldd --version): set GLIBC_FLOOR=X.Y"
    declared=$build_glibc
    declared_from="build machine"
fi
case "$declared" in
[0-9]*.[0-9]*) ;;
*) die "GLIBC_FLOOR must look like 2.31, not '$declared'" ;;
esac

# -- the build venv, from the lock ------------------------------------------------------------
command -v "$PYTHON" >/dev/null 2>&1 ||
    die "no Python '$PYTHON': set PYTHON= to a CPython $(sed -n 's/^# python-version: //p' "$LOCK") with its shared library"
want_py=$(sed -n 's/^# python-version: //p' "$LOCK")
py_id=$("$PYTHON" -c 'import sys, sysconfig; print("%d.%d" % sys.version_info[:2], sys.version.split()[0], sysconfig.get_config_var("Py_ENABLE_SHARED") or 0, sys.executable)') ||
    die "'$PYTHON' does not run"
py_minor=${py_id%% *} py_id=${py_id#* }
py_full=${py_id%% *} py_id=${py_id#* }
py_shared=${py_id%% *} py_exe=${py_id#* }
[ "$py_minor" = "$want_py" ] ||
    die "$PYTHON is Python $py_full, but $LOCK pins wheels for $want_py: set PYTHON=python$want_py (or a path to it)"
[ "$py_shared" = 1 ] ||
    die "$py_exe has no shared libpython, which PyInstaller bundles: use a Python built with --enable-shared (Debian: python3.11 from apt; pyenv: PYTHON_CONFIGURE_OPTS=--enable-shared)"

lock_sha=$(sha256sum "$LOCK" | cut -d' ' -f1)
stamp="$lock_sha $py_full $py_exe"
venv_start=$(date +%s)
if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.build-stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "build.sh: reusing $VENV (lock and Python unchanged)"
else
    if [ -e "$VENV" ]; then
        [ -f "$VENV/.made-by-build.sh" ] ||
            die "$VENV exists but was not made by build.sh (a dev venv?): remove it or set VENV= to another folder"
        echo "build.sh: $LOCK or the Python changed: remaking $VENV"
        rm -rf "$VENV"
    fi
    echo "build.sh: making $VENV with $py_exe ($py_full) from $LOCK"
    "$PYTHON" -m venv "$VENV" ||
        die "'$PYTHON -m venv' failed: install the venv module (Debian: apt-get install python$want_py-venv)"
    : >"$VENV/.made-by-build.sh"
    "$VENV/bin/python" -m pip install --quiet --require-hashes --only-binary=:all: -r "$LOCK" ||
        die "installing $LOCK into $VENV failed (see pip's message above; a new Python version or architecture may need 'packaging/lock.py')"
    # The venv holds the lock and nothing else (ensurepip's own copies are replaced by the pins).
    extra=$("$VENV/bin/python" - "$LOCK" <<'EOF'
import re, sys
from importlib.metadata import distributions
sys.path[0] = "packaging"  # not the checkout, whose appliance.egg-info is no installed package
from lock import normalize
pinned = {normalize(m.group(1)) for m in re.finditer(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", open(sys.argv[1]).read(), re.M)}
print(" ".join(sorted({d.metadata["Name"] for d in distributions() if normalize(d.metadata["Name"]) not in pinned})))
EOF
)
    if [ -n "$extra" ]; then
        echo "build.sh: removing from $VENV what the lock does not pin: $extra"
        # shellcheck disable=SC2086
        "$VENV/bin/python" -m pip uninstall --quiet --yes $extra
    fi
    echo "$stamp" >"$VENV/.build-stamp"
fi
venv_end=$(date +%s)

# The appliance comes from this checkout, not from an installed copy.
export PYTHONPATH="$REPO"
found=$("$VENV/bin/python" -c 'import appliance, os; print(os.path.dirname(os.path.abspath(appliance.__file__)))') ||
    die "cannot import the appliance from $REPO"
[ "$found" = "$REPO/appliance" ] || die "the venv imports the appliance from $found, not from $REPO/appliance"
version=$("$VENV/bin/python" -c 'import appliance; print(appliance.__version__)')
pyinstaller_version=$("$VENV/bin/python" -c 'import PyInstaller; print(PyInstaller.__version__)')

# -- PyInstaller --------------------------------------------------------------------------------
echo "build.sh: building appliance $version MODE=$MODE for $arch with PyInstaller $pyinstaller_version and Python $py_full (glibc floor allowed: $declared, $declared_from)"
# What this run builds, checks and describes (an output of the other shape left from an earlier
# run is not touched, and not described by build-info.json).
build_onefile=false build_onedir=false
case "$MODE" in
onefile) build_onefile=true ;;
onedir) build_onedir=true ;;
both) build_onefile=true build_onedir=true ;;
esac
# Old outputs go first, and every way out before the end (a failure, Ctrl-C, SIGTERM) removes
# the new ones, so a failed or interrupted build never leaves a binary looking fresh.
remove_outputs() {
    if $build_onefile; then rm -rf "$DIST/appliance"; fi
    if $build_onedir; then rm -rf "$DIST/appliance-onedir"; fi
    rm -rf "$DIST/build-info.json" "$WORK/onefile-contents"
}
remove_outputs
trap remove_outputs EXIT
trap 'exit 130' INT TERM
start=$(date +%s)
"$VENV/bin/python" -m PyInstaller --noconfirm --clean --log-level WARN \
    --distpath "$DIST" --workpath "$WORK" packaging/appliance.spec || {
    remove_outputs
    die "PyInstaller failed (see above)"
}
end=$(date +%s)

# A quick check that what was built starts at all, and is this checkout's version.
for exe in "$DIST/appliance" "$DIST/appliance-onedir/appliance"; do
    [ -e "$exe" ] || continue
    out=$("$exe" --version) || { remove_outputs; die "$exe --version failed"; }
    [ "$out" = "appliance $version" ] || { remove_outputs; die "$exe --version says '$out', not 'appliance $version'"; }
done

# -- the glibc floor: every bundled ELF file -------------------------------------------------------
rm -f "$WORK/floor-onedir.json" "$WORK/floor-onefile.json" "$WORK/onefile-archive.json"
floor_fail() {
    remove_outputs
    rm -rf "$WORK/onefile-contents"
    die "the $1 build needs a newer glibc than $declared ($declared_from); its outputs were deleted. Build on an older system (packaging/README.md), or set GLIBC_FLOOR= higher if that is really the target."
}
if $build_onedir; then
    echo "build.sh: glibc check of $DIST/appliance-onedir:"
    "$VENV/bin/python" packaging/glibc_floor.py --max "$declared" --json "$WORK/floor-onedir.json" \
        "$DIST/appliance-onedir" || floor_fail one-folder
fi
if $build_onefile; then
    # The one-file program is the bootloader (an ELF) with the bundle appended, compressed: unpack
    # the bundle's files to scan them too.
    rm -rf "$WORK/onefile-contents"
    "$VENV/bin/python" - "$DIST/appliance" "$WORK/onefile-contents" "$WORK/onefile-archive.json" <<'EOF' || { remove_outputs; die "cannot read the one-file archive"; }
import json, sys
from pathlib import Path
from PyInstaller.archive.readers import CArchiveReader

exe, out, info = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
archive = CArchiveReader(exe)
files = unpacked = 0
for name, (_offset, _length, ulen, _compressed, typecode) in archive.toc.items():
    unpacked += ulen
    if typecode not in ("b", "x"):  # binaries and data files; not modules, PYZ, options, links
        continue
    files += 1
    dest = out / name
    if dest.resolve().is_relative_to(out.resolve()):
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(archive.extract(name))
info.write_text(json.dumps({"entries": len(archive.toc), "files": files, "unpacked_bytes": unpacked}) + "\n")
EOF
    echo "build.sh: glibc check of $DIST/appliance (bootloader and unpacked bundle):"
    "$VENV/bin/python" packaging/glibc_floor.py --max "$declared" --json "$WORK/floor-onefile.json" \
        "$DIST/appliance" "$WORK/onefile-contents" || floor_fail one-file
    rm -rf "$WORK/onefile-contents"
fi

# -- what was built ----------------------------------------------------------------------------------
BUILD_INFO_ARCH=$arch BUILD_INFO_VERSION=$version BUILD_INFO_PYINSTALLER=$pyinstaller_version \
    BUILD_INFO_DECLARED=$declared BUILD_INFO_DECLARED_FROM=$declared_from BUILD_INFO_BUILD_GLIBC=$build_glibc \
    BUILD_INFO_LOCK_SHA=$lock_sha BUILD_INFO_SECONDS=$((end - start)) BUILD_INFO_VENV_SECONDS=$((venv_end - venv_start)) \
    BUILD_INFO_DIST=$DIST BUILD_INFO_WORK=$WORK BUILD_INFO_MODE=$MODE BUILD_INFO_ONEDIR=$build_onedir \
    BUILD_INFO_ONEFILE=$build_onefile \
    "$VENV/bin/python" - <<'EOF' || { remove_outputs; die "cannot write build-info.json"; }
import json, os, platform, shlex, sys, time
from pathlib import Path

env = os.environ
dist, work = Path(env["BUILD_INFO_DIST"]), Path(env["BUILD_INFO_WORK"])


def os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return shlex.split(line.split("=", 1)[1])[0]
    except (OSError, IndexError):
        pass
    return "unknown"


def load(name: str) -> dict:
    p = work / name
    return json.loads(p.read_text()) if p.exists() else {}


def inside(file: str) -> str:
    """A file unpacked from the one-file archive for the scan, named as part of that program."""
    unpacked = str(work / "onefile-contents") + "/"
    return f"{dist / 'appliance'}:{file[len(unpacked):]}" if file.startswith(unpacked) else file


def floor_summary(data: dict) -> dict:
    levels = list(data.get("by_glibc", {}).items())
    return {
        "glibc_floor": data.get("glibc_floor"),
        "elf_files": data.get("elf_files"),
        "set_by": [dict(e, file=inside(e["file"]), glibc=v) for v, entries in levels[:2] for e in entries],
        "cxx_unmet": data.get("cxx_unmet", {}),
    }


outputs = {}
onedir = dist / "appliance-onedir"
if env["BUILD_INFO_ONEDIR"] == "true":
    files = [p for p in onedir.rglob("*") if p.is_file() and not p.is_symlink()]
    parts: dict[str, list[int]] = {}
    for p in files:
        rel = p.relative_to(onedir).parts
        key = "/".join(rel[:2]) if rel[0] == "_internal" and len(rel) > 2 else "/".join(rel)
        parts.setdefault(key, [0, 0])
        parts[key][0] += 1
        parts[key][1] += p.stat().st_size
    biggest = sorted(parts.items(), key=lambda kv: kv[1][0], reverse=True)[:8]
    outputs["onedir"] = {
        "path": str(onedir),
        "bytes": sum(p.stat().st_size for p in files),
        "files": len(files),
        "most_files": {k: {"files": n, "bytes": b} for k, (n, b) in biggest},
        **floor_summary(load("floor-onedir.json")),
    }
onefile = dist / "appliance"
if env["BUILD_INFO_ONEFILE"] == "true":
    outputs["onefile"] = {
        "path": str(onefile),
        "bytes": onefile.stat().st_size,
        "archive": load("onefile-archive.json"),
        **floor_summary(load("floor-onefile.json")),
    }
floors = [o["glibc_floor"] for o in outputs.values() if o.get("glibc_floor")]
info = {
    "appliance": env["BUILD_INFO_VERSION"],
    "arch": env["BUILD_INFO_ARCH"],
    "mode": env["BUILD_INFO_MODE"],
    "python": platform.python_version(),
    "pyinstaller": env["BUILD_INFO_PYINSTALLER"],
    "base_system": os_name(),
    "build_machine_glibc": env["BUILD_INFO_BUILD_GLIBC"] or None,
    "glibc_floor": max(floors, key=lambda v: tuple(map(int, v.split(".")))) if floors else None,
    "glibc_max_declared": env["BUILD_INFO_DECLARED"],
    "glibc_max_from": env["BUILD_INFO_DECLARED_FROM"],
    "lock_sha256": env["BUILD_INFO_LOCK_SHA"],
    "venv_seconds": int(env["BUILD_INFO_VENV_SECONDS"]),
    "pyinstaller_seconds": int(env["BUILD_INFO_SECONDS"]),
    "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "outputs": outputs,
}
(dist / "build-info.json").write_text(json.dumps(info, indent=2) + "\n")
mib = lambda n: f"{n / 2**20:.0f} MiB"  # noqa: E731
shapes = []
if "onedir" in outputs:
    shapes.append(f"onedir {mib(outputs['onedir']['bytes'])} in {outputs['onedir']['files']} files")
if "onefile" in outputs:
    shapes.append(f"onefile {mib(outputs['onefile']['bytes'])}")
print(
    f"build.sh: {info['arch']}, {info['base_system']}, Python {info['python']}: glibc floor {info['glibc_floor']}"
    f" (allowed {info['glibc_max_declared']}, {info['glibc_max_from']}); {'; '.join(shapes)};"
    f" PyInstaller {info['pyinstaller_seconds']} s; {dist / 'build-info.json'}"
)
EOF
trap - EXIT INT TERM # built, checked and described: the outputs stay
earlier() {
    echo "build.sh: note: $1 is left from an earlier build (not made by this MODE=$MODE run; not in build-info.json)"
}
if ! $build_onefile && [ -e "$DIST/appliance" ]; then earlier "$DIST/appliance"; fi
if ! $build_onedir && [ -e "$DIST/appliance-onedir" ]; then earlier "$DIST/appliance-onedir"; fi
