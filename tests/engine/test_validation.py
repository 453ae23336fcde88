"""What the engine refuses and how it keeps trigger identity: pure checks, plus the trigger store on real LMDB."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from appliance.engine import packages, tables
from appliance.engine.loader import PluginLoader, check_filename
from appliance.engine.packages import PackageInstaller, _last_error, _logical_lines
from appliance.engine.store import TriggerDef, TriggerStore
from appliance.engine.triggers import check_arguments, check_trigger_name, parse_spec
from appliance.errors import BadRequest, NotFound
from appliance.storage.store import Store


@pytest.fixture
def lmdb(tmp_path: Path) -> Iterator[Store]:
    w = Store(tmp_path / "lmdb", 1 << 28)
    w.start()
    yield w
    if w.alive:
        w.stop()


def _trigger(db: str, name: str, **extra: Any) -> TriggerDef:
    fields: dict[str, Any] = {"name": name, "database": db, "plugin_filename": "p.py", "spec": "request:x"}
    return TriggerDef(**(fields | extra))


def test_trigger_identity_does_not_join_names_with_a_slash() -> None:
    a, b = _trigger("x/y", "z"), _trigger("x", "y/z")
    assert a.key != b.key and a.store_key != b.store_key
    assert len(_trigger("d" * 480, "n" * 255).store_key) < 511  # LMDB's key limit


def test_store_keeps_both_and_rekeys_old_definitions(lmdb: Store) -> None:
    store = TriggerStore(lmdb)
    store.put(_trigger("x/y", "z"))
    store.put(_trigger("x", "y/z"))
    old = _trigger("db", "legacy", arguments={"k": "v"})
    record = msgpack.unpackb(old.encode())
    record["arguments"]["flag"] = True  # a bool a plugin leaked into older versions' store

    triggers = lmdb.database(b"triggers")  # opened outside the writer's transaction

    def put_old(txn):  # type: ignore[no-untyped-def]
        txn.put(b"db/legacy", msgpack.packb(record), db=triggers)

    lmdb.submit(put_old).result()
    loaded = {(t.database, t.name): t for t in store.load()}
    assert set(loaded) == {("x/y", "z"), ("x", "y/z"), ("db", "legacy")}
    assert loaded[("db", "legacy")].arguments == {"k": "v", "flag": "True"}
    with lmdb.read() as txn:
        keys = [bytes(k) for k, _ in txn.cursor(db=lmdb.database(b"triggers"))]
    assert b"db/legacy" not in keys and len(keys) == 3
    store.delete(loaded[("x", "y/z")])
    assert {(t.database, t.name) for t in store.load()} == {("x/y", "z"), ("db", "legacy")}


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "empty"),
        ("a\x00b", "U+0000"),
        ("a\nb", "U+000A"),
        ("look\u200balike", "U+200B"),
        ("n" * 256, "at most 255"),
    ],
)
def test_trigger_names_refused(name: str, reason: str) -> None:
    with pytest.raises(BadRequest, match=re.escape(reason)):
        check_trigger_name(name)


def test_trigger_names_and_arguments_accepted() -> None:
    check_trigger_name("ünïcode name/with slash")
    check_arguments({"k": "a value, with\u200bunicode", "q": ""})
    check_arguments(None)


def test_multiline_values_and_unusual_but_valid_names_are_accepted() -> None:
    """Only control characters and surrogates are refused outside trigger names: NBSP, CJK space, ZWJ emoji pass;
    trigger names follow the rule of table names (no invisible look-alikes)."""
    pem = "-----BEGIN CERTIFICATE-----\r\nMIIB\tIjAN\n-----END CERTIFICATE-----\n"
    sql = "SELECT *\n\tFROM cpu\n\tWHERE host = 'a'"
    check_arguments({"pem": pem, "sql": sql, "json": '{\n  "a": 1\n}', "nbsp\u00a0key": "v"})
    for filename in (
        "my\u00a0plugin.py",
        "日本\u3000語.py",
        "fam\U0001f468\u200d\U0001f469\u200d\U0001f467.py",
    ):
        check_filename(filename)
    for name in ("nb\u00a0sp", "ideo\u3000space", "\u0645\u06cc\u200c\u062e"):
        check_trigger_name(name)  # trigger names follow the rule of table names: these are visible
    for name in ("look\u200balike", "\u200dlead", "bidi\u202eeman"):
        with pytest.raises(BadRequest, match="names may not hold control, zero-width"):
            check_trigger_name(name)


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        ({"k": "a\x00"}, "value of trigger argument 'k': it contains the control character U+0000"),
        ({"k": "a\x1b[2J"}, "U+001B"),
        ({"k": "a\ud800"}, "U+D800"),
        ({"k\t": "v"}, "trigger argument name 'k\\t': it contains the control character U+0009"),
        ({"k\n": "v"}, "U+000A"),
        ({"": "v"}, "trigger argument name: it is empty"),
        ({"k" * 256: "v"}, "at most 255"),
        ({"k": "x" * 65_537}, "at most 65536"),
        ({f"k{i}": "" for i in range(257)}, "too many"),
    ],
)
def test_arguments_refused(args: dict[str, str], reason: str) -> None:
    with pytest.raises(BadRequest, match=re.escape(reason)):
        check_arguments(args)


@pytest.mark.parametrize(
    ("filename", "reason"),
    [
        ("", "empty"),
        ("a\x00.py", "the control character U+0000"),
        ("a\x7f.py", "U+007F"),
        ("a\ud83d.py", "U+D83D"),
        ("x" * 1025, "at most 1024"),
        ("d/" + "x" * 256, "longer than 255 bytes"),
        ("d/" + "é" * 128, "longer than 255 bytes"),
    ],
)
def test_plugin_filenames_refused(filename: str, reason: str) -> None:
    with pytest.raises(BadRequest, match=re.escape(reason)):
        check_filename(filename)


def test_loader_refuses_escapes_before_touching_files(tmp_path: Path) -> None:
    loader = PluginLoader(tmp_path, "http://127.0.0.1:1", {})
    for name in ("../x.py", "/etc/passwd", "gh:../../x.py", "a\x00.py", "gh:" + "y" * 2000):
        with pytest.raises(BadRequest):
            loader.resolve(name)
    with pytest.raises(BadRequest):
        loader.fetch("gh:../x.py")
    with pytest.raises(NotFound):
        loader.resolve("missing.py")


def test_requirements_accept_what_pip_users_type(tmp_path: Path) -> None:
    pkgs = PackageInstaller(tmp_path, "pip")
    wheel = tmp_path / "x-1.0-py3-none-any.whl"
    as_given = (
        "requests",
        "requests[socks]>=2,<3",
        "foo; python_version>'3'",
        "x @ https://h/x.whl",
        f"x @ {(tmp_path / 'x.whl').as_uri()}",
        "git+https://github.com/psf/requests.git@v2.32.3",
        "git+http://git.local/r.git#egg=r",
        "requests @ git+https://github.com/psf/requests.git@v2.32.3",
        "https://files.example/x-1.0-py3-none-any.whl",
    )
    for ok in as_given:
        assert pkgs.check_requirement(ok) == ok
    # A local wheel, by path (absolute or relative to the plugin directory) or file: URL, goes to pip by URL.
    for local in (str(wheel), wheel.name, "./" + wheel.name, wheel.as_uri()):
        assert pkgs.check_requirement(local) == wheel.as_uri()
    for bad, reason in (
        ("-r", "pip options are not accepted"),
        ("--requirement=/etc/shadow", "pip options are not accepted"),
        ("/etc/shadow", "must be a wheel (.whl) inside the plugin directory"),
        ("/etc/x-1.0-py3-none-any.whl", "inside the plugin directory"),
        (f"{tmp_path}/../x-1.0-py3-none-any.whl", "inside the plugin directory"),
        ("file:///etc/x-1.0-py3-none-any.whl", "inside the plugin directory"),
        (str(tmp_path / "sdist.tar.gz"), "must be a wheel"),
        ("a b", "not a package requirement"),
        ("x @ file:///etc/x.whl", "must point into the plugin directory"),
        ("x @ ftp://h/x", "the URL must be"),
        ("git+ssh://git@h/r.git", "the URL must be"),
        ("git+file:///srv/r.git", "the URL must be"),
        ("git+https://h/r.git@--upload-pack=touch", "cannot start with '-'"),
        ("x @ https://h/${AWS_SECRET_ACCESS_KEY}.whl", "environment"),
        ("requests --index-url=http://evil/", "would be read by pip as an option"),
        ("requests\n-r /etc/shadow", "U+000A"),
    ):
        with pytest.raises(BadRequest, match=re.escape(reason)):
            pkgs.check_requirement(bad)


def test_requirements_file_stays_in_the_plugin_dir(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (tmp_path / "outside.txt").write_text("requests\n")
    (plugins / "req.txt").write_text("# c\nrequests>=2  # pinned\n\nfoo \\\n  >=1\n")
    pkgs = PackageInstaller(plugins, "pip")
    assert pkgs.read_requirements("req.txt") == [(2, "requests>=2"), (4, "foo >=1")]
    assert pkgs.read_requirements(str(plugins / "req.txt")) == [(2, "requests>=2"), (4, "foo >=1")]
    for location in ("../outside.txt", str(tmp_path / "outside.txt")):
        with pytest.raises(BadRequest, match="outside the plugin directory"):
            pkgs.read_requirements(location)
    (plugins / "opts.txt").write_text("requests\n--index-url file:///etc/\n")
    with pytest.raises(BadRequest, match="line 2"):
        pkgs.read_requirements("opts.txt")
    assert _logical_lines("a @ https://h/a.whl#sha256=1 # c") == [(1, "a @ https://h/a.whl#sha256=1")]


PIP_COMPILE = """\
#
# This file is autogenerated by pip-compile with Python 3.11
#
--index-url https://pypi.org/simple
--extra-index-url=https://mirror.local/simple
-i https://pypi.org/simple
-f https://mirror.local/links
--pre
--only-binary :all:
--only-binary=scikit-learn,numpy
--prefer-binary
--require-hashes

certifi==2024.2.2 \\
    --hash=sha256:0569859f95fc761b18b45ef421b1290a0f65f147e92a1e5eb3e635f9a5e4e66f \\
    --hash=sha256:dc383c07b76109f368f6106eee2b593b04a011ea4d55f652c6ca24a754d1cdd1
    # via requests
requests==2.32.3 --hash sha256:70761cfe03c773ceb22aa2f671b4757976145175cdfca038c02654d061d6dcc6
x-1.0-py3-none-any.whl
"""


def test_pip_compile_files_with_hashes_and_index_options_reach_pip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What pip-compile --generate-hashes writes installs: pip gets -r of OUR file, lines at their numbers."""
    (tmp_path / "requirements.txt").write_text(PIP_COMPILE)
    pkgs = PackageInstaller(tmp_path, "pip")
    seen: dict[str, object] = {}

    def fake_pip(args: list[str], cwd: str) -> subprocess.CompletedProcess[str]:
        ours = Path(args[args.index("-r") + 1])
        seen.update(args=args, cwd=cwd, text=ours.read_text())
        return subprocess.CompletedProcess(args, 0, "ok", "")

    monkeypatch.setattr(packages, "_run_pip", fake_pip)
    pkgs.install([], "requirements.txt")
    args, text = seen["args"], str(seen["text"])
    assert isinstance(args, list) and str(tmp_path / "requirements.txt") not in args
    assert Path(args[args.index("-r") + 1]).parent == Path(str(seen["cwd"]))
    lines = text.splitlines()
    assert lines[3:12] == [
        "--index-url https://pypi.org/simple",
        "--extra-index-url https://mirror.local/simple",
        "--index-url https://pypi.org/simple",
        "--find-links https://mirror.local/links",
        "--pre",
        "--only-binary=:all:",
        "--only-binary=scikit-learn,numpy",
        "--prefer-binary",
        "--require-hashes",
    ]
    assert lines[13] == (
        "certifi==2024.2.2"
        " --hash=sha256:0569859f95fc761b18b45ef421b1290a0f65f147e92a1e5eb3e635f9a5e4e66f"
        " --hash=sha256:dc383c07b76109f368f6106eee2b593b04a011ea4d55f652c6ca24a754d1cdd1"
    )
    assert lines[17] == (
        "requests==2.32.3 --hash=sha256:70761cfe03c773ceb22aa2f671b4757976145175cdfca038c02654d061d6dcc6"
    )
    assert lines[18] == (tmp_path / "x-1.0-py3-none-any.whl").as_uri()
    pkgs.install(["git+https://github.com/psf/requests.git@v2.32.3", "x-1.0-py3-none-any.whl"])
    assert str(seen["text"]).splitlines() == [
        "git+https://github.com/psf/requests.git@v2.32.3",
        (tmp_path / "x-1.0-py3-none-any.whl").as_uri(),
    ]


@pytest.mark.parametrize(
    "line",
    [
        'token = "TOPSECRET-1"',
        "-r /etc/TOPSECRET",
        "--index-url file:///TOPSECRET",
        "-f /srv/TOPSECRET",
        "-c TOPSECRET.txt",
        "-e git+https://h/TOPSECRET.git",
        "--trusted-host TOPSECRET",
        "pkg==1 --hash=md5:TOPSECRET",
        "pkg==1 --config-settings=TOPSECRET",
        "TOPSECRET @ https://h/${HOME}",
        "TOPSECRET\x1b[2J",
    ],
)
def test_requirements_file_errors_name_the_line_never_quote_it(tmp_path: Path, line: str) -> None:
    (tmp_path / "secrets.toml").write_text(f"requests\n{line}\n")
    with pytest.raises(BadRequest) as info:
        PackageInstaller(tmp_path, "pip").read_requirements("secrets.toml")
    message = info.value.message
    assert message.startswith("requirements file 'secrets.toml', line 2: ") and "TOPSECRET" not in message


def test_pip_failure_summary_is_its_last_error_line() -> None:
    out = "Collecting x\nERROR: first\nsome detail\nERROR: No matching distribution found for x\n"
    assert _last_error(out) == "ERROR: No matching distribution found for x"
    assert len(_last_error("ERROR: " + "x" * 5000)) == 300


def test_system_tables_render_whatever_a_trigger_holds(tmp_path: Path) -> None:
    odd = _trigger("db", "t", arguments={"flag": True, 1: None}, spec="no longer a valid spec")  # type: ignore[dict-item]
    built = tables.build(tmp_path, [odd], lambda: tables._EMPTY["processing_engine_logs"])
    assert built["processing_engine_trigger_arguments"].to_pylist() == [
        {"trigger_name": "t", "argument_key": "flag", "argument_value": "True"},
        {"trigger_name": "t", "argument_key": "1", "argument_value": "None"},
    ]
    assert built["processing_engine_triggers"].column("trigger_specification").to_pylist() == [
        "no longer a valid spec"
    ]

    def broken() -> None:
        raise RuntimeError("boom")

    built = tables.build(tmp_path, [odd], broken)  # type: ignore[arg-type]
    assert built["processing_engine_logs"].num_rows == 0


def test_specs_with_control_characters_or_too_long_are_refused() -> None:
    for spec, reason in (
        ("table:a\x00", "U+0000"),
        ("request:a\x1fb", "U+001F"),
        ("cron:" + "1," * 3000 + "1 * * * * *", "at most 4096"),
    ):
        with pytest.raises(BadRequest, match=re.escape(reason)) as info:
            parse_spec(spec)
        assert len(info.value.message) < 600


def test_store_loads_int_keys_and_bytes_and_skips_what_it_cannot_decode(
    lmdb: Store, caplog: pytest.LogCaptureFixture
) -> None:
    good = _trigger("db", "ok", arguments={"k": "v"})
    record = msgpack.unpackb(good.encode())
    record["arguments"].update({7: b"seven", "flag": True, "raw": b"\xff"})
    unknown_field = {**record, "name": "future", "added_in_v9": 1}
    junk = {
        b"db/junk": b"\xc1\xc1",
        b"db/future": msgpack.packb(unknown_field),
        b"db/list": msgpack.packb([1]),
    }

    triggers = lmdb.database(b"triggers")  # opened outside the writer's transaction

    def put_old(txn):  # type: ignore[no-untyped-def]
        txn.put(b"db/ok", msgpack.packb(record), db=triggers)
        for k, v in junk.items():
            txn.put(k, v, db=triggers)

    lmdb.submit(put_old).result()
    with caplog.at_level("ERROR", logger="appliance.engine"):
        loaded = TriggerStore(lmdb).load()
    assert [t.name for t in loaded] == ["ok"]
    assert loaded[0].arguments == {"k": "v", "7": "seven", "flag": "True", "raw": "\ufffd"}
    skipped = [r.getMessage() for r in caplog.records if "skipped stored trigger" in r.getMessage()]
    assert len(skipped) == 3 and all(m.count("\n") == 0 for m in skipped)
    with lmdb.read() as txn:
        for k, v in junk.items():
            stored = txn.get(k, db=lmdb.database(b"triggers"))
            assert stored is not None and bytes(stored) == v  # left as they were
        assert txn.get(b"db/ok", db=lmdb.database(b"triggers")) is None  # re-keyed
    assert [t.name for t in TriggerStore(lmdb).load()] == ["ok"]


def test_plugin_files_lists_plugins_without_walking_packages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for rel in ("a.py", "pkg/__init__.py", "pkg/sub/b.py", "notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x = 1\n")
    for skipped in (".packages/numpy/core", ".gh/examples", "__pycache__", "pkg/__pycache__"):
        (tmp_path / skipped).mkdir(parents=True)
        (tmp_path / skipped / "m.py").write_text("")
    real_walk, visited = tables.os.walk, []

    def walk(*args, **kwargs):  # type: ignore[no-untyped-def]
        for item in real_walk(*args, **kwargs):
            visited.append(Path(item[0]).relative_to(tmp_path).as_posix())
            yield item

    monkeypatch.setattr(tables.os, "walk", walk)
    table = tables.plugin_files(tmp_path)
    assert table.column("file_path").to_pylist() == ["a.py", "pkg/__init__.py", "pkg/sub/b.py"]
    assert table.column("plugin_name").to_pylist() == ["a.py", "pkg", "pkg"]
    assert sorted(visited) == [".", "pkg", "pkg/sub"]


def test_gh_fetch_stores_names_up_to_name_max_and_reports_disk_errors(tmp_path: Path) -> None:
    import http.server
    import threading

    long_name = "p" * 252 + ".py"  # 255 bytes: a valid name, but name + ".tmp" is not
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / long_name).write_text("X = 1\n")
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(repo))  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        plugins = tmp_path / "plugins"
        loader = PluginLoader(plugins, f"http://127.0.0.1:{httpd.server_address[1]}", {})
        path = loader.fetch("gh:" + long_name)
        assert path.read_text() == "X = 1\n" and path.name == long_name
        assert sorted(p.name for p in path.parent.iterdir()) == [long_name]  # no temp file left
        assert loader.resolve("gh:" + long_name) == path
        other = tmp_path / "other"
        other.mkdir()
        (other / ".gh").write_text("a file where the cache folder should be")
        blocked = PluginLoader(other, loader.repo, {})
        with pytest.raises(BadRequest, match="cannot store plugin"):
            blocked.fetch("gh:" + long_name)
        for bad in ("gh:", "gh:.", "gh:a/../../x.py"):
            with pytest.raises(BadRequest, match="Path traversal"):
                loader.fetch(bad)
    finally:
        httpd.shutdown()
        httpd.server_close()
