"""``--plot``: grouped bars with min–max whiskers (matplotlib, an optional extra)."""

from __future__ import annotations

from typing import Any

from shardbroker.bench.contenders.base import EXTRA_HINT
from shardbroker.bench.report import display_name


def matplotlib_missing() -> str | None:
    """None when matplotlib can be imported, else the one-line reason and how to fix it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return f"--plot skipped: matplotlib is not installed ({EXTRA_HINT})"
    return None


ORDER = ("limit", "shardbroker-epoll", "shardbroker-uring", "pyzmq", "staging", "nats", "sink",
         "shardbroker-epoll@base", "shardbroker-uring@base")


def colour(name: str) -> str:
    """The same colour for a contender in every panel (tab10, in report order)."""
    i = ORDER.index(name) if name in ORDER else len(ORDER)  # tab10's last for any other
    return f"C{i}"


def _bars(ax: Any, groups: list[dict[str, Any]], metric: str, scale: float = 1.0) -> None:
    names: list[str] = []
    for s in groups:
        for e in s["contenders"]:
            if e["summary"].get(metric) and e["name"] not in names:
                names.append(e["name"])
    width = 0.8 / max(1, len(names))
    for j, name in enumerate(names):
        xs, ys, lo, hi = [], [], [], []
        for i, s in enumerate(groups):
            e = next((c for c in s["contenders"] if c["name"] == name), None)
            sp = None if e is None else e["summary"].get(metric)
            if sp is None:
                continue
            xs.append(i - 0.4 + width * (j + 0.5))
            ys.append(sp["median"] * scale)
            lo.append((sp["median"] - sp["min"]) * scale)
            hi.append((sp["max"] - sp["median"]) * scale)
        ax.bar(xs, ys, width, label=display_name(name), yerr=[lo, hi], capsize=3,
               color=colour(name))
    ax.set_xticks(range(len(groups)), [s["id"] for s in groups])
    ax.legend(fontsize=7)


def write_plot(doc: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gb = [s for s in doc["scenarios"] if s["kind"] == "throughput" and s["primary"] == "gbps"]
    bps = [s for s in doc["scenarios"] if s["primary"] == "batches_per_s"]
    lat = [s for s in doc["scenarios"] if s["kind"] == "latency"]
    panels = [p for p in (gb, bps, lat) if p]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.5 * max(1, len(panels)), 4),
                             squeeze=False)
    for ax, group in zip(axes[0], panels, strict=False):
        if group is gb:
            _bars(ax, group, "gbps")
            ax.set_ylabel("GB/s (10^9 B/s)")
            ax.set_title("throughput")
        elif group is bps:
            _bars(ax, group, "batches_per_s", 1e-3)
            ax.set_ylabel("thousand batches/s")
            ax.set_title("small batches")
        else:
            _bars(ax, group, "latency_p99_us")
            ax.set_ylabel("publish-to-ack p99 (us)")
            ax.set_title("ack latency")
    m = doc["machine"]
    fig.suptitle(f"shardbroker bench {doc['date']}: {m.get('cpus_online')} vCPU "
                 f"{m.get('cpu_model')}, medians, whiskers min–max", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
