"""Control envelope, endpoint rules and metrics aggregation (pure)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from rich.table import Table

from shardbroker.control import endpoints, envelope
from shardbroker.control.metrics import MetricsAggregator
from shardbroker.control.top import render
from shardbroker.errors import ConfigError
from shardbroker.receiver.committer import hist_bucket
from shardbroker.receiver.receiver import percentile


def test_envelope_round_trip() -> None:
    cmd, args = envelope.parse_request(envelope.request("scale", threads=3))
    assert (cmd, args) == ("scale", {"threads": 3})
    assert envelope.parse_reply(envelope.reply_ok({"a": 1}))["result"] == {"a": 1}
    assert envelope.parse_reply(envelope.reply_error("no"))["ok"] is False


@pytest.mark.parametrize("raw, text", [
    (b"not json", "not JSON"),
    (json.dumps({"v": 2, "cmd": "status"}).encode(), "version"),
    (json.dumps({"v": 1, "cmd": "reboot"}).encode(), "unknown command"),
    (json.dumps({"v": 1, "cmd": "stats", "args": [1]}).encode(), "args"),
])
def test_envelope_rejects(raw: bytes, text: str) -> None:
    with pytest.raises(envelope.EnvelopeError, match=text):
        envelope.parse_request(raw)


@pytest.mark.parametrize("endpoint, curve, ok", [
    ("ipc:///tmp/x.sock", False, True),
    ("tcp://127.0.0.1:5555", False, True),
    ("tcp://[::1]:5555", False, True),
    ("tcp://0.0.0.0:5555", False, False),
    ("tcp://10.1.2.3:5555", False, False),
    ("tcp://10.1.2.3:5555", True, True),
])
def test_tcp_control_needs_loopback_or_curve(endpoint: str, curve: bool, ok: bool) -> None:
    if ok:
        endpoints.check_tcp_bind(endpoint, curve)
    else:
        with pytest.raises(ConfigError, match="CURVE"):
            endpoints.check_tcp_bind(endpoint, curve)


def test_runtime_dir_is_private(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(endpoints.ENV_RUNTIME, str(tmp_path / "rt"))
    d = endpoints.broker_dir("seg")
    assert (d.stat().st_mode & 0o777) == 0o700
    assert ((tmp_path / "rt").stat().st_mode & 0o777) == 0o700
    endpoints.write_default_endpoint("ipc://x")
    assert endpoints.resolve_client_endpoint(None) == "ipc://x"
    monkeypatch.setenv(endpoints.ENV_CONTROL, "ipc://y")
    assert endpoints.resolve_client_endpoint(None) == "ipc://y"
    assert endpoints.resolve_client_endpoint("tcp://127.0.0.1:1") == "tcp://127.0.0.1:1"


def _snap(shard: int, pid: int, t: float, batches: int, recv: int, **kw: Any) -> dict[str, Any]:
    s = {"shard": shard, "pid": pid, "time": t, "bytes": batches * 100, "batches": batches,
         "messages": batches * 2, "recv_calls": recv, "wakeups": batches,
         "recv_calls_hist": {"1": batches, "2": 0, "4": 0, "8": 0, "16": 0, "32": 0, ">32": 0},
         "rejected": {}, "connections_open": 1, "rcvbuf_min": 10, "rcvbuf_max": 20,
         "cpu_user_s": 0.5, "cpu_sys_s": 0.5, "rss_bytes": 1000}
    s.update(kw)
    return s


def test_aggregator_totals_rates_and_restarts() -> None:
    agg = MetricsAggregator()
    agg.update(_snap(0, 100, 1.0, 10, 30))
    agg.update(_snap(0, 100, 2.0, 30, 90))
    agg.update(_snap(1, 101, 2.0, 5, 5, rejected={"batch.total_size_zero": 1}))
    rep = agg.report()
    assert rep["shards"]["0"]["rates"]["batches"] == 20.0
    assert rep["shards"]["0"]["recv_calls_per_batch"] == 3.0
    t = rep["total"]
    assert t["batches"] == 35 and t["recv_calls"] == 95
    assert t["recv_calls_per_batch"] == round(95 / 35, 3)
    assert t["rejected"] == {"batch.total_size_zero": 1} and t["rejected_total"] == 1
    assert t["recv_calls_hist"]["1"] == 35
    # shard 0's receiver restarts: its counters start at zero again, totals keep counting
    agg.update(_snap(0, 200, 3.0, 4, 8))
    assert agg.report()["shards"]["0"]["batches"] == 34
    assert agg.report()["total"]["batches"] == 39


def test_histogram_buckets_and_percentiles() -> None:
    assert [hist_bucket(n) for n in (1, 2, 3, 4, 5, 8, 9, 16, 17, 32, 33, 1000)] == \
        [0, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]
    assert percentile(list(range(100)), 0.5) == 50
    assert percentile(list(range(100)), 0.99) == 99
    assert percentile([], 0.5) == 0


def test_top_renders_every_shard_and_total() -> None:
    agg = MetricsAggregator()
    agg.update(_snap(0, 100, 1.0, 10, 30))
    agg.update(_snap(1, 101, 1.0, 10, 20))
    table = render(agg.report()).renderables[0]
    assert isinstance(table, Table)
    assert table.row_count == 3
    assert [c.header for c in table.columns][:2] == ["shard", "conn"]


def test_grafana_dashboard_plots_exported_series() -> None:
    from pathlib import Path

    from shardbroker.control.prometheus import SERIES

    dash = json.loads((Path(__file__).parents[2] / "conf/grafana/shardbroker-dashboard.json")
                      .read_text())
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    names = {name.removesuffix("_total") for name, *_ in SERIES} | {n for n, *_ in SERIES}
    used = {w for w in exprs.replace("(", " ").replace(")", " ").replace("[", " ").split()
            if w.startswith("shardbroker_")}
    assert used <= names, used - names  # every plotted series is one we export
    for needed in ("received_bytes", "recv_calls_per_batch", "cpu_user_seconds"):
        assert needed in exprs
