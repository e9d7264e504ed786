"""``sink``: the bench's own sender ceiling, not a contender to beat.

A plain Python receiver that reads each connection as fast as it can (one blocking
``recv_into`` of up to 1 MiB into a reused buffer) and throws the bytes away. It follows the
stream just far enough to ack (``StreamCounter``: the handshake, then each batch header's
num_msg and total_size) and sends the cumulative count after every read that completed a
batch, which is all the senders' in-flight window waits for. Run with the same senders and CPU
plan as the other contenders, its figure is what the load generator can push on this machine:
a contender well below it was never limited by the load generator.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shardbroker.bench.contenders.base import Contender, RunContext
from shardbroker.bench.contenders.staging import run_receiver_procs
from shardbroker.bench.measure import SelfUsage
from shardbroker.bench.procs import announced_listener, pin_self
from shardbroker.bench.result import RunResult
from shardbroker.bench.scenarios import SENDER_CEILING, Scenario
from shardbroker.bench.wire import StreamCounter
from shardbroker.wire.protocol import ACK_BROKER_ID, ACK_COUNT

# Big enough that one read takes whatever the socket holds (a 2 MiB batch in 2 reads), small
# enough to stay in L2/L3 across reads: the copy is then as cheap as the kernel can make it.
READ_BYTES = 1 << 20


@dataclass(frozen=True)
class SinkParams:
    connections: int
    cpu: int | None
    ports: Any  # multiprocessing queue: (index, port)
    read_bytes: int = READ_BYTES


@dataclass
class SinkConn:
    counter: StreamCounter = field(default_factory=StreamCounter)
    recv_calls: int = 0
    t_last: float = 0.0
    error: str | None = None


def drain(conn: socket.socket, buf: memoryview, st: SinkConn) -> None:
    """Read ``conn`` to EOF into ``buf``, acking the cumulative message count after each read
    that completed a batch; a stream that ends mid-batch is an error."""
    acked = 0
    try:
        conn.sendall(ACK_BROKER_ID.pack(0))  # the ack stream starts with a broker id
        while got := conn.recv_into(buf):
            st.recv_calls += 1
            if st.counter.feed(buf[:got]) != acked:
                acked = st.counter.messages
                conn.sendall(ACK_COUNT.pack(acked))
                st.t_last = time.monotonic()
        if not st.counter.at_boundary:
            raise ConnectionError("peer closed mid-batch")
    except OSError as exc:
        st.error = f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()


def _serve_all(lsock: socket.socket, count: int, read_bytes: int) -> list[SinkConn]:
    """Accept ``count`` connections and drain each in its own thread (the GIL is released in
    recv_into, so one connection's read overlaps another's parsing)."""
    stats = [SinkConn() for _ in range(count)]
    threads = []
    for st in stats:
        conn, _ = lsock.accept()
        conn.settimeout(None)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # acks go out at once
        t = threading.Thread(target=drain, args=(conn, memoryview(bytearray(read_bytes)), st),
                             daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    return stats


def receiver(index: int, p: SinkParams, arm: Callable[[], None]) -> dict[str, Any]:
    pin_self(p.cpu)
    with announced_listener(p.ports, index) as lsock:
        arm()
        u0 = SelfUsage.now()
        lsock.settimeout(60)
        stats = _serve_all(lsock, p.connections, p.read_bytes)
        used = SelfUsage.now().since(u0)
    errors = [s.error for s in stats if s.error]
    return {"batches": sum(s.counter.batches for s in stats),
            "bytes": sum(s.counter.payload_bytes for s in stats),
            "messages": sum(s.counter.messages for s in stats),
            "recv_calls": sum(s.recv_calls for s in stats),
            "t_last": max(s.t_last for s in stats), "error": "; ".join(errors) or None,
            **used}


class SinkContender(Contender):
    name = SENDER_CEILING
    description = ("SENDER CEILING, not a contender: a Python receiver that reads into a "
                   "reused 1 MiB buffer, discards the bytes and acks: what the bench's senders "
                   "can push here")

    def supports(self, sc: Scenario) -> str | None:
        if sc.kind == "latency":
            return "the sink measures the senders' throughput ceiling; S5's floor is limit"
        return None

    def run(self, sc: Scenario, ctx: RunContext) -> RunResult:
        return run_receiver_procs(self.new_result(sc, ctx), sc, ctx, receiver,
                                  lambda conns, cpu, q: SinkParams(conns, cpu, q))
