"""``shardbroker-<backend>``: a real broker (``shardbroker run``) fed by the bench's protocol
senders; every run is checked through SegmentReader before its figures count.

The backend list is data: a backend takes part once ``shardbroker run --help`` mentions it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Any

import posix_ipc

from shardbroker.bench import datacheck, senders
from shardbroker.bench.contenders.base import (
    Contender,
    Environment,
    RunContext,
    fill_from_senders,
    fill_usage,
    measured_run,
    sender_errors,
)
from shardbroker.bench.procs import WorkerSet
from shardbroker.bench.result import RunFailed, RunResult
from shardbroker.bench.scenarios import Scenario
from shardbroker.errors import ShardbrokerError
from shardbroker.publisher.client import random_client_id
from shardbroker.supervisor.process import BrokerProcess

# Receive-syscall counters, most specific first: an io_uring backend reports its enters.
RECV_CALL_KEYS = ("io_uring_enters", "uring_enters", "recv_calls")
BLOG_BYTES = "256MiB"


def recv_calls(stats: dict[str, int]) -> tuple[str, int] | None:
    """The receive-syscall counter that this backend kept: the most specific one that is
    non-zero (an epoll broker reports ``uring_enters`` as 0), else ``recv_calls``."""
    for k in RECV_CALL_KEYS:
        if stats.get(k):
            return k, stats[k]
    return ("recv_calls", stats["recv_calls"]) if "recv_calls" in stats else None


class ShardbrokerContender(Contender):
    acks = True

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.name = f"shardbroker-{backend}"
        self.description = f"shardbroker run --backend {backend}, recv straight into shm"

    def availability(self, env: Environment) -> str | None:
        if self.backend == "epoll":
            return None
        if self.backend not in env.run_help:
            return (f"`shardbroker run --help` offers no {self.backend} backend yet; this "
                    f"contender runs once `--backend {self.backend}` is accepted")
        return None

    def broker_args(self, sc: Scenario, ctx: RunContext, segment: str) -> list[str]:
        return broker_args(self.backend, sc.receivers, segment, ctx.env.run_help)

    def new_broker(self, args: list[str], stderr: int) -> BrokerProcess:
        """The broker process to start (a baseline contender runs another interpreter)."""
        return BrokerProcess(args, ready_timeout_s=60, stderr=stderr)

    def run(self, sc: Scenario, ctx: RunContext) -> RunResult:
        res = self.new_result(sc, ctx)
        with tempfile.TemporaryFile() as errlog:
            try:
                self._run(sc, ctx, res, errlog.fileno())
            except (RunFailed, ShardbrokerError, OSError, ValueError) as exc:
                res.fail(f"{exc}{_stderr_tail(errlog)}")
        return res

    def _run(self, sc: Scenario, ctx: RunContext, res: RunResult, stderr: int) -> None:
        segment = f"shardbroker-bench-{os.getpid()}-{os.urandom(3).hex()}"
        broker = self.new_broker(self.broker_args(sc, ctx, segment), stderr)
        ws = WorkerSet()
        try:
            broker.start()
            got = broker.ready.get("backend", "epoll")
            if got != self.backend:
                raise RunFailed(f"asked for the {self.backend} backend, broker runs {got}")
            res.extra["receiver_cpus"] = [r.get("cpu")
                                          for r in broker.ready.get("receivers", [])]
            rx = broker.receiver_pids() or [broker.pid]  # an older broker may not list them
            ws.start(*sender_plan(sc, ctx, broker.host, broker.port))
            ws.wait_ready()
            sums, use, rss, _ = measured_run(ws, rx, ctx.timeout_s)
            sender_errors(sums)
            fill_from_senders(res, sums)
            fill_usage(res, use, rss)
            latency_fields(res, sums)
            stats = datacheck.settled_stats(segment)
            rc = recv_calls(stats)
            if rc is not None:
                res.extra["recv_calls_counter"], res.recv_calls = rc
            if res.batches:
                res.extra["epoll_wakeups_per_batch"] = stats.get("wakeups", 0) / res.batches
                res.extra["eagain_per_batch"] = stats.get("eagain", 0) / res.batches
            res.extra["rcvbuf_max"] = stats.get("rcvbuf_max")
            res.data_check = datacheck.check_segment(segment, sums)
            if not res.data_check["ok"]:
                raise RunFailed("data check failed: " + "; ".join(res.data_check["problems"]))
        finally:
            ws.close()
            broker.stop(timeout_s=15)
            with contextlib.suppress(posix_ipc.ExistentialError):
                posix_ipc.unlink_shared_memory("/" + segment)


def broker_args(backend: str, receivers: int, segment: str, run_help: str) -> list[str]:
    """``shardbroker run`` arguments; ``--backend`` only where this checkout's broker offers
    it (``run_help``), so a broker from before the flag still runs as epoll."""
    args = ["--listen", "127.0.0.1:0", "--threads", str(receivers), "--segment", segment,
            "--blog-size", BLOG_BYTES, "--log-level", "warning"]
    if "--backend" in run_help:
        args += ["--backend", backend]
    return args


def sender_plan(sc: Scenario, ctx: RunContext, host: str, port: int | list[int]
                ) -> tuple[Any, list[Any]]:
    """The protocol senders for ``sc``: streaming for throughput, paced for latency.
    ``port``: one port, or one per receiver (publisher i goes to port i % len)."""
    ports = port if isinstance(port, list) else [port]
    ids = [random_client_id() for _ in range(sc.publishers)]
    if sc.kind == "latency":
        if not ctx.s1_rate_bytes_s:
            raise RunFailed("no S1 rate to pace at")
        rate = ctx.s1_rate_bytes_s * sc.load_fraction / sc.publishers
        return senders.paced, [
            senders.PacedParams("127.0.0.1" if host == "0.0.0.0" else host,
                                ports[i % len(ports)], ids[i], sc.batch_bytes, sc.message_size,
                                rate, sc.duration_s, ctx.plan.publisher_cpu(i))
            for i in range(sc.publishers)]
    return senders.stream, [
        senders.StreamParams(host, ports[i % len(ports)], ids[i], sc.batch_bytes,
                             sc.message_size, n, ctx.plan.publisher_cpu(i))
        for i, n in enumerate(sc.batches_per_publisher())]


def latency_fields(res: RunResult, sums: list[dict[str, Any]]) -> None:
    lat = [s for s in sums if s.get("latency_us")]
    if not lat:
        return
    # One paced publisher per latency scenario: its distribution is the run's.
    res.latency_us = dict(lat[0]["latency_us"])
    res.offered_gbps = sum(float(s["offered_gbps"]) for s in lat)
    res.extra["schedule_resets"] = sum(int(s.get("schedule_resets", 0)) for s in lat)


def _stderr_tail(f: Any) -> str:
    try:
        f.seek(0)
        text = f.read().decode("utf-8", "replace").strip().splitlines()
    except (OSError, ValueError):
        return ""
    return (" | broker stderr: " + " / ".join(text[-3:])) if text else ""
