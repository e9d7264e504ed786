"""``shardbroker-<backend>@base``: the broker of another checkout or interpreter, run in the
same bench run as this checkout's, interleaved with it, so old and new are compared on the
same machine minutes apart (the only comparison DESIGN §4 trusts on a noisy VM).

``--baseline`` names a checkout directory (its ``.venv/bin/python`` if it has one, else this
interpreter, importing the checkout's ``shardbroker`` through PYTHONPATH) or an interpreter
(whatever ``shardbroker`` it imports). PYTHONSAFEPATH keeps ``-m`` from putting the current
directory, this checkout, ahead of it. The baseline broker gets exactly the arguments this
checkout's broker gets; where it lacks one of those flags it is skipped with that reason. Its
runs go through the same data checks (this checkout's SegmentReader reads its segment).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shardbroker.bench.contenders.base import Environment, RunContext
from shardbroker.bench.contenders.shardbroker import ShardbrokerContender, broker_args
from shardbroker.bench.result import RunResult
from shardbroker.bench.scenarios import BASELINE_SUFFIX, Scenario
from shardbroker.supervisor.process import BrokerProcess

PROBE_TIMEOUT_S = 60.0
# What the baseline interpreter imports, and its version: run from the same directory and
# with the same environment as its brokers, so it sees the same shardbroker they will.
PROBE = "import sys, shardbroker; print(shardbroker.__file__); print(sys.version.split()[0])"
THIS_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))


class BaselineError(ValueError):
    """--baseline names nothing that can run a shardbroker broker."""


@dataclass(frozen=True)
class Baseline:
    source: str  # what --baseline named
    python: str  # the interpreter that runs `-m shardbroker run`
    env: dict[str, str] = field(repr=False)  # its whole environment
    root: str = ""  # the directory its shardbroker package is in
    revision: str = ""  # git commit of root (+ "+local changes"), "" outside git
    python_version: str = ""
    run_help: str = ""  # its `shardbroker run --help`

    @property
    def same_code(self) -> bool:
        """The baseline imports this very checkout: an A/A run (noise, not a comparison)."""
        return os.path.realpath(self.root) == os.path.realpath(THIS_ROOT)

    @property
    def label(self) -> str:
        rev = f" @ {self.revision}" if self.revision else " (not a git checkout)"
        aa = " (this checkout: an A/A run)" if self.same_code else ""
        return f"{self.root}{rev}{aa}, {self.python} (Python {self.python_version})"

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "python": self.python, "root": self.root,
                "revision": self.revision, "python_version": self.python_version,
                "same_code": self.same_code}


def interpreter_and_env(source: str, base_env: Mapping[str, str],
                        here: str = sys.executable) -> tuple[str, dict[str, str]]:
    """The interpreter and environment that run the baseline's ``-m shardbroker``.

    A checkout directory: its own ``.venv/bin/python`` when it has one (its pinned packages),
    else ``here``; PYTHONPATH is the checkout alone. An interpreter: PYTHONPATH is dropped, so
    it imports what it has installed. Both get PYTHONSAFEPATH=1: ``python -m`` would otherwise
    put the current directory (this checkout, when the bench runs from it) first on sys.path.
    """
    env = {k: v for k, v in base_env.items() if k != "PYTHONPATH"}
    env["PYTHONSAFEPATH"] = "1"
    path = os.path.abspath(source)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "shardbroker", "__init__.py")):
            raise BaselineError(f"{source}: no shardbroker package in this directory")
        venv = os.path.join(path, ".venv", "bin", "python")
        env["PYTHONPATH"] = path
        return (venv if os.access(venv, os.X_OK) else here), env
    if os.path.isfile(path) and os.access(path, os.X_OK):
        return path, env
    raise BaselineError(f"{source}: neither a checkout directory nor an executable "
                        "interpreter")


def missing_flags(args: Sequence[str], help_text: str) -> list[str]:
    """The ``--flags`` of ``args`` that ``help_text`` never mentions as a whole word."""
    flags = [a for a in args if a.startswith("--")]
    return [f for f in flags
            if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", help_text)]


def _run(cmd: Sequence[str], env: Mapping[str, str] | None = None) -> tuple[int, str, str]:
    try:
        p = subprocess.run(list(cmd), capture_output=True, text=True, env=env,
                           timeout=PROBE_TIMEOUT_S, check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return -1, "", str(exc)
    return p.returncode, p.stdout, p.stderr


def git_revision(root: str) -> str:
    """Short commit of the checkout at ``root`` and whether tracked files differ from it
    (read only: no index refresh), or "" outside git."""
    rc, out, _ = _run(["git", "-C", root, "rev-parse", "--short", "HEAD"])
    if rc != 0:
        return ""
    rc2, dirty, _ = _run(["git", "--no-optional-locks", "-C", root, "status", "--porcelain",
                          "--untracked-files=no"])
    return out.strip() + (" +local changes" if rc2 == 0 and dirty.strip() else "")


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else "no output"


def probe_baseline(source: str) -> Baseline:
    """Resolve ``--baseline`` and ask its interpreter what it runs. Raises BaselineError
    when it cannot import shardbroker or its ``run --help`` fails."""
    python, env = interpreter_and_env(source, os.environ)
    rc, out, err = _run([python, "-c", PROBE], env)
    if rc != 0 or len(out.split()) < 2:
        raise BaselineError(f"{source}: {python} cannot import shardbroker: {_last_line(err)}")
    module_file, version = out.split()[:2]
    root = os.path.dirname(os.path.dirname(module_file))
    rc, run_help, err = _run([python, "-m", "shardbroker", "run", "--help"], env)
    if rc != 0:
        raise BaselineError(f"{source}: `shardbroker run --help` failed: {_last_line(err)}")
    return Baseline(source, python, env, root, git_revision(root), version, run_help)


class BaselineContender(ShardbrokerContender):
    """This checkout's shardbroker contender, with the baseline's broker."""

    def __init__(self, backend: str, baseline: Baseline) -> None:
        super().__init__(backend)
        self.baseline = baseline
        self.listed_as = self.name
        self.name = f"{self.name}{BASELINE_SUFFIX}"
        self.description = f"{self.description}; broker from {baseline.label}"

    def availability(self, env: Environment) -> str | None:
        own = super().availability(env)  # the arguments come from this checkout's broker
        if own is not None:
            return own
        if self.backend != "epoll" and self.backend not in self.baseline.run_help:
            return f"the baseline's `shardbroker run --help` offers no {self.backend} backend"
        # The same arguments as this checkout's broker (segment and threads vary per run).
        missing = missing_flags(broker_args(self.backend, 1, "probe", env.run_help),
                                self.baseline.run_help)
        if missing:
            return (f"the baseline's `shardbroker run` has no {', '.join(missing)}: it cannot "
                    "be given the same arguments as this checkout's broker")
        return None

    def new_broker(self, args: list[str], stderr: int) -> BrokerProcess:
        return BrokerProcess(args, ready_timeout_s=60, stderr=stderr,
                             env=self.baseline.env, python=self.baseline.python)

    def run(self, sc: Scenario, ctx: RunContext) -> RunResult:
        res = super().run(sc, ctx)
        res.extra["baseline"] = self.baseline.describe()
        return res
