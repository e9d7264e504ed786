"""``--baseline``: how the baseline's interpreter and environment are chosen, that its broker
gets exactly this checkout's arguments (or is skipped saying which flag it lacks), where the
@base contenders run, and how the report sets old against new. No broker is started."""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from shardbroker.bench import cli, report
from shardbroker.bench.contenders import all_contenders, by_name
from shardbroker.bench.contenders.base import Environment, RunContext
from shardbroker.bench.contenders.baseline import (
    THIS_ROOT,
    Baseline,
    BaselineContender,
    BaselineError,
    interpreter_and_env,
    missing_flags,
    probe_baseline,
)
from shardbroker.bench.contenders.shardbroker import ShardbrokerContender
from shardbroker.bench.document import build_document
from shardbroker.bench.result import RunResult
from shardbroker.bench.runner import ContenderOutcome, ScenarioOutcome, run_bench
from shardbroker.bench.scenarios import FULL, plan_cpus
from shardbroker.bench.schema import validate
from tests.unit.test_bench_skip import Fake

RUN_HELP = ("usage: shardbroker run [--listen HOST:PORT] [--threads N] [--segment NAME]\n"
            "  --blog-size SIZE  --log-level LEVEL  --backend {auto,epoll,uring}\n")
CURRENT = Environment(run_help=RUN_HELP)


def baseline(run_help: str = RUN_HELP, root: str = "/old") -> Baseline:
    return Baseline("/old", "/old/.venv/bin/python", {"PYTHONSAFEPATH": "1"}, root, "abc1234",
                    "3.11.7", run_help)


def checkout(tmp_path: Path, venv: bool) -> Path:
    (tmp_path / "shardbroker").mkdir()
    (tmp_path / "shardbroker" / "__init__.py").write_text("")
    if venv:
        py = tmp_path / ".venv" / "bin" / "python"
        py.parent.mkdir(parents=True)
        py.write_text("#!/bin/sh\n")
        py.chmod(py.stat().st_mode | stat.S_IXUSR)
    return tmp_path


def test_checkout_without_venv_uses_this_interpreter_and_its_path(tmp_path: Path) -> None:
    d = checkout(tmp_path, venv=False)
    python, env = interpreter_and_env(str(d), {"PYTHONPATH": "/work/main", "HOME": "/h"},
                                      here="/usr/bin/python3")
    assert python == "/usr/bin/python3"
    # the checkout alone on the path, and `-m` must not put the current directory first
    assert env["PYTHONPATH"] == str(d) and env["PYTHONSAFEPATH"] == "1"
    assert env["HOME"] == "/h"


def test_checkout_with_venv_uses_its_own_python(tmp_path: Path) -> None:
    d = checkout(tmp_path, venv=True)
    python, env = interpreter_and_env(str(d), {}, here="/usr/bin/python3")
    assert python == str(d / ".venv" / "bin" / "python")
    assert env["PYTHONPATH"] == str(d)


def test_interpreter_drops_pythonpath(tmp_path: Path) -> None:
    py = checkout(tmp_path, venv=True) / ".venv" / "bin" / "python"
    python, env = interpreter_and_env(str(py), {"PYTHONPATH": "/work/main"})
    assert python == str(py)
    assert "PYTHONPATH" not in env and env["PYTHONSAFEPATH"] == "1"


def test_bad_baselines_are_refused(tmp_path: Path) -> None:
    with pytest.raises(BaselineError, match="no shardbroker package"):
        interpreter_and_env(str(tmp_path), {})
    with pytest.raises(BaselineError, match="neither a checkout"):
        interpreter_and_env(str(tmp_path / "nope"), {})
    plain = tmp_path / "notes.txt"
    plain.write_text("x")
    with pytest.raises(BaselineError, match="neither a checkout"):
        interpreter_and_env(str(plain), {})


def test_missing_flags_matches_whole_words() -> None:
    args = ["--listen", "127.0.0.1:0", "--blog-size", "256MiB", "--backend", "epoll"]
    assert missing_flags(args, RUN_HELP) == []
    assert missing_flags(args, "--listen X --blog-size-max N --backends") == ["--blog-size",
                                                                                "--backend"]


def test_baseline_broker_gets_exactly_this_checkouts_arguments() -> None:
    ctx = RunContext(plan_cpus([0, 1], 2, 4), 0, CURRENT)
    for backend in ("epoll", "uring"):
        new = ShardbrokerContender(backend)
        old = BaselineContender(backend, baseline())
        assert old.broker_args(FULL[1], ctx, "seg") == new.broker_args(FULL[1], ctx, "seg")
    args = BaselineContender("uring", baseline()).broker_args(FULL[1], ctx, "seg")
    assert args[args.index("--backend") + 1] == "uring"
    assert args[args.index("--threads") + 1] == "2"


def test_baseline_broker_runs_the_baseline_interpreter() -> None:
    b = baseline()
    broker = BaselineContender("epoll", b).new_broker(["--threads", "1"], stderr=2)
    assert broker.python == b.python and broker.env == b.env
    assert ShardbrokerContender("epoll").new_broker([], stderr=2).python is None


def test_names_and_where_they_take_part() -> None:
    c = BaselineContender("epoll", baseline())
    assert c.name == "shardbroker-epoll@base" and c.scenario_name == "shardbroker-epoll"
    assert ShardbrokerContender("epoll").scenario_name == "shardbroker-epoll"
    assert "/old @ abc1234" in c.description
    names = [x.name for x in all_contenders(baseline())]
    assert names == ["limit", "shardbroker-epoll", "shardbroker-epoll@base",
                     "shardbroker-uring", "shardbroker-uring@base", "pyzmq", "staging", "nats",
                     "sink"]
    assert "shardbroker-epoll@base" not in by_name()


def test_availability_says_which_flag_the_baseline_lacks() -> None:
    assert BaselineContender("epoll", baseline()).availability(CURRENT) is None
    no_blog = baseline(RUN_HELP.replace("--blog-size SIZE", ""))
    reason = BaselineContender("epoll", no_blog).availability(CURRENT)
    assert reason is not None and "--blog-size" in reason and "same arguments" in reason
    # --backend is passed because this checkout offers it: a baseline without it is skipped
    epoll_only = baseline("usage: --listen --threads --segment --blog-size --log-level")
    assert "--backend" in str(BaselineContender("epoll", epoll_only).availability(CURRENT))
    assert "no uring backend" in str(BaselineContender("uring", epoll_only).availability(
        CURRENT))
    # ...and one without --backend is fine when this checkout has none either
    old_env = Environment(run_help="--listen --threads --segment --blog-size --log-level")
    assert BaselineContender("epoll", epoll_only).availability(old_env) is None


def test_runner_runs_base_twins_wherever_the_original_runs() -> None:
    order: list[str] = []
    new = Fake("shardbroker-epoll", 4.0, order)
    old = Fake("shardbroker-epoll@base", 3.0, order)
    old.listed_as = "shardbroker-epoll"
    other = Fake("other@base", 1.0, order)  # listed nowhere
    run_bench([replace(FULL[0], contenders=("shardbroker-epoll",))], [new, old, other],
              CURRENT, repeat=2, cpus=[0, 1])
    assert order == ["S1:shardbroker-epoll:0", "S1:shardbroker-epoll@base:0",
                     "S1:shardbroker-epoll:1", "S1:shardbroker-epoll@base:1"]


def _run(name: str, gbps: float) -> RunResult:
    return RunResult(name, "S1", 0, bytes=int(gbps * 1e9), batches=500, seconds=1.0,
                     data_check={"ok": True, "problems": []})


def test_document_and_report_set_new_against_old() -> None:
    b = baseline()
    out = ScenarioOutcome(FULL[0], plan_cpus([0, 1], 1, 1), [
        ContenderOutcome("shardbroker-epoll", "new", None, [_run("shardbroker-epoll", 6.0)]),
        ContenderOutcome("shardbroker-epoll@base", "old", None,
                         [_run("shardbroker-epoll@base", 4.0)]),
    ])
    d = build_document([out], options={"repeat": 1, "quick": False, "scenarios": ["S1"],
                                       "baseline": b.describe()},
                       machine={"cpu_model": "x", "cpus_online": 2, "kernel": "6",
                                "python": "3.11"}, environment={},
                       started="2025-01-02T00", finished="2025-01-02T01")
    assert validate(d) == []
    entries = {e["name"]: e for e in d["scenarios"][0]["contenders"]}
    assert entries["shardbroker-epoll"]["ratios"]["vs_base"] == 1.5
    assert "vs_base" not in entries["shardbroker-epoll@base"]["ratios"]
    text = report.render_text(d)
    assert "x base" in text and "1.50" in text
    assert "@base = the broker of /old @ abc1234" in text
    assert "@base = the broker of /old @ abc1234" in report.render_markdown(d)
    # both shardbroker rows get targets, so old and new can be read off one table
    assert {t["contender"] for t in d["targets"]} == {
        "shardbroker-epoll", "shardbroker-epoll@base"}


def test_cli_refuses_a_bad_baseline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--baseline", str(tmp_path / "missing"), "--list"]) == 2
    assert "--baseline" in capsys.readouterr().err
    assert cli.main(["--contender", "shardbroker-epoll@base", "--list"]) == 2
    assert "need --baseline" in capsys.readouterr().err


def test_probe_this_interpreter_is_an_aa_run() -> None:
    """The one test that starts processes: ``python -c`` and ``-m shardbroker run --help``."""
    b = probe_baseline(sys.executable)
    assert os.path.realpath(b.root) == os.path.realpath(THIS_ROOT) and b.same_code
    assert "--listen" in b.run_help and b.python == os.path.abspath(sys.executable)
    assert b.python_version == sys.version.split()[0]
    assert "A/A" in b.label
