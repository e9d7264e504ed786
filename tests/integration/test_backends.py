"""Choosing the receive backend (auto | epoll | uring), what each reports, and the parts of the
receive-path contract that need more than the end-to-end suite: a lapped in-flight batch, live
scaling and metrics under io_uring."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest

from shardbroker import SegmentReader
from shardbroker.control import client
from shardbroker.platform.uring import DISABLE_ENV
from shardbroker.publisher import loadgen
from shardbroker.segment import shm
from shardbroker.supervisor.process import BrokerProcess
from shardbroker.wire import protocol as p

from .conftest import (
    BACKENDS,
    BrokerFactory,
    raw_batch,
    raw_publisher,
    read_acks,
    shard_stats,
    skip_unless_backend,
    wait_for,
)

pytestmark = pytest.mark.integration


def _seg() -> str:
    return f"shardbroker-bk-{os.getpid()}-{os.urandom(3).hex()}"


def _disabled_env() -> dict[str, str]:
    return {**os.environ, DISABLE_ENV: "1"}


@pytest.fixture
def stderr_file() -> Iterator[Any]:
    with tempfile.TemporaryFile() as f:
        yield f


def test_auto_falls_back_to_epoll_and_says_why(stderr_file: Any) -> None:
    b = BrokerProcess(["--listen", "127.0.0.1:0", "--threads", "2", "--segment", _seg(),
                       "--blog-size", "64MiB", "--backend", "auto"],
                      ready_timeout_s=60, stderr=stderr_file.fileno(), env=_disabled_env())
    try:
        b.start()
        assert b.ready["backend"] == "epoll"
        for r in b.ready["receivers"]:
            assert r["backend"] == "epoll"
            assert DISABLE_ENV in r["backend_fallback"]
        st = client.request(b.ready["control"], "status")
        assert st["backend"] == "epoll"
        assert all(DISABLE_ENV in r["backend_fallback"] for r in st["receivers"])
        s = raw_publisher(b.port, client_id=3)  # and it receives
        try:
            s.sendall(raw_batch(3, 0, [b"fallback works"] * 2))
            assert read_acks(s, 2)[1] == 2
        finally:
            s.close()
    finally:
        assert b.stop(timeout_s=20) == 0
        if b.ready:
            shm.unlink(b.segment)
    stderr_file.seek(0)
    events = [json.loads(line) for line in stderr_file.read().decode().splitlines()
              if line.startswith("{")]
    fallbacks = [e for e in events if e.get("event") == "receiver.backend.fallback"]
    assert len(fallbacks) == 2  # one per receiver, each with its reason
    assert all(DISABLE_ENV in e["reason"] and e["backend"] == "epoll" for e in fallbacks)


def test_uring_that_cannot_start_is_one_clear_line() -> None:
    seg = _seg()
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "shardbroker", "run", "--listen", "127.0.0.1:0", "--threads",
         "1", "--segment", seg, "--blog-size", "64MiB", "--backend", "uring"],
        capture_output=True, text=True, timeout=60, env=_disabled_env())
    assert out.returncode != 0
    assert time.monotonic() - t0 < 30
    assert "Traceback" not in out.stderr
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("shardbroker run: error:")]
    assert len(errors) == 1, out.stderr
    assert "backend 'uring' cannot start" in errors[0] and DISABLE_ENV in errors[0]
    assert "--backend auto" in errors[0]  # says what to do
    assert out.stdout == ""  # no ready line
    assert not os.path.exists(f"/dev/shm/{seg}")


def test_bad_backend_name_is_a_config_error() -> None:
    out = subprocess.run([sys.executable, "-m", "shardbroker", "run", "--backend", "kqueue"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "invalid choice" in out.stderr
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
        f.write('[broker]\nbackend = "kqueue"\n')
        f.flush()
        out = subprocess.run([sys.executable, "-m", "shardbroker", "run", "--config", f.name],
                             capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "broker.backend" in out.stderr
    assert "Traceback" not in out.stderr


def test_uring_reports_itself_and_counts_enters(broker: BrokerFactory) -> None:
    skip_unless_backend("uring")
    b = broker("--backend", "uring", threads=1)
    assert b.ready["backend"] == "uring"
    assert b.ready["receivers"][0]["backend"] == "uring"
    assert client.request(b.ready["control"], "status")["backend"] == "uring"
    spec = loadgen.LoadSpec(host=b.host, port=b.port, connections=1, batch_bytes=2 << 20,
                            message_size=1024, total_bytes=64 << 20)
    res = loadgen.run(spec, timeout_s=120)
    assert not res["errors"] and res["acked_messages"] == res["messages"]

    def totals() -> dict[str, Any]:
        return client.request(b.ready["control"], "stats")["total"]  # type: ignore[no-any-return]

    wait_for(lambda: totals()["batches"] == res["batches"], 10, "metrics")
    t = totals()
    assert t["uring_enters"] > 0 and t["uring_completions"] >= t["batches"]
    # A 2 MiB payload arrives in SO_RCVLOWAT-sized pieces (rcvlowat_cap 1 MiB: at least two
    # completions), its header scattered into the last; an ack flush adds a look that does not
    # wait. So 2-4 enters per batch, as epoll makes 3-4 recv calls (bench S1); more would mean
    # the payload came in small reads again.
    assert 1.0 <= t["uring_enters_per_batch"] <= 5.0, t
    assert t["recv_calls_per_batch"] is not None
    out = subprocess.run([sys.executable, "-m", "shardbroker", "stats", "--json", "--control",
                          b.ready["control"]], capture_output=True, text=True, timeout=30)
    assert "uring_enters_per_batch" in json.loads(out.stdout)["total"]
    header = shard_stats(b.segment)[0]
    assert header["uring_enters"] > 0 and header["uring_completions"] > 0


def test_epoll_counts_no_enters(broker: BrokerFactory) -> None:
    b = broker("--backend", "epoll", threads=1)
    s = raw_publisher(b.port, client_id=8)
    try:
        s.sendall(raw_batch(8, 0, [b"e"] * 3))
        assert read_acks(s, 3)[1] == 3
    finally:
        s.close()
    # the shard header is written at each close and every 0.5 s: wait for the close's write
    # (before the connection was adopted it also read connections_open == 0)
    wait_for(lambda: shard_stats(b.segment)[0]["connections_open"] == 0
             and shard_stats(b.segment)[0]["recv_calls"] > 0, 10, "close")
    st = shard_stats(b.segment)[0]
    assert st["uring_enters"] == 0 and st["uring_completions"] == 0


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_lapped_in_flight_batch_is_rejected_and_never_corrupts(
        tmp_path: Any, broker: BrokerFactory, backend_name: str) -> None:
    """A publisher stalls mid-payload while another laps the (tiny) ring: the stalled batch is
    abandoned with a reason, and every batch the other one committed is intact. Under io_uring
    the stalled RECV is still armed when its space is handed to newer data."""
    skip_unless_backend(backend_name)
    cfg = tmp_path / "b.toml"
    cfg.write_text('[limits]\nmax_batch_bytes = "256KiB"\n')
    b = broker("--config", str(cfg), "--backend", backend_name, threads=1, blog="1MiB")
    msgs = 50
    slow = raw_publisher(b.port, client_id=1)
    fast = raw_publisher(b.port, client_id=2)
    try:
        stalled = raw_batch(1, 0, [b"s" * 4000] * msgs)
        slow.sendall(stalled[: p.BATCH_HEADER_SIZE + (100 << 10)])
        with SegmentReader(b.segment) as r:
            wait_for(lambda: r.shard_state(0).blog_head >= len(stalled) - p.BATCH_HEADER_SIZE,
                     10, "the stalled batch's reservation")
        sent = [raw_batch(2, i, [bytes([65 + i]) * 4000] * msgs) for i in range(12)]
        fast.sendall(b"".join(sent))
        assert read_acks(fast, 12 * msgs, timeout_s=20)[1] == 12 * msgs
        slow.settimeout(10)
        reply = b""
        try:
            while chunk := slow.recv(4096):
                reply += chunk
        except ConnectionResetError:
            pass
        assert b"segment.lapped_in_flight" in reply
    finally:
        slow.close()
        fast.close()
    wait_for(lambda: shard_stats(b.segment)[0]["connections_open"] == 0
             and shard_stats(b.segment)[0]["lapped_in_flight"] == 1, 10, "closes")
    st = shard_stats(b.segment)[0]
    assert st["lapped_in_flight"] == 1 and st["rejected"] == 1
    with SegmentReader(b.segment) as r:
        seen = 0
        for x in r.batches():
            assert x.client_id == 2  # the stalled batch was never committed
            assert bytes(x.payload) == sent[x.batch_seq][p.BATCH_HEADER_SIZE:]
            assert x.still_valid()
            seen += 1
        assert seen >= 3 and seen + r.lapped == 12


@pytest.mark.parametrize("backend", ["uring"])
def test_drain_then_stop_with_idle_and_busy_connections_uring(broker: BrokerFactory,
                                                               backend: str) -> None:
    """Stopping cancels the header RECVs of idle connections and lets a batch in flight
    finish; the receiver exits cleanly (no operation left in the ring)."""
    skip_unless_backend(backend)
    b = broker(threads=1)
    idle = [raw_publisher(b.port, client_id=10 + i) for i in range(3)]
    busy = raw_publisher(b.port, client_id=20)
    try:
        full = raw_batch(20, 0, [b"b" * 1000] * 20)
        busy.sendall(full[: len(full) // 2])
        wait_for(lambda: shard_stats(b.segment)[0]["connections_open"] == 4, 10, "4 open")
        client.request(b.ready["control"], "drain")
        busy.sendall(full[len(full) // 2:])
        assert read_acks(busy, 20)[1] == 20
        assert b.stop(timeout_s=20) == 0
        for s in idle:  # closed by the stopping receiver: EOF (or a reset), not a hang
            s.settimeout(5)
            with contextlib.suppress(ConnectionResetError):
                while s.recv(4096):
                    pass
    finally:
        for s in [*idle, busy]:
            s.close()
