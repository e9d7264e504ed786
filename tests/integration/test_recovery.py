"""Crash and recovery, timeouts, caps and the accept allow-list."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from typing import Any

import pytest

from shardbroker import Publisher, SegmentReader
from shardbroker.control import client
from shardbroker.errors import PublishError
from shardbroker.publisher import loadgen
from shardbroker.publisher.batches import BatchGeometry
from shardbroker.segment import shm
from shardbroker.supervisor.process import BrokerProcess
from shardbroker.wire import protocol as p

from .conftest import (
    BrokerFactory,
    closing_reason,
    raw_batch,
    shard_stats,
    verify_segment,
    wait_for,
)

pytestmark = pytest.mark.integration
GEOM = BatchGeometry.for_batch(2 << 20, 1024)


def _stream(b: Any, total: int, rate: float, retries: int = 0) -> tuple[threading.Thread,
                                                                         dict[str, Any]]:
    out: dict[str, Any] = {}
    spec = loadgen.LoadSpec(host=b.host, port=b.port, connections=4, batch_bytes=2 << 20,
                            message_size=1024, total_bytes=total, rate_bytes_s=rate,
                            retries=retries)
    t = threading.Thread(target=lambda: out.update(loadgen.run(spec, timeout_s=120)))
    t.start()
    return t, out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_receiver_sigkill_publishers_reconnect_nothing_lost_or_duplicated(
        broker: BrokerFactory) -> None:
    b = broker(blog="512MiB")
    t, out = _stream(b, 256 << 20, rate=12 << 20, retries=40)
    wait_for(lambda: sum(s["batches"] for s in shard_stats(b.segment)) > 20, 30, "traffic")
    victim = b.receiver_pids()[0]
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: shard_stats(b.segment)[0]["writer_pid"] not in (victim, 0), 5,
             "the restarted receiver")
    assert time.monotonic() - killed_at < 1.5  # restart backoff 0.2 s + boot
    t.join(150)
    assert not out["errors"], out["errors"]
    assert out["acked_messages"] == out["messages"]
    assert sum(s.get("reconnects", 0) for s in out["publishers"]) >= 1
    report = verify_segment(b.segment, out["publishers"], GEOM)
    assert report.ok, report.problems  # no duplicates, nothing acked is missing


def test_supervisor_sigkill_then_recover(tmp_path: Any) -> None:
    seg = f"shardbroker-it-recover-{os.getpid()}"
    b = BrokerProcess(["--listen", "127.0.0.1:0", "--threads", "2", "--segment", seg,
                       "--blog-size", "256MiB"]).start()
    r2: BrokerProcess | None = None
    try:
        spec = loadgen.LoadSpec(host=b.host, port=b.port, connections=2, batch_bytes=2 << 20,
                                message_size=1024, total_bytes=64 << 20)
        first = loadgen.run(spec, timeout_s=60)
        assert not first["errors"]
        # a batch in flight at the crash: header and half its payload
        s = socket.create_connection((b.host, b.port), timeout=5)
        s.sendall(p.HANDSHAKE.pack(77, 1, 0, 0, 0, 0, b"t\0"))
        partial = raw_batch(77, 0, [b"q" * 40_000] * 8)
        s.sendall(partial[: len(partial) // 2])
        time.sleep(0.3)
        receivers = b.receiver_pids()
        os.kill(b.pid, signal.SIGKILL)
        t0 = time.monotonic()
        wait_for(lambda: not any(_alive(pid) for pid in receivers), 1.0,
                 "receivers to exit after the supervisor died")
        assert time.monotonic() - t0 < 1.0
        s.close()
        b.kill()
        assert os.path.exists(f"/dev/shm/{seg}")  # the log survives the crash
        report = verify_segment(seg, first["publishers"], GEOM)
        assert report.ok, report.problems
        with SegmentReader(seg) as r:
            before = [r.shard_state(x).pbr_committed for x in range(r.shard_count)]
            assert not [x for x in r.batches() if x.client_id == 77]  # never visible
        r2 = BrokerProcess(["--listen", "127.0.0.1:0", "--recover", seg]).start()
        assert r2.ready["segment"] == seg and r2.ready["threads"] == 2
        spec2 = loadgen.LoadSpec(host=r2.host, port=r2.port, connections=2,
                                 batch_bytes=2 << 20, message_size=1024,
                                 total_bytes=32 << 20)
        second = loadgen.run(spec2, timeout_s=60)
        assert not second["errors"]
        with SegmentReader(seg) as r:
            after = [r.shard_state(x).pbr_committed for x in range(r.shard_count)]
            assert all(a > bf for a, bf in zip(after, before, strict=True))  # continued
        report = verify_segment(seg, first["publishers"] + second["publishers"], GEOM)
        assert report.ok, report.problems  # everything committed before the crash is intact
        assert r2.stop() == 0
        assert not os.path.exists(f"/dev/shm/{seg}")
    finally:
        b.kill()
        if r2 is not None:
            r2.kill()
        shm.unlink(seg)


def test_recover_refuses_a_live_segment(broker: BrokerFactory) -> None:
    b = broker()
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "shardbroker", "run", "--listen", "127.0.0.1:0",
                          "--recover", b.segment], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "served by a running broker" in out.stderr


def _cfg(tmp_path: Any, text: str) -> str:
    f = tmp_path / "b.toml"
    f.write_text(text)
    return str(f)


def test_slowloris_handshake_and_batch_time_out(tmp_path: Any, broker: BrokerFactory) -> None:
    b = broker("--config", _cfg(tmp_path, "[limits]\nhandshake_timeout_s = 1.5\n"
                                          "batch_timeout_s = 1.5\n"))
    hs = p.HANDSHAKE.pack(5, 1, 0, 0, 0, 0, b"t\0")
    slow = socket.create_connection((b.host, b.port), timeout=10)
    slow_batch = socket.create_connection((b.host, b.port), timeout=10)
    slow_batch.sendall(hs + raw_batch(5, 0, [b"x" * 1000])[:200])
    t0 = time.monotonic()
    for i in range(40):  # 1 byte per 100 ms
        try:
            slow.send(hs[i: i + 1])
        except OSError:
            break
        time.sleep(0.1)
    assert closing_reason(slow).startswith("timeout.handshake")
    assert closing_reason(slow_batch).startswith("timeout.batch")
    assert time.monotonic() - t0 < 6
    slow.close()
    slow_batch.close()
    with Publisher(b.host, b.port) as pub:  # the broker still serves others
        pub.publish(b"ok")


def test_idle_timeout(tmp_path: Any, broker: BrokerFactory) -> None:
    b = broker("--config", _cfg(tmp_path, "[limits]\nidle_timeout_s = 1.0\n"))
    s = socket.create_connection((b.host, b.port), timeout=10)
    s.sendall(p.HANDSHAKE.pack(5, 1, 0, 0, 0, 0, b"t\0"))
    assert closing_reason(s).startswith("timeout.idle")
    s.close()


def test_connection_caps_and_allow_list(tmp_path: Any, broker: BrokerFactory) -> None:
    b = broker("--config", _cfg(tmp_path, "[limits]\nmax_connections_per_source = 3\n"))
    socks = [socket.create_connection((b.host, b.port), timeout=10) for _ in range(3)]
    try:
        wait_for(lambda: client.request(b.ready["control"], "status")["receivers"][0]
                 ["open_connections"] + client.request(b.ready["control"], "status")
                 ["receivers"][1]["open_connections"] == 3, 10, "3 connections")
        extra = socket.create_connection((b.host, b.port), timeout=10)
        assert closing_reason(extra).startswith("accept.too_many_from_source")
        extra.close()
    finally:
        for s in socks:
            s.close()
    # once they are closed the source may connect again
    wait_for(lambda: _try_publish(b), 10, "a slot for the source again")

    only_other = broker("--config", _cfg(tmp_path, '[limits]\nallow_cidrs = ["10.0.0.0/8"]\n'))
    with pytest.raises(PublishError) as err, \
            Publisher(only_other.host, only_other.port, timeout=5) as pub:
        pub.publish(b"x")
    assert err.value.reason == "accept.not_allowed"
    st = client.request(only_other.ready["control"], "status")
    assert st["accept_rejected"] == {"accept.not_allowed": 1}


def _try_publish(b: Any) -> bool:
    try:
        with Publisher(b.host, b.port, timeout=5) as pub:
            pub.publish(b"x")
        return True
    except PublishError:
        return False
