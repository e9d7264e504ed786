"""``staging``: the naive receiver design the broker avoids. Per connection a thread does
blocking ``recv()`` calls that return new ``bytes`` objects, then copies them into a shm
ring, and acks each batch like the broker (so the same senders, and S5, work against it).
Receivers are separate processes, one per receiver of the scenario, pinned like the broker's.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shardbroker.bench import datacheck
from shardbroker.bench.contenders.base import (
    Contender,
    RunContext,
    add_self_reported,
    fill_from_senders,
    fill_usage,
    measured_run,
    require_data,
    sender_errors,
)
from shardbroker.bench.contenders.shardbroker import latency_fields, sender_plan
from shardbroker.bench.measure import SelfUsage
from shardbroker.bench.procs import Ring, WorkerFn, WorkerSet, announced_listener, pin_self
from shardbroker.bench.result import RunFailed, RunResult
from shardbroker.bench.scenarios import Scenario
from shardbroker.publisher.batches import BatchGeometry, BatchTemplate
from shardbroker.wire.protocol import (
    ACK_BROKER_ID,
    ACK_COUNT,
    BATCH_HEADER_SIZE,
    HANDSHAKE_SIZE,
)

RING_BYTES = 256 << 20
SAMPLE_EVERY = 64
_HDR = struct.Struct("<Q8xII")  # batch_seq, client_id, num_msg (offsets 0, 16, 20)
_TOTAL = struct.Struct("<Q")  # total_size at offset 64


@dataclass(frozen=True)
class RxParams:
    connections: int
    cpu: int | None
    message_size: int
    ports: Any  # multiprocessing queue: (index, port)
    ring_bytes: int = RING_BYTES
    floor: bool = False  # recv_into the ring directly, no sampling: the latency floor


class _Conn:
    def __init__(self) -> None:
        self.batches = self.bytes = self.messages = self.recv_calls = 0
        self.sampled = self.bad = 0
        self.t_last = 0.0
        self.error: str | None = None


def _recv_exact(conn: socket.socket, n: int, st: _Conn) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        st.recv_calls += 1
        if not chunk:
            if data:
                raise ConnectionError("peer closed mid-header")
            return None
        data += chunk
    return data


def _serve(conn: socket.socket, view: memoryview, base: int, size: int, message_size: int,
           st: _Conn, floor: bool) -> None:
    templates: dict[int, BatchTemplate] = {}
    pos = 0
    try:
        if _recv_exact(conn, HANDSHAKE_SIZE, st) is None:
            return
        conn.sendall(ACK_BROKER_ID.pack(0))
        while True:
            hdr = _recv_exact(conn, BATCH_HEADER_SIZE, st)
            if hdr is None:
                return
            seq, client_id, num_msg = _HDR.unpack_from(hdr, 0)
            (total,) = _TOTAL.unpack_from(hdr, 64)
            if total > size:
                raise ValueError(f"batch of {total} bytes exceeds the ring")
            if pos + total > size:
                pos = 0
            off = base + pos
            left = total
            while left:
                if floor:
                    got = conn.recv_into(view[off:off + left], left)
                else:
                    chunk = conn.recv(min(left, 1 << 20))  # the naive part: a new bytes object
                    got = len(chunk)
                    view[off:off + got] = chunk  # ...copied once more into shm
                st.recv_calls += 1
                if not got:
                    raise ConnectionError("peer closed mid-batch")
                off += got
                left -= got
            if not floor and seq % SAMPLE_EVERY == 0:
                t = templates.get(client_id)
                if t is None:
                    t = templates[client_id] = BatchTemplate(
                        client_id, BatchGeometry(message_size, num_msg))
                st.sampled += 1
                st.bad += not t.matches(view[base + pos: base + pos + total], seq)
            pos += total
            st.batches += 1
            st.bytes += total
            st.messages += num_msg
            conn.sendall(ACK_COUNT.pack(st.messages))
            st.t_last = time.monotonic()
    except (OSError, ValueError) as exc:
        st.error = f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()


def receiver(index: int, p: RxParams, arm: Callable[[], None]) -> dict[str, Any]:
    pin_self(p.cpu)
    ring = Ring(p.ring_bytes)
    try:
        with announced_listener(p.ports, index) as lsock:
            arm()
            u0 = SelfUsage.now()
            lsock.settimeout(60)
            stats = [_Conn() for _ in range(p.connections)]
            region = ring.size // p.connections
            threads = []
            for i in range(p.connections):
                conn, _ = lsock.accept()
                conn.settimeout(None)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # acks go out at once
                t = threading.Thread(target=_serve, args=(conn, ring.view, i * region, region,
                                                          p.message_size, stats[i], p.floor),
                                     daemon=True)
                t.start()
                threads.append(t)
            for t in threads:
                t.join()
            used = SelfUsage.now().since(u0)
    finally:
        ring.close()
    errors = [s.error for s in stats if s.error]
    return {"batches": sum(s.batches for s in stats), "bytes": sum(s.bytes for s in stats),
            "recv_calls": sum(s.recv_calls for s in stats),
            "sampled": sum(s.sampled for s in stats), "bad": sum(s.bad for s in stats),
            "t_last": max(s.t_last for s in stats), "error": "; ".join(errors) or None,
            **used}


def receiver_ports(rx: WorkerSet, q: Any, count: int, timeout_s: float = 60.0) -> list[int]:
    ports: dict[int, int] = {}
    deadline = time.monotonic() + timeout_s
    while len(ports) < count:
        try:
            i, port = q.get(timeout=max(0.1, deadline - time.monotonic()))
        except Exception as exc:  # queue.Empty
            raise RunFailed("baseline receivers did not start in time") from exc
        ports[int(i)] = int(port)
    return [ports[i] for i in range(count)]


def connections_per_receiver(publishers: int, receivers: int) -> list[int]:
    """Publisher i goes to receiver i % receivers: how many each receiver gets."""
    return [len(range(r, publishers, receivers)) for r in range(receivers)]


def run_ack_receivers(res: RunResult, sc: Scenario, ctx: RunContext, floor: bool) -> RunResult:
    """Baseline receiver processes that speak the publish protocol and ack every batch, fed
    by the same senders as the broker. ``floor``: recv_into straight into the ring."""
    return run_receiver_procs(res, sc, ctx, receiver, lambda conns, cpu, q: RxParams(
        conns, cpu, sc.message_size, q, floor=floor))


# (connections, cpu, port queue) -> the worker's params
MakeParams = Callable[[int, int | None, Any], Any]


def run_receiver_procs(res: RunResult, sc: Scenario, ctx: RunContext, worker: WorkerFn,
                       make_params: MakeParams) -> RunResult:
    """One receiver process per receiver of ``sc`` (``worker``, pinned like the broker's),
    fed by the bench's protocol senders. Each receiver reports batches, bytes, recv_calls
    and, where it samples payloads, sampled/bad; a run whose counts differ fails."""
    rx, tx = WorkerSet(), WorkerSet()
    try:
        q = rx.ctx.Queue()
        conns = connections_per_receiver(sc.publishers, sc.receivers)
        rx.start(worker, [make_params(conns[r], ctx.plan.receiver_cpu(r), q)
                          for r in range(sc.receivers)])
        rx.wait_ready()
        rx.go()
        ports = receiver_ports(rx, q, sc.receivers)
        tx.start(*sender_plan(sc, ctx, "127.0.0.1", ports))
        tx.wait_ready()
        sums, use, rss, rsums = measured_run(tx, [], ctx.timeout_s, lambda: rx.collect(60),
                                             rss_pids=[p.pid for p in rx.procs])
        sender_errors(sums)
        sender_errors(rsums)
        fill_from_senders(res, sums)
        fill_usage(res, use, rss)
        add_self_reported(res, rsums)
        latency_fields(res, sums)
        res.recv_calls = sum(int(r["recv_calls"]) for r in rsums)
        require_data(res, datacheck.counts_check(
            res.batches, sum(int(r["batches"]) for r in rsums), res.bytes,
            sum(int(r["bytes"]) for r in rsums), sum(int(r.get("sampled", 0)) for r in rsums),
            sum(int(r.get("bad", 0)) for r in rsums)))
    except (RunFailed, OSError, ValueError) as exc:
        res.fail(str(exc))
    finally:
        tx.close()
        rx.close()
    return res


class StagingContender(Contender):
    name = "staging"
    description = "naive: blocking recv() into bytes, then a copy into shm"
    acks = True

    def run(self, sc: Scenario, ctx: RunContext) -> RunResult:
        return run_ack_receivers(self.new_result(sc, ctx), sc, ctx, floor=False)
