"""`shardbroker tail` on a live broker: --from-start after the rings wrapped begins at the oldest
batch still readable (with or without --follow) and reports nothing as missed; --follow exits
0, saying why, soon after the broker stops, dies, or its segment is unlinked."""

from __future__ import annotations

import json
import selectors
import subprocess
import sys
import time
from typing import Any

import pytest

from shardbroker import SegmentReader
from shardbroker.publisher import loadgen
from shardbroker.segment import shm

from .conftest import BrokerFactory

pytestmark = pytest.mark.integration

TAIL = [sys.executable, "-m", "shardbroker", "tail"]


def _load(b: Any, total: int, batch: int) -> dict[str, Any]:
    spec = loadgen.LoadSpec(host=b.host, port=b.port, connections=1, batch_bytes=batch,
                            message_size=1024, total_bytes=total)
    out = loadgen.run(spec, timeout_s=120)
    assert not out["errors"]
    return out


def _json_lines(text: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    lines = [json.loads(x) for x in text.splitlines()]
    return lines[:-1], lines[-1]


def test_from_start_after_a_wrap_prints_the_oldest_readable_batch(
        broker: BrokerFactory) -> None:
    # 64 KiB batches into a 32 MiB BLog: ~500 fit, 1536 are written. The PBR window (16384
    # slots) still names the first ~1000, whose bytes are gone: more than one follow chunk.
    b = broker(threads=1, blog="32MiB")
    n = _load(b, total=96 << 20, batch=64 << 10)["batches"]
    with SegmentReader(b.segment) as r:
        assert r.shard_state(0).pbr_committed == n
        oldest = next(iter(r.batches(0))).index  # the ring's own walk skips what is gone
    assert oldest > 256
    for extra in ([], ["--follow", "--idle-exit", "0.5"]):
        out = subprocess.run([*TAIL, "--segment", b.segment, "--from-start", "--json", *extra],
                             capture_output=True, text=True, timeout=60, check=True)
        recs, summary = _json_lines(out.stdout)
        assert recs, f"tail --from-start {extra} printed nothing"
        assert recs[0]["index"] == oldest
        assert [x["index"] for x in recs] == list(range(oldest, n))
        assert summary["printed"] == n - oldest
        assert summary["lapped"] == 0 and "missed" not in out.stderr
    assert b.stop() == 0


def _await_line(proc: subprocess.Popen[str], timeout_s: float) -> str:
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        if not sel.select(timeout_s):
            raise AssertionError(f"tail printed nothing within {timeout_s} s")
        return proc.stdout.readline()
    finally:
        sel.close()


@pytest.mark.parametrize("how", ["stop", "kill", "unlink"])
def test_follow_exits_when_the_broker_goes(broker: BrokerFactory, how: str) -> None:
    b = broker(threads=1, blog="32MiB")
    n = _load(b, total=4 << 20, batch=1 << 20)["batches"]
    tail = subprocess.Popen([*TAIL, "--segment", b.segment, "--follow", "-n", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _await_line(tail, 30).startswith(f"shard 0 #{n - 1} ")  # it follows now
        if how == "stop":
            assert b.stop() == 0
        elif how == "kill":
            b.kill()  # SIGKILL: the segment stays, marked serving by a dead supervisor
        else:
            assert shm.unlink(b.segment)  # the broker runs on; the name is gone
        t0 = time.monotonic()
        code = tail.wait(timeout=10)
        took = time.monotonic() - t0
        _, err = tail.communicate(timeout=5)
    finally:
        if tail.poll() is None:
            tail.kill()
        tail.wait()
        for pipe in (tail.stdout, tail.stderr):
            if pipe is not None:
                pipe.close()
    assert code == 0
    assert took < 1.0, f"tail --follow took {took:.2f} s to notice"
    line = err.splitlines()[-1]
    assert line.startswith("shardbroker tail: stopped following: ")
    assert {"stop": "closed", "kill": "died", "unlink": "removed"}[how] in line
