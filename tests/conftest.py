from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server import Server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """A running appliance without auth, on its own data dir."""
    s = Server(tmp_path / "data").start()
    yield s
    if s.proc is not None:
        s.stop()


@pytest.fixture
def auth_server(tmp_path: Path) -> Iterator[Server]:
    """A running appliance with auth on (the default)."""
    s = Server(tmp_path / "data", auth=True).start()
    yield s
    if s.proc is not None:
        s.stop()
