"""``shardbroker bench --quick --json``: the whole bench end to end on loopback, as a smoke
test (no thresholds: the figures depend on the machine). Bounded in time; the bench runs in
its own session and its whole process group is killed and reaped whatever happens."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from shardbroker.bench.schema import validate

pytestmark = pytest.mark.integration

TIMEOUT_S = 240


def test_bench_quick_json(tmp_path: Path) -> None:
    out, md, png = tmp_path / "out.json", tmp_path / "out.md", tmp_path / "out.png"
    cmd = [sys.executable, "-m", "shardbroker.bench", "--quick", "--quiet", "--json", str(out),
           "--markdown", str(md), "--plot", str(png)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers left in the group
    text = stdout.decode() + stderr.decode()
    assert proc.returncode in (0, 1), text
    doc = json.loads(out.read_text())
    assert validate(doc) == [], text
    assert doc["options"]["quick"] is True
    scenarios = {s["id"]: s for s in doc["scenarios"]}
    assert set(scenarios) == {"S1", "S2", "S4", "S5"}
    # Every shardbroker run must have run and passed its data check through SegmentReader.
    for s in doc["scenarios"]:
        e = next(c for c in s["contenders"] if c["name"] == "shardbroker-epoll")
        assert e["status"] == "ok", (s["id"], e["runs"])
        for r in e["runs"]:
            assert r["data_check"]["ok"] and r["data_check"]["batches_checked"] > 0
        if s["kind"] == "throughput":
            assert e["summary"]["gbps"]["median"] > 0
        else:
            assert e["summary"]["latency_p99_us"]["median"] > 0
    # Baselines either ran cleanly or were skipped with a one-line reason; any failure of
    # theirs is the only thing that may make the exit status 1.
    for s in doc["scenarios"]:
        for c in s["contenders"]:
            if c["status"] == "skipped":
                assert c["skip_reason"] and "\n" not in c["skip_reason"]
    if proc.returncode == 1:
        failed = {c["name"] for s in doc["scenarios"] for c in s["contenders"]
                  if c["runs_failed"]}
        assert failed and not any(n.startswith("shardbroker") for n in failed), text
    assert "S1: 1 publisher" in stdout.decode()
    assert md.read_text().startswith("Measured ")
    if importlib.util.find_spec("matplotlib") is not None:
        assert png.read_bytes()[:4] == b"\x89PNG"
    else:
        assert "--plot skipped" in stderr.decode()
