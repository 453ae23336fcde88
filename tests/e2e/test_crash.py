"""Durability: concurrent writers, SIGKILL mid-stream several times, every acknowledged line survives."""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.server import Server, wait_for

LINES_PER_BATCH = 200
WRITERS = 4
KILLS = 4


@dataclass
class Ledger:
    acked: set[tuple[int, int]] = field(default_factory=set)
    unknown: set[tuple[int, int]] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_for_acks(self, more: int) -> None:
        """Wait until the writers have `more` batches acknowledged than now (by the running server)."""
        with self.lock:
            target = len(self.acked) + more
        wait_for(lambda: len(self.acked) >= target, what=f"{more} more acknowledged batches")


def _body(writer: int, batch: int) -> bytes:
    base = (writer * 1_000_000 + batch) * LINES_PER_BATCH
    return "".join(
        f'crash,w={writer},b={batch} v={i}i,s="x" {base + i}\n' for i in range(LINES_PER_BATCH)
    ).encode()


def _writer(port_of: list[int], writer: int, ledger: Ledger, stop: threading.Event) -> None:
    batch = 0
    while not stop.is_set():
        batch += 1
        key = (writer, batch)
        if batch % 5 == 0 and batch > 10:
            # A client retry of an older batch: the same points again, often after they were
            # persisted, so persists merge files while the kills land. Still one row per point.
            key = (writer, batch - 10)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port_of[0], timeout=10)
            conn.request("POST", "/api/v3/write_lp?db=crash&precision=ns", body=_body(*key))
            status = conn.getresponse().status
            conn.close()
        except OSError:
            with ledger.lock:
                ledger.unknown.add(key)
            time.sleep(0.05)  # the server is being killed: a client pauses before it retries
            continue
        with ledger.lock:
            (ledger.acked if status == 204 else ledger.unknown).add(key)


def test_sigkill_never_loses_an_acknowledged_write(tmp_path: Path) -> None:
    server = Server(tmp_path / "data", args=["--max-buffer-bytes", "512KiB"]).start()
    ledger = Ledger()
    stop = threading.Event()
    port = [server.port]
    threads = [threading.Thread(target=_writer, args=(port, w, ledger, stop)) for w in range(WRITERS)]
    for t in threads:
        t.start()
    try:
        for _ in range(KILLS):
            ledger.wait_for_acks(30)  # this incarnation has taken writes (WAL entries to replay)
            try:  # a persist in flight when the kill lands is part of what is tested
                server.request("POST", "/api/v3/persist", timeout=5)
            except OSError:
                pass
            ledger.wait_for_acks(10)  # and writes after the persist, unpersisted when the kill lands
            server.kill()
            server.start()
        ledger.wait_for_acks(20)  # the last restart serves writes again
    finally:
        stop.set()
        for t in threads:
            t.join()
    rows = server.query(
        "crash",
        "SELECT w, b, count(*) AS n, count(DISTINCT time) AS t FROM crash GROUP BY w, b",
    )
    server.stop()
    found = {(int(r["w"]), int(r["b"])): (r["n"], r["t"]) for r in rows}
    assert len(ledger.acked) > 20, "the writers made too little progress to prove anything"
    missing = [k for k in ledger.acked if k not in found]
    assert not missing, f"acknowledged batches lost: {sorted(missing)[:10]}"
    for key, (n, distinct) in found.items():
        assert key in ledger.acked or key in ledger.unknown, f"batch {key} was never sent"
        assert n == LINES_PER_BATCH and distinct == LINES_PER_BATCH, (
            f"batch {key} has {n} rows ({distinct} distinct)"
        )
