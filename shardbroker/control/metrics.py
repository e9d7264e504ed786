"""Per-shard and total figures from receiver snapshots, with rates between snapshots.

Receivers send a full snapshot of their (cumulative) counters every interval. A restarted
receiver starts counting from zero: the last snapshot of the previous process is folded into
a per-shard base, so totals stay cumulative across restarts. Pure: no sockets, time passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

COUNTERS = (
    "bytes", "batches", "messages", "recv_calls", "payload_recv_calls", "eagain", "wakeups",
    "lowat_sets", "acks_sent", "connections_total", "disconnects_mid_batch",
    "lapped_in_flight", "duplicates_skipped", "moved_in", "moved_out", "cpu_user_s",
    "cpu_sys_s", "backpressured_s", "parks", "retention_checks",
    "uring_enters", "uring_completions",
)
RATES = ("bytes", "batches", "messages", "recv_calls", "wakeups", "cpu_user_s", "cpu_sys_s")
HIST_KEYS = ("1", "2", "4", "8", "16", "32", "64+")


@dataclass
class ShardFigures:
    base: dict[str, float] = field(default_factory=dict)  # counters of earlier processes
    base_hist: dict[str, int] = field(default_factory=dict)
    base_rejected: dict[str, int] = field(default_factory=dict)
    last: dict[str, Any] | None = None
    prev: dict[str, Any] | None = None  # the snapshot before ``last`` (same pid), for rates

    def update(self, snap: dict[str, Any]) -> None:
        if self.last is not None and self.last.get("pid") != snap.get("pid"):
            for k in COUNTERS:
                self.base[k] = self.base.get(k, 0) + self.last.get(k, 0)
            for k, v in self.last.get("recv_calls_hist", {}).items():
                self.base_hist[k] = self.base_hist.get(k, 0) + v
            for k, v in self.last.get("rejected", {}).items():
                self.base_rejected[k] = self.base_rejected.get(k, 0) + v
            self.prev = None
        else:
            self.prev = self.last
        self.last = snap

    def figures(self) -> dict[str, Any]:
        s = self.last or {}
        out: dict[str, Any] = {k: self.base.get(k, 0) + s.get(k, 0) for k in COUNTERS}
        hist = {k: self.base_hist.get(k, 0) + s.get("recv_calls_hist", {}).get(k, 0)
                for k in HIST_KEYS}
        rejected = dict(self.base_rejected)
        for k, v in s.get("rejected", {}).items():
            rejected[k] = rejected.get(k, 0) + v
        out.update(
            recv_calls_hist=hist, rejected=rejected,
            recv_calls_per_batch=_ratio(out["recv_calls"], out["batches"]),
            wakeups_per_batch=_ratio(out["wakeups"], out["batches"]),
            connections_open=s.get("connections_open", 0),
            parked_connections=s.get("parked_connections", 0),
            rcvbuf_min=s.get("rcvbuf_min", 0), rcvbuf_max=s.get("rcvbuf_max", 0),
            commit_latency_us=s.get("commit_latency_us", {}),
            segment_fill=s.get("segment_fill", {}), rss_bytes=s.get("rss_bytes", 0),
            backend=s.get("backend"), pid=s.get("pid"), updated=s.get("time"),
            socket_options=s.get("socket_options", {}),
            rates=self.rates(),
        )
        return out

    def rates(self) -> dict[str, float]:
        a, b = self.prev, self.last
        if not a or not b or b["time"] <= a["time"]:
            return {k: 0.0 for k in RATES}
        dt = b["time"] - a["time"]
        return {k: (b.get(k, 0) - a.get(k, 0)) / dt for k in RATES}


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


class MetricsAggregator:
    def __init__(self) -> None:
        self.shards: dict[int, ShardFigures] = {}
        self.snapshots = 0

    def update(self, snap: dict[str, Any]) -> None:
        self.snapshots += 1
        self.shards.setdefault(int(snap["shard"]), ShardFigures()).update(snap)

    def report(self, active_shards: list[int] | None = None) -> dict[str, Any]:
        shards = {str(s): f.figures() for s, f in sorted(self.shards.items())}
        total: dict[str, Any] = {k: sum(f[k] for f in shards.values()) for k in COUNTERS}
        total["recv_calls_hist"] = {k: sum(f["recv_calls_hist"][k] for f in shards.values())
                                    for k in HIST_KEYS}
        rejected: dict[str, int] = {}
        for f in shards.values():
            for k, v in f["rejected"].items():
                rejected[k] = rejected.get(k, 0) + v
        rcv = [f for f in shards.values() if f["rcvbuf_max"]]
        total.update(
            rejected=rejected,
            rejected_total=sum(rejected.values()),
            recv_calls_per_batch=_ratio(total["recv_calls"], total["batches"]),
            wakeups_per_batch=_ratio(total["wakeups"], total["batches"]),
            uring_enters_per_batch=_ratio(total["uring_enters"], total["batches"]),
            uring_completions_per_batch=_ratio(total["uring_completions"], total["batches"]),
            connections_open=sum(f["connections_open"] for f in shards.values()),
            parked_connections=sum(f["parked_connections"] for f in shards.values()),
            rcvbuf_min=min((f["rcvbuf_min"] for f in rcv), default=0),
            rcvbuf_max=max((f["rcvbuf_max"] for f in rcv), default=0),
            commit_latency_us_p99_max=max(
                (f["commit_latency_us"].get("p99", 0) for f in shards.values()), default=0),
            rss_bytes=sum(f["rss_bytes"] for f in shards.values()),
            rates={k: sum(f["rates"][k] for f in shards.values()) for k in RATES},
            receivers=len(active_shards) if active_shards is not None else len(shards),
        )
        return {"total": total, "shards": shards}
