"""Optional HTTP /metrics endpoint (prometheus_client) fed from the supervisor's aggregator."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from shardbroker import counters
from shardbroker.config import parse_hostport
from shardbroker.control.metrics import HIST_KEYS
from shardbroker.counters import CounterDef

Series = tuple[str, str, str, str]  # (metric name, help, "counter" | "gauge", figure key)


def series(table: Sequence[CounterDef] | None = None) -> tuple[Series, ...]:
    """One series per entry of the counter table (shardbroker/counters.py) and per exported
    ratio, labelled by shard. The names are what dashboards query: never rename one."""
    return (
        *((d.prometheus, d.help, d.kind, d.name) for d in counters.snapshot_defs(table)
          if d.prometheus is not None),
        *((r.prometheus, r.help, "gauge", r.name) for r in counters.RATIOS
          if r.prometheus is not None),
    )


# Batches by the recv calls they needed. ``_count`` is the batches counted; ``_sum`` is the
# shard's recv_calls counter (the committer keeps buckets, not exact per-batch counts), so
# _sum / _count is the shardbroker_recv_calls_per_batch ratio.
HISTOGRAM = "shardbroker_batch_recv_calls"
HISTOGRAM_HELP = "Batches by the recv calls needed to receive them"

SERIES = series()  # for the default table (the Grafana dashboard test reads it)


class _Collector:
    def __init__(self, report: Callable[[], dict[str, Any]],
                 table: Sequence[CounterDef] | None = None) -> None:
        self.report = report
        self.series = series(table)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        shards = self.report()["shards"]
        for name, help_, kind, key in self.series:
            fam: Any
            if kind == "counter":
                # prometheus_client adds the _total suffix itself
                fam = CounterMetricFamily(name.removesuffix("_total"), help_, labels=["shard"])
            else:
                fam = GaugeMetricFamily(name, help_, labels=["shard"])
            for shard, fig in shards.items():
                value = fig.get(key)
                if value is not None:  # a ratio over zero batches
                    fam.add_metric([shard], float(value))
            yield fam
        hist = HistogramMetricFamily(HISTOGRAM, HISTOGRAM_HELP, labels=["shard"])
        for shard, fig in shards.items():
            hist.add_metric([shard], histogram_buckets(fig["recv_calls_hist"]),
                            sum_value=float(fig.get("recv_calls", 0)))
        yield hist


def histogram_buckets(counts: dict[str, int]) -> list[tuple[str, float]]:
    """The committer's per-bucket batch counts (labels "1", "2", ..., "32", ">32") as
    Prometheus buckets: cumulative, each labelled with its upper bound, ">32" as "+Inf"."""
    buckets, total = [], 0
    for label in HIST_KEYS:
        total += counts.get(label, 0)
        buckets.append(("+Inf" if label.startswith(">") else label, float(total)))
    return buckets


def serve_metrics(address: str, report: Callable[[], dict[str, Any]]) -> None:
    """Start the /metrics HTTP server in a daemon thread."""
    from prometheus_client import start_http_server
    from prometheus_client.core import CollectorRegistry

    host, port = parse_hostport(address, "metrics.prometheus")
    registry = CollectorRegistry()
    registry.register(_Collector(report))
    start_http_server(port, addr=host, registry=registry)
