"""Integration fixtures: real broker processes on 127.0.0.1, port 0, always stopped."""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from shardbroker import SegmentReader
from shardbroker.publisher.batches import BatchGeometry
from shardbroker.segment import shm
from shardbroker.supervisor.process import BrokerProcess
from shardbroker.verify import ClientExpectation, Verifier, VerifyReport
from shardbroker.wire import protocol as p

BrokerFactory = Callable[..., BrokerProcess]


BACKENDS = ("epoll", "uring")


def skip_unless_backend(name: str) -> str:
    """``name``, or skip the test when this machine cannot run that receive backend."""
    if name == "uring":
        from shardbroker.platform import uring

        ok, why = uring.probe()
        if not ok:
            pytest.skip(f"io_uring unavailable here: {why}")
    return name


# Run every broker-fixture test on one backend: SHARDBROKER_TEST_BACKEND=uring pytest ...
BACKEND_ENV = "SHARDBROKER_TEST_BACKEND"


@pytest.fixture
def backend() -> str | None:
    """The receive backend the ``broker`` fixture asks for; None: the configured default,
    or ``$SHARDBROKER_TEST_BACKEND`` where set (the recovery, consumer and end-to-end suites
    on the io_uring backend). A test module overrides this fixture (parametrised over
    BACKENDS) to run its tests as a contract suite against every backend."""
    name = os.environ.get(BACKEND_ENV, "")
    if name and name not in BACKENDS:
        raise pytest.UsageError(f"{BACKEND_ENV}={name!r}: one of {', '.join(BACKENDS)}")
    return name or None


@pytest.fixture
def broker(backend: str | None) -> Iterator[BrokerFactory]:
    started: list[BrokerProcess] = []
    backend_args = ["--backend", skip_unless_backend(backend)] if backend else []

    def start(*args: str, threads: int = 2, blog: str = "128MiB",
              env: dict[str, str] | None = None) -> BrokerProcess:
        seg = f"shardbroker-it-{os.getpid()}-{os.urandom(3).hex()}"
        b = BrokerProcess(["--listen", "127.0.0.1:0", "--threads", str(threads),
                           "--segment", seg, "--blog-size", blog, *backend_args, *args],
                          ready_timeout_s=60, env=env)
        started.append(b)
        return b.start()

    try:
        yield start
    finally:
        for b in started:
            b.stop(timeout_s=15)
            if b.ready:
                shm.unlink(b.segment)  # a broker killed by a test cannot unlink its own


def verify_segment(segment: str, summaries: list[dict[str, Any]], geom: BatchGeometry,
                   unknown_clients_ok: bool = False) -> VerifyReport:
    """Every acked message exactly once with the right bytes; clients not in ``summaries``
    (a killed publisher) are checked for correct bytes and no duplicates."""
    expectations = [ClientExpectation.from_summary(s) for s in summaries if s.get("client_id")]
    with SegmentReader(segment) as r:
        known = {e.client_id for e in expectations}
        if unknown_clients_ok:
            for b in r.batches():
                if b.client_id not in known:
                    known.add(b.client_id)
                    expectations.append(ClientExpectation(b.client_id, geom.message_size,
                                                          geom.messages, 0, None))
        v = Verifier(expectations)
        for b in r.batches():
            v.feed(b)
        # Batches of other (older) clients the ring lapped do not matter here: a lapped batch
        # of these clients shows up as missing or fails its still_valid() re-check.
        return v.finish()


def shard_stats(segment: str) -> list[dict[str, int]]:
    with SegmentReader(segment) as r:
        return [r.shard_stats(s) | {"batches": r.shard_state(s).pbr_committed,
                                    "writer_pid": r.shard_state(s).writer_pid}
                for s in range(r.shard_count)]


def wait_for(cond: Callable[[], bool], timeout_s: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def raw_publisher(port: int, client_id: int = 4242, ack_port: int = 0,
                  topic: bytes = b"raw\0") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(p.HANDSHAKE.pack(client_id, 1, 0, 0, ack_port, 0, topic))
    return s


def raw_batch(client_id: int, seq: int, msgs: list[bytes]) -> bytes:
    payload = p.encode_messages(msgs, client_id, seq)
    return p.encode_batch_header(p.BatchHeader(seq, client_id, len(msgs), len(payload))) + payload


def read_acks(s: socket.socket, want_count: int, timeout_s: float = 10.0) -> tuple[int, int]:
    """Read the ack stream until the cumulative count reaches ``want_count``."""
    s.settimeout(timeout_s)
    buf = b""
    while len(buf) < 4:
        buf += s.recv(64)
    (broker_id,) = struct.unpack_from("<i", buf)
    buf = buf[4:]
    count = 0
    while count < want_count:
        while len(buf) < 8:
            chunk = s.recv(64)
            if not chunk:
                raise AssertionError("ack stream closed")
            buf += chunk
        (count,) = struct.unpack_from("<Q", buf)
        buf = buf[8:]
    return broker_id, count


def closing_reason(s: socket.socket, timeout_s: float = 10.0) -> str:
    """Read until the broker closes; return the text of its SESF control frame (the reason
    it states before closing a connection)."""
    s.settimeout(timeout_s)
    got = b""
    try:
        while chunk := s.recv(65536):
            got += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    i = got.find(p.CONTROL_MAGIC.to_bytes(4, "little"))
    assert i >= 0, f"no SESF frame before the close: {got[:64]!r}"
    n = p.CONTROL_FRAME.unpack_from(got, i)[1]
    return got[i + 8: i + 8 + n].decode()
