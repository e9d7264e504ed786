"""SegmentReader: consumers map the segment read-only and walk committed batches.

A batch is yielded only if its PBR slot says committed *for that index* and its BLog bytes have
not been reclaimed by a later lap; both are checked again after the payload view is made
(seqlock style). A caller that holds a payload view while the broker keeps writing can call
``Batch.still_valid()`` after using it: the ring may have lapped it since.

``follow()`` keeps reading as batches are committed: per shard in commit order, round-robin
over shards, optionally one topic; a caught-up reader waits with the waiter it is given
(default ``segment.waiting.Backoff``).
Every batch index from the start position on is accounted for exactly once: yielded, filtered
out (topic), or counted in ``lapped`` (overwritten before it was read; any topic, since an
overwritten slot no longer says) -- so a lapped reader knows exactly what it missed. Starting
at ``"oldest"`` means the oldest batch still readable: what a ring overwrote before the reader
came is not "missed" and not counted. A batch overwritten *while the caller held it* is
counted in ``torn``: check ``Batch.still_valid()`` after using a payload under retention
``overwrite`` (under ``block`` a live consumer's batches cannot be overwritten).

``owner_gone()`` says when no broker will write the segment again (closed, unlinked, or its
supervisor died), so a follower can stop instead of waiting on a dead mapping.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from shardbroker.platform import linux
from shardbroker.segment import shm
from shardbroker.segment.layout import (
    FLAG_CLOSED_CLEANLY,
    FLAG_SERVING,
    SLOT_BLOG_ABS,
    SLOT_PUBLISH_COMMIT,
    Geometry,
    ShardState,
    Slot,
    blog_reclaim,
    pbr_ring_view,
    read_segment_header,
    read_shard_state,
    read_slot,
    read_stats,
    read_topics,
    slot_publish_commit,
)
from shardbroker.segment.waiting import Backoff, Waiter
from shardbroker.wire.protocol import MessageView, iter_messages

FOLLOW_CHUNK = 256  # batches taken from one shard before looking at the next

PositionHook = Callable[[int, int], None]  # (shard, next index): the reader moved on


@dataclass(frozen=True, slots=True)
class Batch:
    shard: int
    index: int  # pbr_absolute_index
    slot: Slot
    topic: str
    payload: memoryview
    _reader: SegmentReader

    @property
    def segment(self) -> str:
        return self._reader.name

    @property
    def batch_seq(self) -> int:
        return self.slot.batch_seq

    @property
    def client_id(self) -> int:
        return self.slot.client_id

    @property
    def num_msg(self) -> int:
        return self.slot.num_msg

    @property
    def total_size(self) -> int:
        return self.slot.total_size

    @property
    def start_logical_offset(self) -> int:
        return self.slot.start_logical_offset

    @property
    def batch_id(self) -> int:
        return self.slot.batch_id

    def messages(self) -> Iterator[MessageView]:
        return iter_messages(self.payload, self.slot.num_msg)

    def message_arrays(self) -> tuple[Any, Any]:
        """(data offsets, data sizes) of every message as numpy int64 arrays."""
        from shardbroker.wire.message_index import message_arrays

        return message_arrays(self.payload, self.slot.num_msg)

    def still_valid(self) -> bool:
        return self._reader._valid(self.shard, self.index, self.slot.blog_abs)


class SegmentReader:
    """``with SegmentReader(name) as r: for b in r.batches(): ...``"""

    def __init__(self, name: str) -> None:
        self._m = shm.attach(name, writable=False)
        self.name = name
        self._identity = _file_identity(name)  # to tell "unlinked or replaced" later
        self.lapped = 0  # batches skipped because a later lap overwrote them
        self.torn = 0  # followed batches overwritten while the caller still held them
        self.positions: list[int] = []  # follow(): per shard, the next index to read

    def __enter__(self) -> SegmentReader:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._m.close()

    @property
    def geometry(self) -> Geometry:
        return self._m.geometry

    @property
    def shard_count(self) -> int:
        return self._m.geometry.shard_count

    @property
    def broker_id(self) -> int:
        return read_segment_header(self._m.buf).broker_id

    def shard_state(self, shard: int) -> ShardState:
        return read_shard_state(self._m.buf, self.geometry, shard)

    def shard_stats(self, shard: int) -> dict[str, int]:
        return read_stats(self._m.buf, self.geometry, shard)

    def topics(self, shard: int) -> list[str]:
        return read_topics(self._m.buf, self.geometry, shard)

    def owner_gone(self) -> str | None:
        """Why no broker will write this segment again, or None while one may: its supervisor
        closed it, its name was unlinked (or now names a new segment), or the supervisor that
        marked it serving has died. The pid test only says "gone" when no process has that
        pid in this pid namespace."""
        h = read_segment_header(self._m.buf)
        if h.flags & FLAG_CLOSED_CLEANLY:
            return f"the broker closed segment {self.name}"
        now = _file_identity(self.name)
        if now is None:
            return f"segment {self.name} was removed"
        if _UNKNOWN not in (self._identity, now) and now != self._identity:
            return f"segment {self.name} was removed and created anew"
        if h.flags & FLAG_SERVING and h.supervisor_pid and not linux.pid_alive(h.supervisor_pid):
            return f"the broker (pid {h.supervisor_pid}) that served segment {self.name} died"
        return None

    def oldest_readable(self, shard: int) -> int:
        """Index of the oldest batch of ``shard`` still readable (``pbr_committed`` when none
        is). Below the PBR window every slot is reused; inside it the BLog may have reclaimed
        a payload already. Commits happen in completion order, so a BLog lap is not a clean
        cut in index order: the whole window is tested, vectorised over the ring."""
        import numpy as np

        g, buf = self.geometry, self._m.buf
        end = read_shard_state(buf, g, shard).pbr_committed
        first = max(0, end - g.pbr_slots)
        if first == end:
            return end
        reclaim = blog_reclaim(buf, g, shard)
        ring = pbr_ring_view(buf, g, shard).view("<u8")
        wanted = np.arange(first, end, dtype=np.uint64)
        rows = wanted % np.uint64(g.pbr_slots)
        readable = ((ring[rows, SLOT_PUBLISH_COMMIT // 8] == wanted)
                    & (ring[rows, SLOT_BLOG_ABS // 8] >= np.uint64(reclaim)))
        del ring  # a live numpy view of the mapping would keep close() from releasing it
        hit = int(readable.argmax())
        return first + hit if readable[hit] else end

    def _valid(self, shard: int, index: int, blog_abs: int) -> bool:
        g, buf = self.geometry, self._m.buf
        return (slot_publish_commit(buf, g, shard, index) == index
                and blog_reclaim(buf, g, shard) <= blog_abs)

    def batches(self, shard: int | None = None, start: int | None = None) -> Iterator[Batch]:
        """Committed batches in per-shard commit order (shard 0's, then shard 1's, ...).

        ``start`` is a pbr index to begin at (default: the oldest still in the ring).
        """
        shards = range(self.shard_count) if shard is None else [shard]
        for s in shards:
            yield from self._shard_batches(s, start)

    def _shard_batches(self, shard: int, start: int | None) -> Iterator[Batch]:
        g, buf = self.geometry, self._m.buf
        end = read_shard_state(buf, g, shard).pbr_committed
        oldest = max(0, end - g.pbr_slots)
        begin = oldest if start is None else max(start, oldest)
        if start is not None and start < oldest:
            self.lapped += oldest - start
        topics = read_topics(buf, g, shard)
        for i in range(begin, end):
            slot = read_slot(buf, g, shard, i)
            if not slot.committed_as(i) or blog_reclaim(buf, g, shard) > slot.blog_abs:
                self.lapped += 1
                continue
            payload = buf[slot.log_idx: slot.log_idx + slot.total_size]
            if not self._valid(shard, i, slot.blog_abs):
                payload.release()
                self.lapped += 1
                continue
            topic = (topics[slot.topic_index] if slot.topic_index < len(topics)
                     else f"#{slot.topic_index}")
            yield Batch(shard, i, slot, topic, payload, self)

    # ------------------------------------------------------------------ follow mode

    def start_positions(self, start: str | Sequence[int]) -> list[int]:
        """``"end"`` (only new batches), ``"oldest"`` (the oldest batch still readable in
        each shard), or explicit per-shard indexes."""
        n = self.shard_count
        if isinstance(start, str):
            if start == "end":
                return [self.shard_state(s).pbr_committed for s in range(n)]
            if start == "oldest":
                return [self.oldest_readable(s) for s in range(n)]
            raise ValueError(f"start {start!r}: use 'end', 'oldest' or a list of indexes")
        pos = [int(x) for x in start]
        if len(pos) != n:
            raise ValueError(f"{len(pos)} start positions for {n} shards")
        return pos

    def follow(self, shard: int | None = None, topic: str | None = None,
               start: str | Sequence[int] = "end", wait: Waiter | None = None,
               idle_timeout_s: float | None = None, stop: Callable[[], bool] | None = None,
               on_idle: Callable[[], None] | None = None,
               on_position: PositionHook | None = None) -> Iterator[Batch]:
        """Yield committed batches as they are committed, until ``stop()`` is true or nothing
        arrives for ``idle_timeout_s`` (None: forever). ``self.positions[s]`` moves past a
        batch when the caller asks for the next one (so a position means "consumed");
        ``on_position(shard, index)`` hears every move. ``on_idle`` runs on every empty poll
        (heartbeats). ``wait``: how to wait when caught up (default: a ``Backoff``).
        The start positions are taken now, not at the first ``next()``."""
        self.positions = self.start_positions(start)
        return self._follow(shard, topic, wait if wait is not None else Backoff(),
                            idle_timeout_s, stop, on_idle, on_position)

    def _follow(self, shard: int | None, topic: str | None, waiter: Waiter,
                idle_timeout_s: float | None, stop: Callable[[], bool] | None,
                on_idle: Callable[[], None] | None, on_position: PositionHook | None
                ) -> Iterator[Batch]:
        shards = range(self.shard_count) if shard is None else [shard]
        g, buf = self.geometry, self._m.buf
        topics: list[list[str]] = [read_topics(buf, g, s) for s in range(self.shard_count)]
        idle_since = time.monotonic()
        arm = getattr(waiter, "arm", None)  # a wake-up channel is armed before the last poll
        armed = False
        while True:
            got = 0  # batches yielded this round
            passed = 0  # indexes moved past without yielding (lapped, or another topic)
            for s in shards:
                end = read_shard_state(buf, g, s).pbr_committed
                pos = self.positions[s]
                if pos >= end:
                    continue
                oldest = end - g.pbr_slots
                if pos < oldest:  # lapped while we were away
                    self.lapped += oldest - pos
                    pos = oldest
                    self._moved(s, pos, on_position)
                for i in range(pos, min(end, pos + FOLLOW_CHUNK)):
                    batch = self._batch_at(s, i, topics)
                    if batch is not None and (topic is None or batch.topic == topic):
                        got += 1
                        yield batch
                        if not batch.still_valid():
                            self.torn += 1
                    else:
                        passed += 1
                    self._moved(s, i + 1, on_position)
                    if stop is not None and stop():
                        return
            if got or passed:
                # More may be committed already: a round of lapped or filtered batches is
                # not a sign of being caught up (nor, for idle_timeout_s, of new data).
                waiter.reset()
                armed = False
                if got:
                    idle_since = time.monotonic()
                continue
            if stop is not None and stop():
                return
            if arm is not None and not armed:
                arm()
                armed = True
                continue  # poll once more: a commit before arm() would not wake us
            armed = False
            if on_idle is not None:
                on_idle()
            left = None
            if idle_timeout_s is not None:
                left = idle_timeout_s - (time.monotonic() - idle_since)
                if left <= 0:
                    return
            waiter.wait(left)

    def _moved(self, shard: int, index: int, hook: PositionHook | None) -> None:
        self.positions[shard] = index
        if hook is not None:
            hook(shard, index)

    def _batch_at(self, shard: int, i: int, topics: list[list[str]]) -> Batch | None:
        """Committed batch ``i`` of ``shard``, or None (counted in ``lapped``) when a later lap
        overwrote it before we got there."""
        g, buf = self.geometry, self._m.buf
        slot = read_slot(buf, g, shard, i)
        if not slot.committed_as(i) or blog_reclaim(buf, g, shard) > slot.blog_abs:
            self.lapped += 1
            return None
        payload = buf[slot.log_idx: slot.log_idx + slot.total_size]
        if not self._valid(shard, i, slot.blog_abs):
            payload.release()
            self.lapped += 1
            return None
        names = topics[shard]
        if slot.topic_index >= len(names):  # a topic newer than our copy of the table
            names[:] = read_topics(buf, g, shard)
        topic = names[slot.topic_index] if slot.topic_index < len(names) \
            else f"#{slot.topic_index}"
        return Batch(shard, i, slot, topic, payload, self)


def _file_identity(name: str) -> tuple[int, int] | None:
    """(device, inode) of the segment's name in the file system; None once it is unlinked."""
    try:
        st = os.stat(shm.segment_path(name))
    except FileNotFoundError:
        return None
    except OSError:
        return _UNKNOWN  # cannot tell: only the header flags and the pid can say
    return st.st_dev, st.st_ino


_UNKNOWN = (-1, -1)
