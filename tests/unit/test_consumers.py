"""Consumer table, retention `block` room checks, follow mode and lap accounting (shared
memory only: an in-process ShardWriter plays the receiver)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import numpy as np
import pytest

from shardbroker import SegmentReader
from shardbroker.consumer.consumer import Consumer
from shardbroker.consumer.registry import ConsumerTable
from shardbroker.errors import ConsumerError, ConsumerExpired
from shardbroker.segment import layout, shm
from shardbroker.segment.waiting import Backoff
from shardbroker.segment.writer import ShardWriter
from shardbroker.wire.message_index import message_arrays
from shardbroker.wire.protocol import ProtocolError, encode_messages, iter_messages


@pytest.fixture
def segment_name() -> Iterator[str]:
    name = f"shardbroker-test-{os.getpid()}-{os.urandom(3).hex()}"
    yield name
    shm.unlink(name)


def _segment(name: str, shards: int = 1, slots: int = 8, blog: int = 64 << 10,
             retention: int = layout.RETENTION_OVERWRITE, timeout_ms: int = 30_000
             ) -> shm.Mapped:
    m = shm.create(name, layout.Geometry(shards, slots, blog))
    layout.write_retention(m.buf, retention, timeout_ms)
    return m


def _publish(w: ShardWriter, seq: int, size: int = 4096, client: int = 7, topic: int = 0) -> int:
    body = bytes([seq & 0xFF]) * (size - 64)
    payload = encode_messages([body], client, seq)
    r = w.reserve(len(payload))
    w.buf[r.log_idx: r.log_idx + len(payload)] = payload
    return w.commit(r, seq, 0, client, 1, 0, topic)


# ---------------------------------------------------------------- consumer table


def test_consumer_name_rules() -> None:
    assert layout.encode_consumer_name("indexer-1").startswith(b"indexer-1\0")
    for bad in ("", "has space", "x" * 32, "caf\u00e9"):
        with pytest.raises(ValueError):
            layout.encode_consumer_name(bad)


def test_claim_resume_and_refuse_live_name(segment_name: str) -> None:
    m = _segment(segment_name, shards=2)
    try:
        t = ConsumerTable(m)
        e, resumed = t.claim("a", [3, 5])
        assert not resumed and e.state == layout.CONSUMER_ACTIVE and e.pid == os.getpid()
        assert t.positions(e.slot) == [3, 5]
        t.set_position(e.slot, 1, 9)
        t.detach(e.slot)
        assert t.find("a") is not None and t.find("a").state == layout.CONSUMER_DETACHED  # type: ignore[union-attr]
        e2, resumed = t.claim("a", [0, 0])  # same name: resumes, start positions ignored
        assert resumed and e2.slot == e.slot and e2.joins == 2
        assert t.positions(e2.slot) == [3, 9]
        # a live holder in another (alive) process keeps its name
        layout.write_consumer(m.buf, layout.ConsumerEntry(
            e2.slot, "a", layout.CONSUMER_ACTIVE, os.getppid(), time.monotonic_ns(), 0, 2))
        with pytest.raises(ConsumerError, match="in use by pid"):
            t.claim("a", [0, 0])
        with pytest.raises(ConsumerError, match="is live"):
            t.remove("a")
    finally:
        m.close()


def test_table_full_and_remove(segment_name: str) -> None:
    m = _segment(segment_name)
    try:
        t = ConsumerTable(m)
        for i in range(layout.CONSUMER_SLOTS):
            t.claim(f"c{i}", [0])
        with pytest.raises(ConsumerError, match="table is full"):
            t.claim("one-more", [0])
        t.detach(t.find("c4").slot)  # type: ignore[union-attr]
        assert t.remove("c4") and not t.remove("c4")
        e, resumed = t.claim("one-more", [2])
        assert not resumed and t.positions(e.slot) == [2]
    finally:
        m.close()


def test_expire_stale_marks_only_silent_consumers(segment_name: str) -> None:
    m = _segment(segment_name, timeout_ms=1000)
    try:
        t = ConsumerTable(m)
        quiet, _ = t.claim("quiet", [0])
        busy, _ = t.claim("busy", [0])
        epoch = layout.consumers_epoch(m.buf)
        now = time.monotonic_ns()
        t.heartbeat(quiet.slot, now - 2_000_000_000)
        t.heartbeat(busy.slot, now)
        assert [e.name for e in t.expire_stale(now)] == ["quiet"]
        assert t.state(quiet.slot) == layout.CONSUMER_EXPIRED
        assert t.state(busy.slot) == layout.CONSUMER_ACTIVE
        assert layout.consumers_epoch(m.buf) != epoch  # writers re-read the table
        assert t.expire_stale(now) == []
    finally:
        m.close()


# ---------------------------------------------------------------- retention: block


def test_block_pbr_ring_waits_for_the_slowest_live_consumer(segment_name: str) -> None:
    m = _segment(segment_name, slots=8, blog=1 << 20, retention=layout.RETENTION_BLOCK)
    try:
        w = ShardWriter(m, 0, 0)
        assert w.blocking
        t = ConsumerTable(m)
        e, _ = t.claim("slow", [0])
        for seq in range(8):
            assert w.has_room(4096)
            _publish(w, seq)
        assert not w.has_room(4096)  # slot 0 still unread: index 8 would overwrite it
        t.set_position(e.slot, 0, 3)  # consumed 0..2
        for seq in range(8, 11):
            assert w.has_room(4096)
            _publish(w, seq)
        assert not w.has_room(4096)
        t.heartbeat(e.slot, time.monotonic_ns() - 60 * 10**9)  # silent past the timeout
        layout.bump_consumers_epoch(m.buf)
        assert w.has_room(4096)  # a consumer that is not live holds nothing back
    finally:
        m.close()


def test_block_blog_bytes_wait_too(segment_name: str) -> None:
    m = _segment(segment_name, slots=1024, blog=64 << 10, retention=layout.RETENTION_BLOCK)
    try:
        w = ShardWriter(m, 0, 0)
        t = ConsumerTable(m)
        e, _ = t.claim("slow", [0])
        n = 0
        while w.has_room(8192):
            _publish(w, n, size=8192)
            n += 1
        assert n == 8  # 64 KiB of BLog, long before 1024 slots
        t.set_position(e.slot, 0, 1)
        assert w.has_room(8192)
        with SegmentReader(segment_name) as r:
            _publish(w, n, size=8192)
            # nothing the consumer had not read was overwritten
            assert [b.index for b in r.batches(start=1)] == list(range(1, n + 1))
            assert r.lapped == 0
    finally:
        m.close()


def test_overwrite_ignores_consumers(segment_name: str) -> None:
    m = _segment(segment_name, slots=4)
    try:
        w = ShardWriter(m, 0, 0)
        ConsumerTable(m).claim("reader", [0])
        assert not w.blocking
        for seq in range(10):
            assert w.has_room(4096)
            _publish(w, seq)
    finally:
        m.close()


# ---------------------------------------------------------------- follow mode


def test_follow_counts_exactly_what_a_lapped_reader_missed(segment_name: str) -> None:
    m = _segment(segment_name, slots=8, blog=1 << 20)
    try:
        w = ShardWriter(m, 0, 0)
        with SegmentReader(segment_name) as r:
            it = r.follow(start="end", idle_timeout_s=0.0)
            _publish(w, 0)
            _publish(w, 1)
            got = [next(it).index, next(it).index]
            for seq in range(2, 30):  # laps the 8-slot ring while the reader holds batch 1
                _publish(w, seq)
            got += [b.index for b in it]
            assert got[:2] == [0, 1] and got[2:] == list(range(22, 30))
            assert r.lapped == 30 - len(got)  # 20 missed, exactly
            assert r.torn == 1  # batch 1 was overwritten while the caller held it
            assert r.positions == [30]
    finally:
        m.close()


def test_follow_topic_filter_and_round_robin(segment_name: str) -> None:
    m = _segment(segment_name, shards=2, slots=64, blog=1 << 20)
    try:
        w0, w1 = ShardWriter(m, 0, 0), ShardWriter(m, 1, 0)
        a0, b0 = w0.topic_index("a"), w0.topic_index("b")
        b1 = w1.topic_index("b")
        for seq in range(6):
            _publish(w0, seq, topic=a0 if seq % 2 else b0)
            _publish(w1, seq, topic=b1)
        moves: list[tuple[int, int]] = []
        with SegmentReader(segment_name) as r:
            got = [(b.shard, b.index, b.topic) for b in
                   r.follow(topic="b", start="oldest", idle_timeout_s=0.0,
                            on_position=lambda s, i: moves.append((s, i)))]
            assert got == [(0, 0, "b"), (0, 2, "b"), (0, 4, "b")] + \
                [(1, i, "b") for i in range(6)]
            assert r.positions == [6, 6] and r.lapped == 0
            assert moves[-1] == (1, 6) and (0, 6) in moves  # filtered batches count as read
            assert [b.index for b in r.follow(shard=1, start=[0, 3], idle_timeout_s=0.0)] \
                == [3, 4, 5]
    finally:
        m.close()


def test_follow_waits_without_spinning_and_sees_new_commits(segment_name: str) -> None:
    m = _segment(segment_name, slots=64, blog=1 << 20)
    try:
        w = ShardWriter(m, 0, 0)
        with SegmentReader(segment_name) as r:
            waiter = Backoff(min_s=1e-3, max_s=0.01)
            t0 = time.process_time()
            assert list(r.follow(idle_timeout_s=0.3, wait=waiter)) == []
            # 0.3 s idle: ~30 sleeps of <= 10 ms, not a busy loop
            assert waiter.sleeps < 60
            assert time.process_time() - t0 < 0.1
            _publish(w, 0)
            assert [b.batch_seq for b in r.follow(start=[0], idle_timeout_s=0.0)] == [0]
    finally:
        m.close()


def test_backoff_doubles_to_its_cap_and_resets() -> None:
    b = Backoff(min_s=1e-5, max_s=4e-5)
    b.wait()
    b.wait()
    assert b.delay == 4e-5
    b.wait()
    assert b.delay == 4e-5
    b.reset()
    assert b.delay == 1e-5
    with pytest.raises(ValueError):
        Backoff(min_s=0.0)


# ---------------------------------------------------------------- Consumer


def test_consumer_resumes_where_it_left_off(segment_name: str) -> None:
    m = _segment(segment_name, slots=64, blog=1 << 20)
    try:
        w = ShardWriter(m, 0, 0)
        for seq in range(5):
            _publish(w, seq)
        with Consumer(segment_name, "idx", start="oldest") as c:
            it = c.batches(idle_timeout_s=0.0)
            assert [next(it).index for _ in range(3)] == [0, 1, 2]
            # batch 2 is in hand, not consumed: a restart gets it again
        for seq in range(5, 7):
            _publish(w, seq)
        with Consumer(segment_name, "idx", start="end") as c:
            assert c.resumed and c.positions == [2]
            assert [b.index for b in c.batches(idle_timeout_s=0.0)] == [2, 3, 4, 5, 6]
            assert ConsumerTable(m).positions(c.slot) == [7]
    finally:
        m.close()


def test_silent_consumer_is_told_it_expired_and_can_rejoin(segment_name: str) -> None:
    m = _segment(segment_name, slots=64, blog=1 << 20, retention=layout.RETENTION_BLOCK,
                 timeout_ms=200)
    try:
        with Consumer(segment_name, "nap") as c:
            time.sleep(0.3)
            with pytest.raises(ConsumerExpired, match="silent"):
                c.heartbeat()
            c.rejoin()
            c.heartbeat()  # live again
            ConsumerTable(m).set_state(c.slot, layout.CONSUMER_EXPIRED)  # the supervisor's mark
            with pytest.raises(ConsumerExpired):
                c.heartbeat()
    finally:
        m.close()


# ---------------------------------------------------------------- message arrays


@pytest.mark.parametrize("sizes", [[100] * 50, [0, 1, 63, 64, 65, 1000], [5]])
def test_message_arrays_match_the_sequential_walk(sizes: list[int]) -> None:
    payload = memoryview(encode_messages([bytes([i % 256]) * n for i, n in enumerate(sizes)],
                                         1, 2))
    offsets, lens = message_arrays(payload, len(sizes))
    walk = list(iter_messages(payload, len(sizes)))
    assert lens.tolist() == [len(v.data) for v in walk] == sizes
    raw = np.frombuffer(payload, np.uint8)
    for off, n, v in zip(offsets.tolist(), lens.tolist(), walk, strict=True):
        assert raw[off: off + n].tobytes() == bytes(v.data)


def test_message_arrays_reject_bad_framing() -> None:
    payload = bytearray(encode_messages([b"x" * 100] * 3, 1, 2))
    payload[0:4] = (10_000).to_bytes(4, "little")
    with pytest.raises(ProtocolError):
        message_arrays(memoryview(payload), 3)
    with pytest.raises(ProtocolError):
        message_arrays(memoryview(bytes(payload[:-64])), 3)


def test_futex_follower_is_woken_by_the_commit_not_its_timeout(segment_name: str) -> None:
    import threading

    from shardbroker.segment.waiting import FutexWait

    m = _segment(segment_name, slots=64, blog=1 << 20)
    waiter = FutexWait(segment_name, max_s=5.0)
    try:
        w = ShardWriter(m, 0, 0)
        seen: list[float] = []
        with SegmentReader(segment_name) as r:
            it = r.follow(start=[0], idle_timeout_s=8.0, wait=waiter)

            def follow() -> None:
                next(it)
                seen.append(time.monotonic())

            t = threading.Thread(target=follow)
            t.start()
            time.sleep(0.3)  # the follower is asleep in the kernel by now
            assert m.buf[layout.SEG_SLEEPERS] == 1
            committed_at = time.monotonic()
            _publish(w, 0)
            t.join(10)
            assert seen and seen[0] - committed_at < 1.0  # woken, not the 5 s timeout
            assert m.buf[layout.SEG_SLEEPERS] == 0  # the writer cleared the flag
            assert waiter.sleeps >= 1
            it.close()
    finally:
        waiter.close()
        m.close()
