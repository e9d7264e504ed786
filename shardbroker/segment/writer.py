"""The single writer of one shard: BLog reservations, PBR commits, counters, topics.

Only the receiver process that owns a shard creates a ShardWriter for it, so reservation needs
no cross-process lock. State lives in plain ints and is mirrored into the shard header with
single stores in the order the layout's commit protocol requires.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from shardbroker.errors import PlatformError, SegmentError
from shardbroker.platform import linux
from shardbroker.segment.layout import (
    HEADER_COUNTERS,
    RETENTION_BLOCK,
    SEG_COMMIT_WAKE,
    SEG_SLEEPERS,
    SH_BLOG_HEAD,
    SH_BLOG_RECLAIM,
    SH_HEARTBEAT,
    SH_PBR_COMMITTED,
    SH_RESTARTS,
    SH_STATS,
    SH_TOPIC_COUNT,
    SH_TOPICS,
    SH_WRITER_PID,
    SLOT,
    SLOT_F_BLOG_ABS,
    SLOT_F_COMMIT,
    SLOT_F_LOGICAL,
    SLOT_F_NUM_MSG,
    SLOT_F_SIZE,
    SLOT_PUBLISH_COMMIT,
    STATS,
    TOPIC_ENTRY,
    TOPIC_SLOTS,
    U32,
    U64,
    consumers_epoch,
    place_in_blog,
    read_retention,
    read_shard_state,
    read_topics,
    retention_floor,
)
from shardbroker.segment.shm import Mapped
from shardbroker.wire.protocol import BATCH_HEADER_SIZE, UINT64_MAX

# Runs of at least this many batches store their publish_commit words through numpy views;
# for fewer, setting up the views costs more than one store per slot (~1.8 us vs ~0.2 us each).
COMMIT_VECTOR_MIN = 8


@dataclass(slots=True)
class Reservation:
    blog_abs: int  # absolute, never-wrapping BLog position
    log_idx: int  # byte offset of the payload in the segment
    size: int


class ShardWriter:
    def __init__(self, m: Mapped, shard: int, broker_id: int) -> None:
        g = m.geometry
        self.shard = shard
        self.broker_id = broker_id
        self.batch_id_base = broker_id << 48  # batch_id = (broker_id << 48) | pbr index
        self.buf = m.buf
        self.geometry = g
        self.base = g.shard_base(shard)
        self.pbr_off = g.pbr_offset(shard)
        self.slots = g.pbr_slots
        self.blog_off = g.blog_offset(shard)
        self.blog_bytes = g.blog_bytes
        st = read_shard_state(m.buf, g, shard)
        # Continue after whatever a previous writer of this shard committed.
        self.next_index = st.pbr_committed
        self.head = st.blog_head
        self.reclaim = st.blog_reclaim
        self.messages = st.messages
        self.bytes = st.bytes
        self._adopt_unpublished_commits()
        self.restarts = st.restarts + (1 if st.writer_pid else 0)
        self._topics = {name: i for i, name in enumerate(read_topics(m.buf, g, shard))}
        U32.pack_into(self.buf, self.base + SH_WRITER_PID, os.getpid())
        U64.pack_into(self.buf, self.base + SH_RESTARTS, self.restarts)
        # Space a dead writer reserved but never committed is abandoned, never reused:
        # the head already points past it.
        self.heartbeat()
        # retention: block (see layout.py). The bounds below are what the live consumers
        # allowed when last looked at; positions only grow, so they stay safe until the
        # consumer table changes (consumers_epoch) or the writer reaches them.
        retention, timeout_ms = read_retention(m.buf)
        self.blocking = retention == RETENTION_BLOCK
        self.consumer_timeout_ns = timeout_ms * 1_000_000
        self._room_epoch = -1
        self._room_index = 0  # commits below this index are allowed
        self._room_blog = 0  # BLog reservations ending at or below this are allowed
        self._wake_addr: int | None = None
        self.room_checks = 0  # slow-path reads of the consumer table (retention `block`)

    def _adopt_unpublished_commits(self) -> None:
        """Slots a previous writer committed after its last ``publish`` (it died in between)
        are committed batches: continue after them, never over them. The shard header's
        counters trail the slots by at most one read's worth of batches."""
        while True:
            off = self.pbr_off + (self.next_index % self.slots) * BATCH_HEADER_SIZE
            f = SLOT.unpack_from(self.buf, off)
            if f[SLOT_F_COMMIT] != self.next_index:
                return
            self.next_index += 1
            self.messages = f[SLOT_F_LOGICAL] + f[SLOT_F_NUM_MSG]
            self.bytes += f[SLOT_F_SIZE]
            self.head = max(self.head, f[SLOT_F_BLOG_ABS] + f[SLOT_F_SIZE])
        # (the header is brought up to date by the first publish)

    def topic_index(self, topic: str) -> int:
        idx = self._topics.get(topic)
        if idx is not None:
            return idx
        idx = len(self._topics)
        if idx >= TOPIC_SLOTS:
            raise SegmentError(
                f"shard {self.shard} topic table is full ({TOPIC_SLOTS} topics)",
                hint="use fewer topics per broker node",
            )
        raw = topic.encode("ascii")[: TOPIC_ENTRY - 1].ljust(TOPIC_ENTRY, b"\0")
        off = self.base + SH_TOPICS + idx * TOPIC_ENTRY
        self.buf[off: off + TOPIC_ENTRY] = raw
        U32.pack_into(self.buf, self.base + SH_TOPIC_COUNT, idx + 1)
        self._topics[topic] = idx
        return idx

    def reserve(self, size: int) -> Reservation:
        """Reserve ``size`` contiguous BLog bytes. Advances ``reclaim`` before returning, so
        readers stop trusting the bytes this reservation is about to overwrite."""
        start = place_in_blog(self.head, size, self.blog_bytes)
        end = start + size
        lapped_up_to = end - self.blog_bytes
        if lapped_up_to > self.reclaim:
            self.reclaim = lapped_up_to
            U64.pack_into(self.buf, self.base + SH_BLOG_RECLAIM, lapped_up_to)
        self.head = end
        U64.pack_into(self.buf, self.base + SH_BLOG_HEAD, end)
        return Reservation(start, self.blog_off + start % self.blog_bytes, size)

    def reserve_abs(self, size: int) -> int:
        """The hot path's ``reserve``: no Reservation object, returns ``blog_abs`` (the payload
        lies at ``blog_off + blog_abs % blog_bytes``). The head reaches the shard header with
        the next ``publish``; ``reclaim`` is stored now, before any byte is overwritten."""
        head = self.head
        blog = self.blog_bytes
        start = head if head % blog + size <= blog else head + blog - head % blog
        end = start + size
        if end - blog > self.reclaim:
            self.reclaim = end - blog
            U64.pack_into(self.buf, self.base + SH_BLOG_RECLAIM, end - blog)
        self.head = end
        return start

    def commit_slot(self, blog_abs: int, size: int, batch_seq: int, orig_seq: int,
                    client_id: int, num_msg: int, session_epoch: int, topic_idx: int) -> None:
        """Commit one batch whose payload is complete at ``blog_abs``: three stores, in the
        order of the commit protocol (layout.py). The shard header's counters follow with
        ``publish``, once for all the batches of one read."""
        idx = self.next_index
        buf = self.buf
        off = self.pbr_off + (idx % self.slots) * BATCH_HEADER_SIZE
        # 1. invalidate, so a reader racing us never pairs the old slot's fields with new ones
        U64.pack_into(buf, off + SLOT_PUBLISH_COMMIT, UINT64_MAX)
        # 2. the whole slot, batch_complete = 1 but publish_commit still UINT64_MAX
        SLOT.pack_into(
            buf, off, batch_seq, orig_seq, client_id, num_msg, 1, self.broker_id,
            session_epoch, self.batch_id_base | idx, idx, size, self.messages,
            self.blog_off + blog_abs % self.blog_bytes, UINT64_MAX, blog_abs, topic_idx)
        # 3. publish_commit last (x86: stores become visible in program order)
        U64.pack_into(buf, off + SLOT_PUBLISH_COMMIT, idx)
        self.next_index = idx + 1
        self.messages += num_msg
        self.bytes += size

    def append(self, payload: memoryview, batch_seq: int, orig_seq: int, client_id: int,
               num_msg: int, session_epoch: int, topic_idx: int) -> None:
        """``reserve_abs`` + copy ``payload`` in + ``commit_slot``, in one call: the path of
        every small batch. Only for a writer with no receive in flight into BLog space this
        reservation could lap (the caller checks); the order of stores is the same."""
        size = len(payload)
        start = self.reserve_abs(size)
        at = self.blog_off + start % self.blog_bytes
        self.buf[at: at + size] = payload
        self.commit_slot(start, size, batch_seq, orig_seq, client_id, num_msg, session_epoch,
                         topic_idx)

    def append_run(self, stream: memoryview, start: int, end: int,
                   headers: list[tuple[int, int, int, int, int, int]], topic_idx: int) -> None:
        """Commit a run of whole batches as they arrived on one connection, with one copy.

        ``stream[start:end]`` holds ``len(headers)`` consecutive batches in wire order (a
        ``BATCH_HEADER_SIZE``-byte wire header, then its payload); ``headers`` are the wire
        headers unpacked as (batch_seq, original_seq, client_id, num_msg, session_epoch,
        total_size). The whole run is copied into the BLog in one move, so each payload lands
        ``BATCH_HEADER_SIZE`` bytes after the previous one ends: the wire headers stay in the
        BLog as gaps no slot points at (3 % of a 4 KiB batch), and one large copy costs
        about half as much per byte as a copy per batch. Same preconditions as ``append``.
        Stores, in the commit protocol's order: reclaim, payload bytes, every slot
        invalidated, every slot's fields, every slot's publish_commit."""
        first = self.reserve_abs(end - start)
        buf = self.buf
        at = self.blog_off + first % self.blog_bytes
        buf[at: at + end - start] = stream[start:end]
        idx0 = self.next_index
        n = len(headers)
        words = self._commit_words(idx0, n) if n >= COMMIT_VECTOR_MIN else None
        self._store_commits(idx0, n, words, invalidate=True)
        # payload i lies BATCH_HEADER_SIZE after the end of payload i - 1 (its wire header)
        shift = BATCH_HEADER_SIZE - start  # stream offset -> offset in the run, header skipped
        p = start
        idx = idx0
        slots = self.slots
        pbr = self.pbr_off
        broker = self.broker_id
        bid = self.batch_id_base
        messages = self.messages
        nbytes = 0
        pack = SLOT.pack_into
        for seq, orig, client_id, num_msg, epoch, size in headers:
            rel = p + shift
            pack(buf, pbr + (idx % slots) * BATCH_HEADER_SIZE, seq, orig, client_id, num_msg, 1,
                 broker, epoch, bid | idx, idx, size, messages, at + rel, UINT64_MAX,
                 first + rel, topic_idx)
            idx += 1
            messages += num_msg
            nbytes += size
            p += BATCH_HEADER_SIZE + size
        # publish_commit last (x86: stores become visible in program order)
        self._store_commits(idx0, n, words, invalidate=False)
        self.next_index = idx
        self.messages = messages
        self.bytes += nbytes

    def _store_commits(self, idx0: int, n: int, words: list[np.ndarray[Any, Any]] | None,
                       invalidate: bool) -> None:
        """publish_commit of slots ``idx0 .. idx0 + n - 1``: UINT64_MAX, or each its own
        index. Through ``words`` (numpy views) when given, else one store per slot."""
        if words is None:
            buf, pbr, slots = self.buf, self.pbr_off + SLOT_PUBLISH_COMMIT, self.slots
            for i in range(idx0, idx0 + n):
                U64.pack_into(buf, pbr + (i % slots) * BATCH_HEADER_SIZE,
                              UINT64_MAX if invalidate else i)
            return
        k = idx0
        for part in words:
            part[:] = UINT64_MAX if invalidate else np.arange(k, k + len(part), dtype=np.uint64)
            k += len(part)

    def _commit_words(self, idx: int, n: int) -> list[np.ndarray[Any, Any]]:
        """The publish_commit words of slots ``idx .. idx + n - 1`` (wrapping the ring) as at
        most two strided numpy views: one store for many slots."""
        slots = self.slots
        words = np.frombuffer(self.buf, dtype="<u8", count=slots * (BATCH_HEADER_SIZE // 8),
                              offset=self.pbr_off)[SLOT_PUBLISH_COMMIT // 8::BATCH_HEADER_SIZE // 8]
        a = idx % slots
        if a + n <= slots:
            return [words[a: a + n]]
        return [words[a:], words[: a + n - slots]]

    def publish_head(self) -> None:
        """Only the BLog head, for a reservation whose batch will take a while to arrive."""
        U64.pack_into(self.buf, self.base + SH_BLOG_HEAD, self.head)

    def publish(self) -> None:
        """Bring the shard header's counters up to the slots committed so far and wake
        sleeping followers: once per read, however many batches it committed."""
        buf = self.buf
        HEADER_COUNTERS.pack_into(buf, self.base + SH_PBR_COMMITTED, self.next_index,
                                  self.head, self.reclaim, self.messages, self.bytes)
        if buf[SEG_SLEEPERS]:  # a follower sleeps on the futex: one load per publish if not
            self._wake_followers()

    def has_room(self, size: int, pending_floor: int | None = None) -> bool:
        """Under ``block``: may a ``size``-byte batch be reserved and committed now without
        overwriting what a live consumer has not read yet? ``pending_floor``: the lowest
        ``blog_abs`` of reservations in flight (they will be committed, so they are needed
        too). Always True under ``overwrite``."""
        if not self.blocking:
            return True
        end = place_in_blog(self.head, size, self.blog_bytes) + size
        if (consumers_epoch(self.buf) == self._room_epoch and self.next_index < self._room_index
                and end <= self._room_blog):
            return True  # the fast path: within what the consumers allowed last time
        self._room_epoch = consumers_epoch(self.buf)
        self.room_checks += 1
        floor = retention_floor(self.buf, self.geometry, self.shard, self.next_index,
                                time.monotonic_ns(), self.consumer_timeout_ns)
        if floor is None:  # no live consumer: overwrite, one ring ahead of now
            self._room_index = self.next_index + self.slots
            self._room_blog = self.head + self.blog_bytes
        else:
            # Everything reserved after now lies above the current head, so the bound stays
            # safe until the writer reaches it (positions only grow).
            low, committed_floor = floor
            needed = self.head
            for candidate in (committed_floor, pending_floor):
                if candidate is not None and candidate < needed:
                    needed = candidate
            self._room_index = low + self.slots
            self._room_blog = needed + self.blog_bytes
        return self.next_index < self._room_index and end <= self._room_blog

    def commit(self, r: Reservation, batch_seq: int, orig_seq: int, client_id: int,
               num_msg: int, session_epoch: int, topic_idx: int) -> int:
        """Publish one batch whose payload is complete in ``r``. Returns its pbr index."""
        idx = self.next_index
        self.commit_slot(r.blog_abs, r.size, batch_seq, orig_seq, client_id, num_msg,
                         session_epoch, topic_idx)
        self.publish()
        return idx

    def _wake_followers(self) -> None:
        buf = self.buf
        buf[SEG_SLEEPERS] = 0
        U32.pack_into(buf, SEG_COMMIT_WAKE, (U32.unpack_from(buf, SEG_COMMIT_WAKE)[0] + 1)
                      & 0xFFFF_FFFF)
        if self._wake_addr is None:
            self._wake_addr = linux.shared_address(buf, SEG_COMMIT_WAKE)
        with contextlib.suppress(PlatformError):  # followers time out anyway
            linux.futex_wake(self._wake_addr)

    def heartbeat(self) -> None:
        U64.pack_into(self.buf, self.base + SH_HEARTBEAT, time.monotonic_ns())

    def write_stats(self, values: tuple[int, ...]) -> None:
        STATS.pack_into(self.buf, self.base + SH_STATS, *values)
