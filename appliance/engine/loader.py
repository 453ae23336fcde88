"""Plugin files: resolving names safely, loading one module instance per trigger, reloading on change.

Each trigger gets its own instance of its plugin module, loaded once and reloaded when a
file changes, so module-level state lasts across one trigger's calls and is never shared
with another trigger (InfluxDB 3 re-executes the file on every call instead).
"""

from __future__ import annotations

import builtins
import importlib.util
import itertools
import os
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import BadRequest, NotFound
from ..fileio import write_atomically
from .names import TextRule, check_text

GH_PREFIX = "gh:"
GH_CACHE = ".gh"  # downloaded gh: plugins live here, so triggers start without network
#: Longest plugin filename (characters) and path component (bytes, the file system's NAME_MAX).
MAX_FILENAME = 1024
MAX_COMPONENT_BYTES = 255
#: Largest gh: plugin file downloaded (a plugin is source code; this bounds memory and disk).
MAX_PLUGIN_BYTES = 16 * 1024 * 1024


_FILENAME = TextRule(MAX_FILENAME)


def check_filename(filename: str, what: str = "plugin filename") -> None:
    """Refuse, with a clear BadRequest, a name no file could have: empty, control characters, too long.

    Checked before the name touches the file system, where a NUL byte or a 5,000-character name
    would raise an OSError or ValueError instead of a clear answer. Any other character a file
    name can hold (NBSP, an emoji sequence with a zero-width joiner) is fine.
    """
    check_text(filename, what, _FILENAME)
    for part in filename.removeprefix(GH_PREFIX).split("/"):
        if len(part.encode()) > MAX_COMPONENT_BYTES:
            raise BadRequest(
                f"invalid {what} {filename[:40]!r}...: the part {part[:40]!r}... is longer than"
                f" {MAX_COMPONENT_BYTES} bytes"
            )


@dataclass
class _Loaded:
    module: ModuleType
    stamp: tuple[float, ...]


class PluginLoader:
    """Finds plugin files under the plugin directory and keeps each trigger's module fresh."""

    def __init__(self, plugin_dir: Path, repo: str, injected: dict[str, Any]) -> None:
        self.plugin_dir = plugin_dir.resolve()
        self.repo = repo.rstrip("/")
        self._loaded: dict[str, _Loaded] = {}
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._ids = itertools.count()
        # Plugins use LineBuilder without importing it, as in InfluxDB 3.
        for name, value in injected.items():
            setattr(builtins, name, value)
        os.environ["PLUGIN_DIR"] = str(self.plugin_dir)
        if str(self.plugin_dir) not in sys.path:
            sys.path.append(str(self.plugin_dir))  # sibling helper modules import by name

    def resolve(self, filename: str) -> Path:
        """The file or package directory a trigger names, refusing anything outside the plugin dir."""
        check_filename(filename)
        if filename.startswith(GH_PREFIX):
            return self._gh_path(filename)
        name = filename.rstrip("/")
        path = (self.plugin_dir / name).resolve()
        if Path(name).is_absolute() or not path.is_relative_to(self.plugin_dir):
            raise BadRequest(
                f"Path traversal detected: plugin filename '{filename}' attempts to access files"
                " outside the plugin directory"
            )
        if path.is_dir():
            if not (path / "__init__.py").is_file():
                raise BadRequest(f"Multi-file plugin directory must contain __init__.py: {path}")
            return path
        if not path.is_file():
            raise NotFound(f"Plugin not found: {filename} (looked in {self.plugin_dir})")
        return path

    def fetch(self, filename: str) -> Path:
        """Download a gh: plugin into the cache (at trigger creation); other names just resolve."""
        if not filename.startswith(GH_PREFIX):
            return self.resolve(filename)
        check_filename(filename)
        path = self._gh_path(filename, must_exist=False)  # refuses names that would leave the cache
        rel = path.relative_to(self.plugin_dir / GH_CACHE).as_posix()
        # Quoted: a '?', '#' or space in the name must stay part of the path, not change the URL.
        url = f"{self.repo}/{urllib.parse.quote(rel)}"
        body = _download(url)
        try:
            write_atomically(path, body)
        except OSError as e:
            raise BadRequest(
                f"cannot store plugin {filename[:80]!r} in the plugin cache: {e.strerror or e}"
            ) from None
        return path

    def _gh_path(self, filename: str, must_exist: bool = True) -> Path:
        rel = filename[len(GH_PREFIX) :].lstrip("/")
        cache = self.plugin_dir / GH_CACHE
        path = (cache / rel).resolve()
        if not rel or ".." in Path(rel).parts or not path.is_relative_to(cache) or path == cache:
            raise BadRequest(f"Path traversal detected: plugin filename '{filename}' is not allowed")
        if must_exist and not path.is_file():
            raise NotFound(
                f"Plugin not found: {filename} is not in the local cache; recreate the trigger to download it"
            )
        return path

    def module(self, key: str, filename: str) -> ModuleType:
        """The trigger's module instance, reloaded when its file (or any .py of its package) changed."""
        path = self.resolve(filename)
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:  # two first calls at once must not run the module's top level twice
            stamp = _stamp(path)
            loaded = self._loaded.get(key)
            if loaded is not None and loaded.stamp == stamp:
                return loaded.module
            module = self._load(path)
            self._loaded[key] = _Loaded(module, stamp)
        if loaded is not None:
            _unregister(loaded.module)
        return module

    def forget(self, key: str) -> None:
        """Drop a trigger's module (deleted or disabled)."""
        with self._lock:
            old = self._loaded.pop(key, None)
            self._key_locks.pop(key, None)
        if old is not None:
            _unregister(old.module)

    def _load(self, path: Path) -> ModuleType:
        # A unique module name per load: two triggers, or two versions, never share state.
        name = f"appliance_plugin_{next(self._ids)}_{path.stem}"
        if path.is_dir():
            spec = importlib.util.spec_from_file_location(
                name, path / "__init__.py", submodule_search_locations=[str(path)]
            )
        else:
            spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise BadRequest(f"cannot load plugin {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # relative imports inside a package need it registered
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return module


def _unregister(module: ModuleType) -> None:
    """Forget a replaced module instance and its submodules, so reloads do not pile up."""
    name = module.__name__
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[key]


def _stamp(path: Path) -> tuple[int, ...]:
    if path.is_file():
        return (path.stat().st_mtime_ns,)
    return tuple(sorted(p.stat().st_mtime_ns for p in path.rglob("*.py") if "__pycache__" not in p.parts))


def _download(url: str) -> bytes:
    """A gh: plugin's bytes, at most MAX_PLUGIN_BYTES; BadRequest saying why not."""
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            body: bytes = resp.read(MAX_PLUGIN_BYTES + 1)
    except urllib.error.HTTPError as e:
        raise BadRequest(f"error fetching plugin from repository: {e.code} {url}") from None
    except ValueError as e:  # a URL http.client refuses
        raise BadRequest(f"error fetching plugin from repository: invalid URL {url!r} ({e})") from None
    except (urllib.error.URLError, OSError) as e:
        raise BadRequest(
            f"error fetching plugin from repository: {url} is unreachable ({getattr(e, 'reason', e)});"
            " check engine.plugin_repo and the network, or copy the file into the plugin directory"
        ) from None
    if len(body) > MAX_PLUGIN_BYTES:
        raise BadRequest(
            f"error fetching plugin from repository: {url} is larger than {MAX_PLUGIN_BYTES} bytes"
        )
    return body
