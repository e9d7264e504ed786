"""Publishers over several brokers: spreading, a broker's death, a broker coming back, a name.

Several broker processes on this machine stand in for nodes (loopback only)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from shardbroker import SegmentReader
from shardbroker.publisher import loadgen
from shardbroker.publisher.batches import BatchGeometry, BatchTemplate
from shardbroker.publisher.cluster import ClusterPublisher
from shardbroker.segment.merge import MergedReader
from shardbroker.supervisor.process import BrokerProcess

from .conftest import BrokerFactory, shard_stats, wait_for

pytestmark = pytest.mark.integration
GEOM = BatchGeometry.for_batch(2 << 20, 1024)


def _keys_per_segment(segments: list[str], clients: set[int]) -> list[Counter[tuple[int, int]]]:
    """Per segment: how often each (client_id, batch_seq) of ``clients`` is committed there,
    every payload checked byte for byte against what that client sent for that seq."""
    templates = {c: BatchTemplate(c, GEOM) for c in clients}
    out = []
    for seg in segments:
        seen: Counter[tuple[int, int]] = Counter()
        with SegmentReader(seg) as r:
            for b in r.batches():
                if b.client_id in clients:
                    assert templates[b.client_id].matches(b.payload, b.batch_seq), \
                        f"{seg}: client {b.client_id} batch {b.batch_seq} has wrong bytes"
                    seen[(b.client_id, b.batch_seq)] += 1
                b.payload.release()
            assert r.lapped == 0, f"{seg}: the ring lapped; the test needs a larger BLog"
        out.append(seen)
    return out


def _sent_keys(summary: dict[str, Any]) -> set[tuple[int, int]]:
    return {(p["client_id"], s) for p in summary["publishers"] for s in range(p["batches"])}


def _kill_node(b: BrokerProcess) -> None:
    """A node dies: SIGKILL its supervisor and receivers (by pid), then reap."""
    pids = [b.pid, *b.receiver_pids()]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    b.kill()
    wait_for(lambda: not any(_alive(p) for p in pids), 10, "the node's processes to die")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_three_brokers_share_512mib_every_acked_batch_in_exactly_one_segment(
        broker: BrokerFactory) -> None:
    bs = [broker(threads=1, blog="384MiB") for _ in range(3)]
    spec = loadgen.LoadSpec(host="", port=0, connections=4, batch_bytes=2 << 20,
                            message_size=1024, total_bytes=512 << 20,
                            brokers=",".join(f"{b.host}:{b.port}" for b in bs))
    out = loadgen.run(spec, timeout_s=180)
    assert not out["errors"], out["errors"]
    assert out["acked_messages"] == out["messages"]
    clients = {p["client_id"] for p in out["publishers"]}
    per_seg = _keys_per_segment([b.segment for b in bs], clients)
    together = sum(per_seg, Counter())
    assert set(together) == _sent_keys(out)  # every acked batch is somewhere ...
    assert set(together.values()) == {1}  # ... in exactly one segment, once
    total = sum(b["bytes"] for b in out["brokers"])
    assert total == out["bytes"] >= 512 << 20
    for b, seen in zip(bs, per_seg, strict=True):
        share = len(seen) * GEOM.payload_bytes / total
        assert 0.20 <= share <= 0.45, f"broker {b.port} took {share:.0%} of the bytes"
    assert {b["broker"] for b in out["brokers"]} == {f"{b.host}:{b.port}" for b in bs}
    assert all(b["state"] == "up" and b["failures"] == 0 for b in out["brokers"])


def test_a_node_dies_mid_stream_publishers_finish_and_the_merge_has_each_key_once(
        broker: BrokerFactory) -> None:
    bs = [broker(threads=1, blog="384MiB") for _ in range(3)]
    victim = bs[1]
    spec = loadgen.LoadSpec(host="", port=0, connections=4, batch_bytes=2 << 20,
                            message_size=1024, total_bytes=320 << 20,
                            rate_bytes_s=20 << 20, retries=3,
                            brokers=",".join(f"{b.host}:{b.port}" for b in bs))
    out: dict[str, Any] = {}
    t = threading.Thread(target=lambda: out.update(loadgen.run(spec, timeout_s=120)))
    t.start()
    recovered: BrokerProcess | None = None
    try:
        wait_for(lambda: shard_stats(victim.segment)[0]["batches"] >= 8, 60,
                 "traffic on the broker that will die")
        # Freeze its receiver first so batches are in flight (unacked) when the node dies.
        os.kill(victim.receiver_pids()[0], signal.SIGSTOP)
        time.sleep(0.5)
        killed_at = time.monotonic()
        _kill_node(victim)
        t.join(150)
        assert not t.is_alive(), "the publishers did not finish"
        assert not out["errors"], out["errors"]  # finished on the other two
        assert out["acked_messages"] == out["messages"]
        down = [f for f in out["failovers"] if f["broker"] == f"{victim.host}:{victim.port}"]
        resends = [f["first_resend_at"] for f in down if f["first_resend_at"] is not None]
        assert resends, f"nothing was in flight on the dead broker: {down}"
        first = min(resends) - killed_at
        print(f"\nfirst batch re-sent elsewhere {first * 1e3:.1f} ms after the SIGKILL; "
              f"{sum(f['resent'] for f in down)} batches re-sent")
        assert 0 <= first < 5.0
        states = {b["broker"]: b["state"] for b in out["brokers"]}
        assert "down" in states[f"{victim.host}:{victim.port}"]

        recovered = BrokerProcess(["--listen", "127.0.0.1:0", "--recover", victim.segment,
                                   "--no-pin"]).start()
        assert recovered.ready["segment"] == victim.segment  # the dead one's log, re-attached
        segments = [b.segment for b in bs]
        clients = {p["client_id"] for p in out["publishers"]}
        per_seg = _keys_per_segment(segments, clients)
        assert all(set(seen.values()) <= {1} for seen in per_seg)  # once per segment
        acked = _sent_keys(out)  # all acked: the publishers finished without error
        with MergedReader(segments) as m:
            merged = Counter()
            for b in m.batches():
                if b.client_id in clients:
                    merged[(b.client_id, b.batch_seq)] += 1
                b.payload.release()
            repeats = m.stats.repeats
        assert set(merged) == acked and set(merged.values()) == {1}
        raw = sum(per_seg, Counter())
        assert repeats == sum(raw.values()) - len(raw)  # a lost ack's copy, removed by key
        print(f"keys in two segments (ack lost at the death): {repeats}")
        # the same merge from the command line, a recovered segment beside two live ones
        tail = subprocess.run(
            [sys.executable, "-m", "shardbroker", "tail", "--from-start", "--json",
             *[arg for seg in segments for arg in ("--segment", seg)]],
            capture_output=True, text=True, timeout=60)
        assert tail.returncode == 0, tail.stderr
        *lines, last = [json.loads(x) for x in tail.stdout.splitlines()]
        keys = [(r["client_id"], r["batch_seq"]) for r in lines if r["client_id"] in clients]
        assert keys == sorted(acked)  # each acked key once, in key order
        assert {r["segment"] for r in lines} == set(segments)
        assert last["event"] == "tail.summary" and last["repeats"] == repeats
    finally:
        t.join(150)
        if recovered is not None:
            recovered.stop()


def test_a_broker_back_on_a_new_port_behind_the_same_name_is_used_again(
        broker: BrokerFactory) -> None:
    b1, b2 = broker(threads=1), broker(threads=1)
    names = {"brokers.test": [("127.0.0.1", b1.port), ("127.0.0.1", b2.port)]}
    client = 0x5EED
    tmpl = BatchTemplate(client, GEOM)
    pub = ClusterPublisher("brokers.test:1214", resolver=lambda n, _p: list(names[n]),
                           client_id=client, batch_bytes=GEOM.payload_bytes, refresh_s=0.2,
                           timeout=20, resend_source=tmpl.for_seq)
    back: BrokerProcess | None = None
    try:
        for _ in range(10):
            pub.publish_batch(tmpl.for_seq(pub.next_batch_seq), GEOM.messages)
        pub.flush()
        assert all(b["acked_batches"] > 0 for b in pub.brokers())
        _kill_node(b2)
        back = BrokerProcess(["--listen", "127.0.0.1:0", "--recover", b2.segment,
                              "--no-pin"]).start()
        names["brokers.test"] = [("127.0.0.1", b1.port), ("127.0.0.1", back.port)]
        label = f"127.0.0.1:{back.port}"

        def acked_by_new() -> int:
            return sum(b["acked_batches"] for b in pub.brokers() if b["broker"] == label)

        deadline = time.monotonic() + 30
        for _ in range(2000):  # bounded in count and time
            if acked_by_new() >= 5 or time.monotonic() > deadline:
                break
            pub.publish_batch(tmpl.for_seq(pub.next_batch_seq), GEOM.messages)
            time.sleep(0.01)
        pub.flush()
        assert acked_by_new() >= 5, pub.brokers()
        states = {b["broker"]: b["state"] for b in pub.brokers()}
        assert states[label] == "up" and states[f"127.0.0.1:{b2.port}"] == "left"
        sent = pub.next_batch_seq
        assert pub.unacked == 0
        # the recovered segment took new batches: none were skipped as "already committed"
        per_seg = _keys_per_segment([b1.segment, b2.segment], {client})
        together = sum(per_seg, Counter())
        assert set(together) == {(client, s) for s in range(sent)}
        assert set(together.values()) == {1}
    finally:
        pub.close()
        if back is not None:
            back.stop()


def test_membership_from_one_name_in_a_hosts_file(broker: BrokerFactory,
                                                  tmp_path: Path) -> None:
    first = broker("--listen", "127.0.0.2:0", threads=1)
    port = first.port  # the other two on the same port, other loopback addresses
    bs = [first] + [broker("--listen", f"127.0.0.{i}:{port}", threads=1) for i in (3, 4)]
    hosts = tmp_path / "hosts"
    hosts.write_text("".join(f"127.0.0.{i} brokers.test\n" for i in (2, 3, 4)))
    proc = subprocess.run(
        [sys.executable, "-m", "shardbroker", "publish", "--cluster",
         "--connect", f"brokers.test:{port}", "--hosts-file", str(hosts),
         "--connections", "2", "--total", "96MiB", "--json"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not out["errors"] and out["acked_messages"] == out["messages"]
    got = {b["broker"]: b for b in out["brokers"]}
    assert set(got) == {f"127.0.0.{i}:{port}" for i in (2, 3, 4)}
    assert all(b["name"] == "brokers.test" and b["bytes"] > 0 for b in got.values())
    clients = {p["client_id"] for p in out["publishers"]}
    together = sum(_keys_per_segment([b.segment for b in bs], clients), Counter())
    assert set(together) == _sent_keys(out) and set(together.values()) == {1}
