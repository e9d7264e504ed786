"""Where a reader starts once the rings wrapped, and how it knows its broker is gone (shared
memory only, no sockets): "oldest" is the oldest batch still readable and nothing before it
counts as missed; a follower passes over whole chunks of lapped or other-topic batches; a
segment closed, unlinked, replaced or left by a dead supervisor says so."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator

import pytest

from shardbroker import SegmentReader
from shardbroker.cli_consumers import tail_start
from shardbroker.segment import layout, shm
from shardbroker.segment.reader import FOLLOW_CHUNK
from shardbroker.segment.writer import ShardWriter
from shardbroker.wire.protocol import encode_messages

SEG_SUPERVISOR_PID = 72  # segment header field (layout.py)


@pytest.fixture
def segment_name() -> Iterator[str]:
    name = f"shardbroker-test-start-{os.getpid()}-{os.urandom(3).hex()}"
    yield name
    shm.unlink(name)


def _publish(w: ShardWriter, seq: int, size: int, topic: int = 0) -> int:
    payload = encode_messages([bytes([seq & 0xFF]) * size], 7, seq)
    r = w.reserve(len(payload))
    w.buf[r.log_idx: r.log_idx + len(payload)] = payload
    return w.commit(r, seq, 0, 7, 1, 0, topic)


def _wrapped(name: str, batches: int = 600) -> shm.Mapped:
    """A 64 KiB BLog holds ~15 batches of 4 KiB; the 2048-slot PBR window still names all
    ``batches`` -- far more than one follow chunk of them overwritten."""
    m = shm.create(name, layout.Geometry(1, 2048, 64 << 10))
    w = ShardWriter(m, 0, 0)
    for seq in range(batches):
        _publish(w, seq, 4000)
    return m


def test_oldest_is_the_oldest_readable_batch_and_nothing_before_is_missed(
        segment_name: str) -> None:
    m = _wrapped(segment_name)
    try:
        with SegmentReader(segment_name) as r:
            first = next(iter(r.batches())).index  # the ring's own walk skips what is gone
            assert first > FOLLOW_CHUNK
            r.lapped = 0
            assert r.start_positions("oldest") == [first] == [r.oldest_readable(0)]
            got = [b.index for b in r.follow(start="oldest", idle_timeout_s=0)]
            assert got == list(range(first, 600))
            assert r.lapped == 0
    finally:
        m.close()


def test_tail_never_starts_below_what_the_rings_hold(segment_name: str) -> None:
    m = _wrapped(segment_name)
    try:
        with SegmentReader(segment_name) as r:
            oldest = r.oldest_readable(0)
            many = argparse.Namespace(from_start=False, lines=1000)
            assert tail_start(many, r, None) == [oldest]
            few = argparse.Namespace(from_start=False, lines=3)
            assert tail_start(few, r, None) == [597]
            assert tail_start(argparse.Namespace(from_start=True, lines=3), r, None) == [oldest]
    finally:
        m.close()


def test_follow_passes_over_a_whole_chunk_of_other_topics(segment_name: str) -> None:
    m = shm.create(segment_name, layout.Geometry(1, 1024, 1 << 20))
    try:
        w = ShardWriter(m, 0, 0)
        a, b = w.topic_index("a"), w.topic_index("b")
        for seq in range(FOLLOW_CHUNK + 44):
            _publish(w, seq, 100, a)
        want = _publish(w, FOLLOW_CHUNK + 44, 100, b)
        with SegmentReader(segment_name) as r:
            got = [x.index for x in r.follow(topic="b", start=[0], idle_timeout_s=0)]
            assert got == [want] and r.lapped == 0
    finally:
        m.close()


def _dead_pid() -> int:
    with open("/proc/sys/kernel/pid_max") as f:
        return int(f.read()) + 1  # no process can have it


def test_owner_gone_says_why(segment_name: str) -> None:
    m = shm.create(segment_name, layout.Geometry(1, 16, 64 << 10))
    try:
        with SegmentReader(segment_name) as r:
            assert r.owner_gone() is None  # this process created it and lives
            shm.mark_serving(m)
            assert r.owner_gone() is None
            layout.U64.pack_into(m.buf, SEG_SUPERVISOR_PID, _dead_pid())
            assert "died" in (r.owner_gone() or "")
            layout.U64.pack_into(m.buf, SEG_SUPERVISOR_PID, os.getpid())
            shm.mark_closed(m)
            assert "closed" in (r.owner_gone() or "")
            shm.set_flags(m, clear_bits=layout.FLAG_CLOSED_CLEANLY)
            shm.unlink(segment_name)
            assert "removed" in (r.owner_gone() or "")
            again = shm.create(segment_name, layout.Geometry(1, 16, 64 << 10))
            try:
                assert "created anew" in (r.owner_gone() or "")
            finally:
                again.close()
    finally:
        m.close()
