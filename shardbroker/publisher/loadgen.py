"""Load generator behind ``shardbroker publish``: publisher processes streaming pre-built batches.

Each connection is its own process (its own client id), so the generator is not limited by one
Python interpreter. Workers connect, wait for a common start, stream until their share of
``total`` bytes is sent or ``duration`` is over, flush (wait for every ack), and report.
With ``brokers`` set each worker is a ``ClusterPublisher`` with one connection per broker of
that list (or name), and the summary says per broker what it took and how it fared.
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
from shardbroker.publisher.cluster import ClusterPublisher
from shardbroker.publisher.membership import Resolver, hosts_file_resolver
from shardbroker.publisher.placement import PLACEMENTS

PROGRESS_EVERY_S = 0.5  # cluster workers report per-broker bytes this often (progress bar)


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
    # Cluster mode: HOST:PORT,... or a name resolving to every broker (host/port unused);
    # retries then bounds how often one batch is sent again after its broker failed.
    brokers: str = ""
    hosts_file: str = ""  # resolve names from this hosts(5) file first (tests, air-gapped)
    placement: str = "least-bytes"
    refresh_s: float = 5.0

    def __post_init__(self) -> None:
        if self.connections < 1:
            raise ValueError("--connections must be >= 1")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"--placement must be one of {', '.join(PLACEMENTS)}")
        if (self.total_bytes is None) == (self.duration_s is None):
            raise ValueError("give exactly one of --total and --duration")


def _publisher(spec: LoadSpec, client_id: int, geom: BatchGeometry, tmpl: BatchTemplate
               ) -> Publisher | ClusterPublisher:
    if not spec.brokers:
        return Publisher(spec.host, spec.port, topic=spec.topic, client_id=client_id,
                         ack=spec.ack, batch_bytes=geom.payload_bytes,
                         max_in_flight=spec.max_in_flight, retries=spec.retries,
                         resend_source=tmpl.for_seq)
    resolver: Resolver | None = hosts_file_resolver(spec.hosts_file) if spec.hosts_file else None
    return ClusterPublisher(spec.brokers, topic=spec.topic, client_id=client_id, ack=spec.ack,
                            batch_bytes=geom.payload_bytes, max_in_flight=spec.max_in_flight,
                            retries=spec.retries, placement=spec.placement,
                            refresh_s=spec.refresh_s, resolver=resolver,
                            resend_source=tmpl.for_seq)


def _worker(index: int, spec: LoadSpec, client_id: int, progress: Any, ready: Any,
            go: Any, results: Any, report_brokers: bool = False) -> None:
    summary: dict[str, Any] = {"index": index, "client_id": client_id, "error": None}
    geom = BatchGeometry.for_batch(spec.batch_bytes, spec.message_size)
    summary.update(message_size=geom.message_size, messages_per_batch=geom.messages,
                   batch_payload_bytes=geom.payload_bytes)
    pub: Publisher | ClusterPublisher | None = None
    try:
        if spec.cpus:
            os.sched_setaffinity(0, {spec.cpus[index % len(spec.cpus)]})
        tmpl = BatchTemplate(client_id, geom)
        pub = _publisher(spec, client_id, geom, tmpl)
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
        next_report = 0.0
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
            if report_brokers and isinstance(pub, ClusterPublisher) \
                    and time.monotonic() >= next_report:
                next_report = time.monotonic() + PROGRESS_EVERY_S
                results.put({"progress": index, "brokers": _broker_bytes(pub)})
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
                           messages=pub.sent_messages, acked_messages=pub.acked_messages)
            if isinstance(pub, ClusterPublisher):
                summary.update(reconnects=sum(b["connects"] - 1 for b in pub.brokers()
                                              if b["connects"]),
                               brokers=pub.brokers(), failovers=pub.failovers,
                               resent=pub.resent, unacked_seqs=pub.unacked_seqs())
            else:
                summary.update(reconnects=pub.reconnects)
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
    per_broker = show_progress and bool(spec.brokers)
    procs = [ctx.Process(target=_worker, args=(i, spec, ids[i], progress[i], ready, go, results,
                                               per_broker),
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
    out = {
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
    if spec.brokers:
        out["brokers"] = merge_broker_reports(summaries, total_bytes)
        out["failovers"] = [f | {"client_id": s["client_id"]} for s in summaries
                            for f in s.get("failovers", [])]
    return out


def merge_broker_reports(summaries: list[dict[str, Any]], total_bytes: int
                         ) -> list[dict[str, Any]]:
    """One entry per broker over all publisher processes: what it took, its state in each."""
    merged: dict[str, dict[str, Any]] = {}
    for s in summaries:
        for b in s.get("brokers", []):
            m = merged.setdefault(b["broker"], {
                "broker": b["broker"], "name": b["name"], "states": {}, "batches": 0,
                "bytes": 0, "acked_batches": 0, "acked_bytes": 0, "resent_in": 0,
                "failures": 0, "connects": 0, "last_error": ""})
            m["states"][b["state"]] = m["states"].get(b["state"], 0) + 1
            for k in ("batches", "bytes", "acked_batches", "acked_bytes", "resent_in",
                      "failures", "connects"):
                m[k] += b[k]
            m["last_error"] = b["last_error"] or m["last_error"]
    for m in merged.values():
        m["state"] = "/".join(sorted(m["states"]))  # "up", or e.g. "down/up" when mixed
        m["share"] = round(m["bytes"] / total_bytes, 4) if total_bytes else 0.0
    return sorted(merged.values(), key=lambda m: m["broker"])


def render_brokers(summary: dict[str, Any]) -> list[str]:
    """The text lines of a cluster summary: one per broker, one per failover."""
    lines = []
    for b in summary.get("brokers", []):
        err = f"; last error: {b['last_error']}" if b["last_error"] else ""
        lines.append(f"  broker {b['broker']}: {b['state']}, {b['bytes'] / 2**20:.1f} MiB "
                     f"({b['share'] * 100:.1f} %) in {b['batches']} batches, "
                     f"{b['acked_batches']} acked, {b['resent_in']} re-sent to it, "
                     f"{b['failures']} failures{err}")
    for f in summary.get("failovers", []):
        took = (f"first re-sent to {f['first_resend_to']} after "
                f"{(f['first_resend_at'] - f['down_at']) * 1e3:.1f} ms"
                if f["first_resend_at"] is not None else "nothing to re-send")
        lines.append(f"  failover: {f['broker']} failed ({f['why']}) with {f['unacked']} "
                     f"unacked batches of client {f['client_id']}; {took}")
    return lines


def _broker_bytes(pub: ClusterPublisher) -> dict[str, int]:
    return {b["broker"]: b["acked_bytes"] for b in pub.brokers()}


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
        bar = Progress(TextColumn("{task.description}"), BarColumn(),
                       DownloadColumn(binary_units=True), TransferSpeedColumn(),
                       TimeElapsedColumn(), transient=True, redirect_stdout=False)
        bar.start()
        task = bar.add_task("publishing", total=spec.total_bytes)
    broker_bytes: dict[int, dict[str, int]] = {}  # worker -> broker -> acked bytes
    broker_tasks: dict[str, Any] = {}
    try:
        deadline = time.monotonic() + timeout_s
        while len(summaries) < len(procs):
            try:
                item = results.get(timeout=0.2)
                if "progress" in item:
                    broker_bytes[item["progress"]] = item["brokers"]
                else:
                    summaries.append(item)
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise PublishError(f"publishers still running after {timeout_s} s") from None
                if all(not p.is_alive() for p in procs) and results.empty():
                    time.sleep(0.2)
                    if results.empty():
                        break  # a worker died without reporting
            if bar is not None:
                bar.update(task, completed=sum(v.value for v in progress))
                _update_broker_tasks(bar, broker_tasks, broker_bytes)
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


def _update_broker_tasks(bar: Any, tasks: dict[str, Any],
                         per_worker: dict[int, dict[str, int]]) -> None:
    """One progress line per broker: bytes it acked, over all publisher processes."""
    totals: dict[str, int] = {}
    for brokers in per_worker.values():
        for name, n in brokers.items():
            totals[name] = totals.get(name, 0) + n
    for name, n in sorted(totals.items()):
        if name not in tasks:
            tasks[name] = bar.add_task(f"  {name}", total=None)
        bar.update(tasks[name], completed=n)


def progress_wanted(json_output: bool) -> bool:
    return not json_output and sys.stdout.isatty()
