"""SyncQueue's state machine on a real LMDB: what each manifest change does to uploads and deletes."""

from __future__ import annotations

import lmdb

from appliance.storage.manifest import Change, ParquetFile
from appliance.sync.queue import DELETE, QUEUED, SYNCED, SyncQueue


def pf(path: str, table: int = 1) -> ParquetFile:
    return ParquetFile(path, 1, "iot", table, f"t{table}", 100, 10, 0, 1, 0)


def change(q: SyncQueue, kind: Change, added: list[ParquetFile], removed: list[ParquetFile]) -> None:
    def step(txn: lmdb.Transaction) -> None:
        q.on_change(txn, kind, added, removed)

    q.store.submit(step).result()


def states(q: SyncQueue) -> dict[str, tuple[str, list[str]]]:
    return {r.path: (r.state, sorted(r.after)) for r in q.records()}


def uploads_and_deletes(q: SyncQueue) -> tuple[list[str], list[str]]:
    ups, dels = q.due(10**20, 10**12)
    return [r.path for r in ups], [r.path for r in dels]


def test_new_files_are_queued_then_synced(queue: SyncQueue) -> None:
    change(queue, Change.PERSIST, [pf("a"), pf("b")], [])
    assert uploads_and_deletes(queue) == (["a", "b"], [])
    queue.mark_synced("a")
    assert states(queue) == {"a": (SYNCED, []), "b": (QUEUED, [])}


def test_a_replaced_synced_file_is_deleted_only_after_its_replacement_is_synced(queue: SyncQueue) -> None:
    change(queue, Change.PERSIST, [pf("a"), pf("other", table=2)], [])
    queue.mark_synced("a")
    change(queue, Change.PERSIST, [pf("merged"), pf("x", table=2)], [pf("a")])  # a late write merged a
    assert states(queue)["a"] == (DELETE, ["merged"])  # only the same table's new file
    assert uploads_and_deletes(queue)[1] == []
    queue.mark_synced("merged")
    assert uploads_and_deletes(queue)[1] == ["a"]


def test_a_replaced_queued_file_gets_a_delete_too_in_case_it_was_published(queue: SyncQueue) -> None:
    change(queue, Change.PERSIST, [pf("a")], [])
    change(queue, Change.PERSIST, [pf("b")], [pf("a")])
    assert states(queue) == {"a": (DELETE, ["b"]), "b": (QUEUED, [])}


def test_deletes_follow_a_chain_of_replacements(queue: SyncQueue) -> None:
    change(queue, Change.PERSIST, [pf("a")], [])
    queue.mark_synced("a")
    change(queue, Change.COMPACT, [pf("c")], [pf("a")])
    change(queue, Change.PERSIST, [pf("e")], [pf("c")])  # c replaced before it was sent
    assert states(queue)["a"] == (DELETE, ["e"])
    assert states(queue)["c"] == (DELETE, ["e"])
    queue.mark_synced("e")
    assert sorted(uploads_and_deletes(queue)[1]) == ["a", "c"]


def test_expiry_or_drop_of_an_unsent_replacement_cancels_the_deletes(queue: SyncQueue) -> None:
    for kind in (Change.RETENTION, Change.DROP, Change.EVICT):
        change(queue, Change.PERSIST, [pf(f"a-{kind.value}")], [])
        queue.mark_synced(f"a-{kind.value}")
        change(queue, Change.PERSIST, [pf(f"m-{kind.value}")], [pf(f"a-{kind.value}")])
        change(queue, kind, [], [pf(f"m-{kind.value}")])  # gone before upload: the old object stays
        assert f"a-{kind.value}" not in states(queue)
        # ... and the unsent one's key is deleted, in case its upload completed unrecorded.
        assert states(queue)[f"m-{kind.value}"] == (DELETE, [])
    assert uploads_and_deletes(queue) == (
        [],
        sorted(f"m-{k.value}" for k in (Change.RETENTION, Change.DROP, Change.EVICT)),
    )


def test_an_unsent_file_that_leaves_gets_a_delete_for_an_upload_that_finished_unrecorded(
    queue: SyncQueue,
) -> None:
    """A stop during an upload: the object got to the bucket, `mark_synced` never ran (the WAL
    had closed), the record stayed queued; when the file then expires, is dropped or evicted,
    the object must go too, or a dropped table's rows stay visible to fleet queries."""
    for kind in (Change.RETENTION, Change.DROP, Change.EVICT):
        change(queue, Change.PERSIST, [pf(f"u-{kind.value}")], [])
        change(queue, kind, [], [pf(f"u-{kind.value}")])
        assert states(queue) == {f"u-{kind.value}": (DELETE, [])}
        assert uploads_and_deletes(queue) == ([], [f"u-{kind.value}"])
        queue.mark_deleted(f"u-{kind.value}")


def test_whole_file_retention_drop_and_eviction_keep_objects(queue: SyncQueue) -> None:
    change(queue, Change.PERSIST, [pf("a"), pf("b"), pf("c")], [])
    for p in "abc":
        queue.mark_synced(p)
    change(queue, Change.RETENTION, [], [pf("a")])
    change(queue, Change.DROP, [], [pf("b")])
    change(queue, Change.EVICT, [], [pf("c")])
    assert states(queue) == {}


def test_a_retention_rewrite_replaces_the_object(queue: SyncQueue) -> None:
    change(queue, Change.PERSIST, [pf("a")], [])
    queue.mark_synced("a")
    change(queue, Change.RETENTION, [pf("a2")], [pf("a")])
    assert states(queue) == {"a": (DELETE, ["a2"]), "a2": (QUEUED, [])}


def test_compaction_of_synced_files_is_covered_and_evictable_unsent(queue: SyncQueue) -> None:
    change(queue, Change.PERSIST, [pf("a"), pf("b")], [])
    queue.mark_synced("a")
    change(queue, Change.COMPACT, [pf("ab")], [pf("a"), pf("b")])
    assert not next(r for r in queue.records(QUEUED) if r.path == "ab").covered  # b was not synced
    change(queue, Change.PERSIST, [pf("c"), pf("d")], [])
    queue.mark_synced("c")
    queue.mark_synced("d")
    change(queue, Change.COMPACT, [pf("cd")], [pf("c"), pf("d")])
    assert next(r for r in queue.records(QUEUED) if r.path == "cd").covered
    change(queue, Change.EVICT, [], [pf("cd")])  # over the budget while offline: c and d stay in the bucket
    assert "c" not in states(queue) and "d" not in states(queue)
    assert states(queue)["cd"] == (DELETE, [])  # and cd, never recorded as sent, must not be there too


def test_an_upload_finishing_after_its_file_was_replaced_is_deleted(queue: SyncQueue) -> None:
    change(queue, Change.PERSIST, [pf("a")], [])
    change(queue, Change.DROP, [], [pf("a")])
    queue.mark_synced("a")  # the uploader published it meanwhile
    assert states(queue) == {"a": (DELETE, [])}


def test_failures_back_off_and_a_clock_step_back_counts_as_due(queue: SyncQueue) -> None:
    change(queue, Change.PERSIST, [pf("a")], [])
    rec = queue.records(QUEUED)[0]
    queue.mark_failed(rec, "endpoint down", 60 * 10**9)
    now = queue.records(QUEUED)[0].next_ns - 30 * 10**9
    assert queue.due(now, 120 * 10**9)[0] == []
    assert [r.path for r in queue.due(now, 120 * 10**9, ignore_backoff=True)[0]] == ["a"]
    assert [r.path for r in queue.due(now - 10**12, 120 * 10**9)[0]] == ["a"]  # clock went back
    assert queue.records(QUEUED)[0].attempts == 1


def test_reconcile_queues_old_files_and_forgets_missing_ones(queue: SyncQueue) -> None:
    change(queue, Change.PERSIST, [pf("gone"), pf("kept")], [])
    queue.mark_synced("kept")
    queue.reconcile([pf("kept"), pf("older")])
    queue.store.submit(lambda txn: None).result()
    # "gone" was never recorded as sent: its key is deleted in case an upload finished unrecorded.
    assert states(queue) == {"kept": (SYNCED, []), "older": (QUEUED, []), "gone": (DELETE, [])}
