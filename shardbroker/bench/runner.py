"""Runs the selected scenarios: each scenario's contenders interleaved (A B C A B C …) K
times, skips decided up front, S5 paced from S1's measured rate."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from shardbroker.bench.contenders import Contender, Environment, RunContext
from shardbroker.bench.result import RunResult
from shardbroker.bench.scenarios import QUICK, CpuPlan, Scenario, plan_cpus
from shardbroker.bench.stats import spread

RATE_REFERENCE = "shardbroker-epoll"  # whose S1 rate paces S5


@dataclass
class ContenderOutcome:
    name: str
    description: str
    skip_reason: str | None = None
    runs: list[RunResult] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.skip_reason is not None:
            return "skipped"
        if self.runs and all(r.ok for r in self.runs):
            return "ok"
        return "failed" if not any(r.ok for r in self.runs) else "partial"


@dataclass
class ScenarioOutcome:
    scenario: Scenario
    plan: CpuPlan
    contenders: list[ContenderOutcome]
    info: dict[str, Any] = field(default_factory=dict)


def gbps_median(outcome: ScenarioOutcome, name: str) -> float | None:
    for c in outcome.contenders:
        if c.name == name:
            s = spread(r.figures()["gbps"] for r in c.runs if r.ok)
            return None if s is None else s.median
    return None


def run_bench(scenarios: Sequence[Scenario], contenders: Sequence[Contender], env: Environment,
              repeat: int, log: Callable[[str], None] = lambda _m: None,
              timeout_s: float = 300.0, cpus: Sequence[int] | None = None
              ) -> list[ScenarioOutcome]:
    allowed = list(cpus) if cpus is not None else sorted(os.sched_getaffinity(0))
    available = {c.name: c.availability(env) for c in contenders}
    outcomes: list[ScenarioOutcome] = []
    s1_rate: float | None = None
    for sc in scenarios:
        plan = plan_cpus(allowed, sc.receivers, sc.publishers)
        out = ScenarioOutcome(sc, plan, [])
        active: list[tuple[Contender, ContenderOutcome]] = []
        for c in contenders:
            reason = available[c.name] or c.supports(sc)
            if reason is None and c.scenario_name not in sc.contenders:
                reason = f"not part of {sc.id}"
            co = ContenderOutcome(c.name, c.description, reason)
            out.contenders.append(co)
            if co.skip_reason is None:
                active.append((c, co))
            else:
                log(f"{sc.id} {c.name}: skipped: {co.skip_reason}")
        if sc.kind == "latency" and active:
            if s1_rate is None:
                s1_rate, source = _calibrate(contenders, env, allowed, log, timeout_s)
            else:
                source = f"S1 median of {RATE_REFERENCE} in this run"
            out.info["s1_rate_gbps"] = None if s1_rate is None else s1_rate / 1e9
            out.info["s1_rate_source"] = source
        for rep in range(repeat):
            for c, co in active:
                ctx = RunContext(plan, rep, env, timeout_s, s1_rate, log)
                r = c.run(sc, ctx)
                co.runs.append(r)
                log(_line(r))
        if sc.id == "S1":
            g = gbps_median(out, RATE_REFERENCE)
            if g is not None:
                s1_rate = g * 1e9
        outcomes.append(out)
    return outcomes


def _calibrate(contenders: Sequence[Contender], env: Environment, allowed: Sequence[int],
               log: Callable[[str], None], timeout_s: float) -> tuple[float | None, str]:
    """S5 without S1 in the run: one short S1 run of the reference contender sets the pace."""
    ref = next((c for c in contenders if c.name == RATE_REFERENCE), None)
    if ref is None or ref.availability(env) is not None:
        return None, f"no {RATE_REFERENCE} to calibrate with"
    sc = replace(QUICK[0], total_bytes=256 << 20)
    r = ref.run(sc, RunContext(plan_cpus(allowed, 1, 1), 0, env, timeout_s, None, log))
    log("calibration " + _line(r))
    g = r.figures()["gbps"] if r.ok else None
    if g is None:
        return None, f"calibration run failed: {r.error}"
    return g * 1e9, f"one {sc.total_bytes >> 20} MiB S1 run of {RATE_REFERENCE} (S1 not selected)"


def _line(r: RunResult) -> str:
    f = r.figures()
    if not r.ok:
        return f"{r.scenario} {r.contender} #{r.rep + 1}: FAILED: {r.error}"
    parts = [f"{r.scenario} {r.contender} #{r.rep + 1}:"]
    if f["gbps"] is not None:
        parts.append(f"{f['gbps']:.2f} GB/s {f['batches_per_s'] or 0:,.0f} batches/s")
    if f["receiver_cpu_s_per_gb"] is not None:
        parts.append(f"rx {f['receiver_cpu_s_per_gb']:.3f} CPU-s/GB")
    if f["latency_p99_us"] is not None:
        parts.append(f"p50 {f['latency_p50_us']:.0f} us p99 {f['latency_p99_us']:.0f} us")
    return " ".join(parts)
