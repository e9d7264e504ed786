"""The segment's owner: create (or recover) it, place and prefault its pages, keep its
consumer table swept, and release it at the end -- unlinking only what this process made."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from shardbroker.config import Config
from shardbroker.consumer.registry import ConsumerTable
from shardbroker.errors import ShardbrokerError
from shardbroker.platform import linux
from shardbroker.platform.topology import PlacementPlan
from shardbroker.segment import shm
from shardbroker.segment.layout import (
    RETENTION_NAMES,
    Geometry,
    ShardState,
    read_shard_state,
    write_retention,
)
from shardbroker.supervisor.created import Created

CONSUMER_SWEEP_S = 0.25


class SegmentOwner:
    def __init__(self, cfg: Config, log: Any, created: Created, name: str) -> None:
        self.cfg = cfg
        self.log = log
        self.created = created
        self.name = name
        self.mapped: shm.Mapped | None = None  # created or taken over: ours to close
        self.consumers: ConsumerTable | None = None
        self.thp_mode = ""
        self.memory_node: int | None = None
        self.next_consumer_sweep = 0.0

    @property
    def geometry(self) -> Geometry:
        assert self.mapped is not None
        return self.mapped.geometry

    def open(self, cpus: list[int | None], placement: PlacementPlan,
             between_steps: Callable[[], None]) -> tuple[list[int | None], float]:
        """Create the segment (one shard per entry of ``cpus``) or, with ``segment.recover``,
        re-attach a crashed broker's, whose geometry wins. Returns the CPU of every shard and
        the prefault time. ``between_steps`` runs between the long steps (it raises to end a
        start that was interrupted)."""
        seg = self.cfg.segment
        if seg.hugepages == "hugetlbfs" and "/" not in self.name:
            self.name = os.path.join(seg.hugetlbfs_mount, self.name)
        self.memory_node = placement.memory_node
        if seg.recover:
            cpus = self._recover(cpus)
        else:
            self._create(Geometry(len(cpus), seg.pbr_slots, seg.blog_bytes_per_shard))
        assert self.mapped is not None
        between_steps()
        # before any receiver starts: their writers read the policy once, at attach
        write_retention(self.mapped.buf, RETENTION_NAMES.index(seg.retention),
                        int(seg.consumer_timeout_s * 1000))
        self.consumers = ConsumerTable(self.mapped)
        prefault_s = (shm.prefault(self.mapped, between_chunks=between_steps)
                      if seg.prefault else 0.0)
        self.log.info("supervisor.segment.created", segment=self.name,
                      bytes=self.geometry.total_bytes, shards=self.geometry.shard_count,
                      prefault_s=round(prefault_s, 3), hugepages=seg.hugepages,
                      memory_node=self.memory_node)
        return cpus, prefault_s

    def _create(self, geometry: Geometry) -> None:
        """A new segment (shm.create refuses one larger than /dev/shm and memory allow)."""
        seg = self.cfg.segment
        self.mapped = shm.create(self.name, geometry, self.cfg.broker.broker_id, seg.mode)
        self.created.segment = self.name
        if seg.group:
            shm.share_with_group(self.name, seg.group)
        self._place_memory()

    def _recover(self, cpus: list[int | None]) -> list[int | None]:
        """Re-attach a crashed broker's segment: each receiver continues its shard after the
        last committed batch (ShardWriter reads the shard header). A segment a live broker
        serves is refused and left exactly as it was."""
        mapped = shm.attach(self.name, writable=True)
        try:
            generation = shm.take_over(mapped)
        except BaseException:
            mapped.close()
            raise
        self.mapped = mapped
        shards = mapped.geometry.shard_count
        plan_cpus: list[int | None] = [c for c in cpus if c is not None] or [None]
        self.log.info("supervisor.segment.recovered", segment=self.name, shards=shards,
                      generation=generation)
        return [plan_cpus[i % len(plan_cpus)] for i in range(shards)]

    def _place_memory(self) -> None:
        """Bind the segment's pages to the planned node and apply the huge-page mode, before
        the prefault touches (and so allocates) them."""
        assert self.mapped is not None
        seg = self.cfg.segment
        if self.memory_node is not None:
            try:
                linux.mbind(self.mapped.mm, len(self.mapped.mm), self.memory_node)
            except ShardbrokerError as exc:
                if seg.memory_node >= 0:
                    raise
                self.log.warning("supervisor.segment.mbind_failed", error=str(exc))
        if seg.hugepages == "thp":
            mode = linux.madvise_hugepage(self.mapped.mm, len(self.mapped.mm))
            self.thp_mode = mode
            if "[never]" in mode or "[deny]" in mode:
                self.log.warning("supervisor.segment.thp_off", shmem_enabled=mode,
                                 hint="echo advise > /sys/kernel/mm/transparent_hugepage/"
                                      "shmem_enabled, or use segment.hugepages = hugetlbfs")

    def mark_serving(self) -> None:
        assert self.mapped is not None
        shm.mark_serving(self.mapped)

    def shard_state(self, shard: int) -> ShardState:
        assert self.mapped is not None
        return read_shard_state(self.mapped.buf, self.mapped.geometry, shard)

    def placement_report(self) -> dict[str, Any]:
        """Pages per NUMA node of the segment, read back from /proc/self/numa_maps."""
        path = self.name if "/" in self.name.strip("/") else f"/dev/shm/{self.name}"
        return {"planned_memory_node": self.memory_node,
                "pages_by_node": linux.numa_maps_pages(os.getpid(), path),
                "hugepages": self.cfg.segment.hugepages, "thp_mode": self.thp_mode}

    def consumers_status(self) -> list[dict[str, Any]]:
        if self.consumers is None:
            return []
        return [{"name": c.entry.name, "state": c.entry.state_name, "pid": c.entry.pid,
                 "live": c.live, "lag": c.lag} for c in self.consumers.describe()]

    def expire_consumers(self, now: float) -> None:
        """Tell consumers silent for longer than the timeout that they were expired (the
        receivers already stopped counting them: they check heartbeats themselves)."""
        if self.consumers is None or now < self.next_consumer_sweep:
            return
        self.next_consumer_sweep = now + CONSUMER_SWEEP_S
        for e in self.consumers.expire_stale():
            self.log.warning("supervisor.consumer.expired", consumer=e.name, pid=e.pid,
                             timeout_s=self.cfg.segment.consumer_timeout_s)

    def release(self) -> None:
        """At a clean stop: mark the segment closed, unmap it, unlink it unless kept."""
        if self.mapped is None:
            return
        shm.mark_closed(self.mapped)
        self._unmap()
        if self.cfg.segment.keep:
            self.log.info("supervisor.segment.kept", segment=self.name)
        else:
            shm.unlink(self.name)
        self.created.segment = None

    def abort(self) -> None:
        """A failed start: unlink the segment if this start made it (a recovered one stays as
        it was, for another --recover), then unmap."""
        if self.created.segment is not None:
            shm.unlink(self.created.segment)
            self.created.segment = None
        self._unmap()

    def _unmap(self) -> None:
        if self.mapped is not None:
            self.mapped.close()
        self.mapped = None
        self.consumers = None
