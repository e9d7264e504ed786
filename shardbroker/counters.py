"""The receiver's counters, named once (DESIGN.md §5, principle 10).

``TABLE`` lists every figure a receiver counts. Everything else follows from it:

* the shard-header statistics (``segment.layout.STAT_FIELDS``): the ``in_segment`` entries in
  table order (that order is the byte layout: layout.py asserts it is the documented one);
* ``Receiver.stats_tuple()`` and the counters of ``Receiver.snapshot()``: each entry's value is
  read by its ``source`` attribute path (or computed by ``Receiver.counter_values`` when
  ``source`` is None) when a snapshot is taken; the hot path only bumps plain ints;
* the aggregator's figures (``control.metrics``): ``counter`` entries are cumulative per
  receiver process (folded into a base when a receiver restarts, summed over shards),
  ``gauge`` entries are the latest value, combined over shards by ``total``; ``rate`` entries
  also get a per-second rate between snapshots;
* the Prometheus series (``control.prometheus``): one family per entry, named ``prometheus``.

``RATIOS`` are figures the aggregator derives from two counters (per shard and in total).

Pure: no imports from the rest of the package, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Kind = Literal["counter", "gauge"]
Unit = Literal["", "bytes", "seconds"]  # "": a count
Total = Literal["sum", "min", "max"]

_PROMETHEUS_NAME = re.compile(r"shardbroker_[a-z0-9_]+")


@dataclass(frozen=True, slots=True)
class CounterDef:
    """One figure a receiver reports.

    ``name`` is its key everywhere (snapshot, aggregator figures, shard-header statistics).
    ``source`` is the attribute path from the Receiver that holds it (``"committer.batches"``);
    None when ``Receiver.counter_values`` computes it. ``snapshot`` False keeps it out of the
    snapshot (and so out of the aggregator and Prometheus): only the shard header has it.
    ``total``: how the aggregator combines a gauge over shards (min and max skip zeros, which
    mean "not measured yet"); counters always add up.
    """

    name: str
    help: str
    kind: Kind
    unit: Unit
    source: str | None
    prometheus: str | None
    in_segment: bool = False
    rate: bool = False
    snapshot: bool = True
    total: Total = "sum"

    def __post_init__(self) -> None:
        # Checked when the table is built, so a bad entry fails at import, not in production.
        problems = []
        if self.kind == "counter" and self.total != "sum":
            problems.append("a counter's total is the sum over shards")
        if self.rate and self.kind != "counter":
            problems.append("only counters have rates")
        if self.snapshot != (self.prometheus is not None):
            problems.append("every snapshot figure is exported to Prometheus, and only those")
        if self.prometheus is not None:
            p = self.prometheus
            if not _PROMETHEUS_NAME.fullmatch(p):
                problems.append(f"Prometheus name {p!r} is not shardbroker_[a-z0-9_]+")
            if p.endswith("_total") != (self.kind == "counter"):
                problems.append("Prometheus counters, and only they, end in _total")
            if self.unit and f"_{self.unit}" not in p:
                problems.append(f"the Prometheus name must carry the unit ({self.unit})")
        if problems:
            raise ValueError(f"counter {self.name!r}: " + "; ".join(problems))

    def value_of(self, root: object) -> object:
        """Follow ``source`` from ``root`` (the Receiver)."""
        if self.source is None:
            raise ValueError(f"counter {self.name!r} has no source: its owner computes it")
        v = root
        for part in self.source.split("."):
            v = getattr(v, part)
        return v


def _c(name: str, help_: str, source: str | None, prometheus: str, *, unit: Unit = "",
       in_segment: bool = False, rate: bool = False) -> CounterDef:
    return CounterDef(name, help_, "counter", unit, source, prometheus, in_segment, rate)


def _g(name: str, help_: str, source: str | None, prometheus: str, *, unit: Unit = "",
       in_segment: bool = False, total: Total = "sum") -> CounterDef:
    return CounterDef(name, help_, "gauge", unit, source, prometheus, in_segment, total=total)


# The in_segment entries are the shard header's statistics block: their order is the byte
# layout (u64 each from offset 128, segment/layout.py). Append new ones after the last of
# them, never between; the block has room for 16.
TABLE: tuple[CounterDef, ...] = (
    # what was committed (per receiver process; the shard header's own fields hold the
    # segment's totals across processes, reported as committed_batches/committed_bytes)
    _c("bytes", "Payload bytes committed", "committer.bytes",
       "shardbroker_received_bytes_total", unit="bytes", rate=True),
    _c("batches", "Batches committed", "committer.batches", "shardbroker_batches_total",
       rate=True),
    _c("messages", "Messages committed", "committer.messages", "shardbroker_messages_total",
       rate=True),
    # ---- the shard-header statistics block, in its byte order
    _c("recv_calls", "recv_into calls that returned data or EAGAIN, all phases",
       "recv_calls", "shardbroker_recv_calls_total", in_segment=True, rate=True),
    _c("payload_recv_calls", "recv_into calls made while receiving payloads",
       "payload_recv_calls", "shardbroker_payload_recv_calls_total", in_segment=True),
    _c("eagain", "recv calls that returned EAGAIN", "eagain", "shardbroker_eagain_total",
       in_segment=True),
    _c("wakeups", "Returns of the backend's wait (epoll_wait, io_uring_enter) with events",
       "wakeups", "shardbroker_epoll_wakeups_total", in_segment=True, rate=True),
    _g("connections_open", "Open publisher connections", None,
       "shardbroker_connections_open", in_segment=True),
    _c("connections_total", "Publisher connections adopted (accepted or handed over)",
       "connections_total", "shardbroker_connections_total", in_segment=True),
    # The snapshot reports rejections by reason under the same key (a dict the aggregator
    # sums into rejected_total), so this plain count lives in the shard header only.
    CounterDef("rejected", "Connections closed for a protocol violation", "counter", "",
               "rejected", None, in_segment=True, snapshot=False),
    _c("disconnects_mid_batch", "Peers that closed or reset with a batch in flight",
       "disconnects_mid_batch", "shardbroker_disconnects_mid_batch_total", in_segment=True),
    _g("rcvbuf_min", "Smallest effective SO_RCVBUF over connections (the kernel's value)",
       "rcvbuf_min", "shardbroker_rcvbuf_min_bytes", unit="bytes", in_segment=True,
       total="min"),
    _g("rcvbuf_max", "Largest effective SO_RCVBUF over connections (the kernel's value)",
       "rcvbuf_max", "shardbroker_rcvbuf_max_bytes", unit="bytes", in_segment=True,
       total="max"),
    _c("lowat_sets", "SO_RCVLOWAT setsockopt calls", "lowat_sets",
       "shardbroker_lowat_sets_total", in_segment=True),
    _c("acks_sent", "Ack flushes to publishers", "acks_sent", "shardbroker_acks_sent_total",
       in_segment=True),
    _c("lapped_in_flight", "Batches abandoned because the ring lapped them mid-receive",
       "committer.lapped_in_flight", "shardbroker_lapped_in_flight_total", in_segment=True),
    _c("uring_enters", "io_uring_enter calls (uring backend; 0 under epoll)", "uring_enters",
       "shardbroker_uring_enters_total", in_segment=True),
    _c("uring_completions", "io_uring completions (CQEs) reaped (uring backend)",
       "uring_completions", "shardbroker_uring_completions_total", in_segment=True),
    # ---- end of the statistics block
    _g("committed_batches", "Batches in this shard of the segment, by every writer so far",
       "writer.next_index", "shardbroker_committed_batches"),
    _g("committed_bytes", "Payload bytes in this shard of the segment, by every writer so far",
       "writer.bytes", "shardbroker_committed_bytes"),
    _c("duplicates_skipped", "Resent batches already committed (acked, not written again)",
       "committer.duplicates_skipped", "shardbroker_duplicates_skipped_total"),
    _c("moved_in", "Connections handed over to this receiver", "moved_in",
       "shardbroker_moved_in_total"),
    _c("moved_out", "Connections this receiver handed over to another", "moved_out",
       "shardbroker_moved_out_total"),
    _c("parks", "Times a batch had to wait for a consumer to make room (retention block)",
       "parks", "shardbroker_parks_total"),
    _g("parked_connections", "Connections waiting for a consumer to make room", None,
       "shardbroker_parked_connections"),
    _c("backpressured_s", "Time publishers were held back for consumers (retention block)",
       None, "shardbroker_backpressured_seconds_total", unit="seconds"),
    _c("retention_checks", "Slow-path reads of the consumer table (retention block)",
       "writer.room_checks", "shardbroker_retention_checks_total"),
    _c("cpu_user_s", "Receiver user CPU", None, "shardbroker_cpu_user_seconds_total",
       unit="seconds", rate=True),
    _c("cpu_sys_s", "Receiver system CPU", None, "shardbroker_cpu_system_seconds_total",
       unit="seconds", rate=True),
    _g("rss_bytes", "Receiver resident memory", None, "shardbroker_rss_bytes", unit="bytes"),
)


@dataclass(frozen=True, slots=True)
class RatioDef:
    """A figure the aggregator derives: ``numerator / denominator`` (None while the
    denominator is 0), per shard and in total."""

    name: str
    help: str
    numerator: str
    denominator: str
    prometheus: str | None = None


RATIOS: tuple[RatioDef, ...] = (
    RatioDef("recv_calls_per_batch", "Mean recv calls per batch", "recv_calls", "batches",
             "shardbroker_recv_calls_per_batch"),
    RatioDef("wakeups_per_batch", "Mean wakeups per batch", "wakeups", "batches"),
    RatioDef("uring_enters_per_batch", "Mean io_uring_enter calls per batch", "uring_enters",
             "batches"),
    RatioDef("uring_completions_per_batch", "Mean io_uring completions per batch",
             "uring_completions", "batches"),
)


def check(table: Sequence[CounterDef], ratios: Sequence[RatioDef] = ()) -> None:
    """Names and Prometheus names are unique; ratios divide snapshot figures."""
    names = [d.name for d in table] + [r.name for r in ratios]
    exported = [d.prometheus for d in table if d.prometheus] + \
        [r.prometheus for r in ratios if r.prometheus]
    for what, seen in (("name", names), ("Prometheus name", exported)):
        dup = sorted({n for n in seen if seen.count(n) > 1})
        if dup:
            raise ValueError(f"counter {what}s used twice: {dup}")
    in_snapshot = {d.name for d in table if d.snapshot}
    for r in ratios:
        if not {r.numerator, r.denominator} <= in_snapshot:
            raise ValueError(f"ratio {r.name!r} divides figures the snapshot does not carry")


check(TABLE, RATIOS)


# Views of a table. They take the table as an argument (default: TABLE, looked up when called)
# so that a test can extend the table and see the extension everywhere.

def _table(table: Sequence[CounterDef] | None) -> Sequence[CounterDef]:
    return TABLE if table is None else table


def segment_names(table: Sequence[CounterDef] | None = None) -> tuple[str, ...]:
    """The shard-header statistics, in their byte order."""
    return tuple(d.name for d in _table(table) if d.in_segment)


def snapshot_defs(table: Sequence[CounterDef] | None = None) -> tuple[CounterDef, ...]:
    """What a receiver snapshot carries (and so the aggregator and Prometheus)."""
    return tuple(d for d in _table(table) if d.snapshot)


def snapshot_names(table: Sequence[CounterDef] | None = None) -> tuple[str, ...]:
    return tuple(d.name for d in snapshot_defs(table))


def cumulative_names(table: Sequence[CounterDef] | None = None) -> tuple[str, ...]:
    """Snapshot counters: they start from zero in a new receiver process."""
    return tuple(d.name for d in snapshot_defs(table) if d.kind == "counter")


def rate_names(table: Sequence[CounterDef] | None = None) -> tuple[str, ...]:
    return tuple(d.name for d in snapshot_defs(table) if d.rate)
