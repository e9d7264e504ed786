"""The benchmark scenarios (S1–S5), their reduced ``--quick`` forms, and the CPU plan.

Pure data and pure functions: nothing here starts a process.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

# 960-byte messages have a 1024-byte stride (64-byte header + body, 64-aligned), so 2 MiB,
# 64 KiB and 4 KiB batches are exactly that many payload bytes.
MESSAGE_SIZE = 960

ALL_CONTENDERS = ("limit", "shardbroker-epoll", "shardbroker-uring", "pyzmq", "staging", "nats")
# Not a contender: a receiver that only reads and acks, so its figure is the ceiling of the
# bench's own senders. Where a contender is well below it, the load generator was not the limit.
SENDER_CEILING = "sink"
# `--baseline`: "<contender>@base" runs the broker of another checkout, wherever <contender> runs.
BASELINE_SUFFIX = "@base"
# Contenders with a per-batch acknowledgement path (the only ones S5 can time); limit's S5
# form is a minimal recv_into + ack server (the machine's floor).
ACKING_CONTENDERS = ("limit", "shardbroker-epoll", "shardbroker-uring", "staging")


@dataclass(frozen=True)
class Scenario:
    id: str
    title: str
    publishers: int
    receivers: int
    batch_bytes: int
    kind: Literal["throughput", "latency"] = "throughput"
    total_bytes: int = 0  # throughput: payload bytes across all publishers
    duration_s: float = 0.0  # latency: how long the paced publisher runs
    load_fraction: float = 0.5  # latency: offered load as a fraction of S1's measured rate
    message_size: int = MESSAGE_SIZE
    primary: str = "gbps"  # the figure the scenario is about
    contenders: tuple[str, ...] = ALL_CONTENDERS
    notes: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.publishers < 1 or self.receivers < 1:
            raise ValueError(f"{self.id}: publishers and receivers must be >= 1")
        if self.kind == "throughput" and self.total_bytes < self.batch_bytes * self.publishers:
            raise ValueError(f"{self.id}: total_bytes must cover one batch per publisher")
        if self.kind == "latency" and self.duration_s <= 0:
            raise ValueError(f"{self.id}: a latency scenario needs duration_s > 0")

    def batches_per_publisher(self) -> list[int]:
        """Batches each publisher sends (throughput kinds): the total split evenly."""
        total_batches = -(-self.total_bytes // self.batch_bytes)
        base, extra = divmod(total_batches, self.publishers)
        return [base + (1 if i < extra else 0) for i in range(self.publishers)]

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id, "title": self.title, "kind": self.kind,
            "publishers": self.publishers, "receivers": self.receivers,
            "batch_bytes": self.batch_bytes, "message_size": self.message_size,
            "primary": self.primary,
        }
        if self.kind == "throughput":
            d["total_bytes"] = self.total_bytes
        else:
            d["duration_s"] = self.duration_s
            d["load_fraction"] = self.load_fraction
        return d


FULL: tuple[Scenario, ...] = (
    Scenario("S1", "1 publisher, 1 receiver, 2 MiB batches", 1, 1, 2 * MiB,
             total_bytes=4 * GiB, contenders=(*ALL_CONTENDERS, SENDER_CEILING)),
    Scenario("S2", "4 publishers, 2 receivers, 2 MiB batches", 4, 2, 2 * MiB,
             total_bytes=4 * GiB),
    Scenario("S3", "1 publisher, 64 KiB batches", 1, 1, 64 * KiB, total_bytes=2 * GiB,
             contenders=("limit", "shardbroker-epoll", "shardbroker-uring", "pyzmq",
                         "staging", SENDER_CEILING)),
    Scenario("S4", "1 publisher, 4 KiB batches", 1, 1, 4 * KiB, total_bytes=400_000 * 4 * KiB,
             primary="batches_per_s",
             contenders=("shardbroker-epoll", "shardbroker-uring", "pyzmq", "staging",
                         SENDER_CEILING)),
    Scenario("S5", "ack latency, 64 KiB batches at 50 % of S1's rate", 1, 1, 64 * KiB,
             kind="latency", duration_s=5.0, primary="latency_p99_us",
             contenders=ACKING_CONTENDERS,
             notes=("limit here is a minimal blocking recv_into + ack server (iperf3 has no "
                    "acks): the machine's floor",)),
)

# Every contender and code path once (S2: several receivers), at smoke-test sizes.
QUICK: tuple[Scenario, ...] = (
    replace(FULL[0], total_bytes=384 * MiB),
    replace(FULL[1], total_bytes=384 * MiB),
    replace(FULL[3], total_bytes=40_000 * 4 * KiB),
    replace(FULL[4], duration_s=1.5),
)


def select(ids: Sequence[str] | None, quick: bool) -> list[Scenario]:
    """The scenarios named (case-insensitive, in S1..S5 order), or all of the set."""
    pool = QUICK if quick else FULL
    if not ids:
        return list(pool)
    wanted = {i.upper() for i in ids}
    unknown = wanted - {s.id for s in FULL}
    if unknown:
        raise ValueError(f"unknown scenario {', '.join(sorted(unknown))}: pick from "
                         f"{', '.join(s.id for s in FULL)}")
    by_id = {s.id: s for s in pool}
    # A scenario outside the quick set still runs in quick mode, at a reduced size.
    out = []
    for s in FULL:
        if s.id in wanted:
            out.append(by_id.get(s.id) or _reduced(s))
    return out


def _reduced(s: Scenario) -> Scenario:
    if s.kind == "latency":
        return replace(s, duration_s=1.5)
    return replace(s, total_bytes=max(s.batch_bytes * s.publishers, s.total_bytes // 16))


@dataclass(frozen=True)
class CpuPlan:
    """Where receivers and publishers run. ``publishers`` None: left to the scheduler."""

    receivers: tuple[int, ...]
    publishers: tuple[int, ...] | None
    note: str

    def receiver_cpu(self, i: int) -> int:
        return self.receivers[i % len(self.receivers)]

    def publisher_cpu(self, i: int) -> int | None:
        return None if self.publishers is None else self.publishers[i % len(self.publishers)]

    def to_dict(self) -> dict[str, Any]:
        return {"receivers": list(self.receivers),
                "publishers": None if self.publishers is None else list(self.publishers),
                "note": self.note}


def plan_cpus(allowed: Sequence[int], receivers: int, publishers: int) -> CpuPlan:
    """Receivers on the first CPUs (as `shardbroker run` pins them); publishers on the CPUs
    left over when there are any, otherwise unpinned."""
    cpus = sorted(allowed)
    if not cpus:
        raise ValueError("no CPUs allowed")
    rx = tuple(cpus[i % len(cpus)] for i in range(receivers))
    rest = [c for c in cpus if c not in rx]
    if not rest:
        return CpuPlan(rx, None, f"receivers pinned to CPUs {list(rx)}; publishers unpinned "
                                 f"(no CPU left over on this {len(cpus)}-CPU machine)")
    pubs = tuple(rest[i % len(rest)] for i in range(publishers))
    share = "" if len(rest) >= publishers else " (sharing)"
    return CpuPlan(rx, pubs, f"receivers pinned to CPUs {list(rx)}; publishers to "
                             f"{sorted(set(pubs))}{share}")
