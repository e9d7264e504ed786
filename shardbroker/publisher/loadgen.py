"""Load generator behind ``shardbroker publish``: publisher processes streaming pre-built batches.

Each connection is its own process (its own client id), so the generator is not limited by one
Python interpreter. Workers connect, wait for a common start, stream until their share of
``total`` bytes is sent or ``duration`` is over, flush (wait for every ack), and report.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from shardbroker.errors import PublishError
from shardbroker.publisher.batches import BatchGeometry, BatchTemplate
from shardbroker.publisher.client import Publisher, random_client_id


@dataclass(frozen=True)
class LoadSpec:
    host: str
    port: int
    connections: int = 1
    batch_bytes: int = 2 << 20
    message_size: int = 1024
    total_bytes: int | None = None  # across all connections
    duration_s: float | None = None
    topic: str = "load"
    ack: int = 1
    max_in_flight: int = 32
    cpus: tuple[int, ...] = ()  # pin worker i to cpus[i % len(cpus)] when given
    rate_bytes_s: float | None = None  # pace each connection to this many payload bytes/s
    retries: int = 0  # reconnect this many times on a dropped connection, resending unacked

    def __post_init__(self) -> None:
        if self.connections < 1:
            raise ValueError("--connections must be >= 1")
        if (self.total_bytes is None) == (self.duration_s is None):
            raise ValueError("give exactly one of --total and --duration")


def _worker(index: int, spec: LoadSpec, client_id: int, progress: Any, ready: Any,
            go: Any, results: Any) -> None:
    summary: dict[str, Any] = {"index": index, "client_id": client_id, "error": None}
    geom = BatchGeometry.for_batch(spec.batch_bytes, spec.message_size)
    summary.update(message_size=geom.message_size, messages_per_batch=geom.messages,
                   batch_payload_bytes=geom.payload_bytes)
    pub: Publisher | None = None
    try:
        if spec.cpus:
            os.sched_setaffinity(0, {spec.cpus[index % len(spec.cpus)]})
        tmpl = BatchTemplate(client_id, geom)
        pub = Publisher(spec.host, spec.port, topic=spec.topic, client_id=client_id,
                        ack=spec.ack, batch_bytes=geom.payload_bytes,
                        max_in_flight=spec.max_in_flight, retries=spec.retries,
                        resend_source=tmpl.for_seq)
        share = None
        if spec.total_bytes is not None:
            share = spec.total_bytes // spec.connections + (
                1 if index < spec.total_bytes % spec.connections else 0)
        ready.release()
        go.wait(60)
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        deadline = None if spec.duration_s is None else time.monotonic() + spec.duration_s
        n = geom.messages
        batches = 0
        while True:
            if share is not None and pub.sent_bytes >= share:
                break
            if deadline is not None and (batches & 7) == 0 and time.monotonic() >= deadline:
                break
            if spec.rate_bytes_s:
                ahead = pub.sent_bytes / spec.rate_bytes_s - (time.perf_counter() - t0)
                if ahead > 0:
                    time.sleep(ahead)
            pub.publish_batch(tmpl.for_seq(pub.next_batch_seq), n)
            batches += 1
            if (batches & 15) == 0:
                progress.value = pub.sent_bytes
        pub.flush()
        summary["seconds"] = time.perf_counter() - t0
        summary["cpu_s"] = time.process_time() - cpu0
    except (PublishError, OSError) as exc:
        summary["error"] = str(exc)
        summary["reason"] = getattr(exc, "reason", "")
        ready.release()
    finally:
        if pub is not None:
            summary.update(bytes=pub.sent_bytes, batches=pub.next_batch_seq,
                           messages=pub.sent_messages, acked_messages=pub.acked_messages,
                           reconnects=pub.reconnects)
            progress.value = pub.sent_bytes
            pub.close()
        else:
            summary.update(bytes=0, batches=0, messages=0, acked_messages=0)
        results.put(summary)


def run(spec: LoadSpec, show_progress: bool = False, timeout_s: float = 3600.0,
        client_ids: list[int] | None = None) -> dict[str, Any]:
    """Run the load; returns the JSON summary (with per-publisher entries under "publishers")."""
    ctx = mp.get_context("spawn")
    progress = [ctx.Value("Q", 0, lock=False) for _ in range(spec.connections)]
    ready = ctx.Semaphore(0)
    go = ctx.Event()
    results = ctx.Queue()
    ids = client_ids or [random_client_id() for _ in range(spec.connections)]
    if len(ids) != spec.connections:
        raise ValueError("one client id per connection")
    procs = [ctx.Process(target=_worker, args=(i, spec, ids[i], progress[i], ready, go, results),
                         daemon=True) for i in range(spec.connections)]
    summaries: list[dict[str, Any]] = []
    try:
        for p in procs:
            p.start()
        for _ in procs:
            if not ready.acquire(timeout=60):
                raise PublishError("publisher processes did not connect within 60 s")
        t0 = time.perf_counter()
        go.set()
        summaries = _collect(procs, results, progress, spec, show_progress, t0, timeout_s)
        wall = time.perf_counter() - t0
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join(timeout=5)
    summaries.sort(key=lambda s: s["index"])
    total_bytes = sum(s["bytes"] for s in summaries)
    seconds = max((s.get("seconds", 0.0) for s in summaries), default=0.0) or wall
    return {
        "event": "publish.summary",
        "connections": spec.connections,
        "bytes": total_bytes,
        "batches": sum(s["batches"] for s in summaries),
        "messages": sum(s["messages"] for s in summaries),
        "acked_messages": sum(s["acked_messages"] for s in summaries),
        "seconds": round(seconds, 4),
        "gbps": round(total_bytes / seconds / 1e9, 3) if seconds else 0.0,
        "errors": [s["error"] for s in summaries if s["error"]],
        "spec": {k: v for k, v in asdict(spec).items() if k not in ("host", "port")},
        "publishers": summaries,
    }


def _collect(procs: list[Any], results: Any, progress: list[Any], spec: LoadSpec,
             show_progress: bool, t0: float, timeout_s: float) -> list[dict[str, Any]]:
    import queue

    summaries: list[dict[str, Any]] = []
    bar: Any = None
    task: Any = None
    if show_progress:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TransferSpeedColumn,
        )
        bar = Progress(TextColumn("publishing"), BarColumn(), DownloadColumn(binary_units=True),
                       TransferSpeedColumn(), TimeElapsedColumn(), transient=True,
                       redirect_stdout=False)
        bar.start()
        task = bar.add_task("pub", total=spec.total_bytes)
    try:
        deadline = time.monotonic() + timeout_s
        while len(summaries) < len(procs):
            try:
                summaries.append(results.get(timeout=0.2))
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise PublishError(f"publishers still running after {timeout_s} s") from None
                if all(not p.is_alive() for p in procs) and results.empty():
                    time.sleep(0.2)
                    if results.empty():
                        break  # a worker died without reporting
            if bar is not None:
                bar.update(task, completed=sum(v.value for v in progress))
    finally:
        if bar is not None:
            bar.stop()
    reported = {s["index"] for s in summaries}
    for i, p in enumerate(procs):
        if i not in reported:
            summaries.append({"index": i, "client_id": None, "error":
                              f"publisher process died (exit code {p.exitcode})", "bytes": 0,
                              "batches": 0, "messages": 0, "acked_messages": 0})
    return summaries


def progress_wanted(json_output: bool) -> bool:
    return not json_output and sys.stdout.isatty()
