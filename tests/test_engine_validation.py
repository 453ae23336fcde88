"""What the engine refuses and how it keeps trigger identity: pure checks, plus the trigger store on real LMDB."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

from appliance.engine import tables
from appliance.engine.loader import PluginLoader, check_filename
from appliance.engine.packages import PackageInstaller, _last_error, _logical_lines
from appliance.engine.store import TriggerDef, TriggerStore
from appliance.engine.triggers import check_arguments, check_trigger_name, parse_spec
from appliance.errors import BadRequest, NotFound
from appliance.wal import Wal


@pytest.fixture
def wal(tmp_path: Path) -> Iterator[Wal]:
    w = Wal(tmp_path / "lmdb", 1 << 28)
    w.start()
    yield w
    if w.alive:
        w.stop()


def _trigger(db: str, name: str, **extra: object) -> TriggerDef:
    return TriggerDef(
        **{"name": name, "database": db, "plugin_filename": "p.py", "spec": "request:x", **extra}
    )  # type: ignore[arg-type]


def test_trigger_identity_does_not_join_names_with_a_slash() -> None:
    a, b = _trigger("x/y", "z"), _trigger("x", "y/z")
    assert a.key != b.key and a.store_key != b.store_key
    assert len(_trigger("d" * 480, "n" * 255).store_key) < 511  # LMDB's key limit


def test_store_keeps_both_and_rekeys_old_definitions(wal: Wal) -> None:
    store = TriggerStore(wal)
    store.put(_trigger("x/y", "z"))
    store.put(_trigger("x", "y/z"))
    old = _trigger("db", "legacy", arguments={"k": "v"})
    record = msgpack.unpackb(old.encode())
    record["arguments"]["flag"] = True  # a bool a plugin leaked into older versions' store

    def put_old(txn, w):  # type: ignore[no-untyped-def]
        txn.put(b"db/legacy", msgpack.packb(record), db=w.dbs["triggers"])

    wal.submit(fn=put_old).result()
    loaded = {(t.database, t.name): t for t in store.load()}
    assert set(loaded) == {("x/y", "z"), ("x", "y/z"), ("db", "legacy")}
    assert loaded[("db", "legacy")].arguments == {"k": "v", "flag": "True"}
    with wal.read() as txn:
        keys = [bytes(k) for k, _ in txn.cursor(db=wal.dbs["triggers"])]
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


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        ({"k": "a\x00"}, "value contains"),
        ({"k\t": "v"}, "name contains"),
        ({"": "v"}, "1 to 255"),
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
        ("a\x00.py", "U+0000"),
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


def test_requirements_are_pep508_only(tmp_path: Path) -> None:
    pkgs = PackageInstaller(tmp_path, "pip")
    for ok in ("requests", "requests[socks]>=2,<3", "foo; python_version>'3'", "x @ https://h/x.whl"):
        pkgs.check_requirement(ok)
    pkgs.check_requirement(f"x @ {(tmp_path / 'x.whl').as_uri()}")
    for bad in (
        "-r",
        "--requirement=/etc/shadow",
        "/etc/shadow",
        "a b",
        "x @ file:///etc/x.whl",
        "x @ ftp://h/x",
    ):
        with pytest.raises(BadRequest):
            pkgs.check_requirement(bad)


def test_requirements_file_stays_in_the_plugin_dir(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (tmp_path / "outside.txt").write_text("requests\n")
    (plugins / "req.txt").write_text("# c\nrequests>=2  # pinned\n\nfoo \\\n  >=1\n")
    pkgs = PackageInstaller(plugins, "pip")
    assert pkgs.read_requirements("req.txt") == ["requests>=2", "foo   >=1"]
    assert pkgs.read_requirements(str(plugins / "req.txt")) == ["requests>=2", "foo   >=1"]
    for location in ("../outside.txt", str(tmp_path / "outside.txt")):
        with pytest.raises(BadRequest, match="outside the plugin directory"):
            pkgs.read_requirements(location)
    (plugins / "opts.txt").write_text("requests\n--index-url http://evil/\n")
    with pytest.raises(BadRequest, match="line 2"):
        pkgs.read_requirements("opts.txt")
    assert _logical_lines("a @ https://h/a.whl#sha256=1 # c") == [(1, "a @ https://h/a.whl#sha256=1")]


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
