"""AckStream: the broker -> publisher stream parser shared by Publisher and ClusterPublisher."""

from __future__ import annotations

import struct

from shardbroker.publisher.connection import AckStream
from shardbroker.wire.protocol import encode_control_frame


def test_broker_id_then_counts_fed_one_byte_at_a_time() -> None:
    raw = struct.pack("<i", 7) + struct.pack("<QQ", 10, 25)
    s = AckStream()
    seen = []
    for i in range(len(raw)):
        s.feed(raw[i: i + 1])
        seen.append((s.broker_id, s.count))
    assert seen[2] == (None, 0) and seen[3] == (7, 0)
    assert seen[-2] == (7, 10) and seen[-1] == (7, 25)


def test_control_frame_in_place_of_the_broker_id_or_a_count() -> None:
    first = AckStream()
    first.feed(encode_control_frame("accept.not_allowed: 10.0.0.0/8 only"))
    assert first.broker_id is None
    assert first.closed_reason == "accept.not_allowed: 10.0.0.0/8 only"
    later = AckStream()
    frame = encode_control_frame("batch.total_size_zero: empty batch")
    later.feed(struct.pack("<iQ", 0, 3) + frame[:5])  # half a frame: nothing decided yet
    assert later.count == 3 and later.closed_reason is None
    later.feed(frame[5:] + struct.pack("<Q", 99))  # nothing after the reason counts
    assert later.closed_reason == "batch.total_size_zero: empty batch" and later.count == 3
