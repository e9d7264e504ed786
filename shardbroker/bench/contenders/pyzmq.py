"""``pyzmq``: PUSH/PULL with the scenario's batch size as the message. Each pusher process
sends one pre-built payload again and again (``copy=False``: no per-send copy in Python);
each puller process receives with ``copy=False`` and copies the frame into a shm ring.
Pusher i connects to puller i % receivers. There is no ack: the run ends at the last byte
a puller receives."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shardbroker.bench import datacheck
from shardbroker.bench.contenders.base import (
    Contender,
    RunContext,
    absorb_run,
    measured_run,
    require_data,
)
from shardbroker.bench.contenders.staging import receiver_ports
from shardbroker.bench.measure import SelfUsage
from shardbroker.bench.procs import Ring, WorkerSet, pin_self
from shardbroker.bench.result import RunFailed, RunResult
from shardbroker.bench.scenarios import Scenario
from shardbroker.publisher.batches import U32_CLIENT_ID_COL, BatchGeometry, BatchTemplate
from shardbroker.publisher.client import random_client_id

RING_BYTES = 256 << 20
QUEUE_BYTES = 32 << 20  # high-water marks hold about this much per socket
SAMPLE_EVERY = 64
RECV_TIMEOUT_MS = 30_000


def hwm(batch_bytes: int) -> int:
    return max(4, QUEUE_BYTES // batch_bytes)


@dataclass(frozen=True)
class PullParams:
    batches: int
    batch_bytes: int
    message_size: int
    cpu: int | None
    ports: Any


@dataclass(frozen=True)
class PushParams:
    port: int
    client_id: int
    batch_bytes: int
    message_size: int
    batches: int
    cpu: int | None


def puller(index: int, p: PullParams, arm: Callable[[], None]) -> dict[str, Any]:
    import zmq

    ctx = zmq.Context(1)
    sock = ctx.socket(zmq.PULL)  # starts the I/O thread, before pinning: it keeps every CPU
    pin_self(p.cpu)
    ring = Ring(RING_BYTES)
    got = nbytes = sampled = bad = 0
    t_last = 0.0
    templates: dict[int, BatchTemplate] = {}
    try:
        sock.setsockopt(zmq.RCVHWM, hwm(p.batch_bytes))
        sock.setsockopt(zmq.RCVTIMEO, RECV_TIMEOUT_MS)
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        p.ports.put((index, port))
        arm()
        u0 = SelfUsage.now()
        view = ring.view
        while got < p.batches:
            frame = sock.recv(copy=False)
            buf = frame.buffer
            n = len(buf)
            off = ring.reserve(n)
            view[off:off + n] = buf
            if got % SAMPLE_EVERY == 0:
                cid = int.from_bytes(view[off + 4 * U32_CLIENT_ID_COL: off + 4 * U32_CLIENT_ID_COL
                                          + 4], "little")
                t = templates.get(cid)
                if t is None:
                    t = templates[cid] = BatchTemplate(cid, BatchGeometry.for_batch(
                        p.batch_bytes, p.message_size))
                sampled += 1
                bad += not t.matches(view[off:off + n], 0)
            got += 1
            nbytes += n
        t_last = time.monotonic()
        used = SelfUsage.now().since(u0)
    finally:
        sock.close(linger=0)
        ctx.term()
        ring.close()
    return {"batches": got, "bytes": nbytes, "t_last": t_last, "sampled": sampled, "bad": bad,
            **used}


def pusher(index: int, p: PushParams, arm: Callable[[], None]) -> dict[str, Any]:
    import zmq

    ctx = zmq.Context(1)
    sock = ctx.socket(zmq.PUSH)  # starts the I/O thread, before pinning: it keeps every CPU
    pin_self(p.cpu)
    geom = BatchGeometry.for_batch(p.batch_bytes, p.message_size)
    payload = bytes(BatchTemplate(p.client_id, geom).for_seq(0))
    try:
        sock.setsockopt(zmq.SNDHWM, hwm(p.batch_bytes))
        sock.connect(f"tcp://127.0.0.1:{p.port}")
        arm()
        t0, cpu0 = time.monotonic(), time.process_time()
        for _ in range(p.batches):
            sock.send(payload, copy=False)
        sock.close(linger=RECV_TIMEOUT_MS)
        ctx.term()  # returns once everything queued has been sent
        t1, cpu1 = time.monotonic(), time.process_time()
    finally:
        if not sock.closed:
            sock.close(linger=0)
            ctx.term()
    return {"batches": p.batches, "bytes": p.batches * geom.payload_bytes, "t_start": t0,
            "t_end": t1, "cpu_s": cpu1 - cpu0}


class PyzmqContender(Contender):
    name = "pyzmq"
    description = "pyzmq PUSH/PULL, copy=False, puller copies into shm"

    def availability(self, env: Any) -> str | None:
        if not env.has_module("zmq"):
            return "pyzmq not importable: pip install pyzmq"
        return None

    def run(self, sc: Scenario, ctx: RunContext) -> RunResult:
        res = self.new_result(sc, ctx)
        rx, tx = WorkerSet(), WorkerSet()
        try:
            q = rx.ctx.Queue()
            per_pub = sc.batches_per_publisher()
            expect = [sum(per_pub[i] for i in range(r, sc.publishers, sc.receivers))
                      for r in range(sc.receivers)]
            rx.start(puller, [PullParams(expect[r], sc.batch_bytes, sc.message_size,
                                         ctx.plan.receiver_cpu(r), q)
                              for r in range(sc.receivers)])
            rx.wait_ready()
            rx.go()
            ports = receiver_ports(rx, q, sc.receivers)
            tx.start(pusher, [PushParams(ports[i % sc.receivers], random_client_id(),
                                         sc.batch_bytes, sc.message_size, n,
                                         ctx.plan.publisher_cpu(i))
                              for i, n in enumerate(per_pub)])
            tx.wait_ready()
            sums, use, rss, rsums = measured_run(tx, [], ctx.timeout_s, lambda: rx.collect(60),
                                                 rss_pids=[p.pid for p in rx.procs])
            absorb_run(res, sums, use, rss, rsums)
            res.bytes = sum(int(r["bytes"]) for r in rsums)
            res.batches = sum(int(r["batches"]) for r in rsums)
            res.seconds = (max(float(r["t_last"]) for r in rsums)
                           - min(float(s["t_start"]) for s in sums))
            res.sender_cpu_util = max(float(s["cpu_s"]) / max(1e-9, float(s["t_end"])
                                                               - float(s["t_start"]))
                                      for s in sums)
            require_data(res, datacheck.counts_check(
                sum(per_pub), res.batches, sum(int(s["bytes"]) for s in sums), res.bytes,
                sum(int(r["sampled"]) for r in rsums), sum(int(r["bad"]) for r in rsums)))
        except (RunFailed, OSError, ValueError) as exc:
            res.fail(str(exc))
        finally:
            tx.close()
            rx.close()
        return res
