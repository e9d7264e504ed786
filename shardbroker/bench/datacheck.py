"""Checks that keep a broken run's figures out of the report.

Shardbroker runs are checked through ``SegmentReader``: the shard counters must add up to
what the publishers sent and had acked, and every batch still in the ring (the newest ones;
older ones were overwritten by design) must be a contiguous tail of its publisher's sequence,
with message headers right and the full payload bytes compared for every Nth batch.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from shardbroker.segment.reader import SegmentReader
from shardbroker.verify import ClientExpectation, Verifier


def tail_problem(client_id: int, seen: Iterable[int], sent: int,
                 ring_lapped: bool = False) -> str | None:
    """None when ``seen`` is exactly ``lo .. sent-1`` for some lo (a ring's newest batches).

    A shard's ring keeps a suffix of its commit order, so a client's batches in it are a
    suffix of the client's sequence, or none at all when other clients' later batches have
    overwritten them all (``ring_lapped``: the ring holds fewer batches than were committed).
    """
    seqs = sorted(set(seen))
    if sent == 0:
        return None if not seqs else f"client {client_id}: batches in the ring, none sent"
    if not seqs:
        if ring_lapped:
            return None
        return f"client {client_id}: none of its {sent} batches is in the segment"
    if seqs[-1] != sent - 1:
        return f"client {client_id}: newest batch in the segment is {seqs[-1]}, sent {sent}"
    missing = (sent - seqs[0]) - len(seqs)
    if missing:
        return f"client {client_id}: {missing} batches missing between {seqs[0]} and {sent - 1}"
    return None


def count_problems(committed: dict[str, int], senders: Sequence[dict[str, Any]]) -> list[str]:
    """Shard counters (summed) against what the publishers sent and had acked."""
    out = []
    sent = {k: sum(int(s[k]) for s in senders) for k in ("batches", "messages", "bytes")}
    for k in ("batches", "messages", "bytes"):
        if committed[k] != sent[k]:
            out.append(f"segment committed {committed[k]} {k}, publishers sent {sent[k]}")
    for s in senders:
        if s["acked_messages"] != s["messages"]:
            out.append(f"client {s['client_id']}: {s['acked_messages']} of {s['messages']} "
                       "messages acked")
    return out


def check_segment(segment: str, senders: Sequence[dict[str, Any]],
                  compare_every: int = 8) -> dict[str, Any]:
    expectations = [ClientExpectation(s["client_id"], s["message_size"],
                                      s["messages_per_batch"], 0, s["batches"])
                    for s in senders]
    v = Verifier(expectations, compare_every=compare_every)
    with SegmentReader(segment) as r:
        states = [r.shard_state(i) for i in range(r.shard_count)]
        committed = {"batches": sum(s.pbr_committed for s in states),
                     "messages": sum(s.messages for s in states),
                     "bytes": sum(s.bytes for s in states)}
        for b in r.batches():
            v.feed(b)
    rep = v.finish(0)  # batches the ring overwrote are expected; lapped-while-read are not
    problems = count_problems(committed, senders) + list(rep.problems)
    in_ring = sum(len(seqs) for seqs in v.seen.values())
    for s in senders:
        p = tail_problem(s["client_id"], v.seen.get(s["client_id"], ()), s["batches"],
                         ring_lapped=in_ring < committed["batches"])
        if p:
            problems.append(p)
    return {
        "kind": "segment: counters + ring tail (headers of every batch, payload of every "
                f"{compare_every}th)",
        "ok": not problems and rep.ok,
        "batches_committed": committed["batches"],
        "batches_checked": rep.batches_checked,
        "payloads_compared": rep.payloads_compared,
        "problems": problems[:10],
    }


def settled_stats(segment: str, timeout_s: float = 3.0) -> dict[str, int]:
    """Shard statistics summed over shards, once every connection has closed and the counters
    stopped changing (receivers write them every 0.5 s and at connection close)."""
    deadline = time.monotonic() + timeout_s
    last: dict[str, int] | None = None
    with SegmentReader(segment) as r:
        while True:
            now: dict[str, int] = {}
            for i in range(r.shard_count):
                for k, v in r.shard_stats(i).items():
                    now[k] = now.get(k, 0) + v
            if now == last and not now.get("connections_open", 0):
                return now
            if time.monotonic() > deadline:
                return now
            last = now
            time.sleep(0.15)


def counts_check(expected_batches: int, got_batches: int, expected_bytes: int, got_bytes: int,
                 sample_checked: int = 0, sample_bad: int = 0) -> dict[str, Any]:
    """For baselines: everything sent arrived (and sampled payloads matched the pattern)."""
    problems = []
    if got_batches != expected_batches:
        problems.append(f"received {got_batches} batches, sent {expected_batches}")
    if got_bytes != expected_bytes:
        problems.append(f"received {got_bytes} bytes, sent {expected_bytes}")
    if sample_bad:
        problems.append(f"{sample_bad} of {sample_checked} sampled payloads had wrong bytes")
    return {"kind": "counts" + (" + sampled payloads" if sample_checked else ""),
            "ok": not problems, "payloads_compared": sample_checked, "problems": problems}
