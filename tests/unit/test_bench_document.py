"""The bench result document: aggregation over runs, ratios, targets, JSON schema, and the
table and Markdown renderings (pure: synthetic runs, no processes)."""

from __future__ import annotations

import json
from dataclasses import replace

from shardbroker.bench import report
from shardbroker.bench.document import build_document, evaluate_targets
from shardbroker.bench.result import RunResult
from shardbroker.bench.runner import ContenderOutcome, ScenarioOutcome
from shardbroker.bench.scenarios import FULL, plan_cpus
from shardbroker.bench.schema import SCHEMA, validate

GB = 10**9


def run(name: str, sc: str, rep: int, gbps: float, ok: bool = True, **kw: object) -> RunResult:
    r = RunResult(name, sc, rep, bytes=int(gbps * GB), batches=int(gbps * 500), seconds=1.0,
                  receiver_cpu_s=0.1 * gbps, machine_cpu_s=0.5 * gbps, recv_calls=None,
                  wakeups=int(gbps * 100), receiver_rss_mib=30.0, sender_cpu_util=0.9,
                  data_check={"kind": "test", "ok": ok, "problems": []})
    for k, v in kw.items():
        setattr(r, k, v)
    if not ok:
        r.fail("data check failed: client 1: 3 acked batches missing")
    return r


def outcomes() -> list[ScenarioOutcome]:
    plan = plan_cpus([0, 1], 1, 1)
    s1 = ScenarioOutcome(FULL[0], plan, [
        ContenderOutcome("limit", "iperf3", None, [run("limit", "S1", i, g)
                                                   for i, g in enumerate([5.0, 4.0, 6.0])]),
        ContenderOutcome("shardbroker-epoll", "broker", None, [
            run("shardbroker-epoll", "S1", 0, 7.0), run("shardbroker-epoll", "S1", 1, 99.0,
                                                         ok=False),
            run("shardbroker-epoll", "S1", 2, 8.0, recv_calls=3000)]),
        ContenderOutcome("shardbroker-uring", "uring", "`shardbroker run --help` offers no "
                                                       "uring backend yet", []),
        ContenderOutcome("pyzmq", "zmq", None, [run("pyzmq", "S1", i, 2.0) for i in range(3)]),
        ContenderOutcome("nats", "nats", None, [run("nats", "S1", 0, 1.0, ok=False)]),
    ])
    s5 = ScenarioOutcome(FULL[4], plan, [
        ContenderOutcome("shardbroker-epoll", "broker", None, [
            run("shardbroker-epoll", "S5", 0, 3.0, offered_gbps=3.75,
                latency_us={"p50_us": 80.0, "p99_us": 900.0, "p999_us": 2000.0})]),
    ], info={"s1_rate_gbps": 7.5, "s1_rate_source": "S1 median"})
    return [s1, s5]


def doc() -> dict[str, object]:
    return build_document(outcomes(), options={"repeat": 3, "quick": False,
                                               "scenarios": ["S1", "S5"]},
                          machine={"cpu_model": "Fake", "cpus_online": 2, "kernel": "6.18",
                                   "python": "3.11.2", "memory_gib": 24.0},
                          environment={"tools": {}}, started="2025-01-02T03:04:05+00:00",
                          finished="2025-01-02T03:14:05+00:00")


def _entry(d: dict[str, object], sc: str, name: str) -> dict[str, object]:
    s = next(x for x in d["scenarios"] if x["id"] == sc)  # type: ignore[attr-defined]
    return next(e for e in s["contenders"] if e["name"] == name)  # type: ignore[no-any-return]


def test_document_validates_against_schema_and_roundtrips() -> None:
    d = doc()
    assert validate(d) == []
    again = json.loads(json.dumps(d))
    assert validate(again) == []
    assert d["date"] == "2025-01-02"
    assert d["ok"] is False  # a failed run makes the whole result not ok


def test_failed_runs_are_left_out_of_figures() -> None:
    e = _entry(doc(), "S1", "shardbroker-epoll")
    g = e["summary"]["gbps"]  # type: ignore[index]
    assert (g["median"], g["min"], g["max"], g["n"]) == (7.5, 7.0, 8.0, 2)
    assert e["runs_ok"] == 2 and e["runs_failed"] == 1 and e["status"] == "partial"
    assert len(e["runs"]) == 3  # kept in the document, flagged
    assert e["summary"]["recv_calls_per_batch"]["n"] == 1  # type: ignore[index]
    assert _entry(doc(), "S1", "nats")["status"] == "failed"
    assert _entry(doc(), "S1", "nats")["summary"] == {}


def test_ratios_against_limit_and_pyzmq() -> None:
    d = doc()
    r = _entry(d, "S1", "shardbroker-epoll")["ratios"]
    assert r == {"vs_limit": 7.5 / 5.0, "vs_pyzmq": 7.5 / 2.0}
    assert _entry(d, "S1", "limit")["ratios"]["vs_limit"] == 1.0  # type: ignore[index]
    assert _entry(d, "S1", "nats")["ratios"] == {"vs_limit": None, "vs_pyzmq": None}
    assert _entry(d, "S5", "shardbroker-epoll")["ratios"]["vs_limit"] is None  # type: ignore[index]


def test_skipped_contender_carries_reason() -> None:
    e = _entry(doc(), "S1", "shardbroker-uring")
    assert e["status"] == "skipped" and "uring" in str(e["skip_reason"])


def test_targets() -> None:
    t = {x["id"]: x for x in doc()["targets"] if x["contender"] == "shardbroker-epoll"}  # type: ignore[attr-defined]
    assert t["S1_vs_limit"]["value"] == 1.5 and t["S1_vs_limit"]["met"] is True
    assert t["S2_vs_pyzmq"]["met"] is None  # S2 not run
    assert t["S5_p99"]["value"] == 900.0 and t["S5_p99"]["met"] is True
    assert t["receiver_rss"]["value"] == 30.0 and t["receiver_rss"]["met"] is True
    # no target rows for a contender without clean runs (uring skipped)
    assert not [x for x in doc()["targets"] if x["contender"] == "shardbroker-uring"]  # type: ignore[attr-defined]


def test_target_missed() -> None:
    d = doc()
    e = _entry(d, "S5", "shardbroker-epoll")
    e["summary"]["latency_p99_us"]["median"] = 5000.0  # type: ignore[index]
    t = {x["id"]: x for x in evaluate_targets(d)}
    assert t["S5_p99"]["met"] is False


def test_schema_rejects_broken_documents() -> None:
    d = doc()
    d["schema"] = "other/9"
    del d["machine"]
    d["scenarios"][0]["contenders"][0]["status"] = "great"  # type: ignore[index]
    d["scenarios"][0]["contenders"][0]["runs"][0]["figures"]["gbps"] = "fast"  # type: ignore[index]
    d["surprise"] = 1
    errs = validate(d)
    text = "\n".join(errs)
    assert "$.schema: expected 'shardbroker-bench/1'" in text
    assert "missing 'machine'" in text
    assert "'great' not one of" in text
    assert "figures.gbps: expected number/null" in text
    assert "unexpected 'surprise'" in text
    assert validate(True, {"type": "integer"})  # bool is not an integer
    assert SCHEMA["properties"]["schema"]["const"] == "shardbroker-bench/1"


def test_text_table() -> None:
    text = report.render_text(doc())
    assert "S1: 1 publisher, 1 receiver, 2 MiB batches (4.00 GiB)" in text
    line = next(x for x in text.splitlines() if x.strip().startswith("shardbroker-epoll")
                and "7.50" in x)
    assert "7.50 (7.00–8.00)" in line and "1.50" in line and "3.75" in line
    assert "shardbroker-uring: skipped: `shardbroker run --help`" in text
    assert "nats: FAILED: data check failed" in text
    assert "1 of 3 runs failed and are left out" in text
    assert "target shardbroker-epoll S1 GB/s vs limit: 1.50 x (>= 1.3): met" in text
    assert "pace: 50% of 7.50 GB/s (S1 median)" in text


def test_markdown() -> None:
    md = report.render_markdown(doc())
    assert md.startswith("Measured 2025-01-02 on 2 vCPU Fake, 24.0 GiB, Linux 6.18")
    assert "| contender | GB/s median (min–max) | batches/s |" in md
    assert "|---|---:|" in md
    assert "| shardbroker-epoll | 7.50 (7.00–8.00) |" in md
    assert "| contender | offered GB/s | achieved GB/s | p50 us | p99 us |" in md
    assert "* shardbroker-uring: skipped:" in md
    assert "**Targets**" in md and "| shardbroker-epoll | S5 publish-to-ack p99 |" in md


def test_latency_rows_and_small_numbers() -> None:
    outs = outcomes()
    outs[1].contenders[0].runs[0].wakeups = 3  # 3 per 1500 batches
    d = build_document(outs, options={"repeat": 1, "quick": True, "scenarios": []},
                       machine={"cpu_model": "x", "cpus_online": 1, "kernel": "k",
                                "python": "p"}, environment={}, started="2025-01-01T00:00:00",
                       finished="2025-01-01T00:00:01")
    text = report.render_text(d)
    s5 = text.split("S5:")[1]
    assert "0.002" in s5 and "900" in s5 and "3.75" in s5


def test_quick_scenario_sizes_in_titles() -> None:
    outs = outcomes()
    outs[0] = replace(outs[0], scenario=replace(FULL[0], total_bytes=384 << 20))
    assert "(0.38 GiB)" in report.render_text(doc() | {"scenarios": [
        build_document(outs, options={"repeat": 1, "quick": True, "scenarios": []},
                       machine={}, environment={}, started="2025", finished="2025")
        ["scenarios"][0]], "targets": []})
