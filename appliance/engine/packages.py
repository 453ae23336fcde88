"""Python packages for plugins: pip installs into <plugin-dir>/.packages, which plugins import from.

pip runs in a child process started from this very executable (`appliance _pip ...`), so the
same path works from a source install and from the frozen binary, which has no `python -m pip`.
"""

from __future__ import annotations

import importlib
import logging
import subprocess
import sys
from pathlib import Path

from ..errors import BadRequest, Forbidden

log = logging.getLogger("appliance.engine")

PACKAGES_DIR = ".packages"
PIP_TIMEOUT_S = 900


class PackageInstaller:
    """Installs packages for plugins and puts their folder on the import path."""

    def __init__(self, plugin_dir: Path, mode: str) -> None:
        self.target = plugin_dir / PACKAGES_DIR
        self.mode = mode
        if str(self.target) not in sys.path:
            sys.path.append(str(self.target))  # after the server's own packages: never shadows them

    def install(self, packages: list[str], requirements: str | None = None) -> str:
        """Run pip; returns its output, or raises with pip's own message when it fails."""
        if self.mode == "disabled":
            raise Forbidden(
                "Package installation has been disabled. Contact your administrator for more information."
            )
        if not packages and not requirements:
            raise BadRequest("nothing to install: give package names or a requirements file")
        self.target.mkdir(parents=True, exist_ok=True)
        args = ["install", "--disable-pip-version-check", "--target", str(self.target), "--upgrade"]
        if getattr(sys, "frozen", False):
            args.append("--only-binary=:all:")  # no interpreter here to build a source package with
        args += ["-r", requirements] if requirements else list(packages)
        log.info("installing plugin packages: %s", " ".join(args[5:]))
        try:
            done = subprocess.run(
                [*pip_command(), *args], capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired:
            raise BadRequest(
                f"pip did not finish within {PIP_TIMEOUT_S}s; nothing may have been installed"
            ) from None
        output = (done.stdout + done.stderr).strip()
        if done.returncode != 0:
            tail = "\n".join(output.splitlines()[-8:])
            raise BadRequest(f"pip failed (exit {done.returncode}): {tail}")
        importlib.invalidate_caches()
        return output


def pip_command() -> list[str]:
    """How to start pip here: the frozen binary re-runs itself, a source install runs the module."""
    if getattr(sys, "frozen", False):
        return [sys.executable, "_pip"]
    return [sys.executable, "-m", "appliance", "_pip"]


def run_pip(argv: list[str]) -> int:
    """The `_pip` sub-command: pip's own entry point, in this interpreter."""
    from pip._internal.cli.main import main as pip_main

    return int(pip_main(argv) or 0)
