"""packaging/emulate-arm64 and debroot.py: aarch64 programs on this x86_64 machine, for real.

Needs the arm64 root that `make binary-arm64` makes (build/roots/bookworm-arm64); without it
the tests skip, except under CI=true, where .ci/run builds it first and a missing root fails.
"""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.server import REPO, wait_for

pytestmark = pytest.mark.slow  # aarch64 programs under qemu user emulation

ROOT = Path(os.environ.get("ARM64_ROOT", REPO / "build" / "roots" / "bookworm-arm64"))
EMULATE = REPO / "packaging" / "emulate-arm64"
PYTHON = "/usr/bin/python3.11"  # the root's own interpreter, an aarch64 program


@pytest.fixture(autouse=True)
def _arm64_root() -> None:
    if platform.machine() != "x86_64":
        pytest.skip("emulation of aarch64 is for x86_64 hosts")
    if not (ROOT / ".debroot.json").is_file():
        message = f"no arm64 root at {ROOT}: run `make binary-arm64` first"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def _emulate(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(EMULATE), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=os.environ | {"ARM64_ROOT": str(ROOT)} | env,
    )


def test_the_program_runs_as_aarch64_and_its_children_too() -> None:
    r = _emulate("/bin/sh", "-c", "uname -m; /bin/sh -c 'uname -m'; exit 7")
    assert r.stdout.split() == ["aarch64", "aarch64"], r.stderr  # execve stays emulated
    assert r.returncode == 7  # the program's own exit status


def test_file_checks_answer_for_the_root_not_the_host() -> None:
    """proot does not translate faccessat2 and statx: the seccomp filter makes glibc fall back."""
    host_only = "/usr/sbin/debootstrap"  # installed on the host by debroot.py, absent in the root
    assert Path(host_only).exists() and not (ROOT / host_only.lstrip("/")).exists()
    code = f"import os, shutil; print(os.access({host_only!r}, os.X_OK), os.path.exists({host_only!r}), shutil.which('debootstrap'))"
    r = _emulate(PYTHON, "-c", code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False", "None"], r.stdout


def test_the_current_directory_and_tmp_are_shared(tmp_path: Path) -> None:
    (tmp_path / "in").write_text("from the host")
    code = f"import pathlib; p = pathlib.Path({str(tmp_path)!r}); (p / 'out').write_text((p / 'in').read_text().upper())"
    r = _emulate(PYTHON, "-c", code)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out").read_text() == "FROM THE HOST"


def test_sigterm_reaches_the_program(tmp_path: Path) -> None:
    """proot ignores SIGTERM; the wrapper forwards it, and the program's handler runs."""
    ready = tmp_path / "ready"
    script = textwrap.dedent(
        f"""
        import pathlib, signal, sys, time
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(42))
        pathlib.Path({str(ready)!r}).touch()
        time.sleep(120)
        """
    )
    proc = subprocess.Popen(
        [str(EMULATE), PYTHON, "-c", script], cwd=REPO, env=os.environ | {"ARM64_ROOT": str(ROOT)}
    )
    try:
        wait_for(lambda: ready.exists() or proc.poll() is not None, 60, "the emulated program to start")
        assert proc.poll() is None, "the emulated program did not start"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 42
    finally:
        if proc.poll() is None:
            proc.kill()


def test_killing_the_wrapper_kills_the_program(tmp_path: Path) -> None:
    """proot leaves its tracees running when it dies; the guard kills them with the wrapper."""
    pid_file = tmp_path / "pid"
    script = f"import os, pathlib, time; pathlib.Path({str(pid_file)!r}).write_text(str(os.getpid())); time.sleep(120)"
    proc = subprocess.Popen(
        [str(EMULATE), PYTHON, "-c", script], cwd=REPO, env=os.environ | {"ARM64_ROOT": str(ROOT)}
    )
    wait_for(
        lambda: (pid_file.exists() and pid_file.read_text()) or proc.poll() is not None,
        60,
        "the emulated program to start",
    )
    assert proc.poll() is None, "the emulated program did not start"
    program = int(pid_file.read_text())  # qemu's host PID: the emulated process is that process
    proc.kill()
    proc.wait()
    try:
        wait_for(lambda: not Path(f"/proc/{program}").exists(), 10, "the emulated program to end")
    except AssertionError:
        os.kill(program, signal.SIGKILL)
        pytest.fail("the emulated program outlived its wrapper's SIGKILL")


def test_sixteen_kib_pages_are_shown_when_asked() -> None:
    code = "import os; print(os.sysconf('SC_PAGE_SIZE'))"
    assert _emulate(PYTHON, "-c", code).stdout.strip() == "4096"
    assert _emulate(PYTHON, "-c", code, EMULATE_PAGE_SIZE="16384").stdout.strip() == "16384"


def test_help_and_a_missing_root_say_what_to_do(tmp_path: Path) -> None:
    r = subprocess.run([str(EMULATE), "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "ARM64_ROOT" in r.stdout
    r = _emulate("/bin/true", ARM64_ROOT=str(tmp_path))
    assert r.returncode == 2 and "make binary-arm64" in r.stderr


def test_the_guest_trusts_the_hosts_ca_bundle_but_cannot_write_it() -> None:
    bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    before = bundle.read_bytes()
    r = _emulate("/bin/sh", "-c", f"grep -c 'BEGIN CERT' {bundle}; echo 'not a certificate' >> {bundle}")
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) == before.count(b"BEGIN CERT")  # the host's CAs, a proxy's included
    assert bundle.read_bytes() == before
