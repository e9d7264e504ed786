"""``shardbroker dump``: what a segment holds, per shard, optionally walking every message."""

from __future__ import annotations

from typing import Any

from shardbroker.segment.reader import SegmentReader
from shardbroker.wire.protocol import ProtocolError


def dump_segment(name: str, verify: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"segment": name, "ok": True, "shards": []}
    with SegmentReader(name) as r:
        g = r.geometry
        out.update(shard_count=g.shard_count, pbr_slots=g.pbr_slots, blog_bytes=g.blog_bytes,
                   total_bytes=g.total_bytes, broker_id=r.broker_id)
        for s in range(g.shard_count):
            st = r.shard_state(s)
            entry: dict[str, Any] = {
                "shard": s, "writer_pid": st.writer_pid, "batches_committed": st.pbr_committed,
                "messages": st.messages, "bytes": st.bytes, "restarts": st.restarts,
                "topics": r.topics(s), "stats": r.shard_stats(s),
            }
            first = last = None
            batches = 0
            in_ring_bytes = 0
            messages_walked = 0
            errors: list[str] = []
            lapped_before = r.lapped
            for b in r.batches(s):
                if first is None:
                    first = {"index": b.index, "batch_seq": b.batch_seq, "client_id": b.client_id}
                last = {"index": b.index, "batch_seq": b.batch_seq, "client_id": b.client_id}
                batches += 1
                in_ring_bytes += b.total_size
                if verify:
                    try:
                        count = sum(1 for _ in b.messages())
                        if count != b.num_msg:
                            errors.append(f"batch {b.index}: {count} messages, header says "
                                          f"{b.num_msg}")
                        messages_walked += count
                    except ProtocolError as exc:
                        if b.still_valid():
                            errors.append(f"batch {b.index}: {exc}")
            entry.update(batches_in_ring=batches, bytes_in_ring=in_ring_bytes, first=first,
                         last=last, lapped=r.lapped - lapped_before)
            if verify:
                entry.update(messages_walked=messages_walked, errors=errors[:20],
                             error_count=len(errors))
                if errors:
                    out["ok"] = False
            out["shards"].append(entry)
    return out


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _ring_span(e: dict[str, Any]) -> str:
    """Which batches are still readable: index range and the publishers at either end."""
    first, last = e["first"], e["last"]
    if first is None or last is None:
        return "none in the ring"
    return (f"{e['batches_in_ring']} in the ring ({_mib(e['bytes_in_ring'])}): index "
            f"{first['index']}..{last['index']}, first from client {first['client_id']} "
            f"seq {first['batch_seq']}, last from client {last['client_id']} "
            f"seq {last['batch_seq']}")


def render_dump(report: dict[str, Any]) -> str:
    """The text form of ``dump_segment``'s report (``dump --json`` prints the report)."""
    lines = [f"segment {report['segment']}: {report['shard_count']} shards, "
             f"{_mib(report['total_bytes'])}, broker id {report['broker_id']}; per shard "
             f"PBR {report['pbr_slots']} slots, BLog {_mib(report['blog_bytes'])}"]
    for e in report["shards"]:
        topics = ", ".join(e["topics"]) or "-"
        lines.append(f"  shard {e['shard']}: {e['batches_committed']} batches committed "
                     f"({_mib(e['bytes'])}, {e['messages']} messages), topics {topics}, "
                     f"writer pid {e['writer_pid']}, {e['restarts']} restarts")
        lines.append(f"    {_ring_span(e)}"
                     + (f"; {e['lapped']} overwritten while reading" if e["lapped"] else ""))
        if "error_count" in e:
            lines.append(f"    verify: {e['messages_walked']} messages walked, "
                         f"{e['error_count']} errors")
        lines.extend(f"    error: {err}" for err in e.get("errors", []))
    if "error_count" in (report["shards"] or [{}])[0]:
        lines.append("verify: " + ("ok" if report["ok"] else "FAILED"))
    return "\n".join(lines)
