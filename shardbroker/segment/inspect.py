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


def render_dump(report: dict[str, Any]) -> str:
    lines = [f"segment {report['segment']}: {report['shard_count']} shards, "
             f"{report['total_bytes'] / 2**20:.0f} MiB, PBR {report['pbr_slots']} slots, "
             f"BLog {report['blog_bytes'] / 2**20:.0f} MiB per shard"]
    for e in report["shards"]:
        line = (f"  shard {e['shard']}: {e['batches_committed']} batches committed "
                f"({e['bytes'] / 2**20:.1f} MiB, {e['messages']} messages), "
                f"{e['batches_in_ring']} still in the ring, first {e['first']}, last {e['last']}")
        if "error_count" in e:
            line += f"; verify: {e['messages_walked']} messages walked, {e['error_count']} errors"
        lines.append(line)
        lines.extend(f"    error: {err}" for err in e.get("errors", []))
    return "\n".join(lines)
