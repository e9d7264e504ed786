"""Segment layout, single writer and SegmentReader (shared memory, no sockets)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from shardbroker import SegmentReader
from shardbroker.errors import SegmentError
from shardbroker.segment import layout, shm
from shardbroker.segment.writer import ShardWriter
from shardbroker.wire.protocol import encode_messages


@pytest.fixture
def segment_name() -> Iterator[str]:
    name = f"shardbroker-test-{os.getpid()}-{os.urandom(3).hex()}"
    yield name
    shm.unlink(name)


def _publish(w: ShardWriter, client: int, seq: int, msgs: list[bytes], topic: int = 0) -> int:
    payload = encode_messages(msgs, client, seq)
    r = w.reserve(len(payload))
    w.buf[r.log_idx: r.log_idx + len(payload)] = payload
    return w.commit(r, seq, 0, client, len(msgs), 0, topic)


def test_geometry_is_page_aligned() -> None:
    g = layout.Geometry(3, 100, 1 << 20)
    for s in range(3):
        assert g.pbr_offset(s) % layout.PAGE == 0
        assert g.blog_offset(s) % layout.PAGE == 0
    assert g.total_bytes == layout.PAGE + 3 * g.shard_stride
    with pytest.raises(IndexError):
        g.shard_base(3)
    with pytest.raises(ValueError):
        layout.Geometry(1, 100, 1000)


def test_place_in_blog_never_straddles() -> None:
    assert layout.place_in_blog(0, 100, 1000) == 0
    assert layout.place_in_blog(950, 100, 1000) == 1000  # skip the 50-byte tail
    assert layout.place_in_blog(1900, 100, 1000) == 1900
    with pytest.raises(ValueError):
        layout.place_in_blog(0, 1001, 1000)


def test_write_read_commit_order(segment_name: str) -> None:
    g = layout.Geometry(2, 16, 1 << 20)
    m = shm.create(segment_name, g, broker_id=3)
    try:
        w = ShardWriter(m, 1, broker_id=3)
        t = w.topic_index("orders")
        assert _publish(w, 11, 0, [b"hello", b"world"], t) == 0
        assert _publish(w, 11, 1, [b"!" * 300], t) == 1
        with SegmentReader(segment_name) as r:
            assert r.shard_count == 2
            assert list(r.batches(0)) == []
            got = list(r.batches())
            assert [b.index for b in got] == [0, 1]
            b0 = got[0]
            assert (b0.shard, b0.batch_seq, b0.client_id, b0.num_msg) == (1, 0, 11, 2)
            assert b0.topic == "orders"
            assert b0.batch_id == (3 << 48) | 0
            assert b0.slot.publish_commit == 0 and b0.slot.batch_complete == 1
            assert [bytes(x.data) for x in b0.messages()] == [b"hello", b"world"]
            assert got[1].start_logical_offset == 2  # shard-cumulative message index
            assert b0.still_valid()
            st = r.shard_state(1)
            assert (st.pbr_committed, st.messages) == (2, 3)
            del got, b0
    finally:
        m.close()


def test_uncommitted_reservation_is_invisible(segment_name: str) -> None:
    m = shm.create(segment_name, layout.Geometry(1, 16, 1 << 20))
    try:
        w = ShardWriter(m, 0, 0)
        _publish(w, 1, 0, [b"a"])
        r_ = w.reserve(4096)  # a batch in flight: reserved, partly written, never committed
        w.buf[r_.log_idx: r_.log_idx + 10] = b"x" * 10
        with SegmentReader(segment_name) as r:
            assert [b.batch_seq for b in r.batches()] == [0]
    finally:
        m.close()


def test_lapped_batches_are_never_returned(segment_name: str) -> None:
    """PBR ring of 8 slots and a 64 KiB BLog: after many laps only intact batches show."""
    m = shm.create(segment_name, layout.Geometry(1, 8, 64 << 10))
    try:
        w = ShardWriter(m, 0, 0)
        for seq in range(200):  # each batch ~12 KiB: the BLog laps long before the PBR
            _publish(w, 5, seq, [bytes([seq % 256]) * 12000])
        with SegmentReader(segment_name) as r:
            got = list(r.batches())
            seqs = [b.batch_seq for b in got]
            assert seqs == list(range(200 - len(seqs), 200))  # newest, contiguous, in order
            assert 0 < len(seqs) <= 5  # 64 KiB holds at most five 12 KiB payloads
            for b in got:
                (msg,) = list(b.messages())
                assert bytes(msg.data) == bytes([b.batch_seq % 256]) * 12000
            assert r.lapped == 8 - len(seqs)  # in the PBR window but overwritten in the BLog
            # a reader holding a batch sees it invalidated once the writer laps it
            oldest = got[0]
            for seq in range(200, 210):
                _publish(w, 5, seq, [b"z" * 12000])
            assert not oldest.still_valid()
            # asking for batches older than the ring counts them as missed
            r.lapped = 0
            list(r.batches(0, start=0))
            assert r.lapped >= 200
            del got, oldest, b
    finally:
        m.close()


def test_pbr_counter_never_wraps(segment_name: str) -> None:
    m = shm.create(segment_name, layout.Geometry(1, 4, 1 << 20))
    try:
        w = ShardWriter(m, 0, 0)
        for seq in range(11):
            _publish(w, 1, seq, [b"m"])
        with SegmentReader(segment_name) as r:
            got = list(r.batches())
            assert [b.index for b in got] == [7, 8, 9, 10]
            assert [b.slot.pbr_absolute_index for b in got] == [7, 8, 9, 10]
            del got
    finally:
        m.close()


def test_new_writer_continues_after_committed(segment_name: str) -> None:
    """A restarted receiver resumes its shard's log after the last committed batch."""
    m = shm.create(segment_name, layout.Geometry(1, 16, 1 << 20))
    try:
        w = ShardWriter(m, 0, 0)
        _publish(w, 1, 0, [b"a"])
        w.reserve(5000)  # died mid-batch
        w2 = ShardWriter(m, 0, 0)
        assert w2.next_index == 1 and w2.restarts == 1
        _publish(w2, 1, 1, [b"b"])
        with SegmentReader(segment_name) as r:
            assert [b.batch_seq for b in r.batches()] == [0, 1]
            assert r.shard_state(0).restarts == 1
    finally:
        m.close()


def test_topic_table_full(segment_name: str) -> None:
    m = shm.create(segment_name, layout.Geometry(1, 4, 1 << 20))
    try:
        w = ShardWriter(m, 0, 0)
        for i in range(layout.TOPIC_SLOTS):
            assert w.topic_index(f"t{i}") == i
        assert w.topic_index("t3") == 3
        with pytest.raises(SegmentError):
            w.topic_index("one-too-many")
    finally:
        m.close()


def test_create_twice_and_attach_missing(segment_name: str) -> None:
    m = shm.create(segment_name, layout.Geometry(1, 4, 1 << 20))
    try:
        with pytest.raises(SegmentError, match="already exists"):
            shm.create(segment_name, layout.Geometry(1, 4, 1 << 20))
        st = os.stat(f"/dev/shm/{segment_name}")
        assert st.st_mode & 0o777 == 0o600
    finally:
        m.close()
    with pytest.raises(SegmentError, match="does not exist"):
        SegmentReader("shardbroker-no-such-segment")


# A reader's process writes one byte through the raw address of its mapping: the kernel, not
# a Python flag, must refuse it (SIGSEGV), and the segment must be unchanged.
_WRITE_THROUGH_READER = """
import ctypes, sys
import numpy as np
from shardbroker import SegmentReader
r = SegmentReader(sys.argv[1])
ctypes.memset(np.frombuffer(r._m.buf, dtype=np.uint8).ctypes.data, 0x5A, 1)
print("written")
"""


def test_reader_mapping_refuses_writes(segment_name: str) -> None:
    m = shm.create(segment_name, layout.Geometry(1, 4, 1 << 20))
    try:
        first = m.buf[0]
        child = subprocess.run([sys.executable, "-c", _WRITE_THROUGH_READER, segment_name],
                               capture_output=True, timeout=60)
        assert child.returncode == -signal.SIGSEGV, (child.returncode, child.stdout)
        assert m.buf[0] == first
    finally:
        m.close()


def test_prefault_populates(segment_name: str) -> None:
    m = shm.create(segment_name, layout.Geometry(1, 4, 4 << 20))
    try:
        total = m.geometry.total_bytes
        assert os.stat(f"/dev/shm/{segment_name}").st_blocks * 512 < total  # not yet
        chunks: list[None] = []
        t0 = time.perf_counter()
        took = shm.prefault(m, between_chunks=lambda: chunks.append(None), chunk=1 << 20)
        wall = time.perf_counter() - t0
        assert 0 < took <= wall  # the seconds it reports are the time it took
        assert len(chunks) == -(-total // (1 << 20))
        assert os.stat(f"/dev/shm/{segment_name}").st_blocks * 512 >= 4 << 20
    finally:
        m.close()


def test_committed_batch_seqs_across_shards_exact_not_a_mark(segment_name: str) -> None:
    m = shm.create(segment_name, layout.Geometry(2, 8, 1 << 20))
    try:
        w0, w1 = ShardWriter(m, 0, 0), ShardWriter(m, 1, 0)

        def seqs(client: int) -> list[int]:
            return layout.committed_batch_seqs(m.buf, m.geometry, client).tolist()

        assert seqs(5) == []
        for seq in (0, 2, 4):  # a publisher spreading over brokers: gaps are someone else's
            _publish(w0, 5, seq, [b"x"])
        _publish(w1, 5, 7, [b"y"])  # the client reconnected to another receiver
        _publish(w1, 5, 2, [b"y"])  # the same seq in two shards is listed once
        _publish(w1, 6, 40, [b"z"])
        w0.reserve(100)  # in flight, never committed: must not count
        assert seqs(5) == [0, 2, 4, 7]
        assert seqs(6) == [40] and seqs(99) == []
    finally:
        m.close()


def test_committed_batch_seqs_leaves_out_overwritten_payloads(segment_name: str) -> None:
    """A batch whose BLog bytes were reclaimed is no longer in the segment: its resend must be
    committed again, so it is not listed."""
    m = shm.create(segment_name, layout.Geometry(1, 64, 64 << 10))
    try:
        w = ShardWriter(m, 0, 0)
        _publish(w, 5, 0, [b"a" * 1000])
        _publish(w, 6, 0, [b"b" * (40 << 10)])
        assert layout.committed_batch_seqs(m.buf, m.geometry, 5).tolist() == [0]
        _publish(w, 6, 1, [b"c" * (40 << 10)])  # wraps: client 5's payload is overwritten
        assert layout.committed_batch_seqs(m.buf, m.geometry, 5).tolist() == []
        assert layout.committed_batch_seqs(m.buf, m.geometry, 6).tolist() == [1]
    finally:
        m.close()


def test_segment_group_access(segment_name: str) -> None:
    import grp

    m = shm.create(segment_name, layout.Geometry(1, 4, 1 << 20))
    try:
        group = grp.getgrgid(os.getgid()).gr_name
        shm.share_with_group(segment_name, group)
        st = os.stat(f"/dev/shm/{segment_name}")
        assert st.st_mode & 0o777 == 0o640 and st.st_gid == os.getgid()
        with pytest.raises(SegmentError, match="does not exist"):
            shm.share_with_group(segment_name, "no-such-group-xyz")
    finally:
        m.close()
