"""``shardbroker demo``: a broker on built-in defaults, publishers for ~10 s, a checked summary.

The checker is a named consumer of a segment with retention ``block``: the broker keeps every
batch until the checker has read it and slows the publishers (TCP flow control) instead of
overwriting. So the checker sees every committed batch however slow it or the host is, and a
batch it does not find is a real loss, never a lap. It checks every batch's message headers
and every 8th batch's bytes; at the end every acked message must have been seen exactly once.

The checker runs in this process and competes with the receivers for CPUs; under ``block`` that
can only slow the publishers. The throughput printed is what the publishers had acked (so it
includes any such slowing), next to how many batches waited for the checker to make room (the
broker's count) and how much of the run the checker was busy (near 100 %: it set the pace).

Broker logs go to a file (its path is printed); a progress line runs on a terminal's stderr;
the output ends with one verdict line, ``OK: ...`` or ``FAILED: ...``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shardbroker.consumer.consumer import Consumer
from shardbroker.errors import BrokerStartError, ConsumerExpired, ShardbrokerError
from shardbroker.publisher import loadgen
from shardbroker.publisher.batches import BatchGeometry
from shardbroker.publisher.client import random_client_id
from shardbroker.segment import shm
from shardbroker.segment.reader import Batch, SegmentReader
from shardbroker.supervisor.process import BrokerProcess
from shardbroker.verify import ClientExpectation, Verifier

CHECKER_NAME = "demo-checker"
COMPARE_EVERY = 8  # every 8th batch of a client is compared byte for byte
IDLE_PASS_S = 0.2  # a caught-up checker looks up this often (is publishing over?)
PROGRESS_EVERY_S = 0.1

BatchHook = Callable[[Batch], None]  # runs on each batch before it is checked (tests)


@dataclass
class CheckerStats:
    batches: int = 0
    cpu_s: float = 0.0  # the checking thread's own CPU time
    wall_s: float = 0.0  # from the first look to the last batch
    busy_s: float = 0.0  # of which checking batches, not waiting for them
    expired: int = 0  # times the broker stopped holding data back for the checker

    @property
    def busy_share(self) -> float:
        """Near 1: the checker set the pace (under `block` the publishers waited for it)."""
        return self.busy_s / self.wall_s if self.wall_s else 0.0


class Checker:
    """Reads every committed batch as the named consumer and feeds the verifier."""

    def __init__(self, consumer: Consumer, verifier: Verifier,
                 before_check: BatchHook | None = None) -> None:
        self.consumer = consumer
        self.verifier = verifier
        self.before_check = before_check
        self.stats = CheckerStats()

    def check_until(self, publishing: threading.Thread,
                    on_progress: Callable[[], None] = lambda: None) -> None:
        """Check batches until ``publishing`` has ended and every batch committed by then is
        checked. Its end means every ack arrived, and acks follow commits."""
        cpu0, t0 = time.thread_time(), time.perf_counter()
        try:
            while True:
                done = not publishing.is_alive()  # sampled before the pass that drains
                caught_up = self._pass(0.0 if done else IDLE_PASS_S, on_progress)
                on_progress()
                if done and caught_up:
                    return
        finally:
            self.stats.cpu_s += time.thread_time() - cpu0
            self.stats.wall_s += time.perf_counter() - t0

    def _pass(self, idle_timeout_s: float, on_progress: Callable[[], None]) -> bool:
        """Check batches until none came for ``idle_timeout_s``: True, or False when the
        broker had expired the checker (it rejoins; the caller passes again)."""
        try:
            for b in self.consumer.batches(idle_timeout_s=idle_timeout_s):
                t0 = time.perf_counter()
                if self.before_check is not None:
                    self.before_check(b)
                self.verifier.feed(b)
                self.stats.batches += 1
                self.stats.busy_s += time.perf_counter() - t0
                on_progress()
        except ConsumerExpired:
            # Silent longer than the segment's consumer timeout: what was overwritten since
            # is counted in `lapped` when we read on, and the verdict says it went unchecked.
            self.stats.expired += 1
            self.consumer.rejoin()
            return False
        return True


class ProgressLine:
    """One rich progress line on stderr while the demo runs (a terminal only)."""

    def __init__(self, reader: SegmentReader, checker: Checker, duration_s: float,
                 enabled: bool) -> None:
        self.reader = reader
        self.checker = checker
        self.duration_s = duration_s
        self.bar: Any = None
        self.task: Any = None
        self.first_commit: tuple[float, int] | None = None  # time and rate count from here
        self._next = 0.0
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn

            self.bar = Progress(TextColumn("demo"), BarColumn(bar_width=16),
                                TextColumn("{task.completed:>4.1f}/{task.total:g} s"),
                                TextColumn("{task.fields[line]}"),
                                console=Console(stderr=True), transient=True)
            self.task = self.bar.add_task("demo", total=duration_s, line="starting")
            self.bar.start()

    def __call__(self) -> None:
        now = time.monotonic()
        if self.bar is None or now < self._next:
            return
        self._next = now + PROGRESS_EVERY_S
        r = self.reader
        shards = [r.shard_state(s) for s in range(r.shard_count)]
        committed = sum(st.bytes for st in shards)
        behind = sum(st.pbr_committed for st in shards) - sum(self.checker.consumer.positions)
        if self.first_commit is None and committed:
            self.first_commit = (now, committed)
        t1, b1 = self.first_commit or (now, committed)
        rate = (committed - b1) / (now - t1) / 1e9 if now > t1 else 0.0
        self.bar.update(self.task, completed=min(now - t1, self.duration_s), line=(
            f"{committed / 2**30:.1f} GiB at {rate:.2f} GB/s | "
            f"{self.checker.stats.batches} checked, {behind} behind"))

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def shard_totals(reader: SegmentReader) -> dict[str, Any]:
    batches = sum(reader.shard_state(s).pbr_committed for s in range(reader.shard_count))
    stats = [reader.shard_stats(s) for s in range(reader.shard_count)]
    recv = sum(st["recv_calls"] for st in stats)
    payload_recv = sum(st["payload_recv_calls"] for st in stats)
    rcv = [st for st in stats if st["rcvbuf_max"]]
    return {
        "batches_committed": batches,
        "recv_calls": recv,
        "recv_calls_per_batch": round(recv / batches, 2) if batches else None,
        "payload_recv_calls_per_batch": round(payload_recv / batches, 2) if batches else None,
        "wakeups_per_batch": round(sum(st["wakeups"] for st in stats) / batches, 2)
        if batches else None,
        "rcvbuf_min": min((st["rcvbuf_min"] for st in rcv), default=0),
        "rcvbuf_max": max((st["rcvbuf_max"] for st in rcv), default=0),
        "rejected": sum(st["rejected"] for st in stats),
    }


def backpressure(broker: BrokerProcess, batches: int) -> dict[str, Any]:
    """The broker's own figures of how the checker held the publishers back: ``parks``
    (batches that waited for room) and ``backpressured_s``. Its receivers report about once a
    second: wait for the snapshot that has every batch."""
    from shardbroker.control import client

    deadline = time.monotonic() + 3.0
    stats: dict[str, Any] = {}
    try:
        while True:
            stats = client.request(broker.ready["control"], "stats", timeout_s=2.0)["total"]
            if stats.get("batches", 0) >= batches or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    except (ShardbrokerError, KeyError):
        return {"backpressured_s": None, "parks": None}
    return {"backpressured_s": round(float(stats.get("backpressured_s", 0.0)), 2),
            "parks": stats.get("parks")}


def default_log_path() -> str:
    return os.path.join(tempfile.gettempdir(), f"shardbroker-demo-{os.getpid()}.log")


@dataclass(frozen=True)
class DemoSpec:
    duration_s: float = 10.0
    connections: int = 4
    threads: int = 0  # receivers (0: one per CPU)
    batch_bytes: int = 2 << 20
    message_size: int = 1024
    broker_args: tuple[str, ...] = ()  # added to `shardbroker run`'s (tests: small rings)
    before_check: BatchHook | None = None  # sees each batch before the checker (tests)
    progress: bool = False  # the rich progress line on stderr

    @property
    def geometry(self) -> BatchGeometry:
        return BatchGeometry.for_batch(self.batch_bytes, self.message_size)


def run_demo(duration_s: float = 10.0, connections: int = 4, threads: int = 0,
             batch_bytes: int = 2 << 20, message_size: int = 1024, as_json: bool = False,
             log_path: str | None = None, broker_args: tuple[str, ...] = (),
             before_check: BatchHook | None = None, progress: bool | None = None) -> int:
    """Run the demo, print its summary (last line: the verdict); 0 when OK. ``progress``:
    None shows the progress line when stderr is a terminal and the output is not JSON."""
    log_path = log_path or default_log_path()
    if progress is None:
        progress = not as_json and sys.stderr.isatty()
    spec = DemoSpec(duration_s, connections, threads, batch_bytes, message_size, broker_args,
                    before_check, progress)
    print(f"shardbroker demo: broker log in {log_path}", file=sys.stderr)
    with open(log_path, "wb") as log:
        try:
            summary = run_checked(spec, log.fileno())
        except BrokerStartError as exc:
            print(f"FAILED: the broker did not start ({exc.message}); its log: {log_path}")
            return 1
    summary["broker_log"] = log_path
    ok, verdict = judge(summary)
    summary["ok"], summary["verdict"] = ok, verdict
    print(json.dumps(summary) if as_json else render_summary(summary))
    return 0 if ok else 1


def run_checked(spec: DemoSpec, log_fd: int) -> dict[str, Any]:
    """Start the broker (its stderr to ``log_fd``), publish, check; the summary's figures."""
    segment = f"shardbroker-demo-{os.getpid()}"
    args = ["--listen", "127.0.0.1:0", "--segment", segment, "--threads", str(spec.threads),
            "--retention", "block", *spec.broker_args]
    try:
        with BrokerProcess(args, stderr=log_fd) as broker:
            figures = check_while_publishing(spec, broker)
            figures.update(backpressure(broker, figures["batches_committed"]))
            figures["broker_exit_code"] = broker.stop()
            figures["receivers"] = broker.ready.get("threads")
        return figures
    finally:
        shm.unlink(segment)  # a broker that died or failed to stop leaves its segment behind


def check_while_publishing(spec: DemoSpec, broker: BrokerProcess) -> dict[str, Any]:
    ids = [random_client_id() for _ in range(spec.connections)]
    load = loadgen.LoadSpec(host=broker.host, port=broker.port, connections=spec.connections,
                            batch_bytes=spec.batch_bytes, message_size=spec.message_size,
                            duration_s=spec.duration_s, topic="demo")
    geom = spec.geometry
    verifier = Verifier([ClientExpectation(i, geom.message_size, geom.messages, 0)
                         for i in ids], compare_every=COMPARE_EVERY)
    result: dict[str, Any] = {}
    # Registered before the first publisher connects: from batch 0 on, the broker keeps every
    # batch until this consumer has read it.
    with Consumer(broker.segment, CHECKER_NAME, start="oldest") as consumer:
        checker = Checker(consumer, verifier, spec.before_check)
        line = ProgressLine(consumer.reader, checker, spec.duration_s, spec.progress)
        publishers = threading.Thread(target=publish, args=(load, ids, result),
                                      name="publishers")
        publishers.start()
        try:
            checker.check_until(publishers, line)
        finally:
            line.stop()
            publishers.join()
        for s in result.get("publishers", []):
            c = verifier.clients.get(s.get("client_id") or -1)
            if c is not None:
                c.acked_messages = s["acked_messages"]
                c.batches_sent = s["batches"]
        report = verifier.finish(lapped_by_reader=consumer.lapped)
        totals = shard_totals(consumer.reader)
        retention = consumer.table.retention
    return {
        "event": "demo.summary",
        "publishers": spec.connections,
        "retention": retention,
        "gbps": result.get("gbps"),
        "bytes": result.get("bytes"),
        "seconds": result.get("seconds"),
        "batches": result.get("batches"),
        "acked_messages": result.get("acked_messages"),
        **totals,
        "checker": {"name": CHECKER_NAME, "batches": checker.stats.batches,
                    "cpu_s": round(checker.stats.cpu_s, 2),
                    "wall_s": round(checker.stats.wall_s, 2),
                    "busy": round(checker.stats.busy_share, 3),
                    "expired": checker.stats.expired, "cpus": len(os.sched_getaffinity(0))},
        "verify": report.to_dict(),
        "publisher_errors": result.get("errors", ["the publishers reported nothing"]),
    }


def publish(spec: loadgen.LoadSpec, ids: list[int], result: dict[str, Any]) -> None:
    """The publishers' run (in a thread): its summary, or its error, lands in ``result``."""
    try:
        result.update(loadgen.run(spec, client_ids=ids))
    except Exception as exc:  # noqa: BLE001 -- this thread's failure must reach the verdict
        result["errors"] = [f"the publishers failed: {exc!r}"]


def judge(s: dict[str, Any]) -> tuple[bool, str]:
    """(ok, the one verdict line). Under ``block`` the checker cannot be lapped while it is
    live, so a batch it did not find is a loss -- unless the broker stopped holding data back
    for it (it expired), which the verdict says instead of claiming a loss."""
    v, c = s["verify"], s["checker"]
    if c["expired"]:
        return False, (f"FAILED: the checker was silent past the consumer timeout and expired "
                       f"{c['expired']} time(s); {v['lapped']} batches went unchecked (not "
                       f"evidence of loss: rerun on a less loaded host)")
    problems = [f"{n} {what}" for n, what in (
        (v["missing_acked_batches"], "acked batches missing"),
        (v["corrupt"], "batches with wrong bytes"),
        (v["duplicates"], "batches committed twice"),
        (v["unexpected_batches"], "batches never sent"),
        (v["lapped"], "batches overwritten before they were checked"),
        (len(s["publisher_errors"]), "publisher errors"),
    ) if n]
    if s["broker_exit_code"] != 0:
        problems.append(f"broker exit code {s['broker_exit_code']}")
    if problems:
        return False, "FAILED: " + ", ".join(problems)
    return True, (f"OK: every acked message ({s['acked_messages']}) is in the segment exactly "
                  f"once; {v['batches_checked']} batches checked, {v['payloads_compared']} "
                  f"byte for byte")


def _fmt(x: Any, spec: str) -> str:
    return "?" if x is None else format(x, spec)


def held_back(s: dict[str, Any]) -> str:
    """How often the checker held the publishers back: the broker's count of batches that
    waited for room (its ``parks``); the checker's own busy share says whether it set the
    pace."""
    parks = s.get("parks")
    if parks is None:
        return "unknown (no stats from the broker)"
    if not parks:
        return "never: the checker kept up"
    return f"{parks} batches waited for the checker to make room"


def render_summary(s: dict[str, Any]) -> str:
    v, c = s["verify"], s["checker"]
    return "\n".join([
        f"shardbroker demo: {s['publishers']} publishers -> {s['receivers']} receivers, "
        f"retention {s['retention']}, checker {c['name']!r}",
        f"  broker log        {s['broker_log']}",
        f"  throughput        {_fmt(s['gbps'], '.2f')} GB/s acked ("
        f"{(s['bytes'] or 0) / 2**30:.2f} GiB in {_fmt(s['seconds'], '.1f')} s, checker "
        "included)",
        f"  held back         {held_back(s)}",
        f"  batches           {s['batches']} ({s['acked_messages']} messages acked)",
        f"  recv calls/batch  {s['recv_calls_per_batch']} (payload only: "
        f"{s['payload_recv_calls_per_batch']}); wakeups/batch {s['wakeups_per_batch']}",
        f"  SO_RCVBUF         {s['rcvbuf_min']}..{s['rcvbuf_max']} bytes (kernel's value)",
        f"  checker           {c['batches']} batches read, {v['payloads_compared']} compared "
        f"byte for byte; busy {c['busy']:.0%} of {c['wall_s']:.1f} s ({c['cpu_s']:.1f} s CPU, "
        f"sharing {c['cpus']} CPUs with the receivers)",
        f"  found             duplicates {v['duplicates']}, missing "
        f"{v['missing_acked_batches']}, corrupt {v['corrupt']}, unchecked {v['lapped']}",
        *[f"  problem: {p}" for p in v["problems"]],
        *[f"  publisher error: {e}" for e in s["publisher_errors"]],
        s["verdict"],
    ])
