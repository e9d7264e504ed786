"""``shardbroker tail`` and ``shardbroker consumers``: read the segment from the command line."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from typing import Any, TextIO

from shardbroker.consumer.consumer import Consumer
from shardbroker.segment.reader import Batch, SegmentReader
from shardbroker.segment.waiting import Backoff, FutexWait, make_waiter

TAIL_DEFAULT_LINES = 10


def add_parsers(sub: Any) -> None:
    tail = sub.add_parser(
        "tail", help="print committed batches (and follow new ones)",
        description="Print one line per committed batch: shard, index, client, batch_seq, "
                    "messages, bytes, topic. Without --from-start, the last -n batches of "
                    "each shard; --follow keeps printing as publishers write (Ctrl-C stops). "
                    "With --name the reader is a registered consumer: it resumes where that "
                    "name left off and, under retention `block`, holds data back until read. "
                    "Several --segment (brokers of a cluster, e.g. a recovered segment beside "
                    "live ones): one merged read of what they hold now, each (client_id, "
                    "batch_seq) once, ordered by that key; -n then counts merged batches.")
    _segment_args(tail, several=True)
    tail.add_argument("--topic", help="only batches of this topic")
    tail.add_argument("--shard", type=int, help="only this shard")
    tail.add_argument("--follow", "-f", action="store_true", help="keep printing new batches")
    tail.add_argument("--from-start", action="store_true",
                      help="begin at the oldest batch still in the rings (with or without "
                           "--follow)")
    tail.add_argument("-n", "--lines", type=int, default=TAIL_DEFAULT_LINES,
                      help=f"batches per shard to show first (default {TAIL_DEFAULT_LINES})")
    tail.add_argument("--name", help="register as (or resume) this named consumer")
    tail.add_argument("--idle-exit", type=float, metavar="SECONDS",
                      help="with --follow: stop after this long without a new batch")
    tail.add_argument("--max-batches", type=int, help="stop after printing this many")
    tail.add_argument("--checksum", action="store_true",
                      help="also print a checksum of each payload (numpy, every byte read)")
    tail.add_argument("--wait", choices=["futex", "backoff"], default="futex",
                      help="how a caught-up --follow waits: futex (woken by the next commit; "
                           "needs write access to the segment, else falls back) or backoff "
                           "(polls, 20 us doubling to 2 ms)")
    tail.add_argument("--json", action="store_true", help="one JSON object per batch")
    cons = sub.add_parser(
        "consumers", help="registered consumers: state, positions and lag per shard",
        description="List the consumer table of the segment: each name's state (active, "
                    "expired, detached), whether it holds data back, its heartbeat age, and "
                    "per shard its position and lag (committed batches it has not read).")
    _segment_args(cons)
    cons.add_argument("--remove", metavar="NAME", help="forget a consumer that is not live")
    cons.add_argument("--json", action="store_true")


def _segment_args(p: argparse.ArgumentParser, several: bool = False) -> None:
    p.add_argument("--segment", metavar="NAME", action="append" if several else "store",
                   help="segment name (default: the local broker's, asked over its control "
                        "endpoint)" + ("; give it several times to merge several segments"
                                      if several else ""))
    p.add_argument("--control", help="control endpoint to ask for the segment name")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for the broker")


def resolve_segment(a: argparse.Namespace) -> str:
    if a.segment:
        return str(a.segment)
    from shardbroker.control import client, endpoints

    endpoint = endpoints.resolve_client_endpoint(a.control)
    return str(client.request(endpoint, "status", timeout_s=a.timeout)["segment"])


def batch_record(b: Batch, checksum: bool) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "shard": b.shard, "index": b.index, "client_id": b.client_id,
        "batch_seq": b.batch_seq, "messages": b.num_msg, "bytes": b.total_size,
        "topic": b.topic, "logical_offset": b.start_logical_offset,
    }
    if checksum:
        rec["checksum"] = payload_checksum(b.payload)
    return rec


def payload_checksum(payload: memoryview) -> int:
    """Sum of the payload as little-endian u64 words (the tail bytes as one more word)."""
    import numpy as np

    words = len(payload) // 8
    total = int(np.frombuffer(payload, dtype="<u8", count=words).sum(dtype=np.uint64))
    tail = bytes(payload[words * 8:])
    return (total + int.from_bytes(tail, "little")) & 0xFFFF_FFFF_FFFF_FFFF


def print_record(rec: dict[str, Any], as_json: bool, out: TextIO) -> None:
    """One batch line (a merged read's records start with the segment they came from)."""
    if as_json:
        out.write(json.dumps(rec) + "\n")
    else:
        extra = f" sum={rec['checksum']:016x}" if "checksum" in rec else ""
        where = f"{rec['segment']} " if "segment" in rec else ""
        out.write(f"{where}shard {rec['shard']} #{rec['index']} client {rec['client_id']} "
                  f"seq {rec['batch_seq']} {rec['messages']} msgs {rec['bytes']} B "
                  f"topic {rec['topic']}{extra}\n")


OWNER_CHECK_EVERY_S = 0.2  # --follow notices a stopped broker within this (plus one wait)


class OwnerWatch:
    """For ``--follow``: has the broker that writes the segment stopped? Asked on every
    batch and every empty poll, so it looks at most every ``every_s``."""

    def __init__(self, reader: SegmentReader, every_s: float = OWNER_CHECK_EVERY_S) -> None:
        self.reader = reader
        self.every_s = every_s
        self.reason: str | None = None
        self._next = 0.0

    def gone(self) -> bool:
        now = time.monotonic()
        if self.reason is None and now >= self._next:
            self._next = now + self.every_s
            self.reason = self.reader.owner_gone()
        return self.reason is not None


def tail_start(a: argparse.Namespace, reader: SegmentReader,
               consumer: Consumer | None) -> list[int]:
    """Per shard, the first index to print: a resumed or --from-start consumer's positions,
    the oldest readable batch (--from-start), or like tail(1) the last -n batches; never
    below what the rings still hold, so nothing the reader never had counts as missed."""
    if consumer is not None and (consumer.resumed or a.from_start):
        return list(consumer.positions)
    if a.from_start:
        return reader.start_positions("oldest")
    ends = reader.start_positions("end")
    start = [max(reader.oldest_readable(s), e - max(0, a.lines)) for s, e in enumerate(ends)]
    if consumer is not None:
        for s, pos in enumerate(start):
            consumer.table.set_position(consumer.slot, s, pos)
        consumer.positions = list(start)
    return start


def cmd_tail(a: argparse.Namespace) -> int:
    segments = a.segment or []
    if len(segments) > 1:
        from shardbroker.cli_merged_tail import tail_merged

        return tail_merged(a, segments)
    a.segment = segments[0] if segments else None
    segment = resolve_segment(a)
    stop_flag = {"stop": False}

    def on_signal(_sig: int, _frame: Any) -> None:
        stop_flag["stop"] = True

    signal.signal(signal.SIGTERM, on_signal)
    printed = 0
    out = sys.stdout
    consumer = None
    waiter: Backoff | FutexWait | None = None
    reader: SegmentReader
    if a.name:
        consumer = Consumer(segment, a.name, start="oldest" if a.from_start else "end",
                            shard=a.shard, topic=a.topic)
        reader = consumer.reader
    else:
        reader = SegmentReader(segment)
    owner = OwnerWatch(reader)

    def stop() -> bool:
        return (stop_flag["stop"] or (a.max_batches is not None and printed >= a.max_batches)
                or (a.follow and owner.gone()))

    try:
        start = tail_start(a, reader, consumer)
        idle = a.idle_exit if a.follow else 0.0
        waiter = make_waiter(a.wait, segment) if a.follow else Backoff()
        if consumer is not None:
            it = consumer.batches(idle_timeout_s=idle, stop=stop, wait=waiter)
        else:
            it = reader.follow(a.shard, a.topic, start=start, idle_timeout_s=idle, stop=stop,
                               wait=waiter)
        try:
            for b in it:
                rec = batch_record(b, a.checksum)
                if a.checksum and not b.still_valid():
                    continue  # overwritten while we summed it: counted in `torn`
                print_record(rec, a.json, out)
                printed += 1
                out.flush()
        except KeyboardInterrupt:
            pass
        if reader.lapped or reader.torn:
            print(f"shardbroker tail: missed {reader.lapped} batches overwritten before they "
                  f"were read ({reader.torn} overwritten while being read)", file=sys.stderr)
        if owner.reason is not None:
            print(f"shardbroker tail: stopped following: {owner.reason}", file=sys.stderr)
        if a.json:
            out.write(json.dumps({
                "event": "tail.summary", "segment": segment, "printed": printed,
                "lapped": reader.lapped, "torn": reader.torn, "positions": reader.positions,
                "ended": owner.reason}) + "\n")
    finally:
        if consumer is not None:
            consumer.close()
        else:
            reader.close()
        if waiter is not None and isinstance(waiter, FutexWait):
            waiter.close()
    return 0


def cmd_consumers(a: argparse.Namespace) -> int:
    from shardbroker.consumer.registry import ConsumerTable
    from shardbroker.segment import shm

    segment = resolve_segment(a)
    m = shm.attach(segment, writable=bool(a.remove))
    try:
        table = ConsumerTable(m)
        if a.remove:
            if not table.remove(a.remove):
                print(f"shardbroker consumers: no consumer named {a.remove!r}", file=sys.stderr)
                return 1
            print(f"removed consumer {a.remove!r}")
            return 0
        infos = table.describe()
        if a.json:
            print(json.dumps({
                "segment": segment, "retention": table.retention,
                "timeout_s": table.timeout_ns / 1e9,
                "consumers": [{"name": c.entry.name, "slot": c.entry.slot,
                               "state": c.entry.state_name, "pid": c.entry.pid,
                               "live": c.live, "heartbeat_age_s": round(c.heartbeat_age_s, 3),
                               "joins": c.entry.joins, "positions": c.positions, "lag": c.lag}
                              for c in infos]}))
            return 0
        print(f"segment {segment}: retention {table.retention}, consumer timeout "
              f"{table.timeout_ns / 1e9:g} s, {len(infos)} consumers")
        for c in infos:
            age = f"{c.heartbeat_age_s:.1f} s ago" if c.entry.heartbeat_ns else "never"
            print(f"  {c.entry.name:<20} {c.entry.state_name:<8} "
                  f"{'holds data' if c.live else 'holds nothing':<13} pid {c.entry.pid:<7} "
                  f"heartbeat {age}; lag {sum(c.lag)} batches "
                  f"({', '.join(f'shard {s}: {n}' for s, n in enumerate(c.lag))})")
        return 0
    finally:
        m.close()
