#!/usr/bin/env python3
"""Debian roots for building and running the appliance on another glibc or architecture.

An x86_64 Debian machine builds and runs aarch64 programs here without touching the kernel's
binfmt_misc table (the kernel is shared with other machines): qemu-user-static, proot and
libtalloc are unpacked from their Debian packages into a tools folder (no postinst, so no binfmt
registration), and every process of a foreign root runs under `proot -q qemu-aarch64-static`,
which follows execve. A root of the host's own architecture (a bullseye root for the glibc 2.31
build) is entered with chroot in a private mount namespace instead: native speed, and the bind
mounts vanish with the process.

Two traps of proot 5.1 are handled here. It does not translate the `faccessat2` and `statx`
system calls, so inside the guest `test -x`, `os.access`, `shutil.which` and `ldd` would answer
for host paths: a seccomp filter installed before proot starts makes those two calls fail with
ENOSYS for the whole process tree, and glibc and qemu fall back to calls proot translates. And
proot ignores SIGTERM, SIGINT and SIGHUP: `run` forwards them to the guest program, so stopping
the wrapper stops the program cleanly; if the wrapper itself is killed, proot and with it the
program are killed too.

    packaging/debroot.py make SUITE ARCH DIR [--include PKG,...]
    packaging/debroot.py run DIR [--bind PATH]... [--cwd PATH] [--root-user] -- CMD [ARGS...]

Only stdlib: it runs on the host's python3 before any venv exists.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

REPO = Path(__file__).resolve().parent.parent
TOOLS = REPO / "build" / "emu-tools"
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
SECURITY_MIRROR = os.environ.get("DEBIAN_SECURITY_MIRROR", "http://deb.debian.org/debian-security")
#: Debian architecture name for the host's `uname -m`.
DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
QEMU = {"arm64": "qemu-aarch64-static"}
#: Packages the emulation needs, unpacked (never installed) into TOOLS.
TOOL_PACKAGES = ("qemu-user-static", "proot", "libtalloc2")
#: The host's name resolution and CA certificates, so a program run inside reaches the network
#: the host reaches (a TLS-inspecting proxy's CA included). Copies are bound, never the files
#: themselves (a guest's update-ca-certificates would rewrite the host's bundle), and not while
#: maintaining a root (`--root-user`), whose packages manage their own.
HOST_FILES = ("/etc/resolv.conf", "/etc/ssl/certs/ca-certificates.crt")
HOST_COPIES = REPO / "build" / "host-files"
#: What a root was made as (suite, arch, packages), written last: its absence means unfinished.
MARKER = ".debroot.json"
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
APT_RETRIES = ["-o", "Acquire::Retries=5"]


def log(message: str) -> None:
    print(f"debroot: {message}", file=sys.stderr, flush=True)


def fail(message: str) -> NoReturn:
    raise SystemExit(f"debroot: {message}")


def host_arch() -> str:
    return DEB_ARCH.get(platform.machine(), platform.machine())


def described(root: Path) -> dict[str, object] | None:
    """The root's marker (suite, arch, include), or None when it is not a finished root."""
    try:
        doc = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def root_arch(root: Path) -> str:
    """The Debian architecture a finished root was made for."""
    doc = described(root)
    if doc is None:
        fail(
            f"{root} is not a finished root (no {MARKER}): make it with 'debroot.py make' (or make binary-arm64)"
        )
    return str(doc["arch"])


# -- tools ----------------------------------------------------------------------------------------
def tools() -> Path:
    """TOOLS with qemu-user-static, proot and libtalloc unpacked in it (downloaded on first use).

    apt-get download checks each package against the host's signed package lists.
    """
    if " " in str(TOOLS):
        fail(f"the checkout's path has a space ({REPO}): proot cannot take such a qemu path; move it")
    if (TOOLS / ".complete").exists():
        return TOOLS
    debs = TOOLS / "debs"
    shutil.rmtree(TOOLS, ignore_errors=True)
    debs.mkdir(parents=True)
    log(f"fetching {', '.join(TOOL_PACKAGES)} into {TOOLS} (unpacked only: no binfmt registration)")
    download = ["apt-get", *APT_RETRIES, "download", *TOOL_PACKAGES]
    if subprocess.run(download, cwd=debs, check=False).returncode != 0:
        if os.geteuid() != 0:
            fail("apt-get download failed; run 'apt-get update' as root, then try again")
        subprocess.run(["apt-get", *APT_RETRIES, "update", "-q"], check=True)
        subprocess.run(download, cwd=debs, check=True)
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(TOOLS)], check=True)
    (TOOLS / ".complete").touch()
    return TOOLS


# -- seccomp: faccessat2 and statx fail with ENOSYS -----------------------------------------------
class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


_AUDIT_ARCH_X86_64 = 0xC000003E
_X32_BIT = 0x40000000  # x32 system calls: the same numbers with this bit set
_X86_64_STATX, _X86_64_FACCESSAT2 = 332, 439
_RET_ALLOW, _RET_ENOSYS = 0x7FFF0000, 0x00050000 | 38  # SECCOMP_RET_ERRNO | ENOSYS
_LD_W_ABS, _JEQ_K, _RET_K, _ALU_AND_K = 0x20, 0x15, 0x06, 0x54
_FILTER = (
    (_LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
    (_JEQ_K, 0, 6, _AUDIT_ARCH_X86_64),  # another ABI: allow
    (_LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
    (_ALU_AND_K, 0, 0, ~_X32_BIT & 0xFFFFFFFF),  # x32 numbers too
    (_JEQ_K, 2, 0, _X86_64_STATX),
    (_JEQ_K, 1, 0, _X86_64_FACCESSAT2),
    (_RET_K, 0, 0, _RET_ALLOW),
    (_RET_K, 0, 0, _RET_ENOSYS),
    (_RET_K, 0, 0, _RET_ALLOW),
)
_PROGRAM = (_SockFilter * len(_FILTER))(*(_SockFilter(*f) for f in _FILTER))
_FPROG = _SockFprog(len(_FILTER), _PROGRAM)
_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 1, 38, 22, 2
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _prctl(option: int, arg: int, arg3: int = 0) -> None:
    if _LIBC.prctl(option, arg, arg3, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option})")


def _prepare_proot() -> None:
    """preexec_fn, in the child before it execs proot (all of it inherited by the guest):
    its own process group (a terminal's Ctrl-C reaches the wrapper only, which forwards it once),
    killed when the wrapper dies, the signals the wrapper blocked unblocked, the seccomp filter."""
    os.setpgid(0, 0)
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)
    _prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(_FPROG))


# -- running a command in a root -----------------------------------------------------------------
def _proot_command(
    root: Path, arch: str, argv: Sequence[str], binds: Sequence[str], cwd: str, root_user: bool
) -> tuple[list[str], dict[str, str]]:
    if arch not in QEMU:
        fail(f"no emulator for {arch} roots (have: {', '.join(QEMU)})")
    qemu = str(tools() / "usr" / "bin" / QEMU[arch])
    page = os.environ.get("EMULATE_PAGE_SIZE")
    proot = [str(TOOLS / "usr" / "bin" / "proot"), "-r", str(root), "-w", cwd]
    proot += ["-q", f"{qemu} -p {int(page)}" if page else qemu]
    if root_user:
        proot.append("-0")
    for path in ("/proc", "/dev", "/sys", *binds):
        proot += ["-b", path]
    if not root_user:
        for path, copy in _host_copies():
            proot += ["-b", f"{copy}:{path}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QEMU_", "PROOT_"))}
    env["LD_LIBRARY_PATH"] = ":".join(str(p) for p in (TOOLS / "usr" / "lib").glob("*-linux-gnu"))
    env["PROOT_TMP_DIR"] = "/tmp"
    # LD_LIBRARY_PATH finds proot's libtalloc; the guest gets neither it nor proot's own settings.
    guest = ["/usr/bin/env", "-u", "LD_LIBRARY_PATH", "-u", "PROOT_TMP_DIR", f"PATH={GUEST_PATH}"]
    return [*proot, *guest, *argv], env


def _chroot_and_exec(
    root: Path, argv: Sequence[str], binds: Sequence[str], cwd: str, root_user: bool
) -> None:
    """In this process: a private mount namespace, the binds, chroot, exec (same PID)."""
    if os.geteuid() != 0:
        fail(f"entering {root} needs root (a mount namespace and chroot): use sudo")
    clone_newns, ms_rec, ms_private, ms_bind = 0x00020000, 0x4000, 1 << 18, 0x1000
    libc = _LIBC
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
    if libc.unshare(clone_newns) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    if libc.mount(None, b"/", None, ms_rec | ms_private, None) != 0:
        raise OSError(ctypes.get_errno(), "mount --make-rprivate /")
    mounts = [(p, p) for p in ("/proc", "/sys", "/dev", *binds)]
    for path, source in mounts + ([] if root_user else [(p, str(c)) for p, c in _host_copies()]):
        target = root / path.lstrip("/")
        if os.path.isdir(source):
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
        if libc.mount(source.encode(), str(target).encode(), None, ms_bind | ms_rec, None) != 0:
            raise OSError(ctypes.get_errno(), f"bind {source} at {target}")
    os.chroot(root)
    os.chdir(cwd)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = GUEST_PATH
    os.execvpe(argv[0], list(argv), env)


def _host_copies() -> list[tuple[str, Path]]:
    """(guest path, a fresh copy of the host's file) for each HOST_FILES entry the host has."""
    HOST_COPIES.mkdir(parents=True, exist_ok=True)
    copies = []
    for path in HOST_FILES:
        if os.path.isfile(path):
            copy = HOST_COPIES / path.lstrip("/").replace("/", "_")
            tmp = copy.with_name(f"{copy.name}.{os.getpid()}")
            shutil.copyfile(path, tmp)
            tmp.replace(copy)
            copies.append((path, copy))
    return copies


def run(
    root: Path,
    argv: Sequence[str],
    binds: Sequence[str] = (),
    cwd: str = "/",
    root_user: bool = False,
    arch: str | None = None,
) -> int:
    """Run `argv` in `root` with `binds` at the same paths; SIGTERM, SIGINT and SIGHUP reach the
    program; returns its exit status (a native root: this process becomes the program)."""
    missing = [b for b in binds if not os.path.exists(b)]
    if missing:
        fail(f"cannot bind {', '.join(missing)}: no such path")
    arch = arch or root_arch(root)
    if arch == host_arch():
        _chroot_and_exec(root, argv, binds, cwd, root_user)
    full, env = _proot_command(root, arch, argv, binds, cwd, root_user)
    pending: list[int] = []
    previous = {signum: signal.signal(signum, lambda n, _frame: pending.append(n)) for signum in _FORWARDED}
    try:
        # Blocked until proot runs: a signal arriving meanwhile waits instead of being lost.
        signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)
        try:
            proc = subprocess.Popen(full, env=env, preexec_fn=_prepare_proot)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
        guard = subprocess.Popen(
            [sys.executable, "-c", _GUARD, str(proc.pid), str(os.getpid())],
            preexec_fn=lambda: _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM),
        )
        try:
            return _wait_forwarding(proc, pending)
        finally:
            guard.kill()
            guard.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


#: proot does not kill its tracees when it dies, so a guard kills proot's whole process group
#: when the wrapper dies (SIGKILL included: the kernel sends the guard SIGTERM then).
_GUARD = """
import os, signal, sys
group, wrapper = int(sys.argv[1]), int(sys.argv[2])
def stop(*_):
    try:
        os.killpg(group, signal.SIGKILL)
    finally:
        os._exit(0)
signal.signal(signal.SIGTERM, stop)
if os.getppid() != wrapper:
    stop()
while True:
    signal.pause()
"""


def _wait_forwarding(proc: subprocess.Popen[bytes], pending: list[int]) -> int:
    """Wait for proot, forwarding pending signals to the program once it exists."""
    while True:
        try:
            code = proc.wait(timeout=0.05)
        except subprocess.TimeoutExpired:
            program = _children(proc.pid)  # proot's first tracee; none yet while proot starts
            while pending and program:
                forwarded = pending.pop(0)
                for pid in program:
                    try:
                        os.kill(pid, forwarded)
                    except ProcessLookupError:
                        pass
            continue
        return code


def _children(pid: int) -> list[int]:
    """The direct children of `pid`."""
    pids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            pids += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return pids


# -- making a root --------------------------------------------------------------------------------
def make(suite: str, arch: str, root: Path, include: Sequence[str] = ()) -> Path:
    """A minimal Debian `suite` root for `arch` at `root` with its security updates applied;
    a finished root is reused, upgraded and given the packages it lacks."""
    if os.geteuid() != 0:
        fail("making a Debian root needs root (debootstrap creates device nodes and owners): use sudo")
    doc = described(root)
    if doc is not None:
        if (doc.get("suite"), doc.get("arch")) != (suite, arch):
            fail(
                f"{root} is a {doc.get('suite')} {doc.get('arch')} root, not {suite} {arch}: remove it first"
            )
        log(f"reusing {root} ({suite}, {arch}); applying updates")
    else:
        _debootstrap(suite, arch, root, include)
    start = time.monotonic()
    _write_sources(suite, root)
    apt = "DEBIAN_FRONTEND=noninteractive " + " ".join(["apt-get", *APT_RETRIES, "-q", "-y"])
    # A mirror that lists updates it cannot serve (404) must not stop every build: then the root
    # stays as it was, a warning says so, and debian-packages.txt beside the build shows the versions.
    warning = "debroot: WARNING: the mirror could not serve these updates (above); building without them"
    script = f"{apt} update && {{ {apt} dist-upgrade || echo '{warning}' >&2; }}"
    if include:
        script += f" && {apt} install --no-install-recommends {' '.join(include)}"
    code = _maintain(root, arch, ["/bin/sh", "-c", script])
    if code != 0:
        fail(f"updating {root} failed ({code}); run the same command again (network?)")
    (root / MARKER).write_text(json.dumps({"suite": suite, "arch": arch, "include": sorted(include)}) + "\n")
    log(f"{root} updated and ready in {time.monotonic() - start:.0f} s")
    return root


def _maintain(root: Path, arch: str, argv: Sequence[str]) -> int:
    """Run a maintenance command in a root as root, in a child (run() execs for native roots)."""
    if arch != host_arch():
        return run(root, argv, root_user=True, arch=arch)
    cmd = [sys.executable, __file__, "run", "--root-user", "--arch", arch, str(root), "--", *argv]
    return subprocess.run(cmd, check=False).returncode


def _debootstrap(suite: str, arch: str, root: Path, include: Sequence[str]) -> None:
    partial = root / ".debroot-partial"
    if root.exists() and any(root.iterdir()) and not partial.exists():
        fail(f"{root} exists and is not a root made by debroot.py: remove it or choose another folder")
    if shutil.which("debootstrap") is None:
        log("installing debootstrap (apt-get)")
        subprocess.run(["apt-get", *APT_RETRIES, "update", "-q"], check=True)
        install = ["apt-get", *APT_RETRIES, "install", "-y", "-q", "--no-install-recommends", "debootstrap"]
        subprocess.run(install, check=True)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    partial.touch()
    foreign = arch != host_arch()
    start = time.monotonic()
    cmd = ["debootstrap", "--variant=minbase", f"--arch={arch}"]
    if include:
        cmd.append("--include=" + ",".join(include))
    if foreign:
        cmd.append("--foreign")
    log(
        f"debootstrap {suite} {arch} into {root}{' (first stage; second under emulation)' if foreign else ''}"
    )
    for attempt in (1, 2, 3):  # a mirror hiccup should not cost a CI run
        if subprocess.run([*cmd, suite, str(root), MIRROR], check=False).returncode == 0:
            break
        if attempt == 3:
            fail(f"debootstrap failed 3 times; see {root}/debootstrap/debootstrap.log")
        log(f"debootstrap failed (attempt {attempt}); trying again")
    if foreign:
        proc = root / "proc"
        if proc.is_symlink():  # the first stage leaves it a symlink; proot binds over a folder
            proc.unlink()
        proc.mkdir(exist_ok=True)
        log(f"second stage under {QEMU[arch]} (several minutes)")
        code = run(root, ["/debootstrap/debootstrap", "--second-stage"], root_user=True, arch=arch)
        if code != 0:
            fail(f"second stage failed with {code}; see {root}/debootstrap/debootstrap.log")
    partial.unlink()
    log(f"{root} made in {time.monotonic() - start:.0f} s")


def _write_sources(suite: str, root: Path) -> None:
    """The suite, its updates and its security updates: the libraries a build bundles get fixes."""
    lines = [
        f"deb {MIRROR} {suite} main",
        f"deb {MIRROR} {suite}-updates main",
        f"deb {SECURITY_MIRROR} {suite}-security main",
    ]
    (root / "etc" / "apt" / "sources.list").write_text("\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="debroot.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make", help="make (or reuse and update) a minimal Debian root")
    mk.add_argument("suite", help="Debian suite, e.g. bookworm or bullseye")
    mk.add_argument("arch", help="Debian architecture, e.g. arm64 or amd64")
    mk.add_argument("dir", type=Path)
    mk.add_argument("--include", default="", help="comma-separated packages to add")
    rn = sub.add_parser("run", help="run a command inside a root (emulated when foreign)")
    rn.add_argument("dir", type=Path)
    rn.add_argument("--bind", action="append", default=[], help="a host path visible at the same path")
    rn.add_argument("--cwd", default="/", help="working directory inside the root")
    rn.add_argument(
        "--root-user", action="store_true", help="maintenance: appear as root (proot -0), no host files"
    )
    rn.add_argument("--arch", help=argparse.SUPPRESS)  # an unfinished root's, while making it
    parser.epilog = "run: the command follows `--`"
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: len(argv) - len(cmd) - 1] if cmd else argv)
    if args.cmd == "make":
        make(args.suite, args.arch, args.dir.resolve(), [p for p in args.include.split(",") if p])
        return 0
    if not cmd:
        parser.error("run: no command given (run DIR [options] -- CMD [ARGS...])")
    return run(args.dir.resolve(), cmd, args.bind, args.cwd, args.root_user, args.arch)


if __name__ == "__main__":
    sys.exit(main())
