"""ShardWriter.append_run: a read's whole small batches committed as one run (one copy of the
stream bytes into the BLog, the slots stored together), across both ring wraps."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from shardbroker import SegmentReader
from shardbroker.segment import layout, shm
from shardbroker.segment.writer import COMMIT_VECTOR_MIN, ShardWriter
from shardbroker.wire import protocol as p

CLIENT = 9
TOPIC = 0
HEADERS = p.BATCH_HEADER_SIZE


@pytest.fixture
def seg() -> Iterator[tuple[str, shm.Mapped]]:
    name = f"shardbroker-test-{os.getpid()}-{os.urandom(3).hex()}"
    # 8 slots and a 64 KiB BLog: a few runs wrap both rings
    m = shm.create(name, layout.Geometry(1, 8, 64 << 10), broker_id=3)
    try:
        yield name, m
    finally:
        m.close()
        shm.unlink(name)


def wire_run(first_seq: int, sizes: list[int]) -> tuple[bytes, list[tuple[int, ...]]]:
    """Consecutive batches as they arrive (wire header + payload), and their unpacked
    headers in the order append_run takes them."""
    data = b""
    headers = []
    for k, size in enumerate(sizes):
        seq = first_seq + k
        body = bytes([(seq * 7 + i) % 251 for i in range(size)])
        data += p.encode_batch_header(p.BatchHeader(seq, CLIENT, 1, size)) + body
        headers.append((seq, seq, CLIENT, 1, 0, size))
    return data, headers


def body_of(seq: int, size: int) -> bytes:
    return bytes([(seq * 7 + i) % 251 for i in range(size)])


def test_a_run_lands_byte_for_byte_with_the_fields_of_every_slot(
        seg: tuple[str, shm.Mapped]) -> None:
    name, m = seg
    w = ShardWriter(m, 0, broker_id=3)
    sizes = [100, 3000, 8, 1500]
    data, headers = wire_run(0, sizes)
    lead = b"\xee" * 37  # the run starts part-way into the driver's buffer
    stream = memoryview(lead + data + b"\xee" * 5)
    w.append_run(stream, len(lead), len(lead) + len(data), headers, TOPIC)
    w.publish()
    with SegmentReader(name) as r:
        got = list(r.batches(0))
    assert [b.batch_seq for b in got] == [0, 1, 2, 3]
    assert [bytes(b.payload) for b in got] == [body_of(i, s) for i, s in enumerate(sizes)]
    # payload k starts one wire header after payload k-1 ends
    starts = [b.slot.blog_abs for b in got]
    assert starts[0] == HEADERS
    assert all(starts[k] == starts[k - 1] + sizes[k - 1] + HEADERS for k in range(1, 4))
    assert [b.slot.log_idx for b in got] == [w.blog_off + a for a in starts]
    assert [b.slot.start_logical_offset for b in got] == [0, 1, 2, 3]
    assert w.head == len(data) and w.next_index == 4 and w.messages == 4
    assert w.bytes == sum(sizes)
    del got


def test_runs_wrap_the_pbr_ring_and_the_blog(seg: tuple[str, shm.Mapped]) -> None:
    """Runs of 5 batches into 8 slots: the commit words of a run split at the ring's end;
    runs that do not fit before the BLog's end start at its beginning."""
    name, m = seg
    w = ShardWriter(m, 0, broker_id=3)
    seq = 0
    for _ in range(9):
        sizes = [4000 + 100 * (seq % 3) + k for k in range(5)]
        data, headers = wire_run(seq, sizes)
        w.append_run(memoryview(data), 0, len(data), headers, TOPIC)
        w.publish()
        seq += len(sizes)
        with SegmentReader(name) as r:
            got = [(b.batch_seq, bytes(b.payload), b.index, b.slot.blog_abs, b.total_size)
                   for b in r.batches(0)]
        assert got, "the newest run must be readable"
        newest = got[-1][0]
        assert newest == seq - 1
        for batch_seq, body, index, blog_abs, size in got:
            assert index == batch_seq  # one slot per batch, in order
            assert body == body_of(batch_seq, size)
            # never straddles the BLog's end: a run is contiguous in the ring
            assert blog_abs % (64 << 10) + size <= 64 << 10
        # the whole newest run (5 batches) is readable: nothing of it was lapped
        assert [g[0] for g in got[-5:]] == list(range(seq - 5, seq))
    assert w.next_index == 45 and w.head > 2 * (64 << 10)  # both rings wrapped


def test_long_runs_store_their_commit_words_together_across_the_ring_end() -> None:
    """Runs of 9 batches (the numpy path, >= COMMIT_VECTOR_MIN) into 16 slots: every other
    run's commit words split at the ring's end."""
    assert COMMIT_VECTOR_MIN <= 9
    name = f"shardbroker-test-{os.getpid()}-{os.urandom(3).hex()}"
    m = shm.create(name, layout.Geometry(1, 16, 256 << 10), broker_id=3)
    try:
        w = ShardWriter(m, 0, broker_id=3)
        seq = 0
        for _ in range(5):
            data, headers = wire_run(seq, [700 + 13 * k for k in range(9)])
            w.append_run(memoryview(data), 0, len(data), headers, TOPIC)
            w.publish()
            seq += 9
            with SegmentReader(name) as r:
                got = [(b.batch_seq, b.index, bytes(b.payload)) for b in r.batches(0)]
            assert [g[0] for g in got] == list(range(max(0, seq - 16), seq))
            assert all(index == s and body == body_of(s, 700 + 13 * (s % 9))
                       for s, index, body in got)
    finally:
        m.close()
        shm.unlink(name)
