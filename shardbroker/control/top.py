"""``shardbroker stats`` and ``top``: per-shard and total receive figures as a terminal table.

The default layout fits an 80-column terminal: short headers, the units in a legend under the
table, and totals since start beside the rates of the last metrics interval (rates read 0 once
the publishers stop; totals do not). ``wide`` adds the columns an operator needs less often.
Every cell is formatted to a bounded width (at most 6 characters), so large numbers can never
make rich shrink a column and cut a cell to ``…``.

The input is the supervisor's ``stats`` reply (``control.metrics.MetricsAggregator.report``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

# Up to Y and Yi: a total over many shards can pass what one u64 counter holds.
_DECIMAL = ("", "k", "M", "G", "T", "P", "E", "Z", "Y")
_BINARY = ("", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi")

Row = dict[str, Any]  # one shard's figures, or the total's


def _scaled(v: float, step: float, suffixes: tuple[str, ...]) -> str:
    """Three significant digits and a suffix: 1234 -> '1.23k', 0.0352 -> '0.035', 2048 ->
    '2Ki' (step 1024); at most 6 characters below 10^27."""
    i = 0
    # 999.5 would round to "1000": move up a unit instead (1023.5 for binary, "1023Ki").
    while abs(v) >= step - 0.5 and i < len(suffixes) - 1:
        v /= step
        i += 1
    if v == int(v):
        return f"{int(v)}{suffixes[i]}"
    digits = 3 if abs(v) < 0.9995 else 2 if abs(v) < 9.995 else 1 if abs(v) < 99.95 else 0
    return f"{v:.{digits}f}{suffixes[i]}"


def count(v: float | None) -> str:
    """Counts and byte totals in decimal units (k = 10^3 ... T = 10^12)."""
    return "-" if v is None else _scaled(float(v), 1000, _DECIMAL)


def ibytes(v: float | None) -> str:
    """Buffer and memory sizes in binary units (Ki = 2^10 ...), as the kernel sizes them."""
    return "-" if not v else _scaled(float(v), 1024, _BINARY)


def gbps(bytes_per_s: float) -> str:
    return _scaled(bytes_per_s / 1e9, 1000, _DECIMAL) if bytes_per_s else "0"


def ratio(v: float | None) -> str:
    return "-" if v is None else _scaled(float(v), 1000, _DECIMAL)


def millis(us: float | None) -> str:
    return "-" if not us else _scaled(us / 1000, 1000, _DECIMAL)


def _cpu_pct(r: Row) -> str:
    return count(round((r["rates"]["cpu_user_s"] + r["rates"]["cpu_sys_s"]) * 100))


def _latency(r: Row, which: str) -> float | None:
    """A shard's own percentile; the total row has none, so it shows the worst shard's."""
    lat = r.get("commit_latency_us")
    if lat is not None:
        return float(lat.get(which, 0)) or None
    worst = r.get("_worst_latency_us", {}).get(which)
    return float(worst) if worst else None


def _rcvbuf(r: Row) -> str:
    lo, hi = r.get("rcvbuf_min", 0), r.get("rcvbuf_max", 0)
    return ibytes(lo) if lo == hi else f"{ibytes(lo)}-{ibytes(hi)}"


@dataclass(frozen=True)
class Column:
    header: str
    cell: Callable[[Row], str]
    wide_only: bool = False


COLUMNS = (
    Column("shard", lambda r: str(r["_label"])),
    Column("pid", lambda r: str(r.get("pid") or "-"), wide_only=True),
    Column("conn", lambda r: count(r["connections_open"])),
    Column("bytes", lambda r: count(r["bytes"])),
    Column("GB/s", lambda r: gbps(r["rates"]["bytes"])),
    Column("batches", lambda r: count(r["batches"])),
    Column("bat/s", lambda r: count(r["rates"]["batches"])),
    Column("msgs", lambda r: count(r["messages"]), wide_only=True),
    Column("msg/s", lambda r: count(r["rates"]["messages"]), wide_only=True),
    Column("recv/b", lambda r: ratio(r["recv_calls_per_batch"])),
    Column("wake/b", lambda r: ratio(r["wakeups_per_batch"]), wide_only=True),
    Column("EAGAIN", lambda r: count(r["eagain"])),
    Column("p50", lambda r: millis(_latency(r, "p50"))),
    Column("p99", lambda r: millis(_latency(r, "p99"))),
    Column("CPU%", _cpu_pct),
    Column("rcvbuf", _rcvbuf, wide_only=True),
    Column("RSS", lambda r: ibytes(r["rss_bytes"]), wide_only=True),
    Column("rej", lambda r: count(r.get("rejected_total", sum(r["rejected"].values()))),
           wide_only=True),
    Column("held", lambda r: count(round(r.get("backpressured_s", 0), 1)), wide_only=True),
    Column("parked", lambda r: count(r.get("parked_connections", 0)), wide_only=True),
)

LEGEND = (
    "bytes, batches, EAGAIN: totals since start; GB/s, bat/s, CPU%: last interval",
    "k M G T P = 10^3 ... 10^15; Ki Mi Gi = 2^10 2^20 2^30; CPU%: of one core",
    "recv/b: recv calls per batch; p50/p99: commit latency in ms (total: worst shard)",
)
WIDE_LEGEND = (
    "wake/b: wakeups per batch; rcvbuf: effective SO_RCVBUF, smallest-largest connection",
    "rej: connections rejected; held: seconds consumers held publishers back (block)",
)


def _rows(report: dict[str, Any]) -> list[Row]:
    shards = [dict(f, _label=s) for s, f in report["shards"].items()]
    worst = {k: max((f.get("commit_latency_us", {}).get(k, 0) for f in shards), default=0)
             for k in ("p50", "p99")}
    total = dict(report["total"], _label="total", _worst_latency_us=worst)
    return [*shards, total]


def _table(rows: list[Row], wide: bool, title: str) -> Table:
    cols = [c for c in COLUMNS if wide or not c.wide_only]
    # No vertical rules and one space of padding left of each cell: two characters between
    # columns, so the narrow set is at most 79 characters wide (cells of at most 6).
    t = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 0, 0, 1),
              pad_edge=False, header_style="bold")
    for c in cols:
        t.add_column(c.header, justify="right", no_wrap=True)
    for r in rows:
        t.add_row(*(c.cell(r) for c in cols), style="bold" if r["_label"] == "total" else None)
    return t


def _hist_line(total: Row) -> str:
    hist = total.get("recv_calls_hist") or {}
    cells = " ".join(f"{k}:{count(v)}" for k, v in hist.items())
    return f"recv/b histogram: {cells}"  # at most 77 characters


def _detail_lines(total: Row) -> list[str]:
    """What the README promises in ``stats`` that has no column in the narrow table."""
    rejected = total.get("rejected") or {}
    lines = [
        _hist_line(total),
        f"wakeups per batch {ratio(total.get('wakeups_per_batch'))}; effective SO_RCVBUF "
        f"{_rcvbuf(total)} (the kernel's value)",
        f"messages {count(total.get('messages'))}; receivers' RSS "
        f"{ibytes(total.get('rss_bytes'))}",
        "rejected: " + (", ".join(f"{k} {count(v)}" for k, v in sorted(rejected.items()))
                        or "none"),
    ]
    if total.get("backpressured_s") or total.get("parked_connections"):
        lines.append(f"held back by consumers {total.get('backpressured_s', 0):.1f} s, "
                     f"{total.get('parked_connections', 0)} connections parked now")
    return lines


def render(report: dict[str, Any], status: dict[str, Any] | None = None,
           wide: bool = False) -> Group:
    title = "shardbroker receivers" + (
        f" on {status['listen']}, segment {status['segment']}" if status else "")
    rows = _rows(report)
    lines = [*_detail_lines(rows[-1]), *LEGEND, *(WIDE_LEGEND if wide else ())]
    return Group(_table(rows, wide, title), *(Text(ln, overflow="fold") for ln in lines))


def run_top(fetch: Callable[[], dict[str, Any]], interval_s: float = 1.0,
            iterations: int | None = None, wide: bool = False,
            console: Console | None = None) -> None:
    """Refresh until Ctrl-C (or ``iterations`` refreshes)."""
    with Live(render(fetch(), wide=wide), console=console, refresh_per_second=4,
              screen=False) as live:
        n = 0
        while iterations is None or n < iterations:
            time.sleep(interval_s)
            live.update(render(fetch(), wide=wide))
            n += 1
