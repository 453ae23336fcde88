"""Python packages for plugins: pip installs into <plugin-dir>/.packages, which plugins import from.

pip runs in a child process started from this very executable (`appliance _pip ...`), so the
same path works from a source install and from the frozen binary, which has no `python -m pip`.

pip gets only what was checked here: PEP 508 requirement strings (never an option such as `-r`),
fetched from an index, an http(s) URL or a file inside the plugin directory. A requirements file is
read here, from the plugin directory only, and its lines go to pip as requirements; pip itself reads
no file a client named, so its messages cannot carry a file's contents back to the client.
"""

from __future__ import annotations

import importlib
import logging
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

from ..errors import BadRequest, Forbidden, NotFound

log = logging.getLogger("appliance.engine")

PACKAGES_DIR = ".packages"
PIP_TIMEOUT_S = 900
#: Most requirements in one install, longest requirement string, largest requirements file.
MAX_PACKAGES = 100
MAX_REQUIREMENT = 1000
MAX_REQUIREMENTS_FILE = 1024 * 1024
MAX_LOCATION = 1024
_URL_SCHEMES = ("http", "https")


class PackageInstaller:
    """Installs packages for plugins and puts their folder on the import path."""

    def __init__(self, plugin_dir: Path, mode: str) -> None:
        self.plugin_dir = plugin_dir.resolve()
        self.target = plugin_dir / PACKAGES_DIR
        self.mode = mode
        if str(self.target) not in sys.path:
            sys.path.append(str(self.target))  # after the server's own packages: never shadows them

    def install(self, packages: list[str], requirements: str | None = None) -> str:
        """Run pip; returns its output, or raises with a one-line summary when it fails."""
        if self.mode == "disabled":
            raise Forbidden(
                "Package installation has been disabled. Contact your administrator for more information."
            )
        if requirements:
            packages = self.read_requirements(requirements)
        if not packages:
            raise BadRequest("nothing to install: give package names or a requirements file")
        if len(packages) > MAX_PACKAGES:
            raise BadRequest(f"too many packages: {len(packages)}, at most {MAX_PACKAGES} per install")
        for spec in packages:
            self.check_requirement(spec)
        self.target.mkdir(parents=True, exist_ok=True)
        args = [
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--target",
            str(self.target),
            "--upgrade",
        ]
        if getattr(sys, "frozen", False):
            args.append("--only-binary=:all:")  # no interpreter here to build a source package with
        args += ["--", *packages]
        log.info("installing plugin packages: %s", " ".join(packages))
        # An empty working directory: a bare name never resolves to a folder or file pip finds there.
        with tempfile.TemporaryDirectory(prefix="appliance-pip-") as cwd:
            try:
                done = subprocess.run(
                    [*pip_command(), *args],
                    capture_output=True,
                    text=True,
                    timeout=PIP_TIMEOUT_S,
                    check=False,
                    cwd=cwd,
                )
            except subprocess.TimeoutExpired:
                raise BadRequest(
                    f"pip did not finish within {PIP_TIMEOUT_S}s; nothing may have been installed"
                ) from None
        output = (done.stdout + done.stderr).strip()
        if done.returncode != 0:
            log.warning(
                "pip failed (exit %d) installing %s:\n%s", done.returncode, " ".join(packages), output
            )
            raise BadRequest(
                f"pip failed installing {_shorten(', '.join(packages), 200)} (exit {done.returncode}):"
                f" {_last_error(output)} (pip's full output is in the server log)"
            )
        importlib.invalidate_caches()
        return output

    def check_requirement(self, spec: Any) -> None:
        """A PEP 508 requirement (`name[extras] specifiers ; markers` or `name @ URL`); BadRequest if not."""
        if not isinstance(spec, str) or not spec.strip():
            raise BadRequest("invalid package: each package must be a non-empty requirement string")
        shown = _shorten(spec, 80)
        if len(spec) > MAX_REQUIREMENT:
            raise BadRequest(f"invalid package {shown!r}: longer than {MAX_REQUIREMENT} characters")
        if any(not c.isprintable() for c in spec):
            raise BadRequest(f"invalid package {shown!r}: it contains a control character")
        if spec.lstrip().startswith("-"):
            raise BadRequest(
                f"invalid package {shown!r}: pip options are not accepted, only package requirements"
                " such as requests==2.32.3"
            )
        Requirement, InvalidRequirement = _requirement_class()
        try:
            req = Requirement(spec)
        except InvalidRequirement:
            raise BadRequest(
                f"invalid package {shown!r}: not a package requirement (PEP 508), such as"
                " requests==2.32.3, requests[socks]>=2, name @ https://host/name.whl or"
                f" name @ file://{self.plugin_dir}/name.whl"
            ) from None
        if req.url is not None:
            self._check_url(req.url, shown)

    def _check_url(self, url: str, shown: str) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme in _URL_SCHEMES:
            return
        if parts.scheme == "file":
            path = Path(urllib.parse.unquote(parts.path)).resolve()
            if path.is_relative_to(self.plugin_dir):
                return
            raise BadRequest(
                f"invalid package {shown!r}: a file: URL must point into the plugin directory"
                f" ({self.plugin_dir}); copy the wheel there first"
            )
        raise BadRequest(
            f"invalid package {shown!r}: the URL must be http://, https:// or file: in the plugin directory"
        )

    def read_requirements(self, location: str) -> list[str]:
        """The requirements in a file inside the plugin directory (relative to it, or absolute)."""
        if len(location) > MAX_LOCATION or not location.isprintable():
            raise BadRequest(
                f"invalid requirements_location {_shorten(location, 80)!r}: at most {MAX_LOCATION}"
                " printable characters, no control characters"
            )
        given = Path(location)
        path = (given if given.is_absolute() else self.plugin_dir / given).resolve()
        if not path.is_relative_to(self.plugin_dir):
            raise BadRequest(
                f"requirements_location {location!r} is outside the plugin directory ({self.plugin_dir}):"
                " copy the requirements file there and pass its name"
            )
        try:
            with path.open("rb") as f:
                data = f.read(MAX_REQUIREMENTS_FILE + 1)
        except FileNotFoundError:
            raise NotFound(
                f"requirements file {location!r} not found in the plugin directory ({self.plugin_dir})"
            ) from None
        except OSError as e:
            raise BadRequest(f"cannot read requirements file {location!r}: {e.strerror}") from None
        if len(data) > MAX_REQUIREMENTS_FILE:
            raise BadRequest(f"requirements file {location!r} is larger than {MAX_REQUIREMENTS_FILE} bytes")
        try:
            text = data.decode()
        except UnicodeDecodeError:
            raise BadRequest(f"requirements file {location!r} is not UTF-8 text") from None
        specs: list[str] = []
        for number, line in _logical_lines(text):
            try:
                self.check_requirement(line)
            except BadRequest as e:
                raise BadRequest(f"requirements file {location!r}, line {number}: {e.message}") from None
            specs.append(line)
        return specs


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Non-empty requirement lines with their numbers: comments removed, `\\` continuations joined."""
    out: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        # pip's rule: `#` starts a comment at the line start or after whitespace (not in a URL fragment).
        hash_at = next((i for i, c in enumerate(raw) if c == "#" and (i == 0 or raw[i - 1].isspace())), -1)
        line = raw[:hash_at] if hash_at >= 0 else raw
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1]
            continue
        line = (pending + line).strip()
        pending = ""
        if line:
            out.append((start, line))
    if pending.strip():
        out.append((start, pending.strip()))
    return out


def _requirement_class() -> tuple[Any, Any]:
    """packaging's Requirement: the installed `packaging`, else the copy pip vendors (frozen build)."""
    try:
        from packaging.requirements import InvalidRequirement, Requirement
    except ImportError:
        from pip._vendor.packaging.requirements import (  # type: ignore[assignment]
            InvalidRequirement,
            Requirement,
        )
    return Requirement, InvalidRequirement


def _last_error(output: str) -> str:
    """pip's last `ERROR:` line (else its last line), shortened: the reason, not the whole log."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR:")]
    return _shorten((errors or lines or ["no output"])[-1], 300)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def pip_command() -> list[str]:
    """How to start pip here: the frozen binary re-runs itself, a source install runs the module."""
    if getattr(sys, "frozen", False):
        return [sys.executable, "_pip"]
    return [sys.executable, "-m", "appliance", "_pip"]


def run_pip(argv: list[str]) -> int:
    """The `_pip` sub-command: pip's own entry point, in this interpreter."""
    from pip._internal.cli.main import main as pip_main

    return int(pip_main(argv) or 0)
