"""``shardbroker demo``: a broker on built-in defaults, publishers for ~10 s, a checked summary.

A follower reads the segment while the publishers stream (so a ring smaller than the run's
data is fine) and checks every batch's message headers and every 8th batch's bytes; at the end
every acked message must have been seen exactly once.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

from shardbroker.publisher import loadgen
from shardbroker.publisher.batches import BatchGeometry
from shardbroker.publisher.client import random_client_id
from shardbroker.segment.reader import SegmentReader
from shardbroker.supervisor.process import BrokerProcess
from shardbroker.verify import ClientExpectation, Verifier


def follow(reader: SegmentReader, verifier: Verifier, positions: list[int]) -> int:
    """Feed the verifier every batch committed since ``positions``; returns batches read."""
    n = 0
    for shard in range(reader.shard_count):
        for b in reader.batches(shard, start=positions[shard]):
            verifier.feed(b)
            positions[shard] = b.index + 1
            n += 1
    return n


def shard_totals(reader: SegmentReader) -> dict[str, Any]:
    batches = sum(reader.shard_state(s).pbr_committed for s in range(reader.shard_count))
    stats = [reader.shard_stats(s) for s in range(reader.shard_count)]
    recv = sum(st["recv_calls"] for st in stats)
    payload_recv = sum(st["payload_recv_calls"] for st in stats)
    rcv = [st for st in stats if st["rcvbuf_max"]]
    return {
        "batches": batches,
        "recv_calls": recv,
        "recv_calls_per_batch": round(recv / batches, 2) if batches else None,
        "payload_recv_calls_per_batch": round(payload_recv / batches, 2) if batches else None,
        "wakeups_per_batch": round(sum(st["wakeups"] for st in stats) / batches, 2)
        if batches else None,
        "rcvbuf_min": min((st["rcvbuf_min"] for st in rcv), default=0),
        "rcvbuf_max": max((st["rcvbuf_max"] for st in rcv), default=0),
        "rejected": sum(st["rejected"] for st in stats),
    }


def run_demo(duration_s: float = 10.0, connections: int = 4, threads: int = 0,
             batch_bytes: int = 2 << 20, message_size: int = 1024, as_json: bool = False) -> int:
    segment = f"shardbroker-demo-{os.getpid()}"
    args = ["--listen", "127.0.0.1:0", "--segment", segment, "--threads", str(threads)]
    geom = BatchGeometry.for_batch(batch_bytes, message_size)
    ids = [random_client_id() for _ in range(connections)]
    with BrokerProcess(args) as broker:
        spec = loadgen.LoadSpec(host=broker.host, port=broker.port, connections=connections,
                                batch_bytes=batch_bytes, message_size=message_size,
                                duration_s=duration_s, topic="demo")
        result: dict[str, Any] = {}

        def publish() -> None:
            result.update(loadgen.run(spec, client_ids=ids))

        with SegmentReader(broker.segment) as reader:
            verifier = Verifier([ClientExpectation(i, message_size, geom.messages, 0)
                                 for i in ids], compare_every=8)
            positions = [0] * reader.shard_count
            t = threading.Thread(target=publish, name="publishers")
            t.start()
            while t.is_alive():
                if not follow(reader, verifier, positions):
                    time.sleep(0.02)
            t.join()
            follow(reader, verifier, positions)
            for s in result.get("publishers", []):
                c = verifier.clients.get(s.get("client_id") or -1)
                if c is not None:
                    c.acked_messages = s["acked_messages"]
                    c.batches_sent = s["batches"]
            report = verifier.finish(lapped_by_reader=reader.lapped)
            totals = shard_totals(reader)
        code = broker.stop()
    summary = {
        "event": "demo.summary",
        "receivers": broker.ready.get("threads"),
        "publishers": connections,
        "gbps": result.get("gbps"),
        "bytes": result.get("bytes"),
        "seconds": result.get("seconds"),
        "batches": result.get("batches"),
        "acked_messages": result.get("acked_messages"),
        **totals,
        "verify": report.to_dict(),
        "broker_exit_code": code,
        "publisher_errors": result.get("errors", []),
    }
    ok = report.ok and code == 0 and not summary["publisher_errors"]
    if as_json:
        print(json.dumps(summary))
    else:
        print(render_summary(summary, ok))
    return 0 if ok else 1


def render_summary(s: dict[str, Any], ok: bool) -> str:
    v = s["verify"]
    return "\n".join([
        f"shardbroker demo: {s['publishers']} publishers -> {s['receivers']} receivers",
        f"  throughput        {s['gbps']} GB/s ({(s['bytes'] or 0) / 2**30:.2f} GiB in "
        f"{s['seconds']} s)",
        f"  batches           {s['batches']} ({s['acked_messages']} messages acked)",
        f"  recv calls/batch  {s['recv_calls_per_batch']} (payload only: "
        f"{s['payload_recv_calls_per_batch']}); wakeups/batch {s['wakeups_per_batch']}",
        f"  SO_RCVBUF         {s['rcvbuf_min']}..{s['rcvbuf_max']} bytes (kernel's value)",
        f"  verified          {v['batches_checked']} batches, {v['payloads_compared']} compared "
        f"byte for byte; duplicates {v['duplicates']}, missing {v['missing_acked_batches']}, "
        f"corrupt {v['corrupt']}, lapped {v['lapped']}",
        "  result            " + ("OK: every acked message is in the segment exactly once"
                                 if ok else "FAILED"),
        *[f"  problem: {p}" for p in v["problems"]],
        *[f"  publisher error: {e}" for e in s["publisher_errors"]],
    ])
