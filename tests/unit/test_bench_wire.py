"""The bench senders' pure parts: multi-batch chunks and the ack stream parser."""

from __future__ import annotations

import struct

import pytest

from shardbroker.bench.wire import (
    AckError,
    AckStream,
    ChunkBuilder,
    batches_per_chunk,
    chunk_plan,
)
from shardbroker.publisher.batches import BatchGeometry, BatchTemplate
from shardbroker.wire.protocol import (
    BATCH_HEADER_SIZE,
    Limits,
    decode_batch_header,
    encode_control_frame,
)


def test_chunk_is_back_to_back_wire_batches() -> None:
    geom = BatchGeometry(960, 4)  # 4 KiB payloads
    tmpl = BatchTemplate(77, geom)
    ref = BatchTemplate(77, geom)
    cb = ChunkBuilder(tmpl, 8)
    view = cb.fill(100, 5)
    assert len(view) == 5 * (BATCH_HEADER_SIZE + geom.payload_bytes)
    for k in range(5):
        frame = view[k * cb.frame:(k + 1) * cb.frame]
        hdr = decode_batch_header(bytes(frame[:BATCH_HEADER_SIZE]), 77, Limits())
        assert (hdr.batch_seq, hdr.client_id, hdr.num_msg, hdr.total_size) == (
            100 + k, 77, 4, geom.payload_bytes)
        assert ref.matches(frame[BATCH_HEADER_SIZE:], 100 + k)
    # refilling patches the sequence numbers in place
    view = cb.fill(7, 1)
    assert ref.matches(view[BATCH_HEADER_SIZE:], 7)
    with pytest.raises(ValueError):
        cb.fill(0, 9)


def test_batches_per_chunk() -> None:
    # about 1 MiB of consecutive batches per send, at least one
    assert batches_per_chunk(2 << 20) == 1
    assert batches_per_chunk(64 << 10) == 15
    assert batches_per_chunk(4 << 10) == 248
    assert batches_per_chunk(4 << 10, target_bytes=256 << 10) == 62


def test_chunk_plan_is_bounded_by_the_window() -> None:
    assert chunk_plan(4 << 10, 64 << 20) == (248, 16384)
    assert chunk_plan(64 << 10, 64 << 20) == (15, 1024)
    assert chunk_plan(2 << 20, 64 << 20) == (1, 32)
    # a small window: at most half of it per send, so acks can come back for one send
    # while the next is on its way
    assert chunk_plan(4 << 10, 256 << 10) == (32, 64)
    # a window below two batches still allows two
    assert chunk_plan(2 << 20, 1 << 20) == (1, 2)


def test_ack_stream_byte_at_a_time() -> None:
    data = struct.pack("<i", 3) + b"".join(struct.pack("<Q", c) for c in (10, 20, 30))
    a = AckStream()
    counts = [a.feed(data[i:i + 1]) for i in range(len(data))]
    assert a.broker_id == 3 and a.count == 30
    assert counts[3] == 0 and counts[11] == 10 and counts[-1] == 30
    assert not a.buf


def test_ack_stream_whole_and_trailing() -> None:
    a = AckStream()
    assert a.feed(struct.pack("<iQQ", 0, 5, 9) + b"\x01\x02") == 9
    assert len(a.buf) == 2


def test_ack_stream_control_frame_raises_reason() -> None:
    a = AckStream()
    a.feed(struct.pack("<iQ", 0, 4))
    with pytest.raises(AckError, match="batch.total_size_zero"):
        a.feed(encode_control_frame("batch.total_size_zero: nope"))
