"""packaging/glibc_floor.py: the glibc floor of ELF files, read from real readelf output on this machine."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "packaging" / "glibc_floor.py"
LS = Path("/bin/ls")

pytestmark = pytest.mark.skipif(shutil.which("readelf") is None, reason="needs readelf (binutils)")


@pytest.fixture(scope="module")
def gf() -> Iterator[ModuleType]:
    # Loaded by path: `packaging` is also the name of a PyPI library.
    spec = importlib.util.spec_from_file_location("glibc_floor", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["glibc_floor"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules["glibc_floor"]


def readelf(path: Path, *opts: str) -> str:
    return subprocess.run(
        ["readelf", *opts, "--wide", str(path)], capture_output=True, text=True, check=True
    ).stdout


def glibc_needs(text: str) -> set[tuple[int, ...]]:
    """GLIBC_x.y names in the "Version needs" section, read independently of the module's parser."""
    needs = text.split("Version needs section", 1)[1]
    return {tuple(int(p) for p in v.split(".")) for v in re.findall(r"Name: GLIBC_(\d+(?:\.\d+)+)\s", needs)}


def host_glibc() -> tuple[int, ...]:
    out = subprocess.run(["getconf", "GNU_LIBC_VERSION"], capture_output=True, text=True, check=True).stdout
    return tuple(int(p) for p in out.split()[1].split("."))


def venv_cxx_library() -> Path:
    """A C++ shared library from the running venv (it needs GLIBCXX_ versions from libstdc++)."""
    pyarrow = pytest.importorskip("pyarrow")
    libs = sorted(Path(pyarrow.__file__).parent.glob("libarrow.so.*"))
    if not libs:
        pytest.skip("no libarrow.so in this pyarrow")
    return libs[0]


def test_ls_floor_is_its_highest_glibc_need(gf: ModuleType) -> None:
    text = readelf(LS, "-V", "--dyn-syms")
    parsed = gf.parse_readelf(text)
    expected = max(glibc_needs(text))
    assert parsed.glibc() == expected
    assert (2, 2) <= expected <= host_glibc()
    assert "libc.so.6" in parsed.needs
    # The symbols behind the floor are undefined dynamic symbols versioned with it.
    symbols = parsed.symbols[f"GLIBC_{gf.fmt(expected)}"]
    assert symbols
    dynsym = readelf(LS, "--dyn-syms")
    assert all(f"{s}@GLIBC_{gf.fmt(expected)}" in dynsym for s in symbols)


def test_venv_library_floor_and_libstdcxx_needs(gf: ModuleType, tmp_path: Path) -> None:
    lib = venv_cxx_library()
    text = readelf(lib, "-V", "--dyn-syms")
    parsed = gf.parse_readelf(text)
    assert parsed.glibc() == max(glibc_needs(text))
    # A manylinux_2_28 wheel: its libraries start on glibc 2.28.
    assert parsed.glibc() <= (2, 28)
    assert any(v.startswith("GLIBCXX_") for v in parsed.needs["libstdc++.so.6"])

    # Alone, its GLIBCXX needs are not met by anything scanned ...
    (tmp_path / "alone").mkdir()
    shutil.copy(lib, tmp_path / "alone" / lib.name)
    alone = gf.scan([tmp_path / "alone"])
    assert {"GLIBCXX", "CXXABI"} <= set(alone.cxx_unmet())
    # ... beside a libstdc++ (this machine's, which defines every version it asks for) they are.
    system_libstdcxx = Path(
        subprocess.run(["ldd", str(lib)], capture_output=True, text=True, check=True)
        .stdout.split("libstdc++.so.6 => ", 1)[1]
        .split()[0]
    )
    (tmp_path / "bundle").mkdir()
    shutil.copy(lib, tmp_path / "bundle" / lib.name)
    shutil.copy(system_libstdcxx, tmp_path / "bundle" / "libstdc++.so.6")
    (tmp_path / "bundle" / "README.txt").write_text("not an ELF file\n")
    bundle = gf.scan([tmp_path / "bundle"])
    assert bundle.cxx_unmet() == {}
    assert bundle.scanned == 3 and len(bundle.files) == 2
    # The floor of a folder is its neediest file: here the system libstdc++.
    assert bundle.floor() == max(glibc_needs(readelf(system_libstdcxx, "-V")) | {parsed.glibc()})


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)


def test_cli_passes_at_the_floor_and_fails_below_it(gf: ModuleType, tmp_path: Path) -> None:
    floor = max(glibc_needs(readelf(LS, "-V")))
    at = gf.fmt(floor)
    ok = run_cli(str(LS), "--max", at, "--json", str(tmp_path / "ok.json"))
    assert ok.returncode == 0, ok.stderr
    assert f"glibc floor: GLIBC_{at}" in ok.stdout
    data = json.loads((tmp_path / "ok.json").read_text())
    assert data["glibc_floor"] == at and data["ok"] is True and data["elf_files"] == 1

    below = gf.fmt((floor[0], floor[1] - 1))
    bad = run_cli(str(LS), "--max", below, "--json", str(tmp_path / "bad.json"))
    assert bad.returncode == 1
    assert f"the glibc floor is {at}, above the declared maximum {below}" in bad.stderr
    assert "ABOVE the maximum" in bad.stdout and str(LS) in bad.stdout
    assert json.loads((tmp_path / "bad.json").read_text())["ok"] is False


def test_cli_without_elf_files_or_with_a_bad_max(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello\n")
    nothing = run_cli(str(tmp_path))
    assert nothing.returncode == 2 and "no ELF file" in nothing.stderr
    assert run_cli(str(tmp_path / "missing")).returncode == 2
    assert run_cli(str(LS), "--max", "new").returncode == 2
