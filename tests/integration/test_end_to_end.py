"""A real broker (2 receivers) and real publisher processes on loopback."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from shardbroker import Publisher, SegmentReader
from shardbroker.errors import PublishError
from shardbroker.publisher import loadgen
from shardbroker.publisher.batches import BatchGeometry
from shardbroker.wire import protocol as p

from .conftest import (
    BACKENDS,
    BrokerFactory,
    raw_batch,
    raw_publisher,
    read_acks,
    shard_stats,
    skip_unless_backend,
    verify_segment,
    wait_for,
)

pytestmark = pytest.mark.integration

BATCH = 2 << 20
MSG = 1024
GEOM = BatchGeometry.for_batch(BATCH, MSG)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Every test here is the receive path's contract: it runs against each backend."""
    return skip_unless_backend(str(request.param))


def _load(b: Any, connections: int = 4, total: int = 256 << 20, **kw: Any) -> dict[str, Any]:
    spec = loadgen.LoadSpec(host=b.host, port=b.port, connections=connections, batch_bytes=BATCH,
                            message_size=MSG, total_bytes=total, **kw)
    return loadgen.run(spec, timeout_s=120)


def _in_thread(fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}
    t = threading.Thread(target=lambda: out.update(fn()))
    t.start()
    return t, out


def test_four_publishers_256mib_exactly_once(broker: BrokerFactory, backend: str) -> None:
    b = broker(blog="256MiB")
    assert b.ready["event"] == "ready" and b.ready["threads"] == 2
    assert b.ready["backend"] == backend
    assert all(r["backend"] == backend for r in b.ready["receivers"])
    result = _load(b)
    assert not result["errors"]
    assert result["bytes"] >= 256 << 20
    assert result["acked_messages"] == result["messages"]  # every message was acked
    report = verify_segment(b.segment, result["publishers"], GEOM)
    assert report.ok, report.problems
    assert report.batches_checked == result["batches"]
    assert report.payloads_compared == result["batches"]  # every byte compared
    stats = shard_stats(b.segment)
    assert sum(s["batches"] for s in stats) == result["batches"]
    assert all(s["batches"] > 0 for s in stats)  # both receivers took connections
    assert b.stop() == 0


def test_publisher_killed_mid_stream(broker: BrokerFactory) -> None:
    b = broker(blog="512MiB")
    victim = subprocess.Popen(
        [sys.executable, "-m", "shardbroker", "publish", "--connect", f"127.0.0.1:{b.port}",
         "--duration", "30", "--batch-size", str(BATCH), "--message-size", str(MSG), "--json"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        # the victim alone first, so it is surely mid-stream (not still importing) when killed
        wait_for(lambda: sum(s["batches"] for s in shard_stats(b.segment)) > 5, 30,
                 "victim traffic")
        t, out = _in_thread(lambda: _load(b, connections=3, total=48 << 20))
        wait_for(lambda: sum(s["batches"] for s in shard_stats(b.segment)) > 30, 30,
                 "traffic")
        _kill_publishers(victim.pid)  # the loader and its publisher process, mid-stream
        t.join(120)
    finally:
        if victim.poll() is None:
            _kill_publishers(victim.pid)
        victim.wait()
    assert not out["errors"]
    report = verify_segment(b.segment, out["publishers"], GEOM, unknown_clients_ok=True)
    assert report.ok, report.problems
    # the killed client's committed batches are complete and form a gap-free prefix
    with SegmentReader(b.segment) as r:
        honest = {s["client_id"] for s in out["publishers"]}
        killed = sorted(x.batch_seq for x in r.batches() if x.client_id not in honest)
    assert killed and killed == list(range(len(killed)))
    assert b.stop() == 0


def _kill_publishers(pid: int) -> None:
    """SIGKILL a loader and its publisher processes, but not multiprocessing's resource
    tracker: it must outlive them to unlink their named semaphores."""
    victims = [pid]
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if ppid == pid and b"resource_tracker" not in cmd:
            victims.append(int(entry))
    for v in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(v, signal.SIGKILL)


def test_disconnect_mid_payload_is_never_visible(broker: BrokerFactory) -> None:
    b = broker(threads=1)
    s = raw_publisher(b.port, client_id=77)
    s.sendall(raw_batch(77, 0, [b"complete"] * 4))
    assert read_acks(s, 4)[1] == 4
    partial = raw_batch(77, 1, [b"x" * 5000] * 10)
    s.sendall(partial[: len(partial) // 2])
    time.sleep(0.2)
    s.close()
    wait_for(lambda: shard_stats(b.segment)[0]["disconnects_mid_batch"] == 1, 10,
             "the broker to count the disconnect")
    with SegmentReader(b.segment) as r:
        got = [(x.client_id, x.batch_seq, x.num_msg) for x in r.batches()]
    assert got == [(77, 0, 4)]


def test_garbage_connection_while_others_stream(broker: BrokerFactory) -> None:
    b = broker()
    t, out = _in_thread(lambda: _load(b, total=128 << 20))
    wait_for(lambda: sum(s["batches"] for s in shard_stats(b.segment)) > 5, 30, "traffic")
    g = socket.create_connection(("127.0.0.1", b.port), timeout=10)
    g.sendall(os.urandom(4096))
    reply = b""
    try:
        while chunk := g.recv(4096):
            reply += chunk
    except ConnectionResetError:
        pass
    g.close()
    t.join(120)
    assert not out["errors"]
    assert reply[:4] == p.CONTROL_MAGIC.to_bytes(4, "little")  # told why before the close
    assert b"handshake." in reply
    report = verify_segment(b.segment, out["publishers"], GEOM)
    assert report.ok, report.problems
    wait_for(lambda: sum(s["rejected"] for s in shard_stats(b.segment)) == 1, 5, "counter")


def test_publisher_library_names_the_rejection(tmp_path: Any, broker: BrokerFactory) -> None:
    cfg = tmp_path / "b.toml"
    cfg.write_text('[limits]\nmax_batch_bytes = "64KiB"\n')
    b = broker("--config", str(cfg))
    with Publisher(b.host, b.port, topic="t", batch_bytes=4096) as pub:
        for _ in range(10):
            pub.publish(b"fine" * 10)
        pub.flush()
        assert pub.acked_messages == 10
    pub = Publisher(b.host, b.port, topic="t")
    try:
        with pytest.raises(PublishError) as err:
            pub.publish_batch(bytes(128 << 10), 1)
            pub.flush(timeout=10)
        assert err.value.reason == "batch.total_size_too_large"
    finally:
        pub.close()


def test_connections_spread_evenly(broker: BrokerFactory) -> None:
    b = broker()
    socks = [raw_publisher(b.port, client_id=i + 1) for i in range(5)]
    try:
        wait_for(lambda: sum(s["connections_open"] for s in shard_stats(b.segment)) == 5, 10,
                 "5 open connections")
        per_shard = [s["connections_open"] for s in shard_stats(b.segment)]
        assert max(per_shard) <= math.ceil(5 / 2)
    finally:
        for s in socks:
            s.close()


def test_ack_connect_back_embarcadero_style(broker: BrokerFactory) -> None:
    b = broker(threads=1)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(10)
    s = raw_publisher(b.port, client_id=99, ack_port=listener.getsockname()[1])
    try:
        s.sendall(raw_batch(99, 0, [b"m"] * 3) + raw_batch(99, 1, [b"n"] * 2))
        ack_conn, _ = listener.accept()
        with ack_conn:
            assert read_acks(ack_conn, 5) == (0, 5)
    finally:
        s.close()
        listener.close()


def test_receiver_sigkill_is_restarted_and_log_intact(broker: BrokerFactory) -> None:
    b = broker()
    first = _load(b, connections=2, total=32 << 20)
    assert not first["errors"]
    before = shard_stats(b.segment)
    victim = b.receiver_pids()[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: shard_stats(b.segment)[0]["writer_pid"] not in (victim, 0), 10,
             "a new receiver on shard 0")
    report = verify_segment(b.segment, first["publishers"], GEOM)
    assert report.ok, report.problems
    second = _load(b, connections=2, total=32 << 20)
    assert not second["errors"]
    after = shard_stats(b.segment)
    assert all(a["batches"] > x["batches"] for a, x in zip(after, before, strict=True))
    report = verify_segment(b.segment, first["publishers"] + second["publishers"], GEOM)
    assert report.ok, report.problems
    with SegmentReader(b.segment) as r:
        assert r.shard_state(0).restarts == 1
    assert b.stop() == 0


def test_sigterm_unlinks_segment_and_keep_segment_keeps_it(broker: BrokerFactory) -> None:
    b = broker()
    assert os.path.exists(f"/dev/shm/{b.segment}")
    assert b.stop() == 0
    assert not os.path.exists(f"/dev/shm/{b.segment}")
    k = broker("--keep-segment")
    r = _load(k, connections=1, total=8 << 20)
    assert k.stop() == 0
    try:
        report = verify_segment(k.segment, r["publishers"], GEOM)
        assert report.ok, report.problems
    finally:
        os.unlink(f"/dev/shm/{k.segment}")


def test_dump_verify_cli(broker: BrokerFactory) -> None:
    import json

    b = broker()
    res = _load(b, connections=2, total=16 << 20)
    out = subprocess.run([sys.executable, "-m", "shardbroker", "dump", "--segment", b.segment,
                          "--json", "--verify"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["ok"] and sum(s["batches_committed"] for s in d["shards"]) == res["batches"]
    assert sum(s["messages_walked"] for s in d["shards"]) == res["messages"]


@pytest.mark.parametrize("args, text", [
    (["--listen", "nowhere"], "is not HOST:PORT"),
    (["--config", "/nonexistent.toml"], "does not exist"),
    (["--threads", "-2"], "broker.threads"),
])
def test_run_bad_input_is_one_clear_line(args: list[str], text: str) -> None:
    out = subprocess.run([sys.executable, "-m", "shardbroker", "run", *args],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert text in out.stderr
    assert "Traceback" not in out.stderr
