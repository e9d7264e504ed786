"""A named, resumable consumer: ``SegmentReader.follow`` plus a slot in the consumer table.

``with Consumer(segment, "indexer") as c: for b in c.batches(): ...`` -- a batch counts as
consumed when the loop asks for the next one; its position is stored in the segment then, so a
consumer killed mid-batch gets that batch again after a restart and never skips one. While it
is live (heartbeat younger than the segment's consumer timeout) a ``block`` segment keeps every
batch it has not consumed; a consumer silent for longer is expired and told so
(ConsumerExpired), after which ``rejoin()`` continues from its position, with anything
overwritten meanwhile counted in ``lapped``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any

from shardbroker.consumer.registry import ConsumerTable
from shardbroker.errors import ConsumerError, ConsumerExpired, SegmentError
from shardbroker.segment import shm
from shardbroker.segment.layout import CONSUMER_EXPIRED
from shardbroker.segment.reader import Batch, SegmentReader
from shardbroker.segment.waiting import make_waiter


class Consumer:
    def __init__(self, segment: str, name: str, start: str | Sequence[int] = "end",
                 shard: int | None = None, topic: str | None = None) -> None:
        try:
            self._m = shm.attach(segment, writable=True)
        except SegmentError as exc:
            raise ConsumerError(f"cannot register a consumer on {segment!r}: {exc.message}",
                                hint="a named consumer needs write access to the segment; "
                                     "read without --name for an anonymous tail") from exc
        self.reader = SegmentReader(segment)
        self.table = ConsumerTable(self._m)
        self.name = name
        self.shard = shard
        self.topic = topic
        self.timeout_s = self.table.timeout_ns / 1e9
        self.heartbeat_every_s = min(1.0, self.timeout_s / 4)
        try:
            entry, self.resumed = self.table.claim(name, self.reader.start_positions(start))
        except BaseException:
            self.close()
            raise
        self.slot = entry.slot
        self.positions = self.table.positions(self.slot)
        self._last_beat = time.monotonic()
        self._waiter: Any = None

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def lapped(self) -> int:
        return self.reader.lapped

    @property
    def torn(self) -> int:
        return self.reader.torn

    def heartbeat(self) -> None:
        """Say "still here". ``batches()`` does it while iterating; call it during long work
        on one batch. Raises ConsumerExpired when this consumer was silent too long."""
        now = time.monotonic()
        silent = now - self._last_beat
        self._last_beat = now
        if self.table.state(self.slot) == CONSUMER_EXPIRED or silent > self.timeout_s:
            raise ConsumerExpired(
                f"consumer {self.name!r} was silent for {silent:.1f} s (timeout "
                f"{self.timeout_s:g} s) and no longer held data back",
                hint="call rejoin() to continue; batches overwritten meanwhile count in lapped")
        self.table.heartbeat(self.slot)

    def rejoin(self) -> None:
        """After ConsumerExpired: hold data back again, from the stored positions."""
        entry, _ = self.table.claim(self.name, self.positions)
        self.slot = entry.slot
        self._last_beat = time.monotonic()

    def _on_position(self, shard: int, index: int) -> None:
        self.table.set_position(self.slot, shard, index)
        self.positions[shard] = index
        if time.monotonic() - self._last_beat >= self.heartbeat_every_s:
            self.heartbeat()

    def batches(self, idle_timeout_s: float | None = None,
                stop: Callable[[], bool] | None = None, wait: Any = None) -> Iterator[Batch]:
        """Follow from this consumer's positions (see SegmentReader.follow). A caught-up
        consumer sleeps on the segment's futex (woken by the next commit) unless ``wait``
        says otherwise (e.g. ``waiting.Backoff()``)."""
        self.heartbeat()
        if wait is None:
            if self._waiter is None:
                self._waiter = make_waiter("futex", self.reader.name)
            wait = self._waiter
        yield from self.reader.follow(
            self.shard, self.topic, start=list(self.positions), wait=wait,
            idle_timeout_s=idle_timeout_s, stop=stop, on_idle=self._idle_beat,
            on_position=self._on_position)

    def _idle_beat(self) -> None:
        if time.monotonic() - self._last_beat >= self.heartbeat_every_s:
            self.heartbeat()

    def close(self, forget: bool = False) -> None:
        """Stop holding data back; keep the name and positions (``forget``: drop them)."""
        table = getattr(self, "table", None)
        if table is not None and hasattr(self, "slot"):
            if forget:
                table.detach(self.slot)
                table.remove(self.name)
            else:
                table.detach(self.slot)
        waiter = getattr(self, "_waiter", None)
        if waiter is not None and hasattr(waiter, "close"):
            waiter.close()
        if hasattr(self, "reader"):
            self.reader.close()
        self._m.close()
