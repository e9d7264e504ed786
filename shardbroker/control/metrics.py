"""Per-shard and total figures from receiver snapshots, with rates between snapshots.

Receivers send a full snapshot of their (cumulative) counters every interval. A restarted
receiver starts counting from zero: the last snapshot of the previous process is folded into
a per-shard base, so totals stay cumulative across restarts. Pure: no sockets, time passed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from shardbroker import counters
from shardbroker.counters import CounterDef
from shardbroker.receiver.committer import HIST_LABELS

# Names from the one counter table (shardbroker/counters.py); the aggregator itself reads the
# table it was given, so an entry added there shows up here without an edit.
COUNTERS = counters.cumulative_names()  # start from zero in a restarted receiver
RATES = counters.rate_names()
HIST_KEYS = HIST_LABELS  # recv calls per batch: <=1, <=2, ..., <=32, >32


@dataclass
class ShardFigures:
    table: Sequence[CounterDef] = field(default_factory=lambda: counters.TABLE)
    base: dict[str, float] = field(default_factory=dict)  # counters of earlier processes
    base_hist: dict[str, int] = field(default_factory=dict)
    base_rejected: dict[str, int] = field(default_factory=dict)
    last: dict[str, Any] | None = None
    prev: dict[str, Any] | None = None  # the snapshot before ``last`` (same pid), for rates

    def update(self, snap: dict[str, Any]) -> None:
        if self.last is not None and self.last.get("pid") != snap.get("pid"):
            for k in counters.cumulative_names(self.table):
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
        # counters add up over this shard's processes; gauges are the latest process's
        out: dict[str, Any] = {
            d.name: self.base.get(d.name, 0) + s.get(d.name, 0) if d.kind == "counter"
            else s.get(d.name, 0)
            for d in counters.snapshot_defs(self.table)}
        hist = {k: self.base_hist.get(k, 0) + s.get("recv_calls_hist", {}).get(k, 0)
                for k in HIST_KEYS}
        rejected = dict(self.base_rejected)
        for k, v in s.get("rejected", {}).items():
            rejected[k] = rejected.get(k, 0) + v
        out.update(_ratios(out))
        out.update(
            recv_calls_hist=hist, rejected=rejected,
            commit_latency_us=s.get("commit_latency_us", {}),
            segment_fill=s.get("segment_fill", {}),
            backend=s.get("backend"), pid=s.get("pid"), updated=s.get("time"),
            socket_options=s.get("socket_options", {}),
            rates=self.rates(),
        )
        return out

    def rates(self) -> dict[str, float]:
        names = counters.rate_names(self.table)
        a, b = self.prev, self.last
        if not a or not b or b["time"] <= a["time"]:
            return {k: 0.0 for k in names}
        dt = b["time"] - a["time"]
        return {k: (b.get(k, 0) - a.get(k, 0)) / dt for k in names}


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def _ratios(fig: dict[str, Any]) -> dict[str, float | None]:
    return {r.name: _ratio(fig[r.numerator], fig[r.denominator]) for r in counters.RATIOS}


def _combine(d: CounterDef, values: list[float]) -> float:
    """One figure over all shards: counters add up, gauges as the table says (min and max
    skip zeros: a shard that measured nothing yet, e.g. SO_RCVBUF without connections)."""
    if d.total == "sum":
        return sum(values)
    measured = [v for v in values if v]
    return (min if d.total == "min" else max)(measured, default=0)


class MetricsAggregator:
    def __init__(self, table: Sequence[CounterDef] | None = None) -> None:
        self.table = counters.TABLE if table is None else table
        self.shards: dict[int, ShardFigures] = {}
        self.snapshots = 0

    def update(self, snap: dict[str, Any]) -> None:
        self.snapshots += 1
        self.shards.setdefault(int(snap["shard"]), ShardFigures(self.table)).update(snap)

    def report(self, active_shards: list[int] | None = None) -> dict[str, Any]:
        shards = {str(s): f.figures() for s, f in sorted(self.shards.items())}
        total: dict[str, Any] = {
            d.name: _combine(d, [f[d.name] for f in shards.values()])
            for d in counters.snapshot_defs(self.table)}
        total["recv_calls_hist"] = {k: sum(f["recv_calls_hist"][k] for f in shards.values())
                                    for k in HIST_KEYS}
        rejected: dict[str, int] = {}
        for f in shards.values():
            for k, v in f["rejected"].items():
                rejected[k] = rejected.get(k, 0) + v
        total.update(_ratios(total))
        total.update(
            rejected=rejected,
            rejected_total=sum(rejected.values()),
            commit_latency_us_p99_max=max(
                (f["commit_latency_us"].get("p99", 0) for f in shards.values()), default=0),
            rates={k: sum(f["rates"][k] for f in shards.values())
                   for k in counters.rate_names(self.table)},
            receivers=len(active_shards) if active_shards is not None else len(shards),
        )
        return {"total": total, "shards": shards}
