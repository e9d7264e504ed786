"""``nats``: a nats-server on loopback with nats-py clients and 1 MiB messages (the server's
default maximum payload). Publisher processes publish one pre-built payload and flush every
few messages; subscriber processes (one per receiver, one queue group) copy each message
into a shm ring. The receiving side measured is nats-server plus the subscribers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shardbroker.bench import datacheck
from shardbroker.bench.contenders.base import (
    EXTRA_HINT,
    Contender,
    Environment,
    RunContext,
    absorb_run,
    measured_run,
)
from shardbroker.bench.measure import SelfUsage
from shardbroker.bench.procs import (
    Children,
    Ring,
    WorkerSet,
    free_port,
    pin_self,
    pinned,
    wait_listening,
)
from shardbroker.bench.result import RunFailed, RunResult
from shardbroker.bench.scenarios import MiB, Scenario

MAX_PAYLOAD = 1 * MiB
SUBJECT = "bench.load"
FLUSH_EVERY = 8  # messages between PING/PONG round trips: bounds what the server queues
RING_BYTES = 256 << 20
IDLE_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class SubParams:
    url: str
    cpu: int | None
    received: Any  # multiprocessing Value: bytes received so far
    stop: Any  # multiprocessing Event


@dataclass(frozen=True)
class PubParams:
    url: str
    message_bytes: int
    messages: int
    cpu: int | None


def subscriber(index: int, p: SubParams, arm: Callable[[], None]) -> dict[str, Any]:
    import nats

    pin_self(p.cpu)
    ring = Ring(RING_BYTES)

    async def main() -> dict[str, Any]:
        nc = await nats.connect(p.url, allow_reconnect=False, max_reconnect_attempts=0)
        got = {"count": 0, "bytes": 0, "t_last": 0.0}
        view = ring.view

        async def on_message(msg: Any) -> None:
            data = msg.data
            off = ring.reserve(len(data))
            view[off:off + len(data)] = data
            got["count"] += 1
            got["bytes"] += len(data)
            got["t_last"] = time.monotonic()
            p.received.value = got["bytes"]

        await nc.subscribe(SUBJECT, queue="bench", cb=on_message,
                           pending_bytes_limit=512 * MiB, pending_msgs_limit=1 << 20)
        await nc.flush()  # the server has the subscription before anyone publishes
        arm()
        u0 = SelfUsage.now()
        while not p.stop.is_set():
            await asyncio.sleep(0.05)
        used = SelfUsage.now().since(u0)
        await nc.close()
        return {"batches": got["count"], "bytes": got["bytes"], "t_last": got["t_last"], **used}

    try:
        return asyncio.run(main())
    finally:
        ring.close()


def publisher(index: int, p: PubParams, arm: Callable[[], None]) -> dict[str, Any]:
    import nats

    pin_self(p.cpu)
    payload = os.urandom(64) * (p.message_bytes // 64)

    async def main() -> dict[str, Any]:
        nc = await nats.connect(p.url, allow_reconnect=False, max_reconnect_attempts=0,
                                pending_size=4 * p.message_bytes)
        await nc.flush()
        arm()
        t0, cpu0 = time.monotonic(), time.process_time()
        for i in range(p.messages):
            await nc.publish(SUBJECT, payload)
            if i % FLUSH_EVERY == FLUSH_EVERY - 1:
                await nc.flush(timeout=30)
        await nc.flush(timeout=30)
        t1, cpu1 = time.monotonic(), time.process_time()
        await nc.close()
        return {"batches": p.messages, "bytes": p.messages * len(payload), "t_start": t0,
                "t_end": t1, "cpu_s": cpu1 - cpu0}

    return asyncio.run(main())


class NatsContender(Contender):
    name = "nats"
    description = "nats-server + nats-py, 1 MiB messages, queue-group subscribers copy to shm"

    def supports(self, sc: Scenario) -> str | None:
        if sc.kind == "throughput" and sc.batch_bytes < MAX_PAYLOAD:
            return "nats runs with 1 MiB messages (its default max payload) only: S1, S2"
        return super().supports(sc)

    def availability(self, env: Environment) -> str | None:
        if not env.has_tool("nats-server"):
            return "nats-server not found: apt-get install -y nats-server (or `make bench`)"
        if not env.has_module("nats"):
            return f"nats-py not installed: {EXTRA_HINT}"
        return None

    def run(self, sc: Scenario, ctx: RunContext) -> RunResult:
        res = self.new_result(sc, ctx)
        res.extra["message_bytes"] = msg_bytes = min(sc.batch_bytes, MAX_PAYLOAD)
        per_pub = [-(-n * sc.batch_bytes // msg_bytes) for n in sc.batches_per_publisher()]
        children, rx, tx = Children(), WorkerSet(), WorkerSet()
        tmp = tempfile.TemporaryDirectory(prefix="shardbroker-bench-nats-")
        try:
            port = free_port()
            conf = os.path.join(tmp.name, "nats.conf")
            with open(conf, "w") as f:
                # max_pending: room for what the flush cadence lets publishers queue.
                f.write(f"listen: 127.0.0.1:{port}\nmax_pending: 512MB\n"
                        f"write_deadline: \"30s\"\n")
            with open(os.devnull, "wb") as out, open(os.path.join(tmp.name, "err"), "wb") as err:
                server = children.popen(pinned([str(ctx.env.tools["nats-server"]), "-c", conf],
                                               ctx.plan.receivers), stdout=out, stderr=err)
            wait_listening(port, alive=lambda: server.poll() is None)
            url = f"nats://127.0.0.1:{port}"
            received = [rx.ctx.Value("Q", 0, lock=False) for _ in range(sc.receivers)]
            stop = rx.ctx.Event()
            rx.start(subscriber, [SubParams(url, ctx.plan.receiver_cpu(r), received[r], stop)
                                  for r in range(sc.receivers)])
            rx.wait_ready()
            rx.go()
            tx.start(publisher, [PubParams(url, msg_bytes, n, ctx.plan.publisher_cpu(i))
                                 for i, n in enumerate(per_pub)])
            tx.wait_ready()
            want = sum(per_pub) * msg_bytes

            def all_received() -> list[dict[str, Any]]:
                last, since = -1, time.monotonic()
                while (got := sum(v.value for v in received)) < want:
                    if got != last:
                        last, since = got, time.monotonic()
                    elif time.monotonic() - since > IDLE_TIMEOUT_S:
                        break
                    time.sleep(0.01)
                stop.set()
                return rx.collect(30)

            sums, use, rss, rsums = measured_run(tx, [server.pid], ctx.timeout_s, all_received,
                                                 rss_pids=[p.pid for p in rx.procs])
            absorb_run(res, sums, use, rss, rsums)
            res.bytes = sum(int(r["bytes"]) for r in rsums)
            messages = sum(int(r["batches"]) for r in rsums)
            res.extra["messages"] = messages
            res.batches = res.bytes // sc.batch_bytes  # per-batch figures in the scenario's unit
            res.seconds = (max(float(r["t_last"]) for r in rsums)
                           - min(float(s["t_start"]) for s in sums))
            res.sender_cpu_util = max(float(s["cpu_s"]) / max(1e-9, float(s["t_end"])
                                                               - float(s["t_start"]))
                                      for s in sums)
            res.data_check = datacheck.counts_check(sum(per_pub), messages, want, res.bytes)
            if not res.data_check["ok"]:
                raise RunFailed("data check failed (slow consumer?): "
                                + "; ".join(res.data_check["problems"]))
        except (RunFailed, OSError, ValueError) as exc:
            res.fail(str(exc))
        finally:
            tx.close()
            rx.close()
            children.close()
            with contextlib.suppress(OSError):
                tmp.cleanup()
        return res
