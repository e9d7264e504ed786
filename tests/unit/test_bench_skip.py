"""Which contenders run where (tools missing, backends not offered yet, no ack path), the
interleaving order, S5's pace, and the command line. No processes are started."""

from __future__ import annotations

import argparse
import builtins
from dataclasses import replace
from typing import Any

import pytest

from shardbroker.bench import cli, plot
from shardbroker.bench.contenders import BACKENDS, all_contenders, by_name
from shardbroker.bench.contenders.base import Contender, Environment, RunContext
from shardbroker.bench.contenders.limit import parse_client_json
from shardbroker.bench.contenders.shardbroker import ShardbrokerContender, recv_calls
from shardbroker.bench.contenders.staging import connections_per_receiver
from shardbroker.bench.result import RunFailed, RunResult
from shardbroker.bench.runner import run_bench
from shardbroker.bench.scenarios import FULL, QUICK

FULL_ENV = Environment(tools={"iperf3": "/usr/bin/iperf3", "nats-server": "/usr/sbin/nats-server"},
                       modules={"zmq": True, "nats": True, "matplotlib": True},
                       run_help="  --backend {auto,epoll,uring}  receive backend")
BARE_ENV = Environment(tools={"iperf3": None, "nats-server": None},
                       modules={"zmq": True, "nats": False}, run_help="usage: shardbroker run")


def test_contender_list_is_data_driven() -> None:
    names = [c.name for c in all_contenders()]
    assert names == ["limit", "shardbroker-epoll", "shardbroker-uring", "pyzmq", "staging",
                     "nats", "sink"]
    assert BACKENDS == ("epoll", "uring")
    assert ShardbrokerContender("turbo").name == "shardbroker-turbo"


def test_everything_available_with_full_environment() -> None:
    assert {c.name: c.availability(FULL_ENV) for c in all_contenders()} == dict.fromkeys(
        ["limit", "shardbroker-epoll", "shardbroker-uring", "pyzmq", "staging", "nats", "sink"])


def test_skip_reasons_say_how_to_enable() -> None:
    reasons = {c.name: c.availability(BARE_ENV) for c in all_contenders()}
    assert reasons["shardbroker-epoll"] is None and reasons["staging"] is None
    assert reasons["pyzmq"] is None
    assert reasons["limit"] == "iperf3 not found: apt-get install -y iperf3 (or `make bench`)"
    assert reasons["nats"] is not None and "apt-get install -y nats-server" in reasons["nats"]
    uring = reasons["shardbroker-uring"]
    assert uring is not None and "--backend uring" in uring
    for r in reasons.values():
        assert r is None or "\n" not in r
    only_module = replace(BARE_ENV, tools={"nats-server": "/x"})
    assert "pip install 'shardbroker[bench]'" in str(by_name()["nats"].availability(only_module))
    no_zmq = replace(BARE_ENV, modules={"zmq": False})
    assert "pip install pyzmq" in str(by_name()["pyzmq"].availability(no_zmq))


def test_broker_args_pass_backend_only_when_offered() -> None:
    from shardbroker.bench.scenarios import plan_cpus

    c = ShardbrokerContender("epoll")
    ctx = RunContext(plan_cpus([0, 1], 2, 4), 0, FULL_ENV)
    args = c.broker_args(FULL[1], ctx, "seg")
    assert args[args.index("--threads") + 1] == "2"
    assert args[args.index("--backend") + 1] == "epoll"
    assert "--backend" not in c.broker_args(FULL[1], replace(ctx, env=BARE_ENV), "seg")


def test_scenario_specific_skips() -> None:
    s3, s4 = FULL[2], FULL[3]
    assert "1 MiB messages" in str(by_name()["nats"].supports(s3))
    assert by_name()["nats"].supports(FULL[1]) is None
    assert "no 4 KiB batches" in str(by_name()["limit"].supports(s4))
    assert by_name()["limit"].supports(s3) is None


def test_latency_scenario_needs_an_ack_path() -> None:
    s5 = FULL[4]
    assert by_name()["pyzmq"].supports(s5) is not None
    assert by_name()["nats"].supports(s5) is not None
    for name in ("limit", "shardbroker-epoll", "staging"):
        assert by_name()[name].supports(s5) is None
    assert by_name()["pyzmq"].supports(FULL[0]) is None


def test_recv_call_counter_choice() -> None:
    assert recv_calls({"recv_calls": 5, "wakeups": 1}) == ("recv_calls", 5)
    assert recv_calls({"recv_calls": 5, "uring_enters": 2}) == ("uring_enters", 2)
    assert recv_calls({"recv_calls": 5, "uring_enters": 0}) == ("recv_calls", 5)
    assert recv_calls({"recv_calls": 0, "uring_enters": 0}) == ("recv_calls", 0)
    assert recv_calls({"wakeups": 1}) is None


def test_connections_per_receiver() -> None:
    assert connections_per_receiver(4, 2) == [2, 2]
    assert connections_per_receiver(3, 2) == [2, 1]
    assert connections_per_receiver(1, 1) == [1]


def test_parse_iperf3_json() -> None:
    text = ('{"end": {"sum_received": {"bytes": 1000, "seconds": 0.5}, '
            '"sum_sent": {"bytes": 1010, "seconds": 0.5}}}')
    assert parse_client_json(text) == (1000, 0.5, 1010)
    with pytest.raises(RunFailed, match="no JSON"):
        parse_client_json("iperf3: error - unable to connect")
    with pytest.raises(RunFailed, match="iperf3: busy"):
        parse_client_json('{"error": "busy"}')


class Fake(Contender):
    """Returns a canned run and records the order it was called in."""

    def __init__(self, name: str, gbps: float, order: list[str], reason: str | None = None,
                 acks: bool = True) -> None:
        self.name, self.gbps, self.order, self.reason, self.acks = name, gbps, order, reason, acks
        self.description = name
        self.rates: list[float | None] = []

    def availability(self, env: Environment) -> str | None:
        return self.reason

    def run(self, sc: Any, ctx: RunContext) -> RunResult:
        self.order.append(f"{sc.id}:{self.name}:{ctx.rep}")
        self.rates.append(ctx.s1_rate_bytes_s)
        return RunResult(self.name, sc.id, ctx.rep, bytes=int(self.gbps * 1e9), batches=1,
                         seconds=1.0 + ctx.rep)


def test_runner_interleaves_and_skips() -> None:
    order: list[str] = []
    a = Fake("limit", 5.0, order)
    b = Fake("shardbroker-epoll", 6.0, order)
    c = Fake("nats", 1.0, order, reason="nats-server not found")
    d = Fake("pyzmq", 2.0, order, acks=False)
    logs: list[str] = []
    e = Fake("staging", 2.0, order)
    outs = run_bench([replace(FULL[0], contenders=("limit", "shardbroker-epoll", "pyzmq",
                                                   "nats")), FULL[4]],
                     [a, b, c, d, e], FULL_ENV, repeat=2, log=logs.append, cpus=[0, 1])
    assert order == ["S1:limit:0", "S1:shardbroker-epoll:0", "S1:pyzmq:0",
                     "S1:limit:1", "S1:shardbroker-epoll:1", "S1:pyzmq:1",
                     "S5:limit:0", "S5:shardbroker-epoll:0", "S5:staging:0",
                     "S5:limit:1", "S5:shardbroker-epoll:1", "S5:staging:1"]
    s1 = {co.name: co for co in outs[0].contenders}
    assert s1["nats"].status == "skipped" and s1["nats"].skip_reason == "nats-server not found"
    assert s1["limit"].status == "ok" and len(s1["limit"].runs) == 2
    s5 = {co.name: co for co in outs[1].contenders}
    assert s5["pyzmq"].skip_reason == "pyzmq has no per-batch ack to time"
    assert s1["pyzmq"].status == "ok"
    assert s1["staging"].skip_reason == "not part of S1"
    # S5 is paced from shardbroker-epoll's S1 median: (6/1 + 6/2) / 2 GB/s
    assert b.rates[-1] == pytest.approx(4.5e9)
    assert outs[1].info["s1_rate_gbps"] == pytest.approx(4.5)
    assert any("skipped: nats-server not found" in m for m in logs)
    assert outs[0].plan.receivers == (0,) and outs[0].plan.publishers == (1,)


def test_runner_calibrates_when_s1_not_selected() -> None:
    order: list[str] = []
    b = Fake("shardbroker-epoll", 3.0, order)
    outs = run_bench([FULL[4]], [b], FULL_ENV, repeat=1, cpus=[0, 1])
    assert order == ["S1:shardbroker-epoll:0", "S5:shardbroker-epoll:0"]
    assert b.rates[-1] == pytest.approx(3e9)
    assert "S1 not selected" in outs[0].info["s1_rate_source"]


def test_cli_flags_and_help() -> None:
    parser = argparse.ArgumentParser(prog="shardbroker")
    sub = parser.add_subparsers(dest="command")
    cli.add_parser(sub)
    a = parser.parse_args(["bench", "--scenario", "S1", "--scenario", "s5", "--repeat", "5",
                           "--quick", "--json", "o.json", "--plot", "o.png", "--markdown",
                           "o.md"])
    assert a.scenario == ["S1", "s5"] and a.repeat == 5 and a.quick
    assert (a.json, a.plot, a.markdown) == ("o.json", "o.png", "o.md")
    help_text = sub.choices["bench"].format_help()
    for flag in ("--scenario", "--repeat", "--quick", "--json", "--plot", "--markdown",
                 "--contender", "--timeout", "--list"):
        assert flag in help_text
    assert "interleaved" in help_text and "matplotlib" in help_text


def test_cli_rejects_bad_selection(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--scenario", "S7"]) == 2
    assert "unknown scenario S7" in capsys.readouterr().err
    assert cli.main(["--repeat", "0"]) == 2


def test_plot_skip_reason_without_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    real = builtins.__import__

    def no_mpl(name: str, *args: Any, **kw: Any) -> Any:
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(name)
        return real(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_mpl)
    reason = plot.matplotlib_missing()
    assert reason is not None and "pip install 'shardbroker[bench]'" in reason
    assert "\n" not in reason


def test_plot_writes_png(tmp_path: Any) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib not installed: pip install "
                                               "'shardbroker[bench]'")
    from tests.unit.test_bench_document import doc

    out = tmp_path / "chart.png"
    plot.write_plot(doc(), str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_render_from_json(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from tests.unit.test_bench_document import doc

    src, md = tmp_path / "r.json", tmp_path / "r.md"
    src.write_text(json.dumps(doc()))
    assert cli.main(["--render", str(src), "--markdown", str(md)]) == 1  # doc has a failure
    assert "S1: 1 publisher" in capsys.readouterr().out
    assert md.read_text().startswith("Measured 2025-01-02")
    src.write_text("{}")
    assert cli.main(["--render", str(src)]) == 2
    assert "is not a bench result" in capsys.readouterr().err


def test_plot_colours_are_stable() -> None:
    assert plot.colour("limit") == "C0" and plot.colour("nats") == "C5"
    assert plot.colour("shardbroker-turbo") == plot.colour("shardbroker-turbo")


def test_quick_set_runs_every_contender_somewhere() -> None:
    names = {n for s in QUICK for n in s.contenders}
    assert names == {c.name for c in all_contenders()}
