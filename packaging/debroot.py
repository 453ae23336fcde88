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
the wrapper stops the program cleanly.

    packaging/debroot.py make SUITE ARCH DIR [--include PKG,...]
    packaging/debroot.py run DIR [--bind PATH]... [--cwd PATH] [--root-user] -- CMD [ARGS...]

Only stdlib: it runs on the host's python3 before any venv exists.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOOLS = REPO / "build" / "emu-tools"
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
#: Debian architecture name for the host's `uname -m`.
DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
QEMU = {"arm64": "qemu-aarch64-static"}
#: Packages the emulation needs, unpacked (never installed) into TOOLS.
TOOL_PACKAGES = ("qemu-user-static", "proot", "libtalloc2")
#: The host's name resolution and CA certificates, so a program inside reaches the network the
#: host reaches (a TLS-inspecting proxy's CA included).
HOST_FILES = ("/etc/resolv.conf", "/etc/ssl/certs/ca-certificates.crt")


def log(message: str) -> None:
    print(f"debroot: {message}", file=sys.stderr, flush=True)


def fail(message: str) -> None:
    raise SystemExit(f"debroot: {message}")


def host_arch() -> str:
    return DEB_ARCH.get(platform.machine(), platform.machine())


def root_arch(root: Path) -> str:
    """The Debian architecture a root was made for (written by `make`)."""
    marker = root / ".debroot-arch"
    if not marker.is_file():
        fail(f"{root} is not a root made by debroot.py (no {marker.name}): run 'debroot.py make' first")
    return marker.read_text().strip()


# -- tools ----------------------------------------------------------------------------------------
def tools() -> Path:
    """TOOLS with qemu-user-static, proot and libtalloc unpacked in it (downloaded on first use)."""
    if (TOOLS / ".complete").exists():
        return TOOLS
    debs = TOOLS / "debs"
    shutil.rmtree(TOOLS, ignore_errors=True)
    debs.mkdir(parents=True)
    log(f"fetching {', '.join(TOOL_PACKAGES)} into {TOOLS} (unpacked only: no binfmt registration)")
    download = ["apt-get", "download", *TOOL_PACKAGES]
    if subprocess.run(download, cwd=debs, check=False).returncode != 0:
        if os.geteuid() != 0:
            fail("apt-get download failed; run 'apt-get update' as root, then try again")
        subprocess.run(["apt-get", "update", "-q"], check=True)
        subprocess.run(download, cwd=debs, check=True)
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(TOOLS)], check=True)
    (TOOLS / ".complete").touch()
    return TOOLS


def _qemu(arch: str) -> Path:
    return tools() / "usr" / "bin" / QEMU[arch]


def _proot_env() -> dict[str, str]:
    libs = [str(p) for p in (TOOLS / "usr" / "lib").glob("*-linux-gnu")]
    env = dict(os.environ, LD_LIBRARY_PATH=":".join(libs))
    loader = TOOLS / "usr" / "lib" / "proot" / "loader"
    if loader.exists():
        env["PROOT_LOADER"] = str(loader)
    env.setdefault("PROOT_TMP_DIR", "/tmp")
    return env


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
_X86_64_STATX, _X86_64_FACCESSAT2 = 332, 439
_RET_ALLOW, _RET_ENOSYS = 0x7FFF0000, 0x00050000 | 38  # SECCOMP_RET_ERRNO | ENOSYS
_LD_W_ABS, _JEQ_K, _RET_K = 0x20, 0x15, 0x06
_FILTER = (
    (_LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
    (_JEQ_K, 0, 5, _AUDIT_ARCH_X86_64),  # another ABI: allow
    (_LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
    (_JEQ_K, 2, 0, _X86_64_STATX),
    (_JEQ_K, 1, 0, _X86_64_FACCESSAT2),
    (_RET_K, 0, 0, _RET_ALLOW),
    (_RET_K, 0, 0, _RET_ENOSYS),
    (_RET_K, 0, 0, _RET_ALLOW),
)


def _hide_untranslated_syscalls() -> None:
    """preexec_fn: install the filter in the child before it execs proot (inherited by all)."""
    libc = ctypes.CDLL(None, use_errno=True)
    program = (_SockFilter * len(_FILTER))(*(_SockFilter(*f) for f in _FILTER))
    fprog = _SockFprog(len(_FILTER), program)
    pr_set_no_new_privs, pr_set_seccomp, seccomp_mode_filter = 38, 22, 2
    if libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(pr_set_seccomp, seccomp_mode_filter, ctypes.byref(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


# -- running a command in a root -----------------------------------------------------------------
def command(
    root: Path, argv: Sequence[str], binds: Sequence[str] = (), cwd: str = "/", root_user: bool = False
) -> tuple[list[str], dict[str, str], bool]:
    """(argv, env, emulated) that run `argv` inside `root` with `binds` at the same paths."""
    arch = root_arch(root)
    if arch == host_arch():
        mounts = "".join(
            _mount(p) for p in ("/proc", "/sys", "/dev", *HOST_FILES, *binds) if os.path.exists(p)
        )
        script = f'{mounts}cd / && exec chroot "$R" sh -c \'cd "$0" && exec "$@"\' "{cwd}" "$@"'
        env = dict(os.environ, R=str(root))
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *argv], env, False
    if arch not in QEMU:
        fail(f"no emulator for {arch} roots (have: {', '.join(QEMU)})")
    qemu = str(_qemu(arch))
    page = os.environ.get("EMULATE_PAGE_SIZE")
    proot = [str(TOOLS / "usr" / "bin" / "proot"), "-r", str(root), "-w", cwd]
    proot += ["-q", f"{qemu} -p {page}" if page else qemu]
    if root_user:
        proot.append("-0")
    for path in ("/proc", "/dev", "/sys", *HOST_FILES, *binds):
        if os.path.exists(path):
            proot += ["-b", path]
    # LD_LIBRARY_PATH finds proot's libtalloc; the guest must not inherit it.
    return [*proot, "/usr/bin/env", "-u", "LD_LIBRARY_PATH", "-u", "PROOT_LOADER", *argv], _proot_env(), True


def _mount(path: str) -> str:
    """Shell that binds host `path` at the same place under $R (an empty target made first)."""
    target = f'"$R{path}"'
    make = (
        f"mkdir -p {target}" if os.path.isdir(path) else f'mkdir -p "$(dirname {target})" && touch {target}'
    )
    return f'{make} && mount --rbind "{path}" {target} && '


def run(
    root: Path, argv: Sequence[str], binds: Sequence[str] = (), cwd: str = "/", root_user: bool = False
) -> int:
    """Run `argv` in `root`; SIGTERM, SIGINT and SIGHUP reach the program; its exit status."""
    full, env, emulated = command(root, argv, binds, cwd, root_user)
    if not emulated:  # unshare and chroot exec in place: the program has this process's PID
        os.execvpe(full[0], full, env)
    proc = subprocess.Popen(full, env=env, preexec_fn=_hide_untranslated_syscalls)

    def forward(signum: int, _frame: object) -> None:
        for pid in _children(proc.pid) or [proc.pid]:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    while True:
        try:
            return proc.wait()
        except InterruptedError:
            continue


def _children(pid: int) -> list[int]:
    """The direct children of `pid` (proot's first tracee is the program)."""
    pids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            pids += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return pids


# -- making a root --------------------------------------------------------------------------------
def make(suite: str, arch: str, root: Path, include: Sequence[str] = ()) -> Path:
    """A minimal Debian `suite` root for `arch` at `root`; reused when complete."""
    if (root / ".debroot-arch").is_file():
        log(f"reusing {root} ({suite}, {root_arch(root)})")
        return root
    if os.geteuid() != 0:
        fail("making a Debian root needs root (debootstrap creates device nodes and owners): use sudo")
    if shutil.which("debootstrap") is None:
        log("installing debootstrap (apt-get)")
        subprocess.run(["apt-get", "update", "-q"], check=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", "debootstrap"], check=True
        )
    shutil.rmtree(root, ignore_errors=True)
    root.parent.mkdir(parents=True, exist_ok=True)
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
    subprocess.run([*cmd, suite, str(root), MIRROR], check=True)
    if foreign:
        proc = root / "proc"
        if proc.is_symlink():  # the first stage leaves it a symlink; proot binds over a folder
            proc.unlink()
        proc.mkdir(exist_ok=True)
        (root / ".debroot-arch").write_text(arch + "\n")
        log(f"second stage under {QEMU[arch]} (several minutes)")
        code = run(root, ["/debootstrap/debootstrap", "--second-stage"], root_user=True)
        if code != 0:
            (root / ".debroot-arch").unlink()
            fail(f"second stage failed with {code}; see {root}/debootstrap/debootstrap.log")
    (root / ".debroot-arch").write_text(arch + "\n")
    log(f"{root} ready in {time.monotonic() - start:.0f} s")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="debroot.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make", help="make (or reuse) a minimal Debian root")
    mk.add_argument("suite", help="Debian suite, e.g. bookworm or bullseye")
    mk.add_argument("arch", help="Debian architecture, e.g. arm64 or amd64")
    mk.add_argument("dir", type=Path)
    mk.add_argument("--include", default="", help="comma-separated packages to add")
    rn = sub.add_parser("run", help="run a command inside a root (emulated when foreign)")
    rn.add_argument("dir", type=Path)
    rn.add_argument("--bind", action="append", default=[], help="a host path visible at the same path")
    rn.add_argument("--cwd", default="/", help="working directory inside the root")
    rn.add_argument("--root-user", action="store_true", help="appear as root inside (proot -0)")
    parser.epilog = "run: the command follows `--`"
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: len(argv) - len(cmd) - 1] if cmd else argv)
    if args.cmd == "make":
        make(args.suite, args.arch, args.dir.resolve(), [p for p in args.include.split(",") if p])
        return 0
    if not cmd:
        parser.error("run: no command given (run DIR [options] -- CMD [ARGS...])")
    return run(args.dir.resolve(), cmd, args.bind, args.cwd, args.root_user)


if __name__ == "__main__":
    sys.exit(main())
