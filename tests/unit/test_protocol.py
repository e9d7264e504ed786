"""The wire protocol, pure: layouts, encoders and validators. The stream parser that runs in
production (receiver/session.py) is tested whole, bytewise and split in test_session.py."""

from __future__ import annotations

import enum
import struct

import pytest

from shardbroker.wire import protocol as p


def test_sizes_match_embarcadero() -> None:
    assert p.HANDSHAKE_SIZE == 64
    assert p.BATCH_HEADER_SIZE == 128
    assert p.MESSAGE_HEADER_SIZE == 64


def test_batch_header_field_offsets() -> None:
    raw = p.encode_batch_header(p.BatchHeader(0x1122, 9, 3, 0x4455), broker_id=5)
    assert struct.unpack_from("<Q", raw, 0)[0] == 0x1122
    assert struct.unpack_from("<I", raw, 16)[0] == 9
    assert struct.unpack_from("<I", raw, 20)[0] == 3
    assert struct.unpack_from("<I", raw, 28)[0] == 5
    assert struct.unpack_from("<Q", raw, 64)[0] == 0x4455
    assert struct.unpack_from("<Q", raw, 104)[0] == p.UINT64_MAX


def _handshake_bytes(**kw: object) -> bytes:
    f = dict(client_id=7, ack=1, num_msg=0, last_addr=0, port=0, client_req=0,
             topic=b"orders\0")
    f.update(kw)
    return p.HANDSHAKE.pack(f["client_id"], f["ack"], f["num_msg"], f["last_addr"], f["port"],
                            f["client_req"], f["topic"])


@pytest.mark.parametrize("fields, reason", [
    ({"client_req": 1}, p.Reason.HANDSHAKE_UNKNOWN_REQUEST),
    ({"client_req": 0xFFFF_FFFB}, p.Reason.HANDSHAKE_UNKNOWN_REQUEST),  # -5 as i32
    ({"ack": 9}, p.Reason.HANDSHAKE_BAD_ACK_LEVEL),
    ({"topic": b"x" * 32}, p.Reason.HANDSHAKE_TOPIC_NOT_TERMINATED),
    ({"topic": b"\0abc"}, p.Reason.HANDSHAKE_TOPIC_EMPTY),
    ({"topic": b"bad\x01name\0"}, p.Reason.HANDSHAKE_TOPIC_NOT_PRINTABLE),
])
def test_handshake_violations(fields: dict[str, object], reason: p.Reason) -> None:
    with pytest.raises(p.ProtocolError) as err:
        p.parse_handshake(_handshake_bytes(**fields))
    assert err.value.reason == reason


@pytest.mark.parametrize("hdr, reason", [
    (dict(total_size=0), p.Reason.BATCH_SIZE_ZERO),
    (dict(total_size=(1 << 20) + 1), p.Reason.BATCH_SIZE_TOO_LARGE),
    (dict(num_msg=0), p.Reason.BATCH_NO_MESSAGES),
    (dict(num_msg=101), p.Reason.BATCH_TOO_MANY_MESSAGES),
    (dict(num_msg=50, total_size=64 * 49), p.Reason.BATCH_TOO_SMALL_FOR_MESSAGES),
    (dict(client_id=8), p.Reason.BATCH_CLIENT_ID_MISMATCH),
])
def test_batch_header_violations(hdr: dict[str, int], reason: p.Reason) -> None:
    limits = p.Limits(max_batch_bytes=1 << 20, max_messages_per_batch=100)
    f = dict(batch_seq=0, client_id=7, num_msg=1, total_size=128)
    f.update(hdr)
    raw = p.encode_batch_header(p.BatchHeader(**f))
    with pytest.raises(p.ProtocolError) as err:
        p.decode_batch_header(raw, 7, limits)
    assert err.value.reason == reason


def test_reasons_are_distinct() -> None:
    # Iterating an Enum skips aliases (a second name for a value already used), so compare
    # every name: enum.unique raises ValueError naming the alias.
    enum.unique(p.Reason)
    assert len({r.value for r in p.Reason.__members__.values()}) == len(p.Reason.__members__)


def test_message_framing_checks() -> None:
    limits = p.Limits()
    payload = p.encode_messages([b"abc", b"d" * 100], 7, 0)
    p.check_message_framing(memoryview(payload), 2, limits)
    views = list(p.iter_messages(memoryview(payload), 2))
    assert [bytes(v.data) for v in views] == [b"abc", b"d" * 100]
    assert [v.counter for v in views] == [0, 1]
    with pytest.raises(p.ProtocolError):  # one message too many announced
        p.check_message_framing(memoryview(payload), 3, limits)
    with pytest.raises(p.ProtocolError):  # trailing garbage after the last message
        p.check_message_framing(memoryview(payload + b"\0" * 64), 2, limits)
    bad = bytearray(payload)
    struct.pack_into("<I", bad, 0, 1 << 30)  # absurd size
    with pytest.raises(p.ProtocolError):
        p.check_message_framing(memoryview(bytes(bad)), 2, limits)


def test_control_frame_roundtrip() -> None:
    frame = p.encode_control_frame("batch.total_size_zero: nope")
    magic, length = p.CONTROL_FRAME.unpack_from(frame)
    assert magic == p.CONTROL_MAGIC
    assert frame[8:8 + length] == b"batch.total_size_zero: nope"


def test_handshake_topic_too_long_rejected_by_encoder() -> None:
    with pytest.raises(ValueError):
        p.encode_handshake(p.Handshake(1, 1, 0, "t" * 32))
