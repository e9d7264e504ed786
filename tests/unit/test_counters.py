"""The one counter table (shardbroker/counters.py) and everything generated from it: the shard
header's statistics, a real Receiver's stats tuple and snapshot, the aggregator's figures and
the Prometheus series. A counter added to the table must show up in all of them."""

from __future__ import annotations

import json
import os
import re
import runpy
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shardbroker import counters
from shardbroker.config import Config
from shardbroker.control import prometheus
from shardbroker.control.metrics import COUNTERS, HIST_KEYS, RATES, MetricsAggregator
from shardbroker.control.top import _hist_line
from shardbroker.counters import TABLE, CounterDef, RatioDef
from shardbroker.receiver.backend import Backend
from shardbroker.receiver.committer import HIST_LABELS
from shardbroker.receiver.receiver import Receiver
from shardbroker.segment import layout, shm
from shardbroker.segment.writer import ShardWriter

# Every series exported before the table existed: dashboards and alerts query these names.
LEGACY_SERIES = {
    "shardbroker_received_bytes_total", "shardbroker_batches_total",
    "shardbroker_messages_total", "shardbroker_recv_calls_total",
    "shardbroker_epoll_wakeups_total", "shardbroker_eagain_total",
    "shardbroker_cpu_user_seconds_total", "shardbroker_cpu_system_seconds_total",
    "shardbroker_connections_open", "shardbroker_recv_calls_per_batch",
    "shardbroker_rcvbuf_max_bytes", "shardbroker_rss_bytes",
    "shardbroker_backpressured_seconds_total", "shardbroker_parked_connections",
}
# Every figure a receiver snapshot carried before the table existed, besides identity
# (shard, pid, backend, backend_fallback, time) and the structured ones.
LEGACY_SNAPSHOT_FIGURES = {
    "bytes", "batches", "messages", "committed_batches", "committed_bytes",
    "connections_open", "connections_total", "recv_calls", "payload_recv_calls", "eagain",
    "wakeups", "lowat_sets", "uring_enters", "uring_completions", "acks_sent", "rcvbuf_min",
    "rcvbuf_max", "disconnects_mid_batch", "lapped_in_flight", "duplicates_skipped",
    "backpressured_s", "parked_connections", "parks", "retention_checks", "cpu_user_s",
    "cpu_sys_s", "rss_bytes", "moved_in", "moved_out",
}
STRUCTURED = ("recv_calls_hist", "commit_latency_us", "rejected", "segment_fill",
              "socket_options")


# --------------------------------------------------------------------------- a real Receiver


@dataclass
class _Backend:
    """Only what a Receiver that is never run asks of its driver."""

    name: str = "fake"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    name = f"shardbroker-test-counters-{os.getpid()}-{os.urandom(3).hex()}"
    m = shm.create(name, layout.Geometry(1, 16, 1 << 20), broker_id=1)
    try:
        w = ShardWriter(m, 0, broker_id=1)
        # Never run: no socket is opened, the control channel is never touched.
        yield Receiver(Config(), w, cast(socket.socket, None), None,
                       cast(Backend, _Backend()))
    finally:
        m.close()
        shm.unlink(name)


def _set_path(root: object, path: str, value: int) -> None:
    *parents, attr = path.split(".")
    for p in parents:
        root = getattr(root, p)
    setattr(root, attr, value)


def _distinct_values(rx: Receiver, table: tuple[CounterDef, ...]) -> dict[str, int]:
    """Give every counter with a source its own value, so a snapshot that reads the wrong
    attribute (say the writer's bytes for the committer's) is caught."""
    want = {}
    for i, d in enumerate(table):
        if d.source is not None:
            want[d.name] = 1000 + 7 * i
            _set_path(rx, d.source, want[d.name])
    return want


def _snapshot(rx: Receiver) -> dict[str, Any]:
    """As the supervisor receives it: JSON over ZeroMQ."""
    snap: dict[str, Any] = json.loads(json.dumps(rx.snapshot()))
    return snap


def test_snapshot_carries_every_table_entry_read_from_its_source(receiver: Receiver) -> None:
    want = _distinct_values(receiver, TABLE)
    snap = _snapshot(receiver)
    for d in counters.snapshot_defs():
        assert d.name in snap, d.name
        assert isinstance(snap[d.name], int | float), d.name
        if d.name in want:
            assert snap[d.name] == want[d.name], d.name
    assert set(counters.snapshot_names()) >= LEGACY_SNAPSHOT_FIGURES
    for key in STRUCTURED:
        assert key in snap
    # "rejected" is the per-reason breakdown in the snapshot, a plain count in the header
    assert snap["rejected"] == {}
    # per process (the aggregator folds counters across restarts), unlike the segment's total
    assert snap["bytes"] == receiver.committer.bytes != receiver.writer.bytes
    assert snap["committed_bytes"] == receiver.writer.bytes


def test_stats_tuple_is_the_in_segment_entries_and_round_trips(receiver: Receiver) -> None:
    want = _distinct_values(receiver, TABLE)
    receiver.conns = dict.fromkeys(range(3))  # type: ignore[assignment]  # only counted
    values = receiver.stats_tuple()
    assert len(values) == len(layout.STAT_FIELDS)
    expected = {n: want.get(n, 3) for n in layout.STAT_FIELDS}  # connections_open: computed
    assert dict(zip(layout.STAT_FIELDS, values, strict=True)) == expected
    receiver.writer.write_stats(values)
    w = receiver.writer
    assert layout.read_stats(w.buf, w.geometry, 0) == expected


# --------------------------------------------------------------------------- the segment


def test_stat_fields_are_the_in_segment_entries_in_table_order() -> None:
    assert tuple(d.name for d in TABLE if d.in_segment) == layout.STAT_FIELDS
    assert layout.STATS.size == 8 * len(layout.STAT_FIELDS)
    assert layout.SH_STATS + layout.STATS.size <= layout.SH_TOPICS


def test_layout_doc_shows_every_statistic_at_its_offset() -> None:
    doc = layout.__doc__ or ""
    block = doc[doc.index(f"{layout.SH_STATS}  8*"): doc.index(f"{layout.SH_TOPICS}  2048")]
    documented = {int(off): name for off, name in re.findall(r"(\d{3})  ([a-z_()]+)", block)}
    expected = {layout.SH_STATS + 8 * i: n for i, n in enumerate(layout.STAT_FIELDS)}
    expected[layout.SH_STATS + layout.STATS.size] = "(free)"
    assert documented == expected


def test_moving_a_segment_statistic_fails_at_import(monkeypatch: pytest.MonkeyPatch) -> None:
    seg = [d for d in TABLE if d.in_segment]
    rest = [d for d in TABLE if not d.in_segment]
    monkeypatch.setattr(counters, "TABLE", (*rest, seg[1], seg[0], *seg[2:]))
    with pytest.raises(AssertionError, match="statistics block"):
        runpy.run_path(layout.__file__)  # a fresh copy: the imported module stays as it is


# --------------------------------------------------------------------------- aggregator


def test_aggregator_reports_every_snapshot_entry(receiver: Receiver) -> None:
    _distinct_values(receiver, TABLE)
    agg = MetricsAggregator()
    agg.update(_snapshot(receiver))
    agg.update(_snapshot(receiver))
    rep = agg.report()
    for fig in (rep["shards"]["0"], rep["total"]):
        for d in counters.snapshot_defs():
            assert d.name in fig, d.name
        for r in counters.RATIOS:
            assert r.name in fig, r.name
        assert set(fig["rates"]) == set(counters.rate_names())
    assert counters.cumulative_names() == COUNTERS and counters.rate_names() == RATES


def test_aggregator_combines_gauges_as_the_table_says() -> None:
    agg = MetricsAggregator()
    for shard, (lo, hi, conns) in enumerate([(10, 20, 1), (0, 0, 0), (5, 15, 2)]):
        agg.update({"shard": shard, "pid": shard, "time": 1.0, "rcvbuf_min": lo,
                    "rcvbuf_max": hi, "connections_open": conns})
    t = agg.report()["total"]
    # a shard without connections measured no SO_RCVBUF: its zeros do not count
    assert (t["rcvbuf_min"], t["rcvbuf_max"], t["connections_open"]) == (5, 20, 3)


# --------------------------------------------------------------------------- Prometheus


def _scrape(report: Any, table: tuple[CounterDef, ...] | None = None
            ) -> dict[str, Any]:
    registry = CollectorRegistry()
    registry.register(prometheus._Collector(report, table))
    text = generate_latest(registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_prometheus_exports_every_snapshot_entry(receiver: Receiver) -> None:
    _distinct_values(receiver, TABLE)
    agg = MetricsAggregator()
    agg.update(_snapshot(receiver))
    fams = _scrape(agg.report)
    shard = agg.report()["shards"]["0"]
    for d in counters.snapshot_defs():
        assert d.prometheus is not None
        fam = fams[d.prometheus.removesuffix("_total")]  # the parser strips it from counters
        assert (fam.type, fam.documentation) == (d.kind, d.help), d.name
        sample = next(s for s in fam.samples if s.labels == {"shard": "0"})
        assert sample.name == d.prometheus
        assert sample.value == pytest.approx(shard[d.name]), d.name
    for r in counters.RATIOS:
        if r.prometheus is not None:
            assert fams[r.prometheus].type == "gauge"
    assert {name for name, *_ in prometheus.SERIES} >= LEGACY_SERIES
    # The recv-calls histogram: a histogram family over the committer's buckets, in order.
    hist = fams[prometheus.HISTOGRAM]
    assert hist.type == "histogram"
    buckets = [s for s in hist.samples if s.name.endswith("_bucket")]
    assert [s.labels["le"] for s in buckets] == [*HIST_LABELS[:-1], "+Inf"]


def test_prometheus_histogram_is_cumulative_with_sum_and_count() -> None:
    per_bucket = dict(zip(HIST_KEYS, (5, 0, 3, 1, 0, 0, 2), strict=True))  # 11 batches
    agg = MetricsAggregator()
    agg.update({"shard": 0, "pid": 1, "time": 1.0, "batches": 11, "recv_calls": 40,
                "recv_calls_hist": per_bucket})
    samples = {(s.name, s.labels.get("le")): s.value
               for s in _scrape(agg.report)[prometheus.HISTOGRAM].samples
               if s.labels["shard"] == "0"}
    name = prometheus.HISTOGRAM
    assert [samples[(f"{name}_bucket", le)] for le in ("1", "2", "4", "8", "16", "32", "+Inf")
            ] == [5, 5, 8, 9, 9, 9, 11]
    assert samples[(f"{name}_count", None)] == 11
    assert samples[(f"{name}_sum", None)] == 40  # recv_calls: _sum/_count is the mean ratio


def test_histogram_labels_are_the_committers_everywhere() -> None:
    assert HIST_KEYS == HIST_LABELS == ("1", "2", "4", "8", "16", "32", ">32")
    line = _hist_line({"recv_calls_hist": dict.fromkeys(HIST_KEYS, 0)})
    assert re.findall(r"(\S+):0", line) == list(HIST_LABELS)


# --------------------------------------------------------------------------- a new counter


@pytest.mark.parametrize("extra", [
    CounterDef("frobs", "Frobs frobbed", "counter", "", "frobs", "shardbroker_frobs_total",
               rate=True),
    CounterDef("widest_frob", "Widest frob seen", "gauge", "bytes", "committer.widest_frob",
               "shardbroker_widest_frob_bytes", total="max"),
])
def test_a_counter_added_to_the_table_appears_everywhere(
        receiver: Receiver, monkeypatch: pytest.MonkeyPatch, extra: CounterDef) -> None:
    monkeypatch.setattr(counters, "TABLE", (*TABLE, extra))
    assert extra.source is not None
    _set_path(receiver, extra.source, 4321)
    snap = _snapshot(receiver)
    assert snap[extra.name] == 4321
    assert len(receiver.stats_tuple()) == len(layout.STAT_FIELDS)  # not in the segment
    agg = MetricsAggregator()
    agg.update(snap)
    agg.update(dict(snap, time=snap["time"] + 1.0, **{extra.name: 4331}))
    rep = agg.report()
    assert rep["shards"]["0"][extra.name] == rep["total"][extra.name] == 4331
    assert ("frobs" in rep["total"]["rates"]) == extra.rate
    if extra.rate:
        assert rep["total"]["rates"]["frobs"] == 10.0
    fams = _scrape(agg.report)
    assert extra.prometheus is not None
    fam = fams[extra.prometheus.removesuffix("_total")]
    assert fam.type == extra.kind and fam.samples[0].value == 4331


# --------------------------------------------------------------------------- the table itself


@pytest.mark.parametrize("kwargs, problem", [
    ({"kind": "gauge", "prometheus": "shardbroker_x_total"}, "only they, end in _total"),
    ({"prometheus": "shardbroker_x"}, "end in _total"),
    ({"kind": "gauge", "prometheus": "shardbroker_x", "rate": True}, "only counters"),
    ({"unit": "bytes"}, "carry the unit"),
    ({"total": "max"}, "sum over shards"),
    ({"prometheus": "Shardbroker-x_total"}, "is not shardbroker_"),
    ({"prometheus": None}, "exported to Prometheus"),
    ({"snapshot": False}, "exported to Prometheus"),
])
def test_a_bad_entry_fails_when_the_table_is_built(kwargs: dict[str, Any], problem: str
                                                   ) -> None:
    args: dict[str, Any] = {"name": "x", "help": "x", "kind": "counter", "unit": "",
                            "source": "x", "prometheus": "shardbroker_x_total"}
    with pytest.raises(ValueError, match=problem):
        CounterDef(**(args | kwargs))


def test_names_are_unique_and_ratios_divide_snapshot_figures() -> None:
    counters.check(TABLE, counters.RATIOS)
    with pytest.raises(ValueError, match="names used twice"):
        counters.check((*TABLE, TABLE[0]))
    twin = CounterDef("bytes2", "x", "counter", "bytes", "x", TABLE[0].prometheus)
    with pytest.raises(ValueError, match="Prometheus names used twice"):
        counters.check((*TABLE, twin))
    with pytest.raises(ValueError, match="does not carry"):
        counters.check(TABLE, (RatioDef("r", "x", "rejected", "batches"),))
