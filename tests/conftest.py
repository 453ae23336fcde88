from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.storage.store import Store
from tests import mosquitto
from tests.mosquitto import Broker
from tests.server import RUNNING, Server
from tests.tlsca import CertAuthority, ServerCert

TESTS = Path(__file__).parent
E2E_FOLDERS = (TESTS / "e2e", TESTS / "hostile")  # every test there runs real `appliance serve` processes


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests under tests/e2e and tests/hostile `e2e`, so `-m "not e2e"` leaves them out."""
    for item in items:
        if any(item.path.is_relative_to(folder) for folder in E2E_FOLDERS):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(autouse=True)
def _reap_servers() -> Iterator[None]:
    """Kill any server or broker a test left running (a failed assertion skips its stop())."""
    yield
    while RUNNING:
        s = RUNNING.pop()
        if s.proc is not None:
            s.kill()
    mosquitto.reap()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A started LMDB Store in tmp_path (the storage and token tests' real LMDB)."""
    s = Store(tmp_path / "lmdb", 1 << 30)
    s.start()
    yield s
    s.stop()


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


@pytest.fixture
def broker(tmp_path: Path) -> Broker:
    """A real Mosquitto broker on its own port (killed after the test by `_reap_servers`)."""
    return Broker(tmp_path / "broker").start()


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> CertAuthority:
    """A throw-away CA (openssl; a missing openssl fails the test) for HTTPS tests."""
    return CertAuthority(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="session")
def server_cert(test_ca: CertAuthority) -> ServerCert:
    """A certificate of `test_ca` for 127.0.0.1 and localhost: `Server(..., tls=server_cert)` serves HTTPS."""
    return test_ca.issue("server")
