"""SegmentReader: consumers map the segment read-only and walk committed batches.

A batch is yielded only if its PBR slot says committed *for that index* and its BLog bytes have
not been reclaimed by a later lap; both are checked again after the payload view is made
(seqlock style). A caller that holds a payload view while the broker keeps writing can call
``Batch.still_valid()`` after using it: the ring may have lapped it since.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType

from shardbroker.segment import shm
from shardbroker.segment.layout import (
    Geometry,
    ShardState,
    Slot,
    blog_reclaim,
    read_segment_header,
    read_shard_state,
    read_slot,
    read_stats,
    read_topics,
    slot_publish_commit,
)
from shardbroker.wire.protocol import MessageView, iter_messages


@dataclass(frozen=True, slots=True)
class Batch:
    shard: int
    index: int  # pbr_absolute_index
    slot: Slot
    topic: str
    payload: memoryview
    _reader: SegmentReader

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

    def still_valid(self) -> bool:
        return self._reader._valid(self.shard, self.index, self.slot.blog_abs)


class SegmentReader:
    """``with SegmentReader(name) as r: for b in r.batches(): ...``"""

    def __init__(self, name: str) -> None:
        self._m = shm.attach(name, writable=False)
        self.name = name
        self.lapped = 0  # batches skipped because a later lap overwrote them

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
