"""Python packages for plugins: pip installs into <plugin-dir>/.packages, which plugins import from.

pip runs in a child process started from this very executable (`appliance _pip ...`), so the
same path works from a source install and from the frozen binary, which has no `python -m pip`.

pip gets only what was checked here, written to a requirements file of our own (`-r` is the only
way pip takes `--hash`): requirements (PEP 508 `name[extras] specifiers ; markers`, `name @ URL`,
or a bare http(s)/git+http(s) URL or wheel), fetched from an index, an http(s) or git URL, or a
wheel inside the plugin directory. A client's requirements file is read here, from the plugin
directory only; its requirement lines may carry `--hash`, and a few global options that fetch
from URLs only (`-i`, `--extra-index-url`, `-f` with an http(s) URL, `--pre`, `--only-binary`,
`--prefer-binary`, `--require-hashes`). pip itself reads no file a client named, and an error
about a file's line names the line's number and the reason, never the line.
"""

from __future__ import annotations

import importlib
import logging
import re
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

from ..errors import BadRequest, Forbidden, NotFound
from .names import TextRule, check_text, text_problem

log = logging.getLogger("appliance.engine")

PACKAGES_DIR = ".packages"
PIP_TIMEOUT_S = 900
#: Most requirements in one install (a list; a requirements file may hold more), longest
#: requirement string, largest requirements file.
MAX_PACKAGES = 100
MAX_FILE_REQUIREMENTS = 2000
MAX_REQUIREMENT = 1000
MAX_REQUIREMENTS_FILE = 1024 * 1024
MAX_LOCATION = 1024
_REQUIREMENT = TextRule(MAX_REQUIREMENT)
_FILE_LINE = TextRule(MAX_REQUIREMENTS_FILE, multiline=True)  # a line of hashes can be long
_LOCATION = TextRule(MAX_LOCATION)
_URL_SCHEMES = ("http", "https")
_VCS_SCHEMES = ("git+https", "git+http")
_BARE_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://|file:", re.IGNORECASE)
#: Requirements-file options that fetch from an http(s) URL, and their long names.
_URL_OPTIONS = {
    "-i": "--index-url",
    "--index-url": "--index-url",
    "--extra-index-url": "--extra-index-url",
    "-f": "--find-links",
    "--find-links": "--find-links",
}
_FLAGS = ("--pre", "--prefer-binary", "--require-hashes")
_ONLY_BINARY = re.compile(r"[A-Za-z0-9._:,][A-Za-z0-9._:,-]*")  # :all:, :none: or names
_HASH = re.compile(r"(sha256|sha384|sha512):[0-9a-fA-F]+")
_OPTIONS_ALLOWED = (
    "pip options are not accepted here except --hash (after a requirement), -i/--index-url,"
    " --extra-index-url and -f/--find-links with http(s) URLs, --pre, --only-binary, --prefer-binary"
    " and --require-hashes"
)
_NOT_PEP508 = (
    "not a package requirement, such as requests==2.32.3, requests[socks]>=2, name @ https://host/name.whl,"
    " git+https://host/repo.git@tag or a .whl file in the plugin directory"
)


class _Refused(Exception):
    """Why a requirement or requirements-file line is refused; the reason never quotes the text."""


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
            lines = self.read_requirements(requirements)
            what = f"the requirements in {_shorten(requirements, 100)!r}"
        else:
            if not packages:
                raise BadRequest("nothing to install: give package names or a requirements file")
            if len(packages) > MAX_PACKAGES:
                raise BadRequest(f"too many packages: {len(packages)}, at most {MAX_PACKAGES} per install")
            lines = [(i, self.check_requirement(spec)) for i, spec in enumerate(packages, 1)]
            what = _shorten(", ".join(packages), 200)
        self.target.mkdir(parents=True, exist_ok=True)
        # An empty working directory: a bare name never resolves to a folder or file pip finds there.
        with tempfile.TemporaryDirectory(prefix="appliance-pip-") as cwd:
            args = [
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "--target",
                str(self.target),
                "--upgrade",
                "-r",
                str(_write_requirements(Path(cwd), lines)),
            ]
            if getattr(sys, "frozen", False):
                args.append("--only-binary=:all:")  # no interpreter here to build a source package with
            log.info("installing plugin packages: %s", what)
            done = _run_pip(args, cwd)
        output = (done.stdout + done.stderr).strip()
        if done.returncode != 0:
            log.warning("pip failed (exit %d) installing %s:\n%s", done.returncode, what, output)
            raise BadRequest(
                f"pip failed installing {what} (exit {done.returncode}):"
                f" {_last_error(output)} (pip's full output is in the server log)"
            )
        importlib.invalidate_caches()
        return output

    def check_requirement(self, spec: Any) -> str:
        """One requirement as a client listed it, as pip gets it; BadRequest quoting it and the reason."""
        if not isinstance(spec, str) or not spec.strip():
            raise BadRequest("invalid package: each package must be a non-empty requirement string")
        check_text(spec, "package", _REQUIREMENT)
        try:
            if spec.lstrip().startswith("-"):
                raise _Refused(
                    "pip options are not accepted, only package requirements such as requests==2.32.3"
                )
            return self._requirement(spec)
        except _Refused as e:
            raise BadRequest(f"invalid package {_shorten(spec, 80)!r}: {e}") from None

    def read_requirements(self, location: str) -> list[tuple[int, str]]:
        """The checked lines of a requirements file inside the plugin directory, with their numbers.

        An error names the file, the line number and the reason, never the line: the file could be
        any file of the plugin directory (a secrets.toml, say).
        """
        check_text(location, "requirements_location", _LOCATION)
        given = Path(location)
        path = (given if given.is_absolute() else self.plugin_dir / given).resolve()
        if not path.is_relative_to(self.plugin_dir):
            raise BadRequest(
                f"requirements_location {location!r} is outside the plugin directory ({self.plugin_dir}):"
                " copy the requirements file there and pass its name"
            )
        text = _read_text(path, location)
        lines: list[tuple[int, str]] = []
        for number, line in _logical_lines(text):
            try:
                lines.append((number, self._file_line(line)))
            except _Refused as e:
                raise BadRequest(f"requirements file {location!r}, line {number}: {e}") from None
        requirements = sum(1 for _, line in lines if not line.startswith("-"))
        if not requirements:
            raise BadRequest(f"requirements file {location!r} lists no requirements")
        if requirements > MAX_FILE_REQUIREMENTS:
            raise BadRequest(
                f"requirements file {location!r} lists {requirements} requirements, at most"
                f" {MAX_FILE_REQUIREMENTS} per install"
            )
        return lines

    def _file_line(self, line: str) -> str:
        """One logical line of a requirements file as pip gets it: a requirement with its hashes, or options."""
        bad = text_problem(line, _FILE_LINE)
        if bad is not None:
            raise _Refused(bad)
        # pip's own split: the first token starting with '-' begins the options.
        tokens = line.split()
        first = next((i for i, t in enumerate(tokens) if t.startswith("-")), len(tokens))
        options = _options(tokens[first:], per_requirement=first > 0)
        if first == 0:
            return " ".join(options)
        requirement = " ".join(tokens[:first])
        bad = text_problem(requirement, _REQUIREMENT)
        if bad is not None:
            raise _Refused(f"the requirement: {bad}")
        return " ".join([self._requirement(requirement), *options])

    def _requirement(self, spec: str) -> str:
        """A requirement as pip gets it (a local wheel as its file: URL); _Refused if not allowed."""
        spec = " ".join(spec.split())
        if "${" in spec:
            raise _Refused("pip would fill in ${...} from the server's environment; write the value out")
        if any(t.startswith("-") for t in spec.split(" ")):
            raise _Refused("a word starting with '-' would be read by pip as an option")
        if _BARE_URL.match(spec):
            return self._bare_url(spec)
        Requirement, InvalidRequirement = _requirement_class()
        try:
            req = Requirement(spec)
        except InvalidRequirement:
            if "/" in spec or spec.lower().endswith(".whl"):
                return self._local_wheel(spec)
            raise _Refused(_NOT_PEP508) from None
        if req.url is not None:
            self._check_url(req.url)
        elif req.name.lower().endswith(".whl"):  # `x-1.0-py3-none-any.whl`: a wheel, not a name
            return self._local_wheel(spec)
        return spec

    def _bare_url(self, url: str) -> str:
        if " " in url:
            raise _Refused("a URL cannot contain spaces")
        parts = urllib.parse.urlsplit(url)
        if parts.scheme.lower() == "file":
            return self._local_wheel(urllib.parse.unquote(parts.path))
        self._check_url(url)
        return url

    def _check_url(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme in (*_URL_SCHEMES, *_VCS_SCHEMES):
            if not parts.netloc:
                raise _Refused("the URL names no host")
            if scheme in _VCS_SCHEMES and "@" in parts.path and parts.path.rsplit("@", 1)[1].startswith("-"):
                raise _Refused("a git revision cannot start with '-'")
            return
        if scheme == "file":
            if self._inside(urllib.parse.unquote(parts.path)) is None:
                raise _Refused(
                    f"a file: URL must point into the plugin directory ({self.plugin_dir}); copy the wheel there first"
                )
            return
        raise _Refused(
            "the URL must be http://, https://, git+https://, git+http:// or file: in the plugin directory"
        )

    def _local_wheel(self, given: str) -> str:
        path = self._inside(given)
        if path is None or path.suffix.lower() != ".whl":
            raise _Refused(
                f"a local package must be a wheel (.whl) inside the plugin directory ({self.plugin_dir});"
                " copy it there first"
            )
        return path.as_uri()

    def _inside(self, given: str) -> Path | None:
        """`given` (absolute, or relative to the plugin directory) resolved, if it lies inside the plugin directory."""
        p = Path(given)
        path = (p if p.is_absolute() else self.plugin_dir / p).resolve()
        return path if path.is_relative_to(self.plugin_dir) else None


def _options(tokens: list[str], per_requirement: bool) -> list[str]:
    """Requirements-file options, checked and spelled out in full; _Refused for any other option."""
    out: list[str] = []
    i = 0
    while i < len(tokens):
        name, eq, value = tokens[i].partition("=")
        takes_value = name == "--hash" or name in _URL_OPTIONS or name == "--only-binary"
        if takes_value and not eq:
            if i + 1 >= len(tokens):
                raise _Refused(f"the option {name} needs a value")
            value, i = tokens[i + 1], i + 1
        i += 1
        if per_requirement and name == "--hash":
            if not _HASH.fullmatch(value):
                raise _Refused("--hash must be sha256:, sha384: or sha512: and hex digits")
            out.append(f"--hash={value}")
        elif per_requirement:
            raise _Refused("only --hash options may follow a requirement")
        elif name in _URL_OPTIONS:
            parts = urllib.parse.urlsplit(value)
            if parts.scheme.lower() not in _URL_SCHEMES or not parts.netloc or "${" in value:
                raise _Refused(f"{name} takes an http:// or https:// URL only")
            out.append(f"{_URL_OPTIONS[name]} {value}")
        elif name == "--only-binary" and _ONLY_BINARY.fullmatch(value):
            out.append(f"--only-binary={value}")
        elif name in _FLAGS and not eq:
            out.append(name)
        else:
            raise _Refused(_OPTIONS_ALLOWED)
    return out


def _read_text(path: Path, location: str) -> str:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_REQUIREMENTS_FILE + 1)
    except FileNotFoundError:
        raise NotFound(f"requirements file {location!r} not found in the plugin directory") from None
    except OSError as e:
        raise BadRequest(f"cannot read requirements file {location!r}: {e.strerror}") from None
    if len(data) > MAX_REQUIREMENTS_FILE:
        raise BadRequest(f"requirements file {location!r} is larger than {MAX_REQUIREMENTS_FILE} bytes")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise BadRequest(f"requirements file {location!r} is not UTF-8 text") from None


def _write_requirements(folder: Path, lines: list[tuple[int, str]]) -> Path:
    """Our requirements file for pip, each line at its number in the client's file (pip's messages match)."""
    out: list[str] = []
    for number, line in lines:
        out.extend([""] * (number - 1 - len(out)))
        out.append(line)
    path = folder / "requirements.txt"
    path.write_text("\n".join(out) + "\n")
    return path


def _run_pip(args: list[str], cwd: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
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
