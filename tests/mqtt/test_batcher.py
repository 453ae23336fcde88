"""The batcher's ordering and failure handling, driven message by message without a broker.

The paho client is replaced by a recorder of acknowledgements and WriteService by one whose
commits the test resolves by hand; the end-to-end behaviour is in tests/e2e/test_mqtt.py.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance import config
from appliance.lineprotocol import syntax
from appliance.model import LineErrors
from appliance.mqtt import batcher as batcher_module
from appliance.mqtt.ingest import MqttIngest
from appliance.mqtt.messages import Message
from appliance.write import WriteReport, WriteRequest


class FakeWrites:
    """Records each write; its commit resolves when the test says so."""

    def __init__(self, fail_first: int = 0) -> None:
        self.requests: list[WriteRequest] = []
        self.commits: list[Future[Any]] = []
        self.fail_first = fail_first

    def submit(self, req: WriteRequest) -> WriteReport:
        self.requests.append(req)
        lines = req.body.split(b"\n")
        rejected = LineErrors()
        for n, line in enumerate(lines, 1):
            if line.startswith(b"bad"):
                rejected.add(n, "", "bad line")
        committed: Future[Any] = Future()
        self.commits.append(committed)
        return WriteReport(
            lines=len(lines), rows=len(lines) - len(rejected), committed=committed, rejected=rejected
        )

    def commit_all(self) -> None:
        for f in self.commits:
            if not f.done():
                if self.fail_first > 0:
                    self.fail_first -= 1
                    f.set_exception(OSError("disk gone"))
                else:
                    f.set_result(1)


class Acks:
    def __init__(self) -> None:
        self.mids: list[int] = []

    def ack(self, mid: int, qos: int) -> None:
        self.mids.append(mid)

    def disconnect(self) -> None:
        pass

    def loop_stop(self) -> None:
        pass


def poisoned_writes() -> FakeWrites:
    """FakeWrites whose submit raises for any write holding a `poison` line, as a parser bug would."""
    writes = FakeWrites()
    real = writes.submit

    def submit(req: WriteRequest) -> WriteReport:
        if b"poison" in req.body:
            raise MemoryError("parser blew up")
        return real(req)

    writes.submit = submit  # type: ignore[method-assign]
    return writes


def make(tmp_path: Path, subs: str, writes: FakeWrites, **mqtt: Any) -> tuple[MqttIngest, Acks]:
    extra = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in mqtt.items())
    path = tmp_path / "config.toml"
    path.write_text(f'[mqtt]\nbroker = "mqtt://127.0.0.1:1"\n{extra}\n{subs}')
    ingest = MqttIngest(config.load(str(path), environ={}).mqtt)
    acks = Acks()
    ingest.connection.client = acks  # type: ignore[assignment]
    ingest.batcher.writes = writes  # type: ignore[assignment]
    ingest.batcher._session = 1
    ingest.batcher.loop.start()
    return ingest, acks


LP = '[[mqtt.subscription]]\ntopic = "s/#"\ndatabase = "iot"\n'


def deliver(ingest: MqttIngest, mid: int, payload: bytes, topic: str = "s/x") -> None:
    msg = paho.MQTTMessage(mid=mid, topic=topic.encode())
    msg.payload, msg.qos = payload, 1
    ingest.connection._on_message(None, None, msg)  # type: ignore[arg-type]


def settle(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def settle_committing(writes: FakeWrites, check: Any, timeout: float) -> None:
    """Commit every write as it arrives (failed ones are written again) until `check` holds."""

    def committed_and_checked() -> Any:
        writes.commit_all()
        return check()

    settle(committed_and_checked, timeout)


def test_no_ack_before_the_commit_then_acks_in_arrival_order(tmp_path: Path) -> None:
    writes = FakeWrites()
    ingest, acks = make(tmp_path, LP, writes)
    for mid in range(1, 6):
        deliver(ingest, mid, f"m v={mid} {mid}".encode())
    settle(lambda: sum(r.body.count(b"\n") + 1 for r in writes.requests) == 5)
    settle(lambda: ingest.batcher.handled == 5)  # the loop is done with them: an ack would be sent
    assert acks.mids == []
    writes.commit_all()
    settle(lambda: len(acks.mids) == 5)
    assert acks.mids == [1, 2, 3, 4, 5]
    assert ingest.health()["inflight"] == 0
    ingest.stop()


def queue_one_batch(ingest: MqttIngest, payloads: list[bytes]) -> None:
    """Queue messages while holding the batcher's lock, so they form one batch."""
    with ingest.batcher._cond:
        for seq, payload in enumerate(payloads, 1):
            ingest.batcher._inflight += 1
            ingest.batcher._queue.append(Message(ingest.routes[0], f"s/{seq}", payload, seq, 1, 0, seq, 1))
        ingest.batcher._cond.notify_all()


def test_an_open_string_cannot_swallow_the_next_message(tmp_path: Path) -> None:
    writes = FakeWrites()
    ingest, acks = make(tmp_path, LP, writes)
    queue_one_batch(ingest, [b'm,dev=a note="unterminated', b"m,dev=b v=1 1000\nm,dev=b v=2 2000"])
    settle(lambda: len(writes.requests) == 2)
    assert sorted(r.body for r in writes.requests) == [
        b'm,dev=a note="unterminated',
        b"m,dev=b v=1 1000\nm,dev=b v=2 2000",
    ]
    writes.commit_all()
    settle(lambda: acks.mids == [1, 2])
    ingest.stop()


def test_errors_go_to_the_message_that_held_the_line(tmp_path: Path) -> None:
    writes = FakeWrites()
    ingest, acks = make(tmp_path, LP, writes)
    queue_one_batch(ingest, [b"good 1\n\n", b"", b"good 2\nbad 3\r\ngood 4", b"bad 5"])
    settle(lambda: len(writes.requests) == 1)
    writes.commit_all()
    settle(lambda: len(acks.mids) == 4)
    assert [(t, r) for _, t, r, _, _ in ingest.errors] == [
        ("s/3", "line 2: bad line"),
        ("s/4", "line 1: bad line"),
    ]
    route = ingest.routes[0]
    assert (route.messages, route.lines, route.errors) == (4, 3, 2)
    ingest.stop()


def test_many_empty_batches_behind_a_slow_commit_are_all_acknowledged(tmp_path: Path) -> None:
    writes = FakeWrites()
    ingest, acks = make(tmp_path, LP, writes, max_inflight=5000)
    deliver(ingest, 1, b"m v=1 1")
    settle(lambda: len(writes.requests) == 1)
    for mid in range(2, 1500):  # row-less batches of at most 50, all waiting behind the first
        deliver(ingest, mid, b"# only a comment")
        if mid % 50 == 0:
            settle(lambda mid=mid: ingest.batcher.handled == mid)
    settle(lambda: not ingest.batcher._queue)
    writes.commit_all()
    settle(lambda: len(acks.mids) == 1499, timeout=10)
    assert acks.mids == list(range(1, 1500))
    ingest.stop()


def test_a_failed_commit_writes_the_messages_again(tmp_path: Path) -> None:
    writes = FakeWrites(fail_first=1)
    ingest, acks = make(tmp_path, LP, writes)
    deliver(ingest, 7, b"m v=1 1")
    settle(lambda: len(writes.requests) == 1)
    writes.commit_all()  # fails
    settle(lambda: len(writes.requests) == 2, timeout=5)
    assert acks.mids == []
    writes.commit_all()
    settle(lambda: acks.mids == [7])
    ingest.stop()


def test_a_payload_whose_handling_raises_is_recorded_and_acknowledged_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes = FakeWrites()
    ingest, acks = make(tmp_path, LP, writes)
    real = ingest.batcher._convert

    def convert(msg: Message) -> Any:
        if msg.payload == b"boom":
            raise RuntimeError("bug")
        return real(msg)

    monkeypatch.setattr(ingest.batcher, "_convert", convert)
    queue_one_batch(ingest, [b"m v=1 1", b"boom", b"m v=2 2"])
    settle(lambda: len(writes.requests) == 1)
    assert writes.requests[0].body == b"m v=1 1\nm v=2 2"
    writes.commit_all()
    settle(lambda: acks.mids == [1, 2, 3])
    assert [(t, r) for _, t, r, _, _ in ingest.errors] == [
        ("s/2", "internal error while converting it: RuntimeError('bug')")
    ]
    assert ingest.routes[0].errors == 1 and ingest.health()["inflight"] == 0
    ingest.stop()


def test_a_message_whose_write_keeps_raising_is_given_up_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batcher_module, "RETRY_SECONDS", 0.01)
    writes = poisoned_writes()
    ingest, acks = make(tmp_path, LP, writes)
    queue_one_batch(ingest, [b"m v=1 1", b"m poison=1", b"m v=2 2"])
    settle(lambda: sorted(r.body for r in writes.requests) == [b"m v=1 1", b"m v=2 2"])
    writes.commit_all()
    settle(lambda: acks.mids == [1, 2, 3])
    assert [(t, r) for _, t, r, _, _ in ingest.errors] == [
        ("s/2", "internal error while writing it (see the log)")
    ]
    assert ingest.health()["inflight"] == 0
    ingest.stop()


def test_one_poison_message_costs_its_batch_a_few_retries_not_a_second_per_message(
    tmp_path: Path,
) -> None:
    writes = poisoned_writes()  # RETRY_SECONDS left at its real value (1 s)
    ingest, acks = make(tmp_path, LP, writes)
    payloads = [b"m v=%d %d" % (i, i) for i in range(1, 21)]
    payloads[3] = b"m poison=1"
    queue_one_batch(ingest, payloads)
    # was one 1 s pause before each message: 20 s
    settle_committing(writes, lambda: len(acks.mids) == 20, timeout=8)
    written = sorted(line for r in writes.requests for line in r.body.split(b"\n"))
    assert written == sorted(p for p in payloads if b"poison" not in p)  # each good one once
    assert len(writes.requests) < 12  # halves, not one write per message
    assert [(t, r) for _, t, r, _, _ in ingest.errors] == [
        ("s/4", "internal error while writing it (see the log)")
    ]
    assert ingest.health()["inflight"] == 0
    ingest.stop()


def test_a_group_submitted_before_another_group_fails_is_not_written_again(tmp_path: Path) -> None:
    writes = FakeWrites()
    real = writes.submit
    failures = [MemoryError("once")]

    def submit(req: WriteRequest) -> WriteReport:
        if req.db == "b" and failures:
            raise failures.pop()
        return real(req)

    writes.submit = submit  # type: ignore[method-assign]
    subs = '[[mqtt.subscription]]\ntopic = "a/#"\ndatabase = "a"\n\n[[mqtt.subscription]]\ntopic = "b/#"\ndatabase = "b"\n'
    ingest, acks = make(tmp_path, subs, writes)
    with ingest.batcher._cond:
        for seq, (route, payload) in enumerate([(0, b"m v=1 1"), (1, b"m v=2 2")], 1):
            ingest.batcher._inflight += 1
            ingest.batcher._queue.append(
                Message(ingest.routes[route], f"x/{seq}", payload, seq, 1, 0, seq, 1)
            )
        ingest.batcher._cond.notify_all()
    settle_committing(writes, lambda: len(acks.mids) == 2, timeout=8)
    # Database a's write went to the WAL before b's failed: only b's message is written again.
    assert [(r.db, r.body) for r in writes.requests] == [("a", b"m v=1 1"), ("b", b"m v=2 2")]
    assert sorted(acks.mids) == [1, 2] and list(ingest.errors) == []
    ingest.stop()


def test_a_byte_order_mark_starting_a_line_protocol_payload_is_dropped(tmp_path: Path) -> None:
    writes = FakeWrites()
    subs = '[[mqtt.subscription]]\ntopic = "s/#"\ndatabase = "iot"\ntopic_parsing = "_/{dev}"\n'
    ingest, acks = make(tmp_path, subs, writes)
    queue_one_batch(ingest, [b"m v=1 1", b"\xef\xbb\xbfm v=2 2"])  # as Notepad saves a file
    settle(lambda: len(writes.requests) == 1)
    assert writes.requests[0].body == b"m,dev=1 v=1 1\nm,dev=2 v=2 2"
    writes.commit_all()
    settle(lambda: acks.mids == [1, 2])
    assert list(ingest.errors) == []
    ingest.stop()


def test_a_message_matching_no_subscription_is_acknowledged_and_counted(tmp_path: Path) -> None:
    writes = FakeWrites()
    ingest, acks = make(tmp_path, LP, writes)
    deliver(ingest, 3, b"m v=1 1", topic="old/topic")
    settle(lambda: acks.mids == [3])
    assert writes.requests == [] and ingest.health()["unrouted_messages"] == 1
    ingest.stop()


def test_back_pressure_stops_reading_at_the_cap(tmp_path: Path) -> None:
    import threading

    writes = FakeWrites()
    ingest, acks = make(tmp_path, LP, writes, max_inflight=3)

    def read() -> None:
        for m in range(1, 8):
            deliver(ingest, m, b"m v=1 1")

    reader = threading.Thread(target=read)
    reader.start()
    settle(lambda: ingest.batcher._inflight == 3)
    # The 4th offer is inside its wait and the loop has written the first 3: nothing freed a slot.
    settle(lambda: ingest.batcher.blocked_since is not None and ingest.batcher.handled == 3)
    assert reader.is_alive() and ingest.batcher._inflight == 3  # the "network thread" waits
    settle_committing(writes, lambda: not reader.is_alive() and len(acks.mids) == 7, timeout=10)
    assert acks.mids == list(range(1, 8))
    ingest.stop()


def test_a_failing_batcher_step_shows_in_health_and_the_loop_carries_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes = FakeWrites()
    ingest, acks = make(tmp_path, LP, writes)
    real = ingest.batcher._peek
    failures = [RuntimeError("bug in batching")]

    def peek() -> list[Message]:
        if failures:
            raise failures.pop()
        return real()

    monkeypatch.setattr(ingest.batcher, "_peek", peek)
    ingest.batcher.loop.backoff_min = ingest.batcher.loop.backoff_max = 60.0  # only a wake ends it
    ingest.connection.connected = True
    for r in ingest.routes:
        r.state = "subscribed"
    deliver(ingest, 1, b"m v=1 1")
    settle(lambda: ingest.batcher.loop.failures == 1)  # backing off now
    health = ingest.health()
    assert health["status"] == "degraded" and health["error"] == "bug in batching"
    assert writes.requests == [] and acks.mids == []
    ingest.batcher.loop.wake()
    settle(lambda: len(writes.requests) == 1)  # the loop carried on and wrote it after all
    writes.commit_all()
    settle(lambda: acks.mids == [1])
    assert ingest.health()["status"] == "ok"
    ingest.stop()


@pytest.mark.parametrize(
    ("body", "open_"),
    [
        (b"m v=1", False),
        (b'm s="open', True),
        (b'm s="a" 1', False),
        (b"m v=1\\", True),
        (b'm s="x\ny" 1', False),
        (b'# a comment with a " quote', False),
        (b"m,t=a\\ b v=1", False),
        (b'good v=1\nm s="a\nb', True),
    ],
)
def test_ends_open(body: bytes, open_: bool) -> None:
    assert syntax.ends_open(body) is open_


@given(st.text(alphabet='m ,="\\\nab#\t1\r', max_size=24))
@settings(max_examples=3000, deadline=None)
def test_ends_open_fast_path_agrees_with_the_state_machine(text: str) -> None:
    body = text.encode()
    assert syntax.ends_open(body) is syntax.ends_open_exact(body)
