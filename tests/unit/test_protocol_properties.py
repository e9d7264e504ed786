"""Property tests: any byte string, split anywhere, gives valid events or a ProtocolError —
never another exception, never unbounded buffering."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardbroker.wire import protocol as p

LIMITS = p.Limits(max_batch_bytes=1 << 16, max_messages_per_batch=64)


def _valid_stream(client_id: int, batches: list[list[bytes]]) -> bytes:
    out = p.encode_handshake(p.Handshake(client_id, 1, 0, "t"))
    for seq, msgs in enumerate(batches):
        payload = p.encode_messages(msgs, client_id, seq)
        out += p.encode_batch_header(p.BatchHeader(seq, client_id, len(msgs), len(payload)))
        out += payload
    return out


def _feed(data: bytes, cuts: list[int]) -> tuple[list[object], p.ProtocolError | None]:
    dec = p.Decoder(LIMITS)
    events: list[object] = []
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    try:
        for a, b in zip(points, points[1:], strict=False):
            dec.feed(data[a:b])
            for ev in dec.events():
                events.append(ev)
                # the decoder buffers at most one header, whatever it is fed
                assert len(dec._buf) <= p.BATCH_HEADER_SIZE
    except p.ProtocolError as exc:
        return events, exc
    return events, None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048), st.lists(st.integers(min_value=0, max_value=4096),
                                          max_size=20))
def test_arbitrary_bytes_never_crash(data: bytes, cuts: list[int]) -> None:
    events, err = _feed(data, cuts)
    if err is not None:
        assert isinstance(err.reason, p.Reason)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=2**32 - 1),
       st.lists(st.lists(st.binary(max_size=300), min_size=1, max_size=5), max_size=5),
       st.lists(st.integers(min_value=0, max_value=10_000), max_size=30))
def test_valid_streams_decode_identically_however_split(
        client_id: int, batches: list[list[bytes]], cuts: list[int]) -> None:
    data = _valid_stream(client_id, batches)
    events, err = _feed(data, cuts)
    assert err is None
    headers = [e.header for e in events if isinstance(e, p.BatchHeaderEvent)]
    assert [h.batch_seq for h in headers] == list(range(len(batches)))
    payload = b"".join(bytes(e.data) for e in events if isinstance(e, p.PayloadEvent))
    assert payload == b"".join(p.encode_messages(m, client_id, s) for s, m in enumerate(batches))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.binary(max_size=100), min_size=1, max_size=3), min_size=1,
                max_size=3),
       st.integers(min_value=0, max_value=10_000), st.binary(min_size=1, max_size=8))
def test_corrupting_a_valid_stream_is_an_error_or_valid(
        batches: list[list[bytes]], where: int, junk: bytes) -> None:
    data = bytearray(_valid_stream(7, batches))
    i = where % len(data)
    data[i: i + len(junk)] = junk
    _events, err = _feed(bytes(data), [where])
    assert err is None or isinstance(err.reason, p.Reason)
