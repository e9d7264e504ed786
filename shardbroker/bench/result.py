"""One run of one contender in one scenario: raw counts in, the reported figures out."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from shardbroker.bench.stats import per

# The figures every run reports (None where a contender cannot measure one), in table order.
METRICS: tuple[str, ...] = (
    "gbps",
    "batches_per_s",
    "receiver_cpu_s_per_gb",
    "machine_cpu_s_per_gb",
    "recv_calls_per_batch",
    "wakeups_per_batch",
    "receiver_rss_mib",
    "sender_cpu_util",
    "offered_gbps",
    "latency_p50_us",
    "latency_p99_us",
    "latency_p999_us",
)


class RunFailed(Exception):
    """A run whose figures must not be used (bad data, a crash, a timeout)."""


@dataclass
class RunResult:
    contender: str
    scenario: str
    rep: int
    ok: bool = True
    error: str | None = None
    bytes: int = 0  # payload bytes that arrived (and, where checked, were verified)
    batches: int = 0
    seconds: float = 0.0
    receiver_cpu_s: float | None = None
    machine_cpu_s: float | None = None
    recv_calls: int | None = None  # receive syscalls (or io_uring enters) over the run
    wakeups: int | None = None  # receiver threads' voluntary context switches
    receiver_rss_mib: float | None = None
    sender_cpu_util: float | None = None  # busiest sender's CPU seconds per second
    offered_gbps: float | None = None  # latency runs: the paced rate asked for
    latency_us: dict[str, float] | None = None
    data_check: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def fail(self, reason: str) -> RunResult:
        self.ok = False
        self.error = reason
        return self

    def figures(self) -> dict[str, float | None]:
        gb = self.bytes / 1e9
        lat = self.latency_us or {}
        return {
            "gbps": per(gb, self.seconds),
            "batches_per_s": per(float(self.batches), self.seconds),
            "receiver_cpu_s_per_gb": per(self.receiver_cpu_s, gb),
            "machine_cpu_s_per_gb": per(self.machine_cpu_s, gb),
            "recv_calls_per_batch": per(None if self.recv_calls is None
                                        else float(self.recv_calls), float(self.batches)),
            "wakeups_per_batch": per(None if self.wakeups is None else float(self.wakeups),
                                     float(self.batches)),
            "receiver_rss_mib": self.receiver_rss_mib,
            "sender_cpu_util": self.sender_cpu_util,
            "offered_gbps": self.offered_gbps,
            "latency_p50_us": lat.get("p50_us"),
            "latency_p99_us": lat.get("p99_us"),
            "latency_p999_us": lat.get("p999_us"),
        }

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["figures"] = self.figures()
        return d
