"""The consumer table in the segment header (layout: segment/layout.py).

Slot changes (claim, detach, expire, remove) take an exclusive ``flock`` on the segment's file
so two consumers starting at once cannot claim the same slot; heartbeats and positions are
single aligned stores by the slot's owner, read lock-free by receivers. Every change that can
lower what the writers may overwrite bumps ``consumers_epoch``, which makes writers re-read.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

from shardbroker.errors import ConsumerError
from shardbroker.platform.linux import pid_alive
from shardbroker.segment import shm
from shardbroker.segment.layout import (
    CONSUMER_ACTIVE,
    CONSUMER_DETACHED,
    CONSUMER_EXPIRED,
    CONSUMER_FREE,
    CONSUMER_HEARTBEAT_OFF,
    CONSUMER_SLOTS,
    CONSUMER_STATE_OFF,
    RETENTION_NAMES,
    U32,
    U64,
    ConsumerEntry,
    bump_consumers_epoch,
    consumer_offset,
    consumer_position_offset,
    encode_consumer_name,
    read_consumer,
    read_consumer_position,
    read_retention,
    read_shard_state,
    write_consumer,
)


@dataclass(frozen=True, slots=True)
class ConsumerInfo:
    """One consumer as ``shardbroker consumers`` shows it."""

    entry: ConsumerEntry
    positions: list[int]  # per shard: next pbr index to read
    lag: list[int]  # per shard: committed batches not read yet
    heartbeat_age_s: float
    live: bool  # holds data back under `block`


class ConsumerTable:
    """Reads and changes the consumer table of a mapped segment."""

    def __init__(self, m: shm.Mapped) -> None:
        self.m = m
        self.buf = m.buf
        self.geometry = m.geometry

    @property
    def retention(self) -> str:
        r, _ = read_retention(self.buf)
        return RETENTION_NAMES[r] if r < len(RETENTION_NAMES) else f"#{r}"

    @property
    def timeout_ns(self) -> int:
        _, ms = read_retention(self.buf)
        return (ms or 10_000) * 1_000_000  # 0: an older segment, the config default

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        fd = os.open(shm.segment_path(self.m.name), os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def entries(self) -> list[ConsumerEntry]:
        return [e for e in (read_consumer(self.buf, i) for i in range(CONSUMER_SLOTS))
                if e.state != CONSUMER_FREE]

    def find(self, name: str) -> ConsumerEntry | None:
        return next((e for e in self.entries() if e.name == name), None)

    def positions(self, slot: int) -> list[int]:
        g = self.geometry
        return [read_consumer_position(self.buf, g, s, slot) for s in range(g.shard_count)]

    def set_position(self, slot: int, shard: int, index: int) -> None:
        U64.pack_into(self.buf, consumer_position_offset(self.geometry, shard, slot), index)

    def heartbeat(self, slot: int, now_ns: int | None = None) -> None:
        U64.pack_into(self.buf, consumer_offset(slot) + CONSUMER_HEARTBEAT_OFF,
                      time.monotonic_ns() if now_ns is None else now_ns)

    def state(self, slot: int) -> int:
        return int(U32.unpack_from(self.buf, consumer_offset(slot) + CONSUMER_STATE_OFF)[0])

    def claim(self, name: str, start_positions: list[int]) -> tuple[ConsumerEntry, bool]:
        """Take the slot named ``name`` (resuming its positions) or a free one (starting at
        ``start_positions``). Returns (entry, resumed). Refuses a name a live process holds."""
        encode_consumer_name(name)  # validates
        with self.locked():
            now = time.monotonic_ns()
            old = self.find(name)
            if old is not None:
                if (old.state == CONSUMER_ACTIVE and old.pid != os.getpid()
                        and pid_alive(old.pid) and now - old.heartbeat_ns <= self.timeout_ns):
                    raise ConsumerError(f"consumer {name!r} is in use by pid {old.pid}",
                                        hint="pick another name, or stop that consumer")
                entry = ConsumerEntry(old.slot, name, CONSUMER_ACTIVE, os.getpid(), now,
                                      time.time_ns(), old.joins + 1)
                write_consumer(self.buf, entry)
                bump_consumers_epoch(self.buf)
                return entry, True
            free = next((i for i in range(CONSUMER_SLOTS)
                         if read_consumer(self.buf, i).state == CONSUMER_FREE), None)
            if free is None:
                raise ConsumerError(
                    f"the segment's consumer table is full ({CONSUMER_SLOTS} names)",
                    hint="remove names nobody uses with `shardbroker consumers --remove NAME`")
            for shard, pos in enumerate(start_positions):
                self.set_position(free, shard, pos)  # before the slot becomes visible
            entry = ConsumerEntry(free, name, CONSUMER_ACTIVE, os.getpid(), now,
                                  time.time_ns(), 1)
            write_consumer(self.buf, entry)
            bump_consumers_epoch(self.buf)
            return entry, False

    def set_state(self, slot: int, state: int) -> None:
        with self.locked():
            U32.pack_into(self.buf, consumer_offset(slot) + CONSUMER_STATE_OFF, state)
            bump_consumers_epoch(self.buf)

    def detach(self, slot: int) -> None:
        """A consumer closing: keep its name and positions, stop holding data back."""
        if self.state(slot) == CONSUMER_ACTIVE:
            self.set_state(slot, CONSUMER_DETACHED)

    def remove(self, name: str) -> bool:
        """Forget a name and its positions. Refuses a live consumer."""
        with self.locked():
            e = self.find(name)
            if e is None:
                return False
            now = time.monotonic_ns()
            if e.holds_data(now, self.timeout_ns) and pid_alive(e.pid):
                raise ConsumerError(f"consumer {name!r} is live (pid {e.pid})",
                                    hint="stop it first")
            write_consumer(self.buf, ConsumerEntry(e.slot, "-", CONSUMER_FREE, 0, 0, 0, 0))
            for shard in range(self.geometry.shard_count):
                self.set_position(e.slot, shard, 0)
            bump_consumers_epoch(self.buf)
            return True

    def expire_stale(self, now_ns: int | None = None) -> list[ConsumerEntry]:
        """Mark active consumers whose heartbeat is older than the timeout as expired (the
        supervisor calls this periodically; the consumer finds out on its next call)."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        stale = [e for e in self.entries()
                 if e.state == CONSUMER_ACTIVE and now - e.heartbeat_ns > self.timeout_ns]
        if not stale:
            return []
        with self.locked():
            out = []
            for e in stale:
                cur = read_consumer(self.buf, e.slot)  # re-read under the lock
                if cur.state == CONSUMER_ACTIVE and now - cur.heartbeat_ns > self.timeout_ns:
                    U32.pack_into(self.buf, consumer_offset(e.slot) + CONSUMER_STATE_OFF,
                                  CONSUMER_EXPIRED)
                    out.append(cur)
            if out:
                bump_consumers_epoch(self.buf)
            return out

    def describe(self) -> list[ConsumerInfo]:
        g = self.geometry
        committed = [read_shard_state(self.buf, g, s).pbr_committed
                     for s in range(g.shard_count)]
        now = time.monotonic_ns()
        out = []
        for e in self.entries():
            pos = self.positions(e.slot)
            out.append(ConsumerInfo(
                entry=e, positions=pos,
                lag=[max(0, c - p) for c, p in zip(committed, pos, strict=True)],
                heartbeat_age_s=(now - e.heartbeat_ns) / 1e9,
                live=e.holds_data(now, self.timeout_ns)))
        return out
