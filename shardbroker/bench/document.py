"""The bench's result document (what ``--json`` writes; schema in schema.py) and the
targets it is judged against. Pure: outcomes in, plain dicts out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shardbroker.bench.result import METRICS
from shardbroker.bench.runner import ScenarioOutcome
from shardbroker.bench.scenarios import BASELINE_SUFFIX, SENDER_CEILING
from shardbroker.bench.stats import Spread, aggregate, ratio

SCHEMA_ID = "shardbroker-bench/1"
BASELINES = ("limit", "pyzmq")


def contender_entry(co: Any) -> dict[str, Any]:
    ok_runs = [r.figures() for r in co.runs if r.ok]
    summary = aggregate(ok_runs, METRICS)
    return {
        "name": co.name,
        "description": co.description,
        "status": co.status,
        "skip_reason": co.skip_reason,
        "runs_ok": len(ok_runs),
        "runs_failed": sum(not r.ok for r in co.runs),
        "summary": {m: s.to_dict() for m, s in summary.items()},
        "ratios": {},
        "runs": [r.to_dict() for r in co.runs],
    }


def _spread(entry: dict[str, Any] | None, metric: str) -> Spread | None:
    if entry is None:
        return None
    s = entry["summary"].get(metric)
    return None if s is None else Spread(s["median"], s["min"], s["max"], s["n"])


def _ratios(e: dict[str, Any], by_name: dict[str, dict[str, Any]],
            metric: str) -> dict[str, float | None]:
    """GB/s against limit and pyzmq; against the sink (the senders' ceiling) where the
    scenario has one; and, for a contender with an @base twin, new against old."""
    refs = {f"vs_{b}": b for b in BASELINES}
    if SENDER_CEILING in by_name:
        refs["vs_sink"] = SENDER_CEILING
    if e["name"] + BASELINE_SUFFIX in by_name:
        refs["vs_base"] = e["name"] + BASELINE_SUFFIX
    return {k: ratio(_spread(e, metric), _spread(by_name.get(ref), metric))
            for k, ref in refs.items()}


def scenario_entry(out: ScenarioOutcome) -> dict[str, Any]:
    sc = out.scenario
    entries = [contender_entry(c) for c in out.contenders]
    by_name = {e["name"]: e for e in entries}
    metric = "gbps"  # ratios of throughput; batch sizes are equal within a scenario
    for e in entries:
        if sc.kind == "throughput":
            e["ratios"] = _ratios(e, by_name, metric)
        else:
            e["ratios"] = {f"vs_{b}": None for b in BASELINES}
    return {**sc.describe(), "cpu_plan": out.plan.to_dict(), "notes": list(sc.notes),
            "info": dict(out.info), "contenders": entries}


def build_document(outcomes: Sequence[ScenarioOutcome], *, options: dict[str, Any],
                   machine: dict[str, Any], environment: dict[str, Any], started: str,
                   finished: str) -> dict[str, Any]:
    scenarios = [scenario_entry(o) for o in outcomes]
    doc = {
        "schema": SCHEMA_ID,
        "started": started,
        "finished": finished,
        "date": started[:10],
        "machine": machine,
        "options": options,
        "environment": environment,
        "scenarios": scenarios,
        "targets": [],
        "ok": not any(e["runs_failed"] for s in scenarios for e in s["contenders"]),
    }
    doc["targets"] = evaluate_targets(doc)
    return doc


# --------------------------------------------------------------------------- targets

@dataclass(frozen=True)
class Target:
    id: str
    description: str
    threshold: float
    at_least: bool  # True: value >= threshold; False: value <= threshold
    unit: str


TARGETS = (
    Target("S1_vs_limit", "S1 GB/s vs limit", 1.3, True, "x"),
    Target("S2_vs_limit", "S2 GB/s vs limit", 1.0, True, "x"),
    Target("S2_vs_pyzmq", "S2 GB/s vs pyzmq", 1.7, True, "x"),
    Target("S2_vs_nats", "S2 GB/s vs nats", 10.0, True, "x"),
    Target("S3_vs_S1", "S3 GB/s vs own S1 GB/s", 0.6, True, "x"),
    Target("S4_batches_per_s", "S4 batches/s", 100_000, True, "batches/s"),
    Target("S5_p99", "S5 publish-to-ack p99", 1000.0, False, "us"),
    Target("receiver_rss", "receiver private RSS, worst scenario", 100.0, False, "MiB"),
)


def _median(doc: dict[str, Any], scenario: str, contender: str, metric: str) -> float | None:
    for s in doc["scenarios"]:
        if s["id"] != scenario:
            continue
        for e in s["contenders"]:
            if e["name"] == contender and metric in e["summary"]:
                return float(e["summary"][metric]["median"])
    return None


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def target_value(doc: dict[str, Any], t: Target, who: str) -> float | None:
    def m(sc: str, name: str, metric: str = "gbps") -> float | None:
        return _median(doc, sc, name, metric)

    if t.id == "S1_vs_limit":
        return _div(m("S1", who), m("S1", "limit"))
    if t.id.startswith("S2_vs_"):
        return _div(m("S2", who), m("S2", t.id.removeprefix("S2_vs_")))
    if t.id == "S3_vs_S1":
        return _div(m("S3", who), m("S1", who))
    if t.id == "S4_batches_per_s":
        return m("S4", who, "batches_per_s")
    if t.id == "S5_p99":
        return m("S5", who, "latency_p99_us")
    if t.id == "receiver_rss":
        vals = [v for s in doc["scenarios"]
                if (v := _median(doc, s["id"], who, "receiver_rss_mib")) is not None]
        return max(vals) if vals else None
    raise ValueError(f"unknown target {t.id}")


def evaluate_targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target for each shardbroker contender that produced figures (met: None when the
    figures it needs were not measured in this run)."""
    names = sorted({e["name"] for s in doc["scenarios"] for e in s["contenders"]
                    if e["name"].startswith("shardbroker-") and e["runs_ok"]})
    out = []
    for who in names:
        for t in TARGETS:
            v = target_value(doc, t, who)
            met = None if v is None else (v >= t.threshold if t.at_least else v <= t.threshold)
            out.append({"id": t.id, "contender": who, "description": t.description,
                        "value": v, "threshold": t.threshold,
                        "comparison": ">=" if t.at_least else "<=", "unit": t.unit,
                        "met": met})
    return out
