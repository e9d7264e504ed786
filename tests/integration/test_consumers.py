"""Consumers on a live broker: follow while 4 publishers write, resume after SIGKILL,
retention `block` (stall without loss, expiry releases) and `overwrite` (exact lap count)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from shardbroker import SegmentReader
from shardbroker.consumer.consumer import Consumer
from shardbroker.consumer.registry import ConsumerTable
from shardbroker.control import client
from shardbroker.errors import ConsumerExpired
from shardbroker.publisher import loadgen
from shardbroker.segment import shm
from shardbroker.segment.layout import CONSUMER_EXPIRED

from .conftest import BACKENDS, BrokerFactory, shard_stats, skip_unless_backend, wait_for

pytestmark = pytest.mark.integration

BATCH = 2 << 20
MSG = 1024


def _load(b: Any, total: int, connections: int = 4) -> dict[str, Any]:
    spec = loadgen.LoadSpec(host=b.host, port=b.port, connections=connections,
                            batch_bytes=BATCH, message_size=MSG, total_bytes=total)
    return loadgen.run(spec, timeout_s=180)


def _in_thread(fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}
    t = threading.Thread(target=lambda: out.update(fn()), daemon=True)
    t.start()
    return t, out


def _published(summary: dict[str, Any]) -> set[tuple[int, int]]:
    """(client_id, batch_seq) of every batch the publishers sent and had acked."""
    out = set()
    for pub in summary["publishers"]:
        out |= {(pub["client_id"], seq) for seq in range(pub["batches"])}
    return out


def _tail(segment: str, out: Path, *extra: str) -> subprocess.Popen[bytes]:
    f = out.open("ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "shardbroker", "tail", "--segment", segment, "--json",
             "--checksum", "--follow", *extra], stdout=f, stderr=subprocess.DEVNULL)
    finally:
        f.close()


def _records(path: Path) -> list[dict[str, Any]]:
    recs = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by SIGKILL
        if "index" in rec:
            recs.append(rec)
    return recs


def test_consumer_reads_everything_once_in_order_and_resumes_after_kill(
        broker: BrokerFactory, tmp_path: Path) -> None:
    b = broker("--retention", "block", blog="64MiB")
    run1, run2 = tmp_path / "run1.jsonl", tmp_path / "run2.jsonl"
    procs = [_tail(b.segment, run1, "--name", "audit", "--from-start")]
    try:
        m = shm.attach(b.segment, writable=False)
        try:
            table = ConsumerTable(m)
            wait_for(lambda: table.find("audit") is not None, 30, "consumer registered")
            t, out = _in_thread(lambda: _load(b, total=256 << 20))
            wait_for(lambda: len(_records(run1)) >= 30, 60, "consumer progress")
            procs[0].send_signal(signal.SIGKILL)
            procs[0].wait(10)
            entry = table.find("audit")
            assert entry is not None
            registered = table.positions(entry.slot)
            procs.append(_tail(b.segment, run2, "--name", "audit", "--idle-exit", "3"))
            t.join(180)
            assert not t.is_alive() and not out["errors"]
            procs[1].wait(60)
        finally:
            m.close()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    first, second = _records(run1), _records(run2)
    consumed = [r for r in first if r["index"] < registered[r["shard"]]]
    in_hand = [r for r in first if r["index"] >= registered[r["shard"]]]
    assert len(in_hand) <= len(registered)  # at most the one batch per shard being printed
    by_shard: dict[int, list[int]] = defaultdict(list)
    for r in consumed + second:
        by_shard[r["shard"]].append(r["index"])
    committed = [s["batches"] for s in shard_stats(b.segment)]
    for shard, indexes in by_shard.items():
        # per-shard order, no gap at the restart, nothing twice, nothing missing
        assert indexes == list(range(committed[shard])), shard
    for shard in range(len(committed)):
        restart = [r["index"] for r in second if r["shard"] == shard]
        assert not restart or restart[0] == registered[shard]
    seen = [(r["client_id"], r["batch_seq"]) for r in consumed + second]
    assert len(seen) == len(set(seen))
    assert set(seen) == _published(out)
    assert sum(r["messages"] for r in consumed + second) == out["acked_messages"]
    assert b.stop() == 0


@pytest.mark.parametrize("backend", BACKENDS)  # `block` lives in the receive loop
def test_block_stalls_publishers_without_loss_until_the_consumer_reads(
        broker: BrokerFactory, backend: str) -> None:
    skip_unless_backend(backend)
    b = broker("--retention", "block", "--consumer-timeout", "60", "--pbr-slots", "4096",
               blog="32MiB")  # the consumer stays silent for seconds: it must stay live
    with Consumer(b.segment, "slow", start="end") as c:
        t, out = _in_thread(lambda: _load(b, total=160 << 20))

        def committed() -> int:
            return sum(s["batches"] for s in shard_stats(b.segment))

        # 2 x 32 MiB of rings hold at most ~30 of the 80 batches: the publishers must stall
        wait_for(lambda: committed() > 0, 30, "first commits")
        time.sleep(1.5)
        before = committed()
        time.sleep(1.0)
        assert committed() == before < 80  # nothing moves while the consumer sleeps
        assert t.is_alive()
        c.heartbeat()
        stats = client.request(b.ready["control"], "stats", timeout_s=5)["total"]
        assert stats["parked_connections"] >= 1 or stats["parks"] >= 1
        got: list[tuple[int, int]] = []
        for batch in c.batches(idle_timeout_s=3.0):
            got.append((batch.client_id, batch.batch_seq))
            assert batch.still_valid()  # nothing the consumer holds is ever overwritten
        t.join(60)
        assert not t.is_alive() and not out["errors"]
        assert c.lapped == 0 and c.torn == 0
        assert len(got) == len(set(got)) and set(got) == _published(out)
    stats = client.request(b.ready["control"], "stats", timeout_s=5)["total"]
    assert stats["backpressured_s"] > 1.0
    assert b.stop() == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_expired_consumer_releases_publishers_and_is_told(broker: BrokerFactory,
                                                         backend: str) -> None:
    skip_unless_backend(backend)
    # One receiver, one publisher: once the consumer has expired the ring overwrites, and a
    # second connection could then lap the first one's batch in flight (a different error).
    b = broker("--retention", "block", "--consumer-timeout", "1.5", threads=1, blog="32MiB")
    with Consumer(b.segment, "gone", start="end") as c:
        t0 = time.monotonic()
        # stalls ~1.5 s at a full ring, then runs past the silent consumer
        result = _load(b, total=160 << 20, connections=1)
        took = time.monotonic() - t0
        assert not result["errors"] and result["acked_messages"] == result["messages"]
        assert took > 1.2
        m = shm.attach(b.segment, writable=False)
        try:
            wait_for(lambda: ConsumerTable(m).state(c.slot) == CONSUMER_EXPIRED, 5,
                     "the supervisor's expiry mark")
        finally:
            m.close()
        with pytest.raises(ConsumerExpired):
            c.heartbeat()
        st = client.request(b.ready["control"], "status", timeout_s=5)
        assert st["consumers"][0]["state"] == "expired" and not st["consumers"][0]["live"]
        c.rejoin()  # back, from its position: what was overwritten meanwhile is counted
        n = sum(1 for _ in c.batches(idle_timeout_s=0.5))
        assert n + c.lapped == sum(s["batches"] for s in shard_stats(b.segment))
        assert c.lapped > 0
    stats = client.request(b.ready["control"], "stats", timeout_s=5)["total"]
    assert stats["backpressured_s"] > 1.0
    assert b.stop() == 0


def test_overwrite_lapped_reader_gets_exact_missed_count(broker: BrokerFactory) -> None:
    # one shard, one connection at a time: only the reader is lapped, never a batch in flight
    b = broker(threads=1, blog="32MiB")
    with SegmentReader(b.segment) as r:
        it = r.follow(start="end", idle_timeout_s=2.0)
        first = _load(b, total=8 << 20, connections=1)
        early = [next(it) for _ in range(2)]  # read 2, then fall behind
        for x in early:
            assert x.still_valid()
        second = _load(b, total=192 << 20, connections=1)
        late = list(it)
        assert not first["errors"] and not second["errors"]
        total = sum(s["batches"] for s in shard_stats(b.segment))
        assert total == first["batches"] + second["batches"]
        assert len(early) + len(late) + r.lapped == total  # every batch read or counted
        assert r.lapped > 0
        assert r.torn == 1  # early[1] was still in hand when the ring lapped it
        assert not early[1].still_valid()
        for x in late:
            assert x.still_valid() and len(list(x.messages())) == x.num_msg
        indexes = [x.index for x in early + late]
        assert indexes == sorted(set(indexes))  # in order, none twice
    assert b.stop() == 0


def test_tail_and_consumers_cli(broker: BrokerFactory, tmp_path: Path) -> None:
    b = broker(blog="64MiB")
    n = _load(b, total=32 << 20, connections=2)["batches"]
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "shardbroker"]
    out = subprocess.run([*cmd, "tail", "--control", b.ready["control"], "-n", "2", "--json"],
                         capture_output=True, text=True, timeout=60, env=env, check=True)
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    assert [x["shard"] for x in lines[:-1]] == [0, 0, 1, 1]
    assert lines[-1]["event"] == "tail.summary" and lines[-1]["printed"] == 4
    out = subprocess.run([*cmd, "tail", "--segment", b.segment, "--from-start", "--name",
                          "cli", "--topic", "load", "--json"],
                         capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(out.stdout.splitlines()[-1])["printed"] == n
    out = subprocess.run([*cmd, "consumers", "--segment", b.segment, "--json"],
                         capture_output=True, text=True, timeout=60, check=True)
    listing = json.loads(out.stdout)
    assert listing["retention"] == "overwrite"
    (cli,) = listing["consumers"]
    assert cli["name"] == "cli" and cli["state"] == "detached" and sum(cli["lag"]) == 0
    assert sum(cli["positions"]) == n
    out = subprocess.run([*cmd, "tail", "--segment", b.segment, "--topic", "nope"],
                         capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout == ""
    gone = subprocess.run([*cmd, "consumers", "--segment", "shardbroker-no-such-seg"],
                          capture_output=True, text=True, timeout=60)
    assert gone.returncode == 2 and "does not exist" in gone.stderr
    assert subprocess.run([*cmd, "consumers", "--segment", b.segment, "--remove", "cli"],
                          capture_output=True, timeout=60).returncode == 0
    assert b.stop() == 0
