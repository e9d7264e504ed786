"""Measure consumers (issue #9): read throughput while publishers stream, what retention
`block` costs the publish side next to `overwrite`, and how fast a waiting reader wakes.

``python -m shardbroker.bench.consumers [--repeat K] [--total SIZE] [--json FILE]``

Modes run interleaved (A B C A B C ...), each on a fresh broker with one receiver and one
publisher: ``overwrite`` without a consumer (the baseline), ``overwrite`` with a consumer,
``block`` with the same consumer. The consumer is a separate process that follows the segment
and sums every payload byte with numpy. Then ``wake``: a writer process commits a small batch
every 5 ms carrying its commit time, a follower reports the delay until it saw each one and
its own CPU time (Backoff waiting).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

MODES = ("overwrite", "overwrite+consumer", "block+consumer")


def consume(segment: str, name: str, idle_exit_s: float) -> dict[str, Any]:
    """Follow ``segment`` as consumer ``name`` until idle; checksum every payload."""
    import numpy as np

    from shardbroker.consumer.consumer import Consumer

    total = 0
    nbytes = 0
    batches = 0
    first = last = 0.0
    cpu0 = time.process_time()
    with Consumer(segment, name, start="oldest") as c:
        for b in c.batches(idle_timeout_s=idle_exit_s):
            if not batches:
                first = time.perf_counter()
            words = len(b.payload) // 8
            total += int(np.frombuffer(b.payload, "<u8", count=words).sum(dtype=np.uint64))
            nbytes += len(b.payload)
            batches += 1
            last = time.perf_counter()
        lapped, torn = c.lapped, c.torn
    busy = max(last - first, 1e-9)
    return {"bytes": nbytes, "batches": batches, "seconds": busy,
            "gbps": nbytes / busy / 1e9, "cpu_s": time.process_time() - cpu0,
            "lapped": lapped, "torn": torn, "checksum": total & 0xFFFF_FFFF_FFFF_FFFF}


def _one(mode: str, total: int, batch: int, blog: str) -> dict[str, Any]:
    from shardbroker.control import client
    from shardbroker.publisher import loadgen
    from shardbroker.segment import shm
    from shardbroker.supervisor.process import BrokerProcess

    seg = f"shardbroker-measure-{os.getpid()}-{os.urandom(3).hex()}"
    retention = "block" if mode.startswith("block") else "overwrite"
    b = BrokerProcess(["--listen", "127.0.0.1:0", "--threads", "1", "--segment", seg,
                       "--blog-size", blog, "--retention", retention],
                      stderr=subprocess.DEVNULL)
    consumer: subprocess.Popen[bytes] | None = None
    try:
        b.start()
        if mode.endswith("+consumer"):
            consumer = subprocess.Popen(
                [sys.executable, "-m", "shardbroker.bench.consumers", "--consume", seg],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            _await_consumer(seg)
        spec = loadgen.LoadSpec(host=b.host, port=b.port, connections=1, batch_bytes=batch,
                                message_size=1024, total_bytes=total)
        pub = loadgen.run(spec, timeout_s=600)
        deadline = time.monotonic() + 5  # the receiver's next metrics snapshot (1 s)
        while True:
            stats = client.request(b.ready["control"], "stats", timeout_s=5)["total"]
            if stats["batches"] >= pub["batches"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        row: dict[str, Any] = {
            "mode": mode, "publish_gbps": pub["gbps"], "errors": pub["errors"],
            "receiver_cpu_s_per_gb": (stats["cpu_user_s"] + stats["cpu_sys_s"])
            / max(stats["bytes"], 1) * 1e9,
            "backpressured_s": stats["backpressured_s"], "parks": stats["parks"],
            "retention_checks": stats["retention_checks"], "batches": stats["batches"],
        }
        if consumer is not None:
            out, _ = consumer.communicate(timeout=120)
            row["consumer"] = json.loads(out.decode().strip().splitlines()[-1])
            row["consumer"]["cpu_share"] = row["consumer"]["cpu_s"] / row["consumer"]["seconds"]
        return row
    finally:
        if consumer is not None and consumer.poll() is None:
            consumer.kill()
            consumer.wait()
        b.stop()
        shm.unlink(seg)


def _await_consumer(seg: str) -> None:
    from shardbroker.consumer.registry import ConsumerTable
    from shardbroker.segment import shm

    m = shm.attach(seg, writable=False)
    try:
        deadline = time.monotonic() + 30
        while ConsumerTable(m).find("measure") is None:
            if time.monotonic() > deadline:
                raise RuntimeError("the measuring consumer did not register")
            time.sleep(0.02)
    finally:
        m.close()


def wake_latency(kind: str, commits: int = 400, period_s: float = 0.005) -> dict[str, Any]:
    """Commit-to-seen delay of a follower waiting with ``kind`` (backoff | futex), its CPU per
    second of following, and the writer's CPU (what the wake-ups cost the publish side)."""
    from shardbroker.segment import layout, shm
    from shardbroker.segment.waiting import make_waiter

    seg = f"shardbroker-measure-wake-{os.getpid()}-{os.urandom(3).hex()}"
    m = shm.create(seg, layout.Geometry(1, 1024, 1 << 20))
    writer = None
    try:
        writer = subprocess.Popen(
            [sys.executable, "-m", "shardbroker.bench.consumers", "--write", seg,
             "--commits", str(commits), "--period", str(period_s)], stdout=subprocess.PIPE)
        delays = []
        from shardbroker.segment.reader import SegmentReader

        waiter = make_waiter(kind, seg)
        with SegmentReader(seg) as r:
            cpu0, t0 = time.process_time(), time.perf_counter()
            for bt in r.follow(start=[0], idle_timeout_s=2.0, wait=waiter):
                seen = time.monotonic_ns()
                delays.append((seen - int.from_bytes(bt.payload[64:72], "little")) / 1000)
                if len(delays) == commits:
                    break
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
        if hasattr(waiter, "close"):
            waiter.close()
        writer_out, _ = writer.communicate(timeout=30)
        delays.sort()
        return {"wait": type(waiter).__name__, "commits": len(delays),
                "period_ms": period_s * 1000,
                "writer_cpu_s": json.loads(writer_out)["cpu_s"],
                "delay_us": {"p50": delays[len(delays) // 2],
                             "p99": delays[int(len(delays) * 0.99)], "max": delays[-1]},
                "follower_cpu_per_s": cpu / wall}
    finally:
        if writer is not None and writer.poll() is None:
            writer.kill()
            writer.wait()
        m.close()
        shm.unlink(seg)


def _write(seg: str, commits: int, period_s: float) -> None:
    import numpy  # noqa: F401  (a receiver has it loaded: its import is not a wake-up cost)

    from shardbroker.segment import shm
    from shardbroker.segment.writer import ShardWriter
    from shardbroker.wire.protocol import encode_messages

    m = shm.attach(seg, writable=True)
    cpu0 = time.process_time()
    try:
        w = ShardWriter(m, 0, 0)
        time.sleep(0.2)  # the follower is waiting by now
        for seq in range(commits):
            time.sleep(period_s)
            payload = bytearray(encode_messages([b"\0" * 64], 1, seq))
            r = w.reserve(len(payload))
            payload[64:72] = time.monotonic_ns().to_bytes(8, "little")
            w.buf[r.log_idx: r.log_idx + len(payload)] = payload
            w.commit(r, seq, 0, 1, 1, 0, 0)
    finally:
        m.close()
    print(json.dumps({"cpu_s": time.process_time() - cpu0}))


def main(argv: list[str] | None = None) -> int:
    from shardbroker.config import parse_size

    p = argparse.ArgumentParser(prog="python -m shardbroker.bench.consumers",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--total", default="2GiB", help="bytes published per run")
    p.add_argument("--batch-size", default="2MiB")
    p.add_argument("--blog-size", default="256MiB")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--consume", help=argparse.SUPPRESS)
    p.add_argument("--write", help=argparse.SUPPRESS)
    p.add_argument("--commits", type=int, default=400, help=argparse.SUPPRESS)
    p.add_argument("--period", type=float, default=0.005, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.consume:
        print(json.dumps(consume(a.consume, "measure", idle_exit_s=2.0)))
        return 0
    if a.write:
        _write(a.write, a.commits, a.period)
        return 0
    total, batch = parse_size(a.total), parse_size(a.batch_size)
    rows = []
    for k in range(a.repeat):
        for mode in MODES:
            row = _one(mode, total, batch, a.blog_size)
            row["round"] = k
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    summary: dict[str, Any] = {"total_bytes": total, "batch_bytes": batch, "modes": {}}
    for mode in MODES:
        mine = [r for r in rows if r["mode"] == mode]
        entry = {"publish_gbps": statistics.median(r["publish_gbps"] for r in mine),
                 "receiver_cpu_s_per_gb":
                     statistics.median(r["receiver_cpu_s_per_gb"] for r in mine),
                 "backpressured_s": statistics.median(r["backpressured_s"] for r in mine)}
        if "consumer" in mine[0]:
            entry["consumer_gbps"] = statistics.median(r["consumer"]["gbps"] for r in mine)
            entry["consumer_cpu_share"] = statistics.median(
                r["consumer"]["cpu_share"] for r in mine)
            entry["consumer_lapped"] = [r["consumer"]["lapped"] for r in mine]
        summary["modes"][mode] = entry
    summary["wake"] = [wake_latency(kind) for kind in ("backoff", "futex", "backoff", "futex")]
    summary["runs"] = rows
    text = json.dumps(summary, indent=2)
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
