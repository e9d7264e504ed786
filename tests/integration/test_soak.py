"""Soak: publishers connect, stream and disconnect every few seconds for a bounded time
(SHARDBROKER_SOAK_S, default 120 s; `-m slow` runs the long one). fd count and RSS of every
broker process stay within 10 %, nothing leaks, and each round's acked data is all there."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from shardbroker.publisher import loadgen
from shardbroker.publisher.batches import BatchGeometry

from .conftest import BrokerFactory, verify_segment

pytestmark = pytest.mark.integration
GEOM = BatchGeometry.for_batch(1 << 20, 1024)


def _footprint(pids: list[int]) -> dict[int, tuple[int, int]]:
    out = {}
    for pid in pids:
        with open(f"/proc/{pid}/statm") as f:
            rss = int(f.read().split()[1]) * 4096
        out[pid] = (len(os.listdir(f"/proc/{pid}/fd")), rss)
    return out


def _soak(broker: BrokerFactory, seconds: float) -> dict[str, Any]:
    b = broker(blog="512MiB")
    pids = [b.pid, *b.receiver_pids()]
    deadline = time.monotonic() + seconds
    rounds = 0
    first: dict[int, tuple[int, int]] = {}
    while time.monotonic() < deadline:
        spec = loadgen.LoadSpec(host=b.host, port=b.port, connections=4, batch_bytes=1 << 20,
                                message_size=1024, duration_s=2.0, rate_bytes_s=6 << 20)
        res = loadgen.run(spec, timeout_s=60)
        assert not res["errors"], res["errors"]
        report = verify_segment(b.segment, res["publishers"], GEOM)
        assert report.ok, (rounds, report.problems)
        rounds += 1
        if rounds == 2:  # after warm-up: imports, first connections, metric buffers
            first = _footprint(pids)
    last = _footprint(pids)
    for pid, (fds0, rss0) in first.items():
        fds1, rss1 = last[pid]
        assert fds1 <= fds0 * 1.1 + 2, f"pid {pid}: fds {fds0} -> {fds1}"
        assert rss1 <= rss0 * 1.1 + (2 << 20), f"pid {pid}: RSS {rss0 >> 20} -> {rss1 >> 20} MiB"
    return {"rounds": rounds, "first": first, "last": last}


def test_soak_short(broker: BrokerFactory) -> None:
    seconds = float(os.environ.get("SHARDBROKER_SOAK_S", "120"))
    out = _soak(broker, seconds)
    assert out["rounds"] >= 3
    print(f"soak {seconds:.0f} s, {out['rounds']} rounds: fds/RSS first {out['first']} "
          f"last {out['last']}")


@pytest.mark.slow
def test_soak_long(broker: BrokerFactory) -> None:
    out = _soak(broker, float(os.environ.get("SHARDBROKER_SOAK_LONG_S", "1800")))
    assert out["rounds"] >= 10
