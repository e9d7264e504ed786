"""Byte layout of the shared-memory "CXL" segment. Pure: buffers in, records out.

All integers little-endian. Offsets are from the start of the segment unless noted.

Segment header (page 0, 4096 bytes)::

    off  size  field
      0     8  magic            b"SBSEG\\x00v1"
      8     4  version          1
     12     4  shard_count
     16     8  pbr_slots        PBR ring slots per shard
     24     8  blog_bytes       BLog ring bytes per shard
     32     8  shard_stride     bytes from one shard's start to the next
     40     8  shards_offset    offset of shard 0 (4096)
     48     8  total_bytes      size of the whole segment
     56     4  broker_id
     60     4  flags            bit 0: prefaulted and serving; bit 1: closed cleanly
     64     8  created_ns       CLOCK_REALTIME ns
     72     8  supervisor_pid
     80     8  generation       bumped each time a supervisor (re)attaches
     88     4  retention        0 overwrite (rings keep the newest data), 1 block
     92     4  consumer_timeout_ms  a consumer whose heartbeat is older no longer holds data
     96     4  consumers_epoch  bumped by every change to the consumer table (writers re-read)
    100     4  commit_wake      futex word: writers bump it after a commit while ``sleepers``
    104     4  sleepers         1 = a follower sleeps on commit_wake (writers clear it and wake)
   1024  64*32  consumer table  CONSUMER_SLOTS entries of 64 bytes:

        0    32  name           NUL-padded ASCII
       32     4  state          0 free, 1 active, 2 expired, 3 detached (closed, keeps positions)
       36     4  pid            the consumer process holding the slot
       40     8  heartbeat_ns   CLOCK_MONOTONIC ns of its last heartbeat
       48     8  registered_ns  CLOCK_REALTIME ns of its (re)registration
       56     8  joins          how many times the slot was (re)claimed

Shard s starts at ``shards_offset + s * shard_stride``:

Shard header (4096 bytes, offsets from the shard start)::

      0     8  magic            b"SBSHARD1"
      8     4  shard_id
     12     4  writer_pid       the receiver process that owns (is the only writer of) it
     16     8  pbr_offset       segment offset of this shard's PBR ring
     24     8  blog_offset      segment offset of this shard's BLog ring
     32     8  pbr_committed    batches committed so far = next pbr_absolute_index (never wraps)
     40     8  blog_head        absolute BLog byte position after the newest reservation
     48     8  blog_reclaim     absolute BLog position below which bytes may be overwritten;
                                advanced *before* a reservation that laps them is written
     56     8  messages         messages committed so far (next start_logical_offset)
     64     8  bytes            payload bytes committed so far
     72     8  heartbeat_ns     CLOCK_MONOTONIC ns of the writer's last heartbeat
     80     8  restarts         how many times a writer re-attached to this shard
     88     4  topic_count      entries used in the topic table
     92     4  (pad)
    128  8*15  statistics       u64 receiver figures, STAT_FIELDS (what each counts:
                                shardbroker/counters.py), written by the receiver:

        128  recv_calls             192  rcvbuf_min
        136  payload_recv_calls     200  rcvbuf_max
        144  eagain                 208  lowat_sets
        152  wakeups                216  acks_sent
        160  connections_open       224  lapped_in_flight
        168  connections_total      232  uring_enters
        176  rejected               240  uring_completions
        184  disconnects_mid_batch  248  (free)

    256  2048  topic table      64 entries of 32 bytes, NUL-padded topic names
   2304   8*C  consumer positions  u64 per consumer slot: the next pbr index it will read
                                (every batch below it is consumed)

PBR ring: ``pbr_slots`` slots of 128 bytes at ``pbr_offset`` (page aligned). A slot is the
BatchHeader of wire/protocol.py completed by the broker; its 16 pad bytes carry::

    112     8  blog_abs         absolute BLog position of the payload (for lap detection)
    120     4  topic_index      index into the shard's topic table
    124     4  (reserved)

BLog ring: ``blog_bytes`` at ``blog_offset`` (page aligned). A payload is contiguous: when it
would straddle the ring's end, the writer skips to the start (the tail becomes padding).

Commit protocol (single writer per shard; x86 keeps stores in order, so a reader that sees
``publish_commit == pbr_absolute_index`` sees the whole slot and payload):
payload complete -> publish_commit = UINT64_MAX (invalidate the old slot) -> the whole slot,
batch_complete = 1, publish_commit still UINT64_MAX -> publish_commit = pbr_absolute_index.
The shard header's pbr_committed/blog_head/messages/bytes follow once per read (a receiver
commits every batch of one read, then publishes the counters), so they may trail the slots; a
writer that re-attaches walks forward over slots committed past ``pbr_committed``.
A reader re-checks ``publish_commit`` and ``blog_reclaim <= blog_abs`` *after* using a batch;
a batch that fails either check was lapped and is never reported as valid.

Retention (segment header ``retention``): under ``block`` a writer reserves space only when no
live consumer (state active, heartbeat younger than ``consumer_timeout_ms``) still needs it:
index ``i`` may be committed only while ``i < min_position + pbr_slots``, and BLog bytes below
the ``blog_abs`` of the batch at ``min_position`` are never reclaimed. All zeros (a fresh or an
older segment) means ``overwrite`` and no consumers.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from shardbroker.counters import segment_names
from shardbroker.wire.protocol import BATCH_HEADER, BATCH_HEADER_SIZE, UINT64_MAX

PAGE = 4096
SEGMENT_MAGIC = b"SBSEG\x00v1"
SHARD_MAGIC = b"SBSHARD1"
VERSION = 1

SEGMENT_HEADER = struct.Struct("<8sIIQQQQQIIQQQ")
SEGMENT_HEADER_SIZE = PAGE
SHARD_HEADER = struct.Struct("<8sIIQQQQQQQQQI4x")
SHARD_HEADER_SIZE = PAGE

FLAG_SERVING = 1
FLAG_CLOSED_CLEANLY = 2

# shard-header field offsets the writer updates in place
SH_WRITER_PID = 12
SH_PBR_COMMITTED = 32
SH_BLOG_HEAD = 40
SH_BLOG_RECLAIM = 48
SH_MESSAGES = 56
SH_BYTES = 64
SH_HEARTBEAT = 72
SH_RESTARTS = 80
SH_TOPIC_COUNT = 88
SH_STATS = 128
SH_TOPICS = 256
TOPIC_ENTRY = 32
TOPIC_SLOTS = 64

# The statistics block's byte order. The names come from the one counter table
# (counters.py, its in_segment entries in table order); this literal is the format, so that a
# change to the table can never move a statistic silently.
STAT_FIELDS: tuple[str, ...] = segment_names()
_DOCUMENTED_STATS = (
    "recv_calls", "payload_recv_calls", "eagain", "wakeups", "connections_open",
    "connections_total", "rejected", "disconnects_mid_batch", "rcvbuf_min", "rcvbuf_max",
    "lowat_sets", "acks_sent", "lapped_in_flight", "uring_enters", "uring_completions",
)
if STAT_FIELDS != _DOCUMENTED_STATS:  # not an assert: python -O must not skip it
    raise AssertionError(
        "counters.TABLE's in_segment entries no longer match the shard header's statistics "
        f"block: {STAT_FIELDS} != {_DOCUMENTED_STATS}")
STATS = struct.Struct("<" + "Q" * len(STAT_FIELDS))
assert SH_STATS + STATS.size <= SH_TOPICS

# consumers (segment header page and shard headers)
SEG_RETENTION = 88
SEG_CONSUMER_TIMEOUT_MS = 92
SEG_CONSUMERS_EPOCH = 96
SEG_COMMIT_WAKE = 100
SEG_SLEEPERS = 104
SEG_CONSUMERS = 1024
CONSUMER_SLOTS = 32
CONSUMER_ENTRY = struct.Struct("<32sIIQQQ")  # name, state, pid, heartbeat_ns, registered, joins
CONSUMER_NAME_MAX = 31
CONSUMER_STATE_OFF = 32
CONSUMER_HEARTBEAT_OFF = 40
SH_CONSUMER_POS = SH_TOPICS + TOPIC_SLOTS * TOPIC_ENTRY  # 2304
RETENTION_OVERWRITE = 0
RETENTION_BLOCK = 1
RETENTION_NAMES = ("overwrite", "block")
CONSUMER_FREE = 0
CONSUMER_ACTIVE = 1
CONSUMER_EXPIRED = 2
CONSUMER_DETACHED = 3
CONSUMER_STATE_NAMES = ("free", "active", "expired", "detached")
assert CONSUMER_ENTRY.size == 64
assert SEG_CONSUMERS + CONSUMER_SLOTS * CONSUMER_ENTRY.size <= SEGMENT_HEADER_SIZE
assert SH_CONSUMER_POS + CONSUMER_SLOTS * 8 <= SHARD_HEADER_SIZE

# PBR slot extension in the header's pad bytes
SLOT_BLOG_ABS = 112
SLOT_TOPIC_INDEX = 120
SLOT_EXT = struct.Struct("<QI4x")
# The whole 128-byte slot in one store: the BatchHeader fields, then blog_abs and topic_index.
# Fields this broker always leaves 0 (ordered, flags, epoch_created, session_epoch32,
# total_order, batch_off_to_export) are pad bytes, which pack as zeros: fewer arguments on
# the per-batch path. Values: batch_seq, original_client_batch_seq, client_id, num_msg,
# batch_complete, broker_id, session_epoch, batch_id, pbr_absolute_index, total_size,
# start_logical_offset, log_idx, publish_commit, blog_abs, topic_index.
SLOT = struct.Struct("<QQIIII8x2xH4xQQQQQ16xQQI4x")
# Positions in SLOT.unpack_from's tuple of the fields a re-attaching writer reads.
SLOT_F_NUM_MSG = 3
SLOT_F_SIZE = 9
SLOT_F_LOGICAL = 10
SLOT_F_COMMIT = 12
SLOT_F_BLOG_ABS = 13
# Shard header pbr_committed, blog_head, blog_reclaim, messages, bytes: one store at 32.
HEADER_COUNTERS = struct.Struct("<QQQQQ")
SLOT_PUBLISH_COMMIT = 104
SLOT_BATCH_COMPLETE = 24
U64 = struct.Struct("<Q")
U32 = struct.Struct("<I")

assert BATCH_HEADER_SIZE == 128


def round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


@dataclass(frozen=True, slots=True)
class Geometry:
    """Sizes that fix the segment's layout."""

    shard_count: int
    pbr_slots: int
    blog_bytes: int

    def __post_init__(self) -> None:
        if self.shard_count < 1:
            raise ValueError("shard_count must be >= 1")
        if self.pbr_slots < 2:
            raise ValueError("pbr_slots must be >= 2")
        if self.blog_bytes < PAGE or self.blog_bytes % PAGE:
            raise ValueError(f"blog_bytes must be a positive multiple of {PAGE}")

    @property
    def pbr_bytes(self) -> int:
        return round_up(self.pbr_slots * BATCH_HEADER_SIZE, PAGE)

    @property
    def shard_stride(self) -> int:
        return SHARD_HEADER_SIZE + self.pbr_bytes + self.blog_bytes

    @property
    def total_bytes(self) -> int:
        return SEGMENT_HEADER_SIZE + self.shard_count * self.shard_stride

    def shard_base(self, shard: int) -> int:
        if not 0 <= shard < self.shard_count:
            raise IndexError(f"shard {shard} out of range 0..{self.shard_count - 1}")
        return SEGMENT_HEADER_SIZE + shard * self.shard_stride

    def pbr_offset(self, shard: int) -> int:
        return self.shard_base(shard) + SHARD_HEADER_SIZE

    def blog_offset(self, shard: int) -> int:
        return self.pbr_offset(shard) + self.pbr_bytes


@dataclass(frozen=True, slots=True)
class SegmentHeader:
    geometry: Geometry
    broker_id: int
    flags: int
    created_ns: int
    supervisor_pid: int
    generation: int


def write_segment_header(buf: memoryview, g: Geometry, broker_id: int, created_ns: int,
                         supervisor_pid: int) -> None:
    """Lay out a fresh segment: segment header plus every shard header."""
    SEGMENT_HEADER.pack_into(
        buf, 0, SEGMENT_MAGIC, VERSION, g.shard_count, g.pbr_slots, g.blog_bytes,
        g.shard_stride, SEGMENT_HEADER_SIZE, g.total_bytes, broker_id, 0, created_ns,
        supervisor_pid, 0,
    )
    for s in range(g.shard_count):
        base = g.shard_base(s)
        SHARD_HEADER.pack_into(
            buf, base, SHARD_MAGIC, s, 0, g.pbr_offset(s), g.blog_offset(s),
            0, 0, 0, 0, 0, 0, 0, 0,
        )
        # Mark every slot "not committed" so no stale slot can ever look committed.
        pbr = g.pbr_offset(s)
        for i in range(g.pbr_slots):
            U64.pack_into(buf, pbr + i * BATCH_HEADER_SIZE + SLOT_PUBLISH_COMMIT, UINT64_MAX)


class LayoutError(ValueError):
    pass


def read_segment_header(buf: memoryview | bytes) -> SegmentHeader:
    (magic, version, shard_count, pbr_slots, blog_bytes, stride, shards_off, total,
     broker_id, flags, created_ns, sup_pid, generation) = SEGMENT_HEADER.unpack_from(buf, 0)
    if magic != SEGMENT_MAGIC:
        raise LayoutError(f"bad segment magic {magic!r}: not a shardbroker segment")
    if version != VERSION:
        raise LayoutError(f"segment layout version {version}, this code reads {VERSION}")
    g = Geometry(shard_count, pbr_slots, blog_bytes)
    if stride != g.shard_stride or shards_off != SEGMENT_HEADER_SIZE or total != g.total_bytes:
        raise LayoutError("segment header geometry is inconsistent")
    if len(buf) < total:
        raise LayoutError(f"segment is {len(buf)} bytes, header says {total}")
    return SegmentHeader(g, broker_id, flags, created_ns, sup_pid, generation)


@dataclass(frozen=True, slots=True)
class ShardState:
    shard_id: int
    writer_pid: int
    pbr_committed: int
    blog_head: int
    blog_reclaim: int
    messages: int
    bytes: int
    heartbeat_ns: int
    restarts: int
    topic_count: int


def read_shard_state(buf: memoryview | bytes, g: Geometry, shard: int) -> ShardState:
    base = g.shard_base(shard)
    f = SHARD_HEADER.unpack_from(buf, base)
    if f[0] != SHARD_MAGIC:
        raise LayoutError(f"bad shard magic at shard {shard}")
    return ShardState(f[1], f[2], f[5], f[6], f[7], f[8], f[9], f[10], f[11], f[12])


def read_stats(buf: memoryview | bytes, g: Geometry, shard: int) -> dict[str, int]:
    return dict(zip(STAT_FIELDS, STATS.unpack_from(buf, g.shard_base(shard) + SH_STATS),
                    strict=True))


def read_topics(buf: memoryview | bytes, g: Geometry, shard: int) -> list[str]:
    base = g.shard_base(shard)
    (count,) = U32.unpack_from(buf, base + SH_TOPIC_COUNT)
    out = []
    for i in range(min(count, TOPIC_SLOTS)):
        off = base + SH_TOPICS + i * TOPIC_ENTRY
        raw = bytes(buf[off: off + TOPIC_ENTRY])
        out.append(raw.split(b"\0", 1)[0].decode("ascii", "replace"))
    return out


@dataclass(frozen=True, slots=True)
class Slot:
    """A PBR slot as read; ``committed_as(i)`` tells whether it holds committed batch i."""

    batch_seq: int
    client_id: int
    num_msg: int
    batch_complete: int
    broker_id: int
    flags: int
    batch_id: int
    pbr_absolute_index: int
    total_size: int
    start_logical_offset: int
    log_idx: int
    publish_commit: int
    blog_abs: int
    topic_index: int

    def committed_as(self, index: int) -> bool:
        return (self.publish_commit == index and self.pbr_absolute_index == index
                and self.batch_complete == 1)


def slot_offset(g: Geometry, shard: int, index: int) -> int:
    return g.pbr_offset(shard) + (index % g.pbr_slots) * BATCH_HEADER_SIZE


def read_slot(buf: memoryview | bytes, g: Geometry, shard: int, index: int) -> Slot:
    off = slot_offset(g, shard, index)
    f = BATCH_HEADER.unpack_from(buf, off)
    blog_abs, topic_index = SLOT_EXT.unpack_from(buf, off + SLOT_BLOG_ABS)
    return Slot(
        batch_seq=f[0], client_id=f[2], num_msg=f[3], batch_complete=f[4], broker_id=f[5],
        flags=f[7], batch_id=f[11], pbr_absolute_index=f[12], total_size=f[13],
        start_logical_offset=f[14], log_idx=f[15], publish_commit=f[18],
        blog_abs=blog_abs, topic_index=topic_index,
    )


def slot_publish_commit(buf: memoryview | bytes, g: Geometry, shard: int, index: int) -> int:
    return int(U64.unpack_from(buf, slot_offset(g, shard, index) + SLOT_PUBLISH_COMMIT)[0])


def blog_reclaim(buf: memoryview | bytes, g: Geometry, shard: int) -> int:
    return int(U64.unpack_from(buf, g.shard_base(shard) + SH_BLOG_RECLAIM)[0])


def place_in_blog(head: int, size: int, blog_bytes: int) -> int:
    """Absolute start for a ``size``-byte payload reserved at ``head``: contiguous in the ring.

    When the payload would straddle the ring's end it starts at the next lap instead.
    """
    if size > blog_bytes:
        raise ValueError(f"payload of {size} bytes cannot fit a {blog_bytes}-byte BLog")
    phys = head % blog_bytes
    if phys + size > blog_bytes:
        return head + (blog_bytes - phys)
    return head


def pbr_ring_view(buf: memoryview | bytes, g: Geometry, shard: int) -> Any:
    """The shard's PBR ring as a (slots, 128) uint8 numpy array: a view, no copy."""
    import numpy as np

    return np.frombuffer(buf, dtype=np.uint8, count=g.pbr_slots * BATCH_HEADER_SIZE,
                         offset=g.pbr_offset(shard)).reshape(g.pbr_slots, BATCH_HEADER_SIZE)


def committed_batch_seqs(buf: memoryview | bytes, g: Geometry, client_id: int) -> Any:
    """Every batch_seq committed for ``client_id`` in any shard whose payload is still in the
    segment, sorted and unique, as a numpy uint64 array (8 bytes each: a long-lived connection
    keeps it).

    Vectorised over the rings (numpy views, no copy of the segment): a reconnecting publisher
    resends its unacked batches, and this tells the receiver which of them are already in. An
    exact set, not a high-water mark: a publisher that spreads its batches over several brokers
    may resend an old batch_seq this segment never held, and a batch whose payload was
    overwritten is no longer in the segment, so its resend is committed again."""
    import numpy as np

    found = []
    for s in range(g.shard_count):
        ring = pbr_ring_view(buf, g, s)
        u64 = ring.view("<u8")  # 16 words per slot
        u32 = ring.view("<u4")  # 32 words per slot
        reclaim = read_shard_state(buf, g, s).blog_reclaim
        committed = (u64[:, SLOT_PUBLISH_COMMIT // 8] == u64[:, 56 // 8]) & \
            (u32[:, SLOT_BATCH_COMPLETE // 4] == 1) & (u32[:, 16 // 4] == client_id) & \
            (u64[:, SLOT_BLOG_ABS // 8] >= reclaim)
        found.append(u64[committed, 0])
    return np.unique(np.concatenate(found))


# --------------------------------------------------------------------------- consumers


@dataclass(frozen=True, slots=True)
class ConsumerEntry:
    slot: int
    name: str
    state: int
    pid: int
    heartbeat_ns: int
    registered_ns: int
    joins: int

    @property
    def state_name(self) -> str:
        return CONSUMER_STATE_NAMES[self.state] if self.state < 4 else f"#{self.state}"

    def holds_data(self, now_ns: int, timeout_ns: int) -> bool:
        """Live: active and heard from within the timeout (only these hold data back)."""
        return self.state == CONSUMER_ACTIVE and now_ns - self.heartbeat_ns <= timeout_ns


def consumer_offset(slot: int) -> int:
    if not 0 <= slot < CONSUMER_SLOTS:
        raise IndexError(f"consumer slot {slot} out of range 0..{CONSUMER_SLOTS - 1}")
    return SEG_CONSUMERS + slot * CONSUMER_ENTRY.size


def read_consumer(buf: memoryview | bytes, slot: int) -> ConsumerEntry:
    raw, state, pid, hb, reg, joins = CONSUMER_ENTRY.unpack_from(buf, consumer_offset(slot))
    name = raw.split(b"\0", 1)[0].decode("ascii", "replace")
    return ConsumerEntry(slot, name, state, pid, hb, reg, joins)


def write_consumer(buf: memoryview, e: ConsumerEntry) -> None:
    CONSUMER_ENTRY.pack_into(buf, consumer_offset(e.slot), encode_consumer_name(e.name),
                             e.state, e.pid, e.heartbeat_ns, e.registered_ns, e.joins)


def encode_consumer_name(name: str) -> bytes:
    raw = name.encode("ascii", "strict") if name.isascii() else b""
    if not raw or len(raw) > CONSUMER_NAME_MAX or not all(0x21 <= c < 0x7F for c in raw):
        raise ValueError(f"consumer name {name!r}: 1..{CONSUMER_NAME_MAX} printable ASCII "
                         "characters without spaces")
    return raw.ljust(32, b"\0")


def consumer_position_offset(g: Geometry, shard: int, slot: int) -> int:
    consumer_offset(slot)  # range check
    return g.shard_base(shard) + SH_CONSUMER_POS + slot * 8


def read_consumer_position(buf: memoryview | bytes, g: Geometry, shard: int, slot: int) -> int:
    return int(U64.unpack_from(buf, consumer_position_offset(g, shard, slot))[0])


def read_retention(buf: memoryview | bytes) -> tuple[int, int]:
    """(retention, consumer_timeout_ms) from the segment header."""
    return U32.unpack_from(buf, SEG_RETENTION)[0], U32.unpack_from(buf, SEG_CONSUMER_TIMEOUT_MS)[0]


def write_retention(buf: memoryview, retention: int, timeout_ms: int) -> None:
    if retention not in (RETENTION_OVERWRITE, RETENTION_BLOCK):
        raise ValueError(f"retention {retention} is not 0 (overwrite) or 1 (block)")
    U32.pack_into(buf, SEG_RETENTION, retention)
    U32.pack_into(buf, SEG_CONSUMER_TIMEOUT_MS, max(1, min(timeout_ms, 0xFFFF_FFFF)))


def consumers_epoch(buf: memoryview | bytes) -> int:
    return int(U32.unpack_from(buf, SEG_CONSUMERS_EPOCH)[0])


def bump_consumers_epoch(buf: memoryview) -> None:
    U32.pack_into(buf, SEG_CONSUMERS_EPOCH, (consumers_epoch(buf) + 1) & 0xFFFF_FFFF)


def retention_floor(buf: memoryview | bytes, g: Geometry, shard: int, committed: int,
                    now_ns: int, timeout_ns: int) -> tuple[int, int | None] | None:
    """What the live consumers of ``shard`` still need, or None when no consumer is live:
    (lowest position, lowest ``blog_abs`` of the committed batches from there on; None when
    they have read everything committed). Commits happen in completion order, not reservation
    order, so the lowest BLog position is a minimum over the unread range, not its first slot.

    A position more than a ring behind (the consumer was lapped before it could hold data)
    counts as the oldest batch still there, so it holds data from there on.
    """
    low: int | None = None
    for slot in range(CONSUMER_SLOTS):
        off = SEG_CONSUMERS + slot * CONSUMER_ENTRY.size
        if U32.unpack_from(buf, off + CONSUMER_STATE_OFF)[0] != CONSUMER_ACTIVE:
            continue
        if now_ns - U64.unpack_from(buf, off + CONSUMER_HEARTBEAT_OFF)[0] > timeout_ns:
            continue
        pos = min(committed, max(committed - g.pbr_slots,
                                 read_consumer_position(buf, g, shard, slot)))
        low = pos if low is None else min(low, pos)
    if low is None:
        return None
    return low, min_blog_abs(buf, g, shard, low, committed)


def min_blog_abs(buf: memoryview | bytes, g: Geometry, shard: int, first: int, end: int
                 ) -> int | None:
    """Lowest ``blog_abs`` among committed batches ``first .. end-1`` (None: empty range).
    Vectorised over the PBR ring's slots (a numpy view, no copy)."""
    n = min(end - first, g.pbr_slots)
    if n <= 0:
        return None
    col = pbr_ring_view(buf, g, shard).view("<u8")[:, SLOT_BLOG_ABS // 8]
    a = (end - n) % g.pbr_slots
    if a + n <= g.pbr_slots:
        return int(col[a: a + n].min())
    return int(min(col[a:].min(), col[: a + n - g.pbr_slots].min()))
