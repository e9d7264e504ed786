"""The wire protocol, pure: whole inputs, one byte at a time, trailing bytes, every reason."""

from __future__ import annotations

import struct

import pytest

from shardbroker.wire import protocol as p


def _stream(batches: list[tuple[int, list[bytes]]], client_id: int = 7) -> bytes:
    out = p.encode_handshake(p.Handshake(client_id=client_id, ack=1, port=0, topic="orders"))
    for seq, msgs in batches:
        payload = p.encode_messages(msgs, client_id, seq)
        out += p.encode_batch_header(p.BatchHeader(seq, client_id, len(msgs), len(payload)))
        out += payload
    return out


def _collect(dec: p.Decoder, chunks: list[bytes]) -> tuple[list[object], bytes]:
    events: list[object] = []
    payload = bytearray()
    for chunk in chunks:
        dec.feed(chunk)
        for ev in dec.events():
            if isinstance(ev, p.PayloadEvent):
                payload += ev.data
            elif not isinstance(ev, p.NeedMore):
                events.append(ev)
    return events, bytes(payload)


BATCHES = [(0, [b"a" * 10, b"bb" * 40]), (1, [b"x" * 1000]), (2, [b""] * 3)]


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


@pytest.mark.parametrize("mode", ["whole", "bytewise", "trailing"])
def test_decoder_streams(mode: str) -> None:
    data = _stream(BATCHES)
    expected_payload = b"".join(p.encode_messages(m, 7, s) for s, m in BATCHES)
    if mode == "whole":
        chunks = [data]
    elif mode == "bytewise":
        chunks = [data[i:i + 1] for i in range(len(data))]
    else:  # a complete stream followed by the first bytes of another header
        chunks = [data + b"\x05\x00\x00"]
    dec = p.Decoder()
    events, payload = _collect(dec, chunks)
    assert isinstance(events[0], p.HandshakeEvent)
    assert events[0].handshake.topic == "orders"
    headers = [e for e in events if isinstance(e, p.BatchHeaderEvent)]
    assert [h.header.batch_seq for h in headers] == [0, 1, 2]
    assert [h.header.num_msg for h in headers] == [2, 1, 3]
    assert payload == expected_payload
    if mode == "trailing":
        with pytest.raises(p.ProtocolError) as err:
            dec.close()
        assert err.value.reason == p.Reason.PEER_CLOSED_MID_BATCH
    else:
        dec.close()  # clean end at a batch boundary


def test_decoder_reports_need_more() -> None:
    dec = p.Decoder()
    dec.feed(b"\0" * 10)
    (ev,) = list(dec.events())
    assert isinstance(ev, p.NeedMore) and ev.want == 54


def test_decoder_close_mid_handshake() -> None:
    dec = p.Decoder()
    dec.feed(b"\0" * 10)
    list(dec.events())
    with pytest.raises(p.ProtocolError) as err:
        dec.close()
    assert err.value.reason == p.Reason.PEER_CLOSED_MID_HANDSHAKE


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
    dec = p.Decoder()
    dec.feed(_handshake_bytes(**fields))
    with pytest.raises(p.ProtocolError) as err:
        list(dec.events())
    assert err.value.reason == reason
    with pytest.raises(p.ProtocolError):  # the decoder stays dead
        dec.feed(b"more")


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
    dec = p.Decoder(limits)
    dec.feed(_handshake_bytes() + raw)
    with pytest.raises(p.ProtocolError) as err:
        list(dec.events())
    assert err.value.reason == reason


def test_reasons_are_distinct() -> None:
    values = [r.value for r in p.Reason]
    assert len(values) == len(set(values))


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
