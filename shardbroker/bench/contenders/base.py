"""What every contender provides, the environment it is judged available in, and the
measurement wrapped around a run (receiver CPU, wakeups, RSS, machine CPU)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shardbroker.bench import measure
from shardbroker.bench.procs import WorkerSet
from shardbroker.bench.result import RunFailed, RunResult
from shardbroker.bench.scenarios import CpuPlan, Scenario

TOOLS = ("iperf3", "nats-server", "taskset")
MODULES = ("zmq", "nats", "matplotlib")
EXTRA_HINT = "pip install 'shardbroker[bench]'"


@dataclass(frozen=True)
class Environment:
    """What is installed, decided once per bench run (tests build fake ones)."""

    tools: Mapping[str, str | None] = field(default_factory=dict)  # name -> path or None
    modules: Mapping[str, bool] = field(default_factory=dict)  # importable?
    run_help: str = ""  # output of `shardbroker run --help`

    def has_tool(self, name: str) -> bool:
        return bool(self.tools.get(name))

    def has_module(self, name: str) -> bool:
        return bool(self.modules.get(name))


def probe_environment() -> Environment:
    try:
        out = subprocess.run([sys.executable, "-m", "shardbroker", "run", "--help"],
                             capture_output=True, text=True, timeout=60, check=False)
        run_help = out.stdout
    except (OSError, subprocess.TimeoutExpired):
        run_help = ""
    return Environment(
        tools={t: shutil.which(t) for t in TOOLS},
        modules={m: importlib.util.find_spec(m) is not None for m in MODULES},
        run_help=run_help,
    )


@dataclass
class RunContext:
    plan: CpuPlan
    rep: int
    env: Environment
    timeout_s: float = 300.0
    s1_rate_bytes_s: float | None = None  # latency scenarios: S1's measured rate
    log: Callable[[str], None] = lambda _msg: None


class Contender(ABC):
    name: str = ""
    description: str = ""
    acks: bool = False  # has a per-batch acknowledgement path (S5)
    # The name a scenario's contender list knows it by: a baseline copy of a contender (an
    # older checkout's broker) takes part wherever the original does.
    listed_as: str = ""

    @property
    def scenario_name(self) -> str:
        return self.listed_as or self.name

    def availability(self, env: Environment) -> str | None:
        """None when it can run here, else a one-line reason saying how to enable it."""
        return None

    def supports(self, sc: Scenario) -> str | None:
        """None when it takes part in ``sc``, else why not."""
        if sc.kind == "latency" and not self.acks:
            return f"{self.name} has no per-batch ack to time"
        return None

    @abstractmethod
    def run(self, sc: Scenario, ctx: RunContext) -> RunResult:
        """One measured run; returns a failed RunResult (never raises) on trouble."""

    def new_result(self, sc: Scenario, ctx: RunContext) -> RunResult:
        return RunResult(self.name, sc.id, ctx.rep)


def sender_errors(summaries: Sequence[dict[str, Any]]) -> None:
    errors = [str(s["error"]) for s in summaries if s.get("error")]
    if errors:
        raise RunFailed("; ".join(sorted(set(errors)))[:500])


def measured_run(senders: WorkerSet, rx_pids: Sequence[int], timeout_s: float,
                 wait_done: Callable[[], Any] | None = None, rss_pids: Sequence[int] = ()
                 ) -> tuple[list[dict[str, Any]], measure.Usage, float, Any]:
    """Start the (ready) senders, wait for them and then for ``wait_done`` (receivers that
    report the last byte), measuring across exactly that window: CPU and wakeups of the
    receiver processes ``rx_pids`` (read from /proc, so they must outlive the window),
    machine CPU, and the peak private RSS of ``rx_pids`` and ``rss_pids``."""
    before = measure.snapshot(rx_pids)
    with measure.RssSampler([*rx_pids, *rss_pids]) as rss:
        senders.go()
        summaries = senders.collect(timeout_s)
        done = wait_done() if wait_done is not None else None
        after = measure.snapshot(rx_pids)
    return summaries, measure.usage(before, after), rss.peak_mib, done


def add_self_reported(res: RunResult, receivers: Sequence[dict[str, Any]]) -> None:
    """Receivers that measured themselves (getrusage: exited threads included)."""
    res.receiver_cpu_s = (res.receiver_cpu_s or 0.0) + sum(float(r["cpu_s"]) for r in receivers)
    res.wakeups = (res.wakeups or 0) + int(sum(float(r["switches"]) for r in receivers))


def fill_from_senders(res: RunResult, summaries: Sequence[dict[str, Any]]) -> None:
    """Bytes, batches, window and sender CPU from acked senders (end = last ack)."""
    res.bytes = sum(int(s["bytes"]) for s in summaries)
    res.batches = sum(int(s["batches"]) for s in summaries)
    t0 = min(float(s["t_start"]) for s in summaries)
    t1 = max(float(s["t_end"]) for s in summaries)
    res.seconds = t1 - t0
    res.sender_cpu_util = max(float(s["cpu_s"]) / max(1e-9, float(s["t_end"]) - float(
        s["t_start"])) for s in summaries)


def fill_usage(res: RunResult, use: measure.Usage, rss_peak_mib: float) -> None:
    res.receiver_cpu_s = use.receiver_cpu_s
    res.machine_cpu_s = use.machine_cpu_s
    res.wakeups = use.receiver_switches
    res.receiver_rss_mib = rss_peak_mib


def absorb_run(res: RunResult, sums: Sequence[dict[str, Any]], use: measure.Usage,
               rss_peak_mib: float, receivers: Sequence[dict[str, Any]]) -> None:
    """The common tail of a measured run: fail on any worker's reported error, then the CPU
    usage and the receivers' self-reported counters."""
    sender_errors(sums)
    sender_errors(receivers)
    fill_usage(res, use, rss_peak_mib)
    add_self_reported(res, receivers)


def require_data(res: RunResult, check: dict[str, Any]) -> None:
    """Record a data check; a run whose data is wrong gives no figures."""
    res.data_check = check
    if not check["ok"]:
        raise RunFailed("data check failed: " + "; ".join(check["problems"]))
