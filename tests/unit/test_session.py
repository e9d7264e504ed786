"""The sans-IO connection core (receiver/session.py) driven against a real segment writer:
the parser that runs in production, fed whole, one byte at a time, in random splits, with
trailing bytes, small batches straddling read-ahead boundaries and large ones going direct."""

from __future__ import annotations

import contextlib
import os
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardbroker import SegmentReader
from shardbroker.receiver.committer import ShardCommitter
from shardbroker.receiver.session import (
    EV_ACK,
    EV_HANDSHAKE,
    EV_PARKED,
    PHASE_DIRECT,
    Session,
)
from shardbroker.segment import layout, shm
from shardbroker.segment.writer import ShardWriter
from shardbroker.wire import protocol as p

LIMITS = p.Limits(max_batch_bytes=1 << 20, max_messages_per_batch=256, max_message_bytes=1 << 20)
CLIENT = 77


@dataclass
class Rig:
    name: str
    mapped: shm.Mapped
    writer: ShardWriter
    committer: ShardCommitter

    def session(self, readahead: int = 4096, direct_min: int = 1024) -> Session:
        return Session(self.committer, readahead=readahead, direct_min=direct_min)

    def committed(self) -> list[tuple[int, bytes]]:
        with SegmentReader(self.name) as r:
            return [(b.batch_seq, bytes(b.payload)) for b in r.batches(0)]


def _rig(blog: int = 4 << 20, slots: int = 4096, retention_block: bool = False) -> Rig:
    name = f"shardbroker-test-{os.getpid()}-{os.urandom(3).hex()}"
    m = shm.create(name, layout.Geometry(1, slots, blog), broker_id=5)
    if retention_block:
        layout.write_retention(m.buf, layout.RETENTION_BLOCK, 10_000)
    w = ShardWriter(m, 0, broker_id=5)
    return Rig(name, m, w, ShardCommitter(w, LIMITS, clock_ns=lambda: 0))


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = _rig()
    try:
        yield r
    finally:
        r.mapped.close()
        shm.unlink(r.name)


def payload(seq: int, sizes: list[int]) -> bytes:
    return p.encode_messages([bytes([seq % 251]) * s for s in sizes], CLIENT, seq)


def batch(seq: int, body: bytes, num_msg: int, client: int = CLIENT, size: int | None = None
          ) -> bytes:
    hdr = p.encode_batch_header(p.BatchHeader(seq, client, num_msg,
                                              len(body) if size is None else size))
    return hdr + body


def stream(payloads: list[tuple[int, bytes]], ack: int = 1) -> bytes:
    out = p.encode_handshake(p.Handshake(CLIENT, ack, 0, "topic"))
    for seq, (n, body) in enumerate(payloads):
        out += batch(seq, body, n)
    return out


def drive(s: Session, data: bytes, cuts: list[int]) -> int:
    """Feed ``data`` through next_buffer/advance, cut at ``cuts`` (and wherever the session's
    buffer ends). Returns the events OR'ed."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {len(data)})
    ev = 0
    off = 0
    for stop in points:
        while off < stop:
            buf = s.next_buffer()
            k = min(len(buf), stop - off)
            assert k > 0, "the session offered no buffer while bytes were pending"
            spill = s.spill_buffer()
            if spill is not None and k == len(buf) and stop - off > k:
                extra = min(len(spill), stop - off - k)  # scatter: payload tail + next bytes
                buf[:k] = data[off: off + k]
                spill[:extra] = data[off + k: off + k + extra]
                k += extra
            else:
                buf[:k] = data[off: off + k]
            off += k
            ev |= s.advance(k)
    return ev


def mixed_payloads(rng: random.Random, count: int, big: int = 6000) -> list[tuple[int, bytes]]:
    out = []
    for seq in range(count):
        if rng.random() < 0.25:
            sizes = [rng.randint(1000, big)]  # larger than direct_min: goes direct
        else:
            sizes = [rng.randint(0, 200) for _ in range(rng.randint(1, 4))]
        out.append((len(sizes), payload(seq, sizes)))
    return out


def expected(payloads: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    return [(seq, body) for seq, (_n, body) in enumerate(payloads)]


def test_whole_stream_in_one_read(rig: Rig) -> None:
    pls = [(1, payload(i, [100])) for i in range(10)]
    s = rig.session(readahead=64 << 10)
    ev = drive(s, stream(pls), [])
    assert ev & EV_HANDSHAKE and ev & EV_ACK
    assert rig.committed() == expected(pls)
    assert s.acked == 10 and s.at_boundary
    assert rig.committer.recv_hist[0] == 10  # one read carried all ten batches


def test_one_byte_at_a_time(rig: Rig) -> None:
    pls = mixed_payloads(random.Random(1), 12)
    s = rig.session()
    data = stream(pls)
    drive(s, data, list(range(len(data))))
    assert rig.committed() == expected(pls)
    assert s.acked == sum(n for n, _ in pls)


def test_random_splits_with_mixed_sizes(rig: Rig) -> None:
    rng = random.Random(2)
    pls = mixed_payloads(rng, 60)
    data = stream(pls)
    s = rig.session()
    drive(s, data, [rng.randrange(len(data)) for _ in range(80)])
    assert rig.committed() == expected(pls)


def test_small_batches_straddle_readahead_boundaries(rig: Rig) -> None:
    # 700-byte units through a 1000-byte buffer: almost every batch straddles two reads
    pls = [(1, payload(i, [500])) for i in range(40)]
    s = rig.session(readahead=1000, direct_min=900)
    drive(s, stream(pls), [])
    assert rig.committed() == expected(pls)
    assert sum(rig.committer.recv_hist[1:]) > 0  # some batches needed two reads


def test_large_batch_after_small_ones_and_back(rig: Rig) -> None:
    pls = [(1, payload(0, [10])), (1, payload(1, [20000])), (2, payload(2, [5, 5])),
           (1, payload(3, [30000])), (1, payload(4, [1]))]
    s = rig.session(readahead=4096, direct_min=1024)
    phases = []
    data = stream(pls)
    off = 0
    while off < len(data):
        buf = s.next_buffer()
        k = min(len(buf), 3000, len(data) - off)
        buf[:k] = data[off: off + k]
        off += k
        s.advance(k)
        phases.append(s.phase)
    assert PHASE_DIRECT in phases
    assert rig.committed() == expected(pls)
    assert s.at_boundary


def test_trailing_bytes_stay_uncommitted(rig: Rig) -> None:
    pls = [(1, payload(i, [64])) for i in range(3)]
    data = stream(pls) + batch(3, payload(3, [64]), 1)[:-10]  # the last batch is incomplete
    s = rig.session()
    drive(s, data, [])
    assert [seq for seq, _ in rig.committed()] == [0, 1, 2]
    assert s.in_batch and not s.at_boundary
    assert s.acked == 3


def test_nothing_visible_before_a_direct_batch_is_whole(rig: Rig) -> None:
    pls = [(1, payload(0, [50000]))]
    data = stream(pls)
    s = rig.session()
    drive(s, data[:-1], [])
    assert rig.committed() == [] and s.acked == 0
    drive(s, data[-1:], [])
    assert rig.committed() == expected(pls)


def test_duplicates_below_the_dedupe_mark_are_acked_not_committed(rig: Rig) -> None:
    pls = [(1, payload(i, [64])) for i in range(4)]
    drive(rig.session(), stream(pls[:2]), [])  # the first connection committed 0 and 1
    s = rig.session()
    drive(s, stream(pls), [])  # a reconnect resends everything
    assert [seq for seq, _ in rig.committed()] == [0, 1, 2, 3]
    assert s.acked == 4 and rig.committer.duplicates_skipped == 2


def test_ack_level_zero_counts_no_acks(rig: Rig) -> None:
    s = rig.session()
    ev = drive(s, stream([(1, payload(0, [8]))], ack=0), [])
    assert not ev & EV_ACK and s.acked == 0 and len(rig.committed()) == 1


def test_exact_mode_never_reads_past_the_batch(rig: Rig) -> None:
    pls = [(1, payload(i, [100])) for i in range(3)]
    data = stream(pls)
    s = rig.session()
    drive(s, data[:100], [])  # handshake + part of batch 0
    s.exact = True
    first_batch_end = p.HANDSHAKE_SIZE + len(batch(0, pls[0][1], 1))
    assert 100 + len(s.next_buffer()) <= first_batch_end  # the header's rest, then payload
    drive(s, data[100:first_batch_end], [])
    assert s.at_boundary and [seq for seq, _ in rig.committed()] == [0]
    assert len(s.next_buffer()) == p.BATCH_HEADER_SIZE  # next: exactly one header


def test_hand_over_state_round_trip(rig: Rig) -> None:
    pls = [(1, payload(i, [64])) for i in range(4)]
    data = stream(pls)
    cut = p.HANDSHAKE_SIZE + 2 * len(batch(0, pls[0][1], 1))
    a = rig.session()
    drive(a, data[:cut], [])
    state = a.to_state()
    b = rig.session()
    b.restore(state)
    drive(b, data[cut:], [])
    assert [seq for seq, _ in rig.committed()] == [0, 1, 2, 3]
    assert b.acked == 4 and b.batches == 4


def test_to_state_refuses_mid_batch(rig: Rig) -> None:
    s = rig.session()
    drive(s, stream([(1, payload(0, [64]))])[:-5], [])
    with pytest.raises(ValueError):
        s.to_state()


def test_writer_reattaching_continues_after_unpublished_commits(rig: Rig) -> None:
    w = rig.writer
    body = payload(0, [64])
    a = w.reserve_abs(len(body))
    w.commit_slot(a, len(body), 0, 0, CLIENT, 1, 0, 0)  # committed, header not published
    w2 = ShardWriter(rig.mapped, 0, broker_id=5)
    assert w2.next_index == 1 and w2.head >= a + len(body) and w2.messages == 1


# --------------------------------------------------------------------------- every Reason

HS = p.encode_handshake(p.Handshake(CLIENT, 1, 0, "topic"))


def _hs(**kw: object) -> bytes:
    f = dict(client_id=CLIENT, ack=1, port=0, topic="topic")
    f.update(kw)
    return p.encode_handshake(p.Handshake(**f))  # type: ignore[arg-type]


def _raw_hs(topic: bytes) -> bytes:
    return p.HANDSHAKE.pack(CLIENT, 1, 0, 0, 0, 0, topic)


BAD_STREAMS: dict[p.Reason, bytes] = {
    p.Reason.HANDSHAKE_UNKNOWN_REQUEST: _hs(client_req=1),
    p.Reason.HANDSHAKE_BAD_ACK_LEVEL: _hs(ack=7),
    p.Reason.HANDSHAKE_TOPIC_NOT_TERMINATED: _raw_hs(b"x" * 32),
    p.Reason.HANDSHAKE_TOPIC_EMPTY: _raw_hs(b"\0" * 32),
    p.Reason.HANDSHAKE_TOPIC_NOT_PRINTABLE: _raw_hs(b"\x01bad\0"),
    p.Reason.BATCH_SIZE_ZERO: HS + batch(0, b"", 1, size=0),
    p.Reason.BATCH_SIZE_TOO_LARGE: HS + batch(0, b"", 1, size=(1 << 20) + 1),
    p.Reason.BATCH_NO_MESSAGES: HS + batch(0, payload(0, [8]), 0),
    p.Reason.BATCH_TOO_MANY_MESSAGES: HS + batch(0, payload(0, [8]), 257),
    p.Reason.BATCH_TOO_SMALL_FOR_MESSAGES: HS + batch(0, payload(0, [8]), 2, size=100),
    p.Reason.BATCH_CLIENT_ID_MISMATCH: HS + batch(0, payload(0, [8]), 1, client=CLIENT + 1),
}


@pytest.mark.parametrize("reason", list(BAD_STREAMS), ids=str)
@pytest.mark.parametrize("split", ["whole", "bytewise"])
def test_every_stream_reason_is_raised_and_nothing_bad_committed(
        rig: Rig, reason: p.Reason, split: str) -> None:
    good = batch(0, payload(0, [8]), 1)
    data = BAD_STREAMS[reason]
    if data.startswith(HS):  # a good batch first: it is committed, the bad one is not
        data = HS + good + _renumber(data[len(HS):])
    s = rig.session()
    with pytest.raises(p.ProtocolError) as err:
        drive(s, data, list(range(len(data))) if split == "bytewise" else [])
    assert err.value.reason is reason
    assert [seq for seq, _ in rig.committed()] == ([0] if data.startswith(HS) else [])


def _renumber(bad_batch: bytes) -> bytes:
    """The bad batch follows batch 0: give it seq 1."""
    b = bytearray(bad_batch)
    struct.pack_into("<Q", b, 0, 1)
    return bytes(b)


def test_payload_framing_reason_with_validation() -> None:
    r = _rig()
    try:
        r.committer.validate_payload = True
        body = bytearray(payload(0, [8]))
        body[0:4] = (1 << 21).to_bytes(4, "little")  # a message larger than the limit
        with pytest.raises(p.ProtocolError) as err:
            drive(r.session(), HS + batch(0, bytes(body), 1), [])
        assert err.value.reason is p.Reason.PAYLOAD_BAD_FRAMING
        assert r.committed() == []
    finally:
        r.mapped.close()
        shm.unlink(r.name)


def test_topic_table_full_reason(rig: Rig) -> None:
    for i in range(layout.TOPIC_SLOTS):
        rig.writer.topic_index(f"t{i}")
    with pytest.raises(p.ProtocolError) as err:
        drive(rig.session(), _hs(topic="one-too-many"), [])
    assert err.value.reason is p.Reason.TOPIC_TABLE_FULL


def test_lapped_direct_reservation_is_reported() -> None:
    r = _rig(blog=256 << 10)
    try:
        slow = r.session(readahead=4096, direct_min=1024)
        big = payload(0, [100_000])
        drive(slow, stream([(1, big)])[:2000], [])  # slow sits inside a direct reservation
        assert slow in r.committer.in_flight
        fast = r.session()
        fast_pls = [(1, payload(i, [60_000])) for i in range(6)]
        drive(fast, p.encode_handshake(p.Handshake(CLIENT + 1, 1, 0, "t"))
              + b"".join(batch(i, body, n, client=CLIENT + 1)
                         for i, (n, body) in enumerate(fast_pls)), [])
        assert r.committer.lapped == [slow] and r.committer.lapped_in_flight == 1
    finally:
        r.mapped.close()
        shm.unlink(r.name)


def test_block_parks_when_a_consumer_holds_the_space_and_resumes() -> None:
    r = _rig(blog=64 << 10, slots=8, retention_block=True)
    try:
        from shardbroker.consumer.registry import ConsumerTable

        table = ConsumerTable(r.mapped)
        entry, _ = table.claim("reader", [0])
        pls = [(1, payload(i, [1000])) for i in range(12)]
        s = r.session(readahead=64 << 10)
        ev = drive(s, stream(pls), [])
        assert ev & EV_PARKED and s.parked
        assert [seq for seq, _ in r.committed()] == list(range(8))  # the ring is full
        assert s.resume() & EV_PARKED  # the consumer has not read anything yet
        table.set_position(entry.slot, 0, 8)  # it read everything
        ev = s.resume()
        assert not s.parked and ev & EV_ACK
        assert [seq for seq, _ in r.committed()] == list(range(4, 12))  # the newest 8
        assert s.acked == 12
    finally:
        r.mapped.close()
        shm.unlink(r.name)


# --------------------------------------------------------------------------- properties


@settings(max_examples=150, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(st.integers(min_value=0, max_value=3000), min_size=1, max_size=4),
                max_size=12),
       st.lists(st.integers(min_value=0, max_value=100_000), max_size=30),
       st.sampled_from([(256, 200), (1024, 512), (8192, 2048), (65536, 65536)]))
def test_valid_streams_land_identically_however_split(
        sizes: list[list[int]], cuts: list[int], geometry: tuple[int, int]) -> None:
    r = _rig()
    try:
        pls = [(len(sz), payload(i, sz)) for i, sz in enumerate(sizes)]
        s = r.session(readahead=geometry[0], direct_min=geometry[1])
        drive(s, stream(pls), cuts)
        assert r.committed() == expected(pls)
        assert s.acked == sum(n for n, _ in pls)
    finally:
        r.mapped.close()
        shm.unlink(r.name)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=2048),  # hypothesis keeps most of these under 64 bytes
                 st.binary(min_size=p.HANDSHAKE_SIZE, max_size=2048),
                 st.binary(min_size=p.BATCH_HEADER_SIZE, max_size=2048)),
       st.lists(st.integers(min_value=0, max_value=4096), max_size=20), st.booleans())
def test_arbitrary_bytes_give_batches_or_a_reason(data: bytes, cuts: list[int],
                                                  after_handshake: bool) -> None:
    if after_handshake:  # so that batch parsing sees the bytes, not only the handshake check
        data = HS + data
    committed, reason, acked = _outcome(data, cuts)
    assert reason is None or type(reason) is p.Reason  # a member, not a look-alike string
    # however the bytes arrive, the same batches land and the same reason ends the stream
    assert (committed, reason, acked) == _outcome(data, [])


def _outcome(data: bytes, cuts: list[int]
             ) -> tuple[list[tuple[int, bytes]], p.Reason | None, int]:
    """(batches committed, the reason the session refused the stream or None, acked count)."""
    r = _rig()
    try:
        s = r.session(readahead=1024, direct_min=512)
        reason = None
        try:
            drive(s, data, cuts)
        except p.ProtocolError as exc:
            reason = exc.reason
        assert s.fill - s.pos <= s.cap  # never buffers more than its read-ahead
        return r.committed(), reason, s.acked
    finally:
        r.mapped.close()
        shm.unlink(r.name)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(st.binary(max_size=100), min_size=1, max_size=3), min_size=1,
                max_size=3),
       st.integers(min_value=0, max_value=10_000), st.binary(min_size=1, max_size=8))
def test_corrupting_a_valid_stream_commits_only_intact_batches(
        batches: list[list[bytes]], where: int, junk: bytes) -> None:
    pls = [(len(m), p.encode_messages(m, CLIENT, i)) for i, m in enumerate(batches)]
    clean = stream(pls)
    data = bytearray(clean)
    i = where % len(data)
    data[i: i + len(junk)] = junk
    r = _rig()
    try:
        r.committer.validate_payload = True
        with contextlib.suppress(p.ProtocolError):
            drive(r.session(readahead=1024, direct_min=512), bytes(data), [where])
        committed = r.committed()
        # whatever was committed is bytes the stream carried, never more batches than sent
        assert len(committed) <= len(pls)
        for _seq, body in committed:
            assert bytes(data).find(body) >= 0
    finally:
        r.mapped.close()
        shm.unlink(r.name)


def test_partial_handshake_and_partial_batch_are_in_batch(rig: Rig) -> None:
    s = rig.session()
    drive(s, HS[:10], [])
    assert s.in_handshake and s.in_batch  # a close now is "closed mid-handshake"
    drive(s, HS[10:], [])
    assert not s.in_handshake and not s.in_batch and s.at_boundary
    drive(s, batch(0, payload(0, [8]), 1)[:50], [])
    assert s.in_batch and not s.at_boundary  # a close now is "closed mid-batch"


def test_want_lowat_never_exceeds_what_the_batch_still_owes(rig: Rig) -> None:
    s = rig.session(readahead=256 << 10, direct_min=128 << 10)
    big = payload(0, [500_000])
    data = stream([(1, big)])
    drive(s, data[:1000], [])
    assert s.phase == PHASE_DIRECT
    owed = len(data) - 1000
    assert s.want_lowat(1 << 20) == min(owed, 1 << 20) and s.want_lowat(0 + 4096) == 4096
    drive(s, data[1000:-1000], [])
    assert s.want_lowat(1 << 20) == 1  # under 64 KiB owed: not worth a lowat
    small = rig.session(readahead=256 << 10, direct_min=128 << 10)
    mid = payload(0, [100_000])  # carved: lowat for the rest of the batch in the buffer
    d2 = stream([(1, mid)])
    drive(small, d2[:2000], [])
    assert small.want_lowat(1 << 20) == len(d2) - 2000


def test_buffer_starts_small_and_grows_with_the_traffic(rig: Rig) -> None:
    s = rig.session(readahead=256 << 10, direct_min=128 << 10)
    assert s.cap == 16 << 10  # an idle connection holds 16 KiB, not the whole read-ahead
    pls = [(1, payload(i, [900])) for i in range(400)]
    drive(s, stream(pls), [])  # every read fills what it is offered: x4, x4
    assert s.cap == 256 << 10
    assert rig.committed() == expected(pls)


def test_buffer_grows_to_hold_a_batch_larger_than_it(rig: Rig) -> None:
    s = rig.session(readahead=256 << 10, direct_min=128 << 10)
    body = payload(0, [60_000])  # carved (below direct_min), larger than the 16 KiB start
    data = stream([(1, body)])
    drive(s, data, list(range(0, len(data), 1000)))  # small reads: no "filled" growth
    assert s.cap >= len(body) + p.BATCH_HEADER_SIZE
    assert rig.committed() == [(0, body)]


def test_feed_takes_bytes_from_a_drivers_own_buffers(rig: Rig) -> None:
    """What an io_uring provided-buffer driver does: bytes arrive in its buffers, in pieces
    unrelated to the batch boundaries, and are fed in."""
    rng = random.Random(5)
    pls = mixed_payloads(rng, 30)
    data = stream(pls)
    s = rig.session()
    off, events = 0, 0
    while off < len(data):
        piece = data[off: off + rng.randint(1, 70_000)]
        ev, taken = s.feed(piece)
        assert taken == len(piece)  # never parked here: everything is taken
        events |= ev
        off += len(piece)
    assert events & EV_HANDSHAKE and events & EV_ACK
    assert rig.committed() == expected(pls)
    assert s.acked == sum(n for n, _ in pls)


def test_a_resend_the_segment_never_held_is_committed_below_the_mark(rig: Rig) -> None:
    """A publisher spreading its batches over several brokers: this segment holds 0, 2 and 4
    of the client's, so after a reconnect 1 and 3 (sent elsewhere first, then resent here)
    are committed, while 2 and 4 are acked only, and a second resend of 3 is a duplicate."""
    pls = {i: (1, payload(i, [64])) for i in range(6)}
    first = p.encode_handshake(p.Handshake(CLIENT, 1, 0, "topic"))
    for seq in (0, 2, 4):
        first += batch(seq, pls[seq][1], 1)
    drive(rig.session(), first, [])
    again = p.encode_handshake(p.Handshake(CLIENT, 1, 0, "topic"))
    for seq in (1, 2, 3, 4, 3, 5):
        again += batch(seq, pls[seq][1], 1)
    s = rig.session()
    drive(s, again, [len(again) // 2])
    got = rig.committed()
    assert sorted(seq for seq, _ in got) == [0, 1, 2, 3, 4, 5]
    assert all(body == pls[seq][1] for seq, body in got)
    assert s.acked == 6 and rig.committer.duplicates_skipped == 3


def test_hand_over_keeps_the_exact_dedupe(rig: Rig) -> None:
    pls = {i: (1, payload(i, [64])) for i in range(4)}
    first = p.encode_handshake(p.Handshake(CLIENT, 1, 0, "topic")) + batch(2, pls[2][1], 1)
    drive(rig.session(), first, [])
    a = rig.session()
    drive(a, p.encode_handshake(p.Handshake(CLIENT, 1, 0, "topic")) + batch(1, pls[1][1], 1),
          [])
    b = rig.session()
    b.restore(a.to_state())  # moved to another receiver at a batch boundary
    drive(b, batch(2, pls[2][1], 1) + batch(1, pls[1][1], 1) + batch(0, pls[0][1], 1), [])
    assert sorted(seq for seq, _ in rig.committed()) == [0, 1, 2]
    assert rig.committer.duplicates_skipped == 2


def test_a_batch_limit_below_direct_min_still_holds_for_small_batches() -> None:
    """limits.max_batch_bytes may be lower than direct_min: a batch between the two is
    refused, not committed by the run of small batches."""
    r = _rig()
    try:
        r.committer.limits = p.Limits(max_batch_bytes=500, max_messages_per_batch=256,
                                      max_message_bytes=1 << 20)
        s = Session(r.committer, readahead=64 << 10, direct_min=4096)
        ok = batch(0, payload(0, [100]), 1)
        big = batch(1, payload(1, [600]), 1)
        with pytest.raises(p.ProtocolError) as err:
            drive(s, HS + ok + big, [])
        assert err.value.reason is p.Reason.BATCH_SIZE_TOO_LARGE
        assert [seq for seq, _ in r.committed()] == [0]
    finally:
        r.mapped.close()
        shm.unlink(r.name)
