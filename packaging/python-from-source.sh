#!/bin/sh
# Build CPython 3.11 with a shared libpython into /opt/python3.11, inside a Debian root, from
# Debian's own python3.11 source package (bookworm), checked against the archive's signatures.
set -eu

PREFIX=/opt/python3.11
PY=$PREFIX/bin/python3.11
LIBPY=$PREFIX/lib/libpython3.11.so.1.0
SOURCE_PACKAGE=python3.11
# The first patch of debian/patches/series that is an upstream fix rather than Debian's own
# layout: Debian appends the fixes of bookworm's stable and security updates from here on.
FIRST_FIX_PATCH=shutdown-deadlock.diff
# C extension modules the result must have (tkinter is left out on purpose).
MODULES="ssl, _ssl, sqlite3, _sqlite3, lzma, _lzma, bz2, _bz2, zlib, ctypes, _ctypes, uuid, _uuid"
MODULES="$MODULES, readline, curses, _curses, _curses_panel, dbm.gnu, dbm.ndbm, decimal, _decimal"
MODULES="$MODULES, hashlib, _hashlib, pyexpat, nis"
TOOL_DEPS="pkg-config patch curl ca-certificates xz-utils gpgv"
LIB_DEPS="libssl-dev zlib1g-dev libffi-dev libsqlite3-dev liblzma-dev libbz2-dev libreadline-dev
 libncursesw5-dev libgdbm-dev libgdbm-compat-dev uuid-dev libexpat1-dev libnsl-dev"
BUILD_DEPS="build-essential $TOOL_DEPS $LIB_DEPS"
# --cross aarch64: the shared objects of lib-dynload that must be there (the cross build cannot
# import them), for the same modules as MODULES.
CROSS_EXTENSIONS="_ssl _sqlite3 _lzma _bz2 zlib _ctypes _uuid readline _curses _curses_panel _gdbm
 _dbm _decimal _hashlib pyexpat nis"

usage() {
    cat <<EOF
usage: packaging/python-from-source.sh [--no-patches] [--pgo] [--help]
       packaging/python-from-source.sh --cross aarch64 --out FILE.tar.gz [--no-patches]

Run as root inside a Debian root (bullseye, any architecture). Makes sure that
$PY exists, with its shared library $LIBPY
(PyInstaller needs it), and exits at once when it is already there and imports
every C module listed below. Otherwise:

  1. installs the build dependencies with apt-get, from the root's own suite;
  2. downloads the orig tarball (upstream CPython) and the debian.tar.xz of Debian's
     python3.11 source package from bookworm, bookworm-updates or bookworm-security,
     whichever has the newest version that downloads: InRelease is checked with gpgv
     against the root's Debian archive keyring, Sources.xz against InRelease's
     SHA256, each file against Sources.xz's Checksums-Sha256;
  3. applies Debian's upstream-fix patches (the series from $FIRST_FIX_PATCH on:
     security backports; none of Debian's layout patches), then
     ./configure --prefix=$PREFIX --enable-shared --with-ensurepip=install
       --with-system-expat LDFLAGS=-Wl,-rpath,$PREFIX/lib
     make -j\$(nproc), make install; writes $PREFIX/BUILD-INFO.txt;
  4. removes its work folder under \${TMPDIR:-/tmp} (kept, and named, when a step fails).

It writes nothing outside $PREFIX and \${TMPDIR:-/tmp}, apart from apt's own places.
About 2.5 minutes on two x86_64 cores; hours under arm64 emulation.

Cross mode (--cross aarch64, in an x86_64 bullseye root that already has the native
$PY above, of the same version): the same checked, patched source is
cross-compiled for aarch64 with crossbuild-essential-arm64 and the :arm64 development
packages (dpkg --add-architecture arm64; apt-get installs them), configured with
  --host=aarch64-linux-gnu --build=x86_64-linux-gnu --with-build-python=$PY
and the same options as above, installed with make install DESTDIR=..., checked (every
extension module's shared object is there and is aarch64; no module failed) and packed as
FILE.tar.gz holding opt/python3.11 (unpack with tar -xzf FILE -C /). The native
$PREFIX is left alone. Minutes instead of hours: packaging/build-in-root bullseye
arm64 unpacks it into the emulated root, where the check above then passes.

options:
  --cross ARCH   cross-compile for ARCH (only aarch64) into the tarball --out names
  --out FILE     the tarball of --cross (its folder must exist)
  --no-patches   build the plain upstream source of the orig tarball (no Debian patches)
  --pgo          ./configure --enable-optimizations (profile-guided: several times slower)

environment:
  DEBIAN_MIRROR           default http://deb.debian.org/debian
  DEBIAN_SECURITY_MIRROR  default http://deb.debian.org/debian-security; empty: not asked
  DEBIAN_KEYRING          default /usr/share/keyrings/debian-archive-keyring.gpg

modules checked: $MODULES
EOF
}

PATCHES=yes
PGO=no
CROSS=""
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
    -h | --help) usage; exit 0 ;;
    --cross)
        [ $# -ge 2 ] || { echo "python-from-source.sh: --cross needs an architecture (aarch64)" >&2; exit 2; }
        CROSS=$2
        shift
        ;;
    --out)
        [ $# -ge 2 ] || { echo "python-from-source.sh: --out needs a file name" >&2; exit 2; }
        OUT=$2
        shift
        ;;
    --no-patches) PATCHES=no ;;
    --pgo) PGO=yes ;;
    *) echo "python-from-source.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done

MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR-http://deb.debian.org/debian-security}
KEYRING=${DEBIAN_KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}

say() { echo "python-from-source: $*" >&2; }
die() { echo "python-from-source: error: $*" >&2; exit 1; }
now() { date +%s; }

case "$CROSS" in
"") [ -z "$OUT" ] || die "--out goes with --cross aarch64" ;;
aarch64)
    CROSS_TRIPLET=aarch64-linux-gnu CROSS_DEB_ARCH=arm64
    [ -n "$OUT" ] || die "--cross aarch64 needs --out FILE.tar.gz (where the cross-built $PREFIX goes)"
    case "$OUT" in /*) ;; *) OUT="$(pwd)/$OUT" ;; esac
    [ -d "$(dirname "$OUT")" ] || die "the folder of --out $OUT does not exist"
    ;;
*) die "--cross: only aarch64 is supported, not '$CROSS'" ;;
esac

works() {
    [ -x "$PY" ] && [ -e "$LIBPY" ] && "$PY" -W ignore::DeprecationWarning -c "import $MODULES" 2>/dev/null
}

if [ -n "$CROSS" ]; then
    [ "$(uname -m)" = x86_64 ] || die "--cross runs in an x86_64 root, not on $(uname -m)"
    works || die "--cross needs the native $PY (same version) as the build Python: run packaging/python-from-source.sh without --cross first"
    say "cross-compiling CPython for $CROSS with the build Python $PY ($("$PY" -V 2>&1)) into $OUT"
    BUILD_DEPS="crossbuild-essential-$CROSS_DEB_ARCH $TOOL_DEPS"
    for pkg in $LIB_DEPS; do BUILD_DEPS="$BUILD_DEPS $pkg:$CROSS_DEB_ARCH"; done
elif works; then
    say "$PY is present and works ($("$PY" -V 2>&1)); nothing to do"
    exit 0
elif [ -x "$PY" ] && [ -s "$PREFIX/DEBIAN-RUNTIME-PACKAGES" ]; then
    # A prefix unpacked from a --cross tarball: it names the Debian packages of the shared
    # libraries it links; with those installed it works, and nothing is compiled here.
    missing=""
    for pkg in $(cat "$PREFIX/DEBIAN-RUNTIME-PACKAGES"); do
        case "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)" in
        *" installed") ;;
        *) missing="$missing $pkg" ;;
        esac
    done
    if [ -n "$missing" ] && [ "$(id -u)" = 0 ]; then
        say "$PY was unpacked from a cross build; installing the libraries it needs:$missing"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >/dev/null || die "apt-get update failed: check the root's /etc/apt/sources.list and its network (DNS)"
        # shellcheck disable=SC2086 # one word per package
        apt-get install -y -q --no-install-recommends $missing >/dev/null || die "apt-get install failed:$missing"
    fi
    if works; then
        say "$PY (unpacked from a cross build) works ($("$PY" -V 2>&1)); nothing to do"
        exit 0
    fi
    say "$PY (unpacked from a cross build) does not import every module; building it here instead"
fi

[ "$(id -u)" = 0 ] || die "run me as root inside the Debian root (debroot.py run ... -- sh packaging/python-from-source.sh)"
command -v apt-get >/dev/null 2>&1 && [ -r /etc/debian_version ] ||
    die "this is not a Debian system: run me inside a Debian root (packaging/debroot.py)"

START=$(now)
TIMES=""
phase_done() { # NAME START: prints and records how long a phase took
    took=$(($(now) - $2))
    TIMES="$TIMES  $1: ${took} s
"
    say "$1 done in ${took} s"
}

# -- 1. build dependencies ----------------------------------------------------------------------
t=$(now)
missing=""
for pkg in $BUILD_DEPS; do
    case "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)" in
    *" installed") ;;
    *) missing="$missing $pkg" ;;
    esac
done
if [ -n "$missing" ]; then
    say "apt-get install:$missing"
    export DEBIAN_FRONTEND=noninteractive
    if [ -n "$CROSS" ] && ! dpkg --print-foreign-architectures | grep -qx "$CROSS_DEB_ARCH"; then
        say "dpkg --add-architecture $CROSS_DEB_ARCH"
        dpkg --add-architecture "$CROSS_DEB_ARCH"
    fi
    apt-get update -q >/dev/null || die "apt-get update failed: check the root's /etc/apt/sources.list and its network (DNS)"
    # shellcheck disable=SC2086 # one word per package
    apt-get install -y -q --no-install-recommends $missing >/dev/null ||
        die "apt-get install failed:$missing"
else
    say "build dependencies already installed"
fi
phase_done "build dependencies (apt-get)" "$t"

# -- 2. source: Debian's python3.11 from bookworm, checked from InRelease down ----------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/python3.11-build.XXXXXX")
HELPER_PID=""
on_exit() {
    status=$?
    [ -z "$HELPER_PID" ] || kill "$HELPER_PID" 2>/dev/null || true
    if [ "$status" != 0 ] && [ -d "$WORK" ]; then
        say "failed; the work folder is kept for a look: $WORK (remove it with rm -rf)"
    fi
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
export HOME="$WORK/home" PIP_NO_CACHE_DIR=1 # nothing lands in root's home
mkdir -p "$HOME" "$WORK/index"

fetch() { # URL FILE
    curl -fsSL --retry 3 --connect-timeout 30 -o "$2" "$1"
}

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

[ -r "$KEYRING" ] || die "no Debian archive keyring at $KEYRING: apt-get install debian-archive-keyring, or set DEBIAN_KEYRING"

# verified_sources BASE SUITE: prints the checked, uncompressed Sources file of SUITE/main, or fails
verified_sources() {
    base=$1 suite=$2 dir="$WORK/index/$2"
    mkdir -p "$dir"
    fetch "$base/dists/$suite/InRelease" "$dir/InRelease" || return 1
    gpgv --status-fd 3 --keyring "$KEYRING" --output "$dir/Release" "$dir/InRelease" \
        3>"$dir/gpgv.status" 2>"$dir/gpgv.log" || true
    if ! grep -q '^\[GNUPG:\] VALIDSIG ' "$dir/gpgv.status" ||
        grep -qE '^\[GNUPG:\] (BADSIG|EXPKEYSIG|REVKEYSIG) ' "$dir/gpgv.status"; then
        cat "$dir/gpgv.log" >&2
        die "$base/dists/$suite/InRelease has no good signature from $KEYRING"
    fi
    until=$(sed -n 's/^Valid-Until: //p' "$dir/Release")
    if [ -n "$until" ] && [ "$(date -d "$until" +%s)" -lt "$(now)" ]; then
        die "$base/dists/$suite/InRelease expired on $until (a stale mirror?)"
    fi
    expected=$(awk '/^SHA256:/ { s = 1; next } /^[^ ]/ { s = 0 }
        s && $3 == "main/source/Sources.xz" { print $1; exit }' "$dir/Release")
    [ -n "$expected" ] || die "$suite's InRelease lists no main/source/Sources.xz"
    fetch "$base/dists/$suite/main/source/Sources.xz" "$dir/Sources.xz" || return 1
    [ "$(sha256_of "$dir/Sources.xz")" = "$expected" ] ||
        die "$base/dists/$suite/main/source/Sources.xz does not match the SHA256 in its signed InRelease"
    xz -dc "$dir/Sources.xz" >"$dir/Sources"
}

# stanza SOURCES: "version directory" then "sha256 size name" lines of the python3.11 stanza
stanza() {
    awk -v want="$SOURCE_PACKAGE" '
        function flush() {
            if (pkg == want && ver != "") { print ver, dir; for (i = 1; i <= n; i++) print f[i] }
            pkg = ""; ver = ""; dir = ""; n = 0; sha = 0
        }
        /^$/ { flush(); next }
        /^ / { if (sha) f[++n] = $1 " " $2 " " $3; next }
        { sha = ($1 == "Checksums-Sha256:") }
        $1 == "Package:" { pkg = $2 }
        $1 == "Version:" { ver = $2 }
        $1 == "Directory:" { dir = $2 }
        END { flush() }' "$1"
}

t=$(now)
: >"$WORK/candidates"
for spec in "$MIRROR bookworm" "$MIRROR bookworm-updates" "$SECURITY_MIRROR bookworm-security"; do
    set -- $spec
    [ $# = 2 ] || continue # no security mirror
    if ! verified_sources "$1" "$2"; then
        say "could not download the index of $2 from $1; skipping it"
        continue
    fi
    stanza "$WORK/index/$2/Sources" >"$WORK/index/$2/stanza"
    if [ -s "$WORK/index/$2/stanza" ]; then
        read -r version _ <"$WORK/index/$2/stanza"
        say "$2 has $SOURCE_PACKAGE $version"
        echo "$version $2 $1" >>"$WORK/candidates"
    fi
done
[ -s "$WORK/candidates" ] || die "no bookworm suite lists $SOURCE_PACKAGE: check DEBIAN_MIRROR ($MIRROR)"

# Newest version first; the first one whose files download and match wins.
sort_versions() {
    while read -r v rest; do
        n=0
        while read -r w _; do
            if dpkg --compare-versions "$w" gt "$v"; then n=$((n + 1)); fi
        done <"$WORK/candidates"
        echo "$n $v $rest"
    done <"$WORK/candidates" | sort -n | cut -d' ' -f2-
}

CHOSEN=""
skipped=""
for line in $(sort_versions | tr ' ' '|'); do
    version=${line%%|*} rest=${line#*|} suite=${rest%%|*} base=${rest#*|}
    dir="$WORK/index/$suite"
    directory=$(head -n 1 "$dir/stanza" | cut -d' ' -f2)
    ok=yes
    : >"$WORK/files"
    for kind in orig debian; do
        entry=$(tail -n +2 "$dir/stanza" | awk -v k="$kind" '$3 ~ ("\\." k "\\.tar\\.(gz|xz|bz2)$") { print; exit }')
        [ -n "$entry" ] || { ok=no; break; }
        set -- $entry
        if ! fetch "$base/$directory/$3" "$WORK/$3"; then
            skipped="$skipped $version ($suite: $3 did not download)"
            ok=no
            break
        fi
        [ "$(sha256_of "$WORK/$3")" = "$1" ] || die "$base/$directory/$3 does not match the SHA256 in $suite's Sources"
        echo "$kind $1 $3" >>"$WORK/files"
    done
    if [ $ok = yes ]; then
        CHOSEN="$version $suite $base/$directory"
        break
    fi
done
[ -n "$CHOSEN" ] || die "no version of $SOURCE_PACKAGE downloaded:$skipped"
read -r VERSION SUITE POOL <<EOF
$CHOSEN
EOF
say "using $SOURCE_PACKAGE $VERSION from $SUITE (sha256 checked from $SUITE's signed InRelease)"
[ -z "$skipped" ] || say "skipped newer:$skipped"
ORIG=$(awk '$1 == "orig" { print $3 }' "$WORK/files")
DEBIAN_TAR=$(awk '$1 == "debian" { print $3 }' "$WORK/files")
phase_done "download and check" "$t"

# -- 3. unpack, patch, configure, make, install ---------------------------------------------------
t=$(now)
mkdir "$WORK/src" "$WORK/debian-src"
tar -xf "$WORK/$ORIG" -C "$WORK/src" --strip-components=1
[ -x "$WORK/src/configure" ] || die "$ORIG has no configure at its top"
APPLIED=""
if [ $PATCHES = yes ]; then
    tar -xf "$WORK/$DEBIAN_TAR" -C "$WORK/debian-src"
    series="$WORK/debian-src/debian/patches/series"
    [ -r "$series" ] || die "$DEBIAN_TAR has no debian/patches/series (rerun with --no-patches?)"
    sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$series" | awk '{ print $1 }' |
        sed -n "/^$(echo "$FIRST_FIX_PATCH" | sed 's/\./\\./g')\$/,\$p" >"$WORK/fixes"
    [ -s "$WORK/fixes" ] ||
        die "$FIRST_FIX_PATCH is not in $DEBIAN_TAR's series any more: check which patches to take, or rerun with --no-patches"
    while read -r p; do
        patch -d "$WORK/src" -p1 -N -s -F0 --no-backup-if-mismatch \
            <"$WORK/debian-src/debian/patches/$p" >"$WORK/patch.log" 2>&1 || {
            cat "$WORK/patch.log" >&2
            die "Debian's patch $p does not apply to the orig source: rerun with --no-patches for plain upstream"
        }
        APPLIED="$APPLIED $p"
    done <"$WORK/fixes"
    say "applied $(wc -l <"$WORK/fixes") upstream-fix patches from $DEBIAN_TAR (from $FIRST_FIX_PATCH on)"
    # The fix for CVE-2026-4224 makes pyexpat.c include an internal header, fine in Debian's
    # build (pyexpat built into the interpreter) but an #error for a shared module: say what
    # kind of module it is, the way upstream's other modules with internal headers do.
    expat_c="$WORK/src/Modules/pyexpat.c"
    if grep -q '#include "pycore_' "$expat_c" && ! grep -q Py_BUILD_CORE "$expat_c"; then
        sed -i '1i\
#ifndef Py_BUILD_CORE_BUILTIN\
#  define Py_BUILD_CORE_MODULE 1\
#endif' "$expat_c"
        APPLIED="$APPLIED pyexpat-Py_BUILD_CORE_MODULE(this script)"
    fi
fi
phase_done "unpack and patch" "$t"

if [ -z "$CROSS" ] && [ -e "$PREFIX" ]; then
    # A broken earlier install would also be found by the new build's python through its rpath.
    say "$PREFIX exists but does not work (or lacks a module): removing it and building again"
    rm -rf "$PREFIX"
fi

# run_logged NAME LOG CMD...: CMD's output goes to LOG; a line a minute shows it still runs
run_logged() {
    name=$1 logfile=$2
    shift 2
    "$@" >"$logfile" 2>&1 &
    HELPER_PID=$!
    began=$(now) last=$(now)
    while kill -0 "$HELPER_PID" 2>/dev/null; do
        sleep 2
        if [ $(($(now) - last)) -ge 60 ]; then
            last=$(now)
            say "$name: running for $((last - began)) s ($(find "$WORK/src" -name '*.o' | wc -l) object files so far)"
        fi
    done
    code=0
    wait "$HELPER_PID" || code=$?
    HELPER_PID=""
    if [ "$code" != 0 ]; then
        tail -n 40 "$logfile" >&2
        die "$name failed (exit $code); the whole output is in $logfile"
    fi
}

CONFIGURE="--prefix=$PREFIX --enable-shared --with-ensurepip=install --with-system-expat"
[ $PGO = no ] || CONFIGURE="$CONFIGURE --enable-optimizations"
if [ -n "$CROSS" ]; then
    CONFIGURE="$CONFIGURE --host=$CROSS_TRIPLET --build=x86_64-linux-gnu --with-build-python=$PY"
    # What configure cannot find out by running a program on the build machine: answers for
    # Linux (glibc) on the target, the way a native configure there finds them.
    cat >"$WORK/config.site" <<EOF
ac_cv_file__dev_ptmx=yes
ac_cv_file__dev_ptc=no
ac_cv_buggy_getaddrinfo=no
EOF
    export CONFIG_SITE="$WORK/config.site"
    # pkg-config finds the target's .pc files only, never the build machine's.
    export PKG_CONFIG="$CROSS_TRIPLET-pkg-config"
    export PKG_CONFIG_LIBDIR="/usr/lib/$CROSS_TRIPLET/pkgconfig:/usr/share/pkgconfig"
    command -v "$PKG_CONFIG" >/dev/null 2>&1 || PKG_CONFIG=pkg-config
fi
t=$(now)
say "configure $CONFIGURE LDFLAGS=-Wl,-rpath,$PREFIX/lib"
cd "$WORK/src"
# shellcheck disable=SC2086 # one word per option
run_logged configure "$WORK/configure.log" ./configure $CONFIGURE "LDFLAGS=-Wl,-rpath,$PREFIX/lib"
phase_done configure "$t"

t=$(now)
JOBS=$(nproc)
say "make -j$JOBS (output in $WORK/make.log)"
run_logged make "$WORK/make.log" make -j"$JOBS"
phase_done make "$t"
# The build's own lists of modules it left out (only _tkinter is expected) or failed to build.
awk '/necessary bits to build these optional modules|Failed to build these modules|were not built|failed to import/ {
    s = 1 } s && /^$/ { s = 0 } s' "$WORK/make.log" >"$WORK/modules.txt"
cat "$WORK/modules.txt" >&2
if grep -q -e 'Failed to build' -e 'failed to import' "$WORK/modules.txt"; then
    die "some modules did not build (see above); their compiler output is in $WORK/make.log"
fi

if [ -n "$CROSS" ]; then
    t=$(now)
    DEST="$WORK/dest"
    say "make install DESTDIR=$DEST"
    run_logged "make install" "$WORK/install.log" make install DESTDIR="$DEST"
    phase_done "make install" "$t"
    XPY="$DEST$PY" XLIBPY="$DEST$LIBPY"
    [ -e "$XPY" ] && [ -e "$XLIBPY" ] || die "make install left no $PY or $LIBPY under $DEST"
    dynload="$DEST$PREFIX/lib/python3.11/lib-dynload"
    absent=""
    for ext in $CROSS_EXTENSIONS; do
        set -- "$dynload/$ext".cpython-311-*.so
        [ -e "$1" ] || absent="$absent $ext"
    done
    [ -z "$absent" ] || die "extension modules missing from $dynload:$absent (their compiler output is in $WORK/make.log)"
    for elf in "$XPY" "$XLIBPY" "$dynload"/_ssl.cpython-311-*.so; do
        "$CROSS_TRIPLET-readelf" -h "$elf" | grep -q 'Machine:.*AArch64' || die "$elf is not an AArch64 program"
    done
    # The newest glibc symbol version the build links against (the program's floor).
    floor=$(find "$DEST$PREFIX" -name '*.so*' -o -path '*/bin/python3.11' | while read -r f; do
        "$CROSS_TRIPLET-objdump" -T "$f" 2>/dev/null; done |
        grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -t. -k1,1n -k2,2n -k3,3n -u | tail -n 1)
    say "cross build is aarch64, has every extension module, needs glibc >= $floor"
    # The Debian packages (of the target architecture) holding the libraries it links, for the
    # root it is unpacked into (see the check at the top).
    find "$DEST$PREFIX" -name '*.so*' -o -path '*/bin/python3.11' | while read -r f; do
        "$CROSS_TRIPLET-readelf" -d "$f" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p'
    done | sort -u | while read -r lib; do
        for d in /lib/$CROSS_TRIPLET /usr/lib/$CROSS_TRIPLET; do
            pkg=$(dpkg -S "$d/$lib" 2>/dev/null | sed -n "s/^\([^:]*\):$CROSS_DEB_ARCH: .*/\1/p")
            if [ -n "$pkg" ]; then
                echo "$pkg"
                break
            fi
        done
    done | sort -u >"$DEST$PREFIX/DEBIAN-RUNTIME-PACKAGES"
    say "it links libraries of: $(tr '\n' ' ' <"$DEST$PREFIX/DEBIAN-RUNTIME-PACKAGES")"
    SOURCE_INFO="cross-compiled for $CROSS ($CROSS_TRIPLET-gcc $("$CROSS_TRIPLET-gcc" -dumpversion)) by packaging/python-from-source.sh --cross $CROSS on $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    cat >"$DEST$PREFIX/BUILD-INFO.txt" <<EOF
CPython $("$PY" -c 'import platform; print(platform.python_version())') $SOURCE_INFO
source: Debian $SOURCE_PACKAGE $VERSION from $SUITE ($POOL)
$(awk '{ print "sha256 " $2 "  " $3 }' "$WORK/files")
checked: InRelease signature (gpgv, $KEYRING) -> Sources.xz SHA256 -> files' Checksums-Sha256
patches: ${APPLIED:- none (plain upstream source)}
configure: $CONFIGURE LDFLAGS=-Wl,-rpath,$PREFIX/lib
build system: $(cat /etc/debian_version) $(dpkg --print-architecture), build Python $PY, target libraries from $(dpkg-query -W -f='${Package}:${Architecture} ${Version}' "libc6-dev:$CROSS_DEB_ARCH" 2>/dev/null || echo "libc6-dev-$CROSS_DEB_ARCH-cross")
glibc floor (newest GLIBC_ symbol version needed): $floor
EOF
    t=$(now)
    tar -C "$DEST" -czf "$OUT.part" "${PREFIX#/}"
    mv "$OUT.part" "$OUT"
    phase_done "pack $(basename "$OUT") ($(du -h "$OUT" | cut -f1))" "$t"
    cd /
    rm -rf "$WORK"
    say "$OUT ready; times:"
    printf '%s' "$TIMES" >&2
    say "total $(($(now) - START)) s"
    exit 0
fi

t=$(now)
say "make install into $PREFIX"
run_logged "make install" "$WORK/install.log" make install
phase_done "make install" "$t"

"$PY" -W ignore::DeprecationWarning -c "import $MODULES" || die "$PY was installed but cannot import every module of: $MODULES"
[ -e "$LIBPY" ] || die "$LIBPY is missing after make install"
cat >"$PREFIX/BUILD-INFO.txt" <<EOF
CPython $("$PY" -c 'import platform; print(platform.python_version())') built by packaging/python-from-source.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ)
source: Debian $SOURCE_PACKAGE $VERSION from $SUITE ($POOL)
$(awk '{ print "sha256 " $2 "  " $3 }' "$WORK/files")
checked: InRelease signature (gpgv, $KEYRING) -> Sources.xz SHA256 -> files' Checksums-Sha256
patches: ${APPLIED:- none (plain upstream source)}
configure: $CONFIGURE LDFLAGS=-Wl,-rpath,$PREFIX/lib
build system: $(cat /etc/debian_version) $(dpkg --print-architecture), $(ldd --version | head -n 1)
EOF

cd /
rm -rf "$WORK"
say "$PY ready ($("$PY" -V 2>&1)); times:"
printf '%s' "$TIMES" >&2
say "total $(($(now) - START)) s"
