"""Optional HTTP /metrics endpoint (prometheus_client) fed from the supervisor's aggregator."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from shardbroker.config import parse_hostport

# (metric name, help, kind, key in the shard figures)
SERIES = (
    ("shardbroker_received_bytes_total", "Payload bytes committed", "counter", "bytes"),
    ("shardbroker_batches_total", "Batches committed", "counter", "batches"),
    ("shardbroker_messages_total", "Messages committed", "counter", "messages"),
    ("shardbroker_recv_calls_total", "recv_into calls", "counter", "recv_calls"),
    ("shardbroker_epoll_wakeups_total", "epoll_wait returns with events", "counter", "wakeups"),
    ("shardbroker_eagain_total", "recv calls that returned EAGAIN", "counter", "eagain"),
    ("shardbroker_cpu_user_seconds_total", "Receiver user CPU", "counter", "cpu_user_s"),
    ("shardbroker_cpu_system_seconds_total", "Receiver system CPU", "counter", "cpu_sys_s"),
    ("shardbroker_connections_open", "Open publisher connections", "gauge", "connections_open"),
    ("shardbroker_recv_calls_per_batch", "Mean recv calls per batch", "gauge",
     "recv_calls_per_batch"),
    ("shardbroker_rcvbuf_max_bytes", "Largest effective SO_RCVBUF", "gauge", "rcvbuf_max"),
    ("shardbroker_rss_bytes", "Receiver resident memory", "gauge", "rss_bytes"),
    ("shardbroker_backpressured_seconds_total",
     "Time publishers were held back for consumers (retention block)", "counter",
     "backpressured_s"),
    ("shardbroker_parked_connections", "Connections waiting for a consumer to make room",
     "gauge", "parked_connections"),
)


class _Collector:
    def __init__(self, report: Callable[[], dict[str, Any]]) -> None:
        self.report = report

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        shards = self.report()["shards"]
        for name, help_, kind, key in SERIES:
            fam: Any
            if kind == "counter":
                fam = CounterMetricFamily(name.removesuffix("_total"), help_, labels=["shard"])
            else:
                fam = GaugeMetricFamily(name, help_, labels=["shard"])
            for shard, fig in shards.items():
                value = fig.get(key)
                if value is not None:
                    fam.add_metric([shard], float(value))
            yield fam
        hist = GaugeMetricFamily("shardbroker_recv_calls_per_batch_bucket",
                                 "Batches by recv calls needed (le bucket, not cumulative)",
                                 labels=["shard", "le"])
        for shard, fig in shards.items():
            for le, count in fig["recv_calls_hist"].items():
                hist.add_metric([shard, le], float(count))
        yield hist


def serve_metrics(address: str, report: Callable[[], dict[str, Any]]) -> None:
    """Start the /metrics HTTP server in a daemon thread."""
    from prometheus_client import start_http_server
    from prometheus_client.core import CollectorRegistry

    host, port = parse_hostport(address, "metrics.prometheus")
    registry = CollectorRegistry()
    registry.register(_Collector(report))
    start_http_server(port, addr=host, registry=registry)
