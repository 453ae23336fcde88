"""The WAL on a real Store: entries in order across a reopen, group commits, trimming."""

from __future__ import annotations

import threading
from pathlib import Path

from appliance.model import WalSeq
from appliance.storage.store import Store
from appliance.storage.wal import TableRows, Wal, WalEntry
from tests.storage.rows import batch, entry


def test_wal_entries_survive_reopen_in_order(tmp_path: Path) -> None:
    store = Store(tmp_path / "lmdb", 1 << 30)
    w = Wal(store)
    store.start()
    seqs = [
        w.append(WalEntry(1, "db", [TableRows(2, "cpu", batch(["a"], [i], [float(i)]))])).result()
        for i in range(5)
    ]
    store.stop()
    assert seqs == [1, 2, 3, 4, 5]
    store2 = Store(tmp_path / "lmdb", 1 << 30)
    w2 = Wal(store2)
    replayed = list(w2.replay())
    assert [s for s, _ in replayed] == seqs
    assert [e.tables[0].batch.column("usage")[0].as_py() for _, e in replayed] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert w2.last_seq == 5
    store2.env.close()


def test_concurrent_writes_share_group_commits(wal: Wal) -> None:
    seen: list[int] = []

    class Listener:
        def on_commit(self, entries):  # noqa: ANN001
            seen.append(len(entries))

    wal.on_commit.add(Listener().on_commit)
    futures = []
    lock = threading.Lock()

    def writer(n: int) -> None:
        for i in range(50):
            f = wal.append(WalEntry(1, "db", [TableRows(2, "cpu", batch([str(n)], [i], [1.0]))]))
            with lock:
                futures.append(f)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(f.result() for f in futures) == list(range(1, 401))
    assert sum(seen) == 400
    assert wal.stats.max_group > 1, "concurrent writes never shared a commit"


def test_trim_removes_only_persisted_entries(store: Store, wal: Wal) -> None:
    for i in range(4):
        wal.append(entry("a", i)).result()
    store.submit(lambda txn: wal.trim(txn, WalSeq(2))).result()
    assert [s for s, _ in wal.replay()] == [3, 4]


def test_a_group_that_did_not_commit_hands_its_seqs_out_again(store: Store, wal: Wal) -> None:
    """The seqs of a failed group are not skipped: the next committed entry takes the first of them."""
    real = store.env

    class FailingCommit:
        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        def begin(self, write: bool = False, parent: object = None) -> object:
            txn = real.begin(write=write, parent=parent)  # type: ignore[call-overload]
            if not write or parent is not None:
                return txn

            class Failing:
                def __enter__(self) -> object:
                    return txn

                def __exit__(self, *exc: object) -> None:
                    txn.abort()
                    raise OSError("disk gone")

            return Failing()

    assert wal.append(entry("a", 1)).result() == 1
    store.env = FailingCommit()  # type: ignore[assignment]
    try:
        assert wal.append(entry("a", 2)).exception() is not None
    finally:
        store.env = real
    assert wal.last_seq == 1
    assert wal.append(entry("a", 3)).result() == 2
    assert [s for s, _ in wal.replay()] == [1, 2]
