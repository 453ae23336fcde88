"""Smoke test of the frozen executable (packaging/build.sh, `make binary`): one real server from it.

Which binary: $APPLIANCE_BINARY (several separated by ":"), else each of dist/appliance-onedir/appliance and dist/appliance
that exists. With none built the tests skip (run `make binary`), except under CI=true, where a
missing binary is a failure.

$APPLIANCE_BINARY_RUNNER is a command put in front of every run of the binary: a build for another
architecture or glibc runs under it, e.g. `packaging/emulate-arm64` for the aarch64 build
(`make test-arm64`), or `packaging/debroot.py run build/roots/bullseye-amd64 --bind ... --` for a
bullseye root. Emulated programs are about ten times slower: the waits grow accordingly.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.server import REPO, RUNNING, Server, free_port

pytestmark = pytest.mark.slow  # the frozen executables, started for real (under emulation for arm64)

JSON = {"Content-Type": "application/json"}
CANDIDATES = [REPO / "dist" / "appliance-onedir" / "appliance", REPO / "dist" / "appliance"]
RUNNER = shlex.split(os.environ.get("APPLIANCE_BINARY_RUNNER", ""))
#: How much longer everything takes under the runner (emulation).
SLOW = 10 if RUNNER else 1
#: A tiny pure-Python package that is not in the bundle, installed from the configured index.
REGISTRY_PACKAGE = "tabulate"

# Standard library modules a plugin (arbitrary user code) may import: all must be in the bundle.
STDLIB = (
    "json csv datetime statistics math cmath re urllib.request urllib.parse http.client http.server"
    " asyncio logging logging.handlers collections dataclasses decimal fractions zoneinfo email"
    " email.mime.text smtplib sqlite3 xml.etree.ElementTree xml.dom.minidom html.parser ssl hashlib"
    " hmac secrets uuid random itertools functools typing pathlib shutil tempfile gzip zipfile tarfile"
    " lzma bz2 zlib base64 binascii struct socket selectors threading concurrent.futures queue sched"
    " heapq bisect array copy pprint textwrap string difflib unicodedata locale argparse configparser"
    " tomllib io codecs enum abc contextlib operator inspect ast traceback warnings weakref platform"
    " ctypes mmap signal subprocess multiprocessing ipaddress calendar time timeit cProfile pstats"
    " unittest pickle shelve dbm wsgiref xmlrpc.client mimetypes graphlib"
).split()


def _binaries() -> list[Path]:
    given = os.environ.get("APPLIANCE_BINARY")
    if given:
        return [Path(p).resolve() for p in given.split(os.pathsep) if p]
    return [p for p in CANDIDATES if p.is_file() and os.access(p, os.X_OK)]


def _binary_params() -> list[Any]:
    found = _binaries()
    if found:
        return [pytest.param(p, id=_name(p)) for p in found]
    return [pytest.param(None, id="no-binary")]


def _name(binary: Path) -> str:
    """dist/arm64/appliance-onedir/appliance -> arm64/appliance-onedir; dist/appliance -> appliance."""
    shown = binary.parent if binary.parent.name.endswith("-onedir") else binary
    return str(shown.relative_to(REPO / "dist")) if shown.is_relative_to(REPO / "dist") else shown.name


@pytest.fixture(params=_binary_params())
def binary(request: pytest.FixtureRequest) -> Path:
    path: Path | None = request.param
    if path is None:
        message = "no frozen executable: run `make binary` (builds dist/appliance and dist/appliance-onedir/)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; in CI the binary must be built before the tests")
        pytest.skip(message)
    assert path.is_file() and os.access(path, os.X_OK), f"APPLIANCE_BINARY={path} is not an executable file"
    if path.is_relative_to(REPO / "dist"):  # a build of this checkout; a copy elsewhere is as it is
        newer = _sources_newer_than(path)
        if newer:
            message = f"{path} is older than {newer}: build it again (make binary, binary-arm64, ...)"
            if os.environ.get("CI") == "true":
                pytest.fail(message)
            pytest.skip(message)
    return path


def _sources_newer_than(binary: Path) -> str | None:
    """A source file changed since the binary was built, if any: a stale build tests old code."""
    built = binary.stat().st_mtime
    packaging = REPO / "packaging"
    for path in [
        *(REPO / "appliance").rglob("*.py"),
        packaging / "appliance.spec",
        *packaging.glob("hooks/*.py"),
    ]:
        if path.exists() and path.stat().st_mtime > built:
            return str(path.relative_to(REPO))
    return None


def _env(**extra: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")} | extra


def _run(binary: Path, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RUNNER, str(binary), *args],
        capture_output=True,
        text=True,
        timeout=timeout * SLOW,
        env=_env(**env),
        cwd=REPO,
    )


def test_frozen_binary_cli_without_server(binary: Path) -> None:
    from appliance import __version__

    r = _run(binary, "--version")
    assert r.returncode == 0 and r.stdout.strip() == f"appliance {__version__}", (r.stdout, r.stderr)
    r = _run(binary, "--help")
    assert r.returncode == 0 and "serve" in r.stdout and "install" in r.stdout, r.stderr
    r = _run(binary, "config", "sample")
    assert r.returncode == 0 and "[server]" in r.stdout, r.stderr
    r = _run(binary, "query", "-d", "x", "SELECT 1", APPLIANCE_HOST=f"http://127.0.0.1:{free_port()}")
    assert r.returncode == 1 and "cannot reach" in r.stderr, (r.returncode, r.stderr)


@pytest.mark.timeout(1800 if RUNNER else 900)
def test_frozen_binary_end_to_end(binary: Path, tmp_path: Path) -> None:
    """serve with auth, write, query, a WAL and a request trigger, install package, persist,
    SIGTERM, restart: every row is back."""
    server = _start(binary, tmp_path / "data")

    def fail(message: str) -> str:
        return f"{message}\n--- server log ({binary}) ---\n{server.log()[-6000:]}"

    def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return _run(
            binary, *args, timeout=timeout, APPLIANCE_HOST=server.url, APPLIANCE_TOKEN=server.token or ""
        )

    # Auth is on: no token, no service.
    assert server.request("GET", "/api/v3/configure/database", token="").status == 401, fail("auth is off")

    # write: CLI and HTTP; query: CLI, JSON out.
    r = cli("write", "-d", "smoke", "--precision", "s", "room,name=a temp=20.5 1735689600")
    assert r.returncode == 0, fail(f"CLI write failed: {r.stderr}")
    r2 = server.write("smoke", "room,name=b temp=22 1735689601", precision="s")
    assert r2.status == 204, fail(f"HTTP write: {r2.status} {r2.text}")
    r = cli("query", "-d", "smoke", "--format", "json", "SELECT name, temp FROM room ORDER BY name")
    assert r.returncode == 0, fail(f"CLI query failed: {r.stderr}")
    assert json.loads(r.stdout) == [{"name": "a", "temp": 20.5}, {"name": "b", "temp": 22.0}], fail(r.stdout)

    # A WAL trigger whose plugin writes a derived point.
    _plugin(
        server,
        "double.py",
        """
        def process_writes(influxdb3_local, table_batches, args):
            for batch in table_batches:
                for row in batch["rows"]:
                    influxdb3_local.write(
                        LineBuilder("doubled").tag("name", row["name"]).float64_field("temp", row["temp"] * 2).time_ns(row["time"])
                    )
        """,
    )
    r = cli(
        "create", "trigger", "-d", "smoke", "double", "--trigger-spec", "table:room", "--path", "double.py"
    )
    assert r.returncode == 0, fail(f"create trigger: {r.stderr}")
    assert server.write("smoke", "room,name=c temp=1.5 1735689602", precision="s").status == 204
    rows = _wait_for(lambda: _rows(server, "smoke", "SELECT name, temp FROM doubled"), 30 * SLOW)
    assert rows == [{"name": "c", "temp": 3.0}], fail(f"derived point: {rows}")

    # A request trigger: the plugin imports the standard library and the bundled libraries.
    _plugin(
        server,
        "hello.py",
        f"""
        import importlib

        STDLIB = {STDLIB!r}

        def process_request(influxdb3_local, query_parameters, request_headers, request_body, args):
            missing = []
            for name in STDLIB + ["pyarrow.fs", "pyarrow.parquet", "pyarrow.dataset", "datafusion", "paho.mqtt.client", "aiohttp", "croniter"]:
                try:
                    importlib.import_module(name)
                except Exception as e:
                    missing.append(f"{{name}}: {{e!r}}")
            import pyarrow.fs
            return {{
                "hello": query_parameters.get("name", "world"),
                "missing": missing,
                "s3": hasattr(pyarrow.fs, "S3FileSystem"),
                "rows": influxdb3_local.query("SELECT count(*) AS n FROM room")[0]["n"],
            }}
        """,
    )
    r = cli(
        "create", "trigger", "-d", "smoke", "hello", "--trigger-spec", "request:hello", "--path", "hello.py"
    )
    assert r.returncode == 0, fail(f"create request trigger: {r.stderr}")
    resp = server.request("GET", "/api/v3/engine/hello", {"name": "pi"})
    assert resp.status == 200, fail(f"/api/v3/engine/hello: {resp.status} {resp.text}")
    doc = resp.json()
    assert doc["missing"] == [], fail(f"modules a plugin cannot import in the frozen build: {doc['missing']}")
    assert doc == {"hello": "pi", "missing": [], "s3": True, "rows": 3}, fail(str(doc))

    # install package: pip inside the executable, into <plugin-dir>/.packages; a plugin imports it.
    specs, module = _package_to_install(tmp_path, server.data_dir / "plugins")
    for spec in specs:
        r = cli("install", "package", spec, timeout=600)
        assert r.returncode == 0, fail(f"install package {spec}: {r.stdout}\n{r.stderr}")
    _plugin(
        server,
        "uses_pkg.py",
        f"""
        import {module}

        def process_request(influxdb3_local, query_parameters, request_headers, request_body, args):
            return {{"file": {module}.__file__}}
        """,
    )
    r = cli(
        "create", "trigger", "-d", "smoke", "pkg", "--trigger-spec", "request:pkg", "--path", "uses_pkg.py"
    )
    assert r.returncode == 0, fail(f"create trigger: {r.stderr}")
    resp = server.request("GET", "/api/v3/engine/pkg")
    assert resp.status == 200, fail(f"plugin importing {module}: {resp.status} {resp.text}")
    packages = server.data_dir / "plugins" / ".packages"
    assert Path(resp.json()["file"]).is_relative_to(packages), fail(
        f"{module} not from {packages}: {resp.text}"
    )

    # persist: the buffer goes to Parquet files under the data folder.
    r = cli("persist")
    assert r.returncode == 0 and "persisted" in r.stdout, fail(f"persist: {r.stdout}\n{r.stderr}")
    assert list((server.data_dir / "parquet" / "smoke").rglob("*.parquet")), fail(
        "no Parquet file after persist"
    )
    assert server.write("smoke", "room,name=d temp=4 1735689603", precision="s").status == 204  # WAL only

    # SIGTERM: a clean stop, exit code 0; a restart finds every row (Parquet and WAL replay).
    _stop(server, fail)
    server = _start(binary, server.data_dir)
    rooms = _rows(server, "smoke", "SELECT name, temp FROM room ORDER BY name")
    assert rooms == [
        {"name": "a", "temp": 20.5},
        {"name": "b", "temp": 22.0},
        {"name": "c", "temp": 1.5},
        {"name": "d", "temp": 4.0},
    ], fail(f"rows after restart: {rooms}")
    doubled = _rows(server, "smoke", "SELECT name, temp FROM doubled ORDER BY name")
    assert doubled == [{"name": "c", "temp": 3.0}, {"name": "d", "temp": 8.0}], fail(
        f"after restart: {doubled}"
    )
    _stop(server, fail)


# -- helpers -------------------------------------------------------------------------------
def _start(binary: Path, data_dir: Path, timeout: float = 120) -> Server:
    """Start `binary serve` with auth on; wait for /health and the admin-token file."""
    timeout *= SLOW
    server = Server(data_dir, auth=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    server.log_path = data_dir.parent / "server.log"
    cmd = [
        *RUNNER,
        str(binary),
        "serve",
        "--data-dir",
        str(data_dir),
        "--http-bind",
        f"127.0.0.1:{server.port}",
        "--node-id",
        "smoke",
    ]
    with open(server.log_path, "ab") as log:
        server.proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT)
    RUNNING.append(server)  # killed by the conftest fixture if the test fails midway
    deadline = time.monotonic() + timeout  # generous: a one-file build unpacks itself first
    while True:
        if server.proc.poll() is not None:
            code = server.proc.returncode
            server.proc = None
            pytest.fail(f"{binary} serve exited with {code} before becoming healthy:\n{server.log()}")
        try:
            if server.request("GET", "/health", timeout=5).status == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{binary} serve not healthy within {timeout} s:\n{server.log()}")
        time.sleep(0.1)
    server.token = (data_dir / "admin-token").read_text().strip()
    return server


def _stop(server: Server, fail: Callable[[str], str]) -> None:
    """SIGTERM (through the runner, which forwards it): exit code 0 within a minute."""
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    try:
        code = server.proc.wait(60 * SLOW)
    except subprocess.TimeoutExpired:
        pytest.fail(fail(f"no exit within {60 * SLOW} s of SIGTERM"))
    server.proc = None
    assert code == 0, fail(f"exit code {code} after SIGTERM")


def _plugin(server: Server, name: str, code: str) -> None:
    path = server.data_dir / "plugins" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(code))


def _rows(server: Server, db: str, sql: str) -> list[dict[str, Any]] | None:
    r = server.request("GET", "/api/v3/query_sql", {"db": db, "q": sql, "format": "json"})
    return r.json() if r.status == 200 and r.json() else None


def _wait_for(check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def _package_to_install(tmp_path: Path, plugin_dir: Path) -> tuple[list[str], str]:
    """(what to pass to `install package`, one install each, the module it provides).

    A real package from the index pip is configured with (pip.conf, PIP_* variables), when this
    machine's pip can fetch it; else a wheel made here, so the test still covers pip inside the
    executable on a machine without a package index (in the plugin directory, the only place a
    local wheel may come from), given both as a bare path and as `name @ file:`.
    """
    probe = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-cache-dir",
            "-q",
            "-d",
            str(tmp_path / "probe"),
            REGISTRY_PACKAGE,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if probe.returncode == 0:
        return [REGISTRY_PACKAGE], REGISTRY_PACKAGE
    plugin_dir.mkdir(parents=True, exist_ok=True)
    wheel = plugin_dir / "smoke_pkg-1.0-py3-none-any.whl"
    files = {
        "smoke_pkg.py": "VALUE = 42\n",
        "smoke_pkg-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: smoke-pkg\nVersion: 1.0\n",
        "smoke_pkg-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files["smoke_pkg-1.0.dist-info/RECORD"] = (
        "".join(f"{n},,\n" for n in files) + "smoke_pkg-1.0.dist-info/RECORD,,\n"
    )
    with zipfile.ZipFile(wheel, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return [str(wheel), f"smoke-pkg @ {wheel.as_uri()}"], "smoke_pkg"
