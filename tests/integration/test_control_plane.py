"""Control endpoint, metrics and live scaling against a real broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from typing import Any

import pytest

from shardbroker.control import client
from shardbroker.publisher import loadgen
from shardbroker.publisher.batches import BatchGeometry

from .conftest import (
    BACKENDS,
    BrokerFactory,
    raw_publisher,
    shard_stats,
    verify_segment,
    wait_for,
)

pytestmark = pytest.mark.integration
GEOM = BatchGeometry.for_batch(2 << 20, 1024)


def _cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "shardbroker", *args], capture_output=True,
                          text=True, timeout=timeout)


def _load(b: Any, total: int, connections: int = 4, rate: float | None = None,
          topic: str = "load") -> dict[str, Any]:
    spec = loadgen.LoadSpec(host=b.host, port=b.port, connections=connections,
                            batch_bytes=2 << 20, message_size=1024, total_bytes=total,
                            rate_bytes_s=rate, topic=topic)
    return loadgen.run(spec, timeout_s=120)


def _stats(b: Any) -> dict[str, Any]:
    return client.request(b.ready["control"], "stats")  # type: ignore[no-any-return]


def test_ready_line_names_control_and_status_answers(broker: BrokerFactory) -> None:
    b = broker()
    assert b.ready["control"].startswith("ipc://")
    path = b.ready["control"][len("ipc://"):]
    assert (os.stat(os.path.dirname(path)).st_mode & 0o777) == 0o700
    out = _cli("status", "--json", "--control", b.ready["control"])
    assert out.returncode == 0, out.stderr
    st = json.loads(out.stdout)
    assert st["threads"] == 2 and len(st["receivers"]) == 2
    assert all(r["allowed_cpus"] == [r["cpu"]] for r in st["receivers"])  # pinning read back


def test_a_malformed_request_is_refused_and_the_broker_serves_on(broker: BrokerFactory) -> None:
    b = broker()
    ctl = b.ready["control"]
    for bad in (None, "two", 1.5, True):
        with pytest.raises(client.ControlError, match="whole number"):
            client.request(ctl, "scale", threads=bad)
    assert client.request(ctl, "status")["threads"] == 2  # still answering, nothing changed


@pytest.mark.parametrize("backend", BACKENDS)  # a contract: every backend counts the same
def test_stats_agree_with_publishers(broker: BrokerFactory) -> None:
    b = broker("--config", "/dev/null")
    res = _load(b, 96 << 20)
    assert not res["errors"]
    want = (res["bytes"], res["batches"])
    wait_for(lambda: (_stats(b)["total"]["bytes"], _stats(b)["total"]["batches"]) == want, 10,
             "metrics to catch up with the publishers")
    st = _stats(b)
    t = st["total"]
    assert t["messages"] == res["messages"]
    for key in ("bytes", "batches", "messages", "recv_calls"):
        assert sum(s[key] for s in st["shards"].values()) == t[key]
    assert t["recv_calls_per_batch"] == round(t["recv_calls"] / t["batches"], 3)
    assert sum(t["recv_calls_hist"].values()) == t["batches"]
    assert t["rcvbuf_max"] > 0 and t["cpu_sys_s"] > 0
    out = _cli("stats", "--json", "--control", b.ready["control"])
    assert json.loads(out.stdout)["total"]["batches"] == res["batches"]


def test_status_without_broker_fails_fast() -> None:
    t0 = time.monotonic()
    out = _cli("status", "--control", "ipc:///nonexistent/shardbroker/control.sock")
    assert out.returncode != 0
    assert time.monotonic() - t0 < 3 + 2  # +2 s for the interpreter start
    assert len(out.stderr.strip().splitlines()) == 1 and "no broker" in out.stderr
    t0 = time.monotonic()
    out = _cli("status", "--control", "tcp://127.0.0.1:9", "--timeout", "1")
    assert out.returncode != 0 and "no answer" in out.stderr
    assert time.monotonic() - t0 < 3 + 2


# under io_uring a connection moves only with no SQE in flight
@pytest.mark.parametrize("backend", BACKENDS)
def test_scale_1_2_1_while_streaming(broker: BrokerFactory) -> None:
    b = broker(threads=1, blog="512MiB")
    ctl = b.ready["control"]
    assert client.request(ctl, "status")["max_threads"] == 2
    import threading

    out: dict[str, Any] = {}
    # paced: 4 x 12 MiB/s for ~8 s, so the scaling happens mid-stream and the rings never lap;
    # the longest topic the protocol allows makes a moved connection's state its largest
    t = threading.Thread(target=lambda: out.update(
        _load(b, 384 << 20, rate=12 << 20, topic="t" * 31)))
    t.start()
    try:
        wait_for(lambda: _stats(b)["total"]["connections_open"] == 4, 20, "4 publishers")
        client.request(ctl, "scale", threads=2, timeout_s=20)
        wait_for(lambda: all(s["connections_open"] == 2 for s in _stats(b)["shards"].values())
                 and len(_stats(b)["shards"]) == 2, 20, "rebalanced connections")
        time.sleep(0.3)
        client.request(ctl, "scale", threads=1, timeout_s=20)
        wait_for(lambda: client.request(ctl, "status")["threads"] == 1
                 and len(client.request(ctl, "status")["receivers"]) == 1, 20,
                 "the second receiver to retire")
    finally:
        t.join(120)
    assert not out["errors"], out["errors"]  # no publisher saw a disconnect
    assert out["acked_messages"] == out["messages"]
    report = verify_segment(b.segment, out["publishers"], GEOM)
    assert report.ok, report.problems
    moved = _stats(b)["total"]
    assert moved["moved_out"] >= 2 and moved["moved_in"] >= 2
    assert shard_stats(b.segment)[1]["batches"] > 0  # shard 1 really took batches


def test_drain_refuses_new_connections_keeps_old(broker: BrokerFactory) -> None:
    b = broker()
    s = raw_publisher(b.port, client_id=5)
    try:
        client.request(b.ready["control"], "drain")
        with pytest.raises(OSError):
            raw_publisher(b.port, client_id=6)
        assert client.request(b.ready["control"], "status")["draining"] is True
    finally:
        s.close()


def test_stop_command(broker: BrokerFactory) -> None:
    b = broker()
    assert client.request(b.ready["control"], "stop") == {"stopping": True}
    assert b.proc is not None and b.proc.wait(timeout=20) == 0
    assert not os.path.exists(f"/dev/shm/{b.segment}")


def test_prometheus_endpoint(tmp_path: Any, broker: BrokerFactory) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "b.toml"
    cfg.write_text(f'[metrics]\ninterval_s = 0.2\nprometheus = "127.0.0.1:{port}"\n')
    b = broker("--config", str(cfg))
    _load(b, 16 << 20, connections=2)

    def body() -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return r.read().decode()  # type: ignore[no-any-return]
        except OSError:
            return ""

    # each receiver's snapshot arrives on its own tick: wait for both shards' series
    wait_for(lambda: all(f'shardbroker_recv_calls_per_batch{{shard="{s}"}}' in body()
                         for s in (0, 1)), 20, "metrics of both shards")
    text = body()
    assert 'shardbroker_received_bytes_total{shard="0"}' in text
    assert "shardbroker_cpu_system_seconds_total" in text
