"""``shardbroker top``: a live terminal view of every receiver (rich)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.live import Live
from rich.table import Table


def _gb(v: float) -> str:
    return f"{v / 1e9:.2f}"


def render(report: dict[str, Any], status: dict[str, Any] | None = None) -> Table:
    t = Table(title="shardbroker receivers" + (
        f" — {status['listen']} segment {status['segment']}" if status else ""))
    for col in ("shard", "pid", "conns", "GB/s", "batches/s", "recv/batch", "wakeups/batch",
                "CPU %", "RSS MiB", "p99 commit µs", "rejected", "held s"):
        t.add_column(col, justify="right")
    rows = list(report["shards"].items()) + [("total", report["total"])]
    for shard, f in rows:
        r = f["rates"]
        cpu = (r["cpu_user_s"] + r["cpu_sys_s"]) * 100
        p99 = (f.get("commit_latency_us") or {}).get("p99", f.get("commit_latency_us_p99_max"))
        rej = f.get("rejected_total", sum((f.get("rejected") or {}).values()))
        t.add_row(str(shard), str(f.get("pid", "") or ""), str(f["connections_open"]),
                  _gb(r["bytes"]), f"{r['batches']:.0f}", str(f["recv_calls_per_batch"]),
                  str(f["wakeups_per_batch"]), f"{cpu:.0f}", f"{f['rss_bytes'] / 2**20:.0f}",
                  f"{p99:.0f}" if isinstance(p99, (int, float)) else "-", str(rej),
                  f"{f.get('backpressured_s', 0):.1f}"
                  + (f" ({f['parked_connections']} parked)"
                     if f.get("parked_connections") else ""),
                  style="bold" if shard == "total" else None)
    return t


def run_top(fetch: Callable[[], dict[str, Any]], interval_s: float = 1.0,
            iterations: int | None = None) -> None:
    """Refresh until Ctrl-C (or ``iterations`` refreshes)."""
    with Live(render(fetch()), refresh_per_second=4, screen=False) as live:
        n = 0
        while iterations is None or n < iterations:
            time.sleep(interval_s)
            live.update(render(fetch()))
            n += 1
