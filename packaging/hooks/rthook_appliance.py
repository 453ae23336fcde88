# Runtime hook of the frozen appliance: runs before any appliance code.
import os
import sys


def _restore_library_path() -> None:
    """Give child processes the caller's LD_LIBRARY_PATH, not the bundle's.

    The bootloader puts the bundle's folder on LD_LIBRARY_PATH so the bundled libraries load,
    keeping the caller's value in LD_LIBRARY_PATH_ORIG. This process is unaffected by a change
    now (the dynamic loader reads the variable at exec), but a plugin's subprocess.run(["curl",
    ...]) should load the system's libssl and libz, not ours. A re-run of this executable
    (`appliance _pip ...`) sets its own value again.
    """
    if "LD_LIBRARY_PATH_ORIG" in os.environ:
        os.environ["LD_LIBRARY_PATH"] = os.environ.pop("LD_LIBRARY_PATH_ORIG")
    else:
        os.environ.pop("LD_LIBRARY_PATH", None)


def _die_with_bootloader() -> None:
    """One-file build: end with the bootloader process when it is killed.

    A one-file build is two processes: the bootloader, which unpacks the bundle and waits, and
    its child, this Python. The bootloader forwards SIGTERM and SIGINT, but SIGKILL cannot be
    forwarded: `kill -9 <pid>` would leave the server running as an orphan that keeps the port
    and the WAL lock. PR_SET_PDEATHSIG makes the kernel kill this process too. (The one-folder
    build is a single process: nothing to do.)
    """
    meipass = getattr(sys, "_MEIPASS", None)
    if not meipass or not sys.platform.startswith("linux"):
        return
    exe_dir = os.path.dirname(os.path.realpath(sys.executable))
    if os.path.realpath(meipass).startswith(exe_dir + os.sep):
        return  # one-folder: the bundle sits beside the executable
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


_restore_library_path()
_die_with_bootloader()
