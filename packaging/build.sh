#!/bin/sh
# Build the appliance's frozen executable with PyInstaller, for the machine this runs on.
set -eu

usage() {
    cat <<'EOF'
usage: packaging/build.sh [--help]

Builds the frozen appliance with PyInstaller from packaging/appliance.spec, for the
architecture and C library of this machine (PyInstaller cannot cross-compile: build an
aarch64 binary on an aarch64 machine or container; see packaging/README.md).

  dist/appliance                    one file; unpacks itself to a temporary folder at each start
  dist/appliance-onedir/appliance   one folder; starts faster; what the systemd unit runs

environment:
  MODE=onefile|onedir|both    what to build (default both)
  VENV=DIR                    the virtualenv with the appliance installed (default .venv);
                              PyInstaller (>=6) is installed into it when missing
  DIST=DIR                    output folder (default dist)
  WORK=DIR                    PyInstaller's work folder (default build/pyinstaller)

`make binary` runs this after making the venv.
EOF
}

case "${1:-}" in
-h | --help) usage; exit 0 ;;
"") ;;
*) usage >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.."
MODE=${MODE:-both}
VENV=${VENV:-.venv}
DIST=${DIST:-dist}
WORK=${WORK:-build/pyinstaller}
case "$MODE" in
onefile | onedir | both) ;;
*) echo "build.sh: MODE must be onefile, onedir or both, not '$MODE'" >&2; exit 2 ;;
esac
export MODE
# The stdlib's distutils, not setuptools' copy (which also warns when the spec looks it up).
export SETUPTOOLS_USE_DISTUTILS=stdlib

if [ ! -x "$VENV/bin/python" ]; then
    echo "build.sh: no virtualenv at $VENV: run 'make binary' (or 'make test' once) first" >&2
    exit 1
fi
if ! "$VENV/bin/python" -c 'import appliance' 2>/dev/null; then
    echo "build.sh: the appliance is not installed in $VENV: run '$VENV/bin/pip install -e .'" >&2
    exit 1
fi
if ! "$VENV/bin/python" -c 'import PyInstaller, sys; sys.exit(int(PyInstaller.__version__.split(".")[0]) < 6)' 2>/dev/null; then
    echo "build.sh: installing PyInstaller into $VENV" >&2
    "$VENV/bin/pip" install --quiet 'pyinstaller>=6,<7'
fi
for tool in objdump objcopy strip; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "build.sh: PyInstaller needs '$tool' from binutils: install it (Debian: apt-get install binutils)" >&2
        exit 1
    fi
done

arch=$(uname -m)
echo "build.sh: building MODE=$MODE for $arch with $("$VENV/bin/python" -c 'import PyInstaller; print("PyInstaller", PyInstaller.__version__)') and $("$VENV/bin/python" -V)"
start=$(date +%s)
# Old outputs go first, so a failed build never leaves the previous binary looking fresh.
case "$MODE" in
onefile) rm -f "$DIST/appliance" ;;
onedir) rm -rf "$DIST/appliance-onedir" ;;
both) rm -rf "$DIST/appliance" "$DIST/appliance-onedir" ;;
esac
"$VENV/bin/pyinstaller" --noconfirm --clean --log-level WARN \
    --distpath "$DIST" --workpath "$WORK" packaging/appliance.spec
end=$(date +%s)

# A quick check that what was built starts at all.
for exe in "$DIST/appliance" "$DIST/appliance-onedir/appliance"; do
    [ -e "$exe" ] || continue
    "$exe" --version >/dev/null || { echo "build.sh: $exe --version failed" >&2; exit 1; }
done

echo "build.sh: built in $((end - start)) s ($arch):"
if [ -e "$DIST/appliance" ]; then
    echo "  $DIST/appliance                    $(du -sh "$DIST/appliance" | cut -f1)  (one file)"
fi
if [ -d "$DIST/appliance-onedir" ]; then
    echo "  $DIST/appliance-onedir/appliance   $(du -sh "$DIST/appliance-onedir" | cut -f1)  (one folder, $(find "$DIST/appliance-onedir" -type f | wc -l) files)"
fi
