"""The receiver watchdog: a receiver whose heartbeat stops is killed and replaced."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from shardbroker.control import client
from shardbroker.publisher import loadgen
from shardbroker.publisher.batches import BatchGeometry

from .conftest import BrokerFactory, shard_stats, verify_segment, wait_for

pytestmark = pytest.mark.integration
GEOM = BatchGeometry.for_batch(2 << 20, 1024)
HEARTBEAT_TIMEOUT_S = 2.0


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _release(pid: int, parent: int) -> None:
    """Make sure a receiver this test stopped does not outlive it: continue and kill it, if it
    is still the broker's child (its pid is not reused by then)."""
    if _parent_of(pid) != parent:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)
        os.kill(pid, signal.SIGKILL)


def test_sigstopped_receiver_is_replaced_and_nothing_acked_is_lost(
        broker: BrokerFactory, tmp_path: Path) -> None:
    conf = tmp_path / "broker.toml"
    conf.write_text(f"[broker]\nheartbeat_timeout_s = {HEARTBEAT_TIMEOUT_S}\n")
    b = broker("--config", str(conf), blog="512MiB")
    out: dict[str, Any] = {}
    spec = loadgen.LoadSpec(host=b.host, port=b.port, connections=4, batch_bytes=2 << 20,
                            message_size=1024, total_bytes=160 << 20, rate_bytes_s=12 << 20,
                            retries=40)
    t = threading.Thread(target=lambda: out.update(loadgen.run(spec, timeout_s=120)))
    t.start()
    victim = b.receiver_pids()[0]
    try:
        wait_for(lambda: sum(s["batches"] for s in shard_stats(b.segment)) > 10, 30, "traffic")
        os.kill(victim, signal.SIGSTOP)
        stopped_at = time.monotonic()
        wait_for(lambda: shard_stats(b.segment)[0]["writer_pid"] not in (victim, 0),
                 HEARTBEAT_TIMEOUT_S + 15, "a new receiver on shard 0")
        # not before the timeout: the heartbeat was up to 0.5 s old when the receiver stopped
        assert time.monotonic() - stopped_at >= HEARTBEAT_TIMEOUT_S - 0.5
        status = client.request(b.ready["control"], "status", timeout_s=10)
        shard0 = next(r for r in status["receivers"] if r["shard"] == 0)
        assert shard0["watchdog_kills"] == 1 and shard0["restarts"] == 1
        assert shard0["pid"] != victim
        assert status["watchdog_kills"] == 1
        stats = client.request(b.ready["control"], "stats", timeout_s=10)
        assert stats["total"]["watchdog_kills"] == 1
    finally:
        _release(victim, b.pid)
        t.join(150)
    assert not t.is_alive()
    assert not out["errors"], out["errors"]
    assert out["acked_messages"] == out["messages"]
    assert sum(s.get("reconnects", 0) for s in out["publishers"]) >= 1
    report = verify_segment(b.segment, out["publishers"], GEOM)
    assert report.ok, report.problems  # every acked message once, with its bytes
