"""``shardbroker tail --segment a --segment b``: one merged read of several segments.

What the segments hold now (no --follow), each ``(client_id, batch_seq)`` once, in that key's
order (segment/merge.py); the lines are tail's, with the segment each batch was read from.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import deque
from typing import Any

from shardbroker.cli_consumers import batch_record, print_record
from shardbroker.segment.merge import MergedReader


def _refuse(a: argparse.Namespace) -> None:
    """Flags that mean one segment: a clear error instead of a silent half-behaviour."""
    for flag, given in (("--follow", a.follow), ("--name", a.name),
                        ("--shard", a.shard is not None)):
        if given:
            raise ValueError(f"{flag} reads one segment; a merge of several segments is a "
                             "one-off read of what they hold now (drop it, or give one "
                             "--segment)")


def tail_merged(a: argparse.Namespace, segments: list[str]) -> int:
    _refuse(a)
    out = sys.stdout
    keep: int | None = None if a.from_start else max(0, a.lines)
    shown: deque[dict[str, Any]] = deque(maxlen=keep)
    printed = 0
    with MergedReader(segments) as m:
        for b in m.batches(order="key", topic=a.topic):
            rec = {"segment": b.segment} | batch_record(b, a.checksum)
            valid = b.still_valid()  # a live broker may have lapped it while we summed it
            b.payload.release()
            if not valid:
                continue
            if keep is None:
                print_record(rec, a.json, out)
                printed += 1
                if a.max_batches is not None and printed >= a.max_batches:
                    break
            else:
                shown.append(rec)
        for rec in shown:
            if a.max_batches is not None and printed >= a.max_batches:
                break
            print_record(rec, a.json, out)
            printed += 1
        st = m.stats
    lapped = sum(st.lapped)
    if a.json:
        out.write(json.dumps({"event": "tail.summary", "segments": segments,
                              "printed": printed, "read": st.batches_read,
                              "repeats": st.repeats, "lapped": lapped}) + "\n")
    else:
        print(f"shardbroker tail: merged {len(segments)} segments: {st.batches_read} batches "
              f"read, {st.repeats} repeated (client_id, batch_seq) keys dropped"
              + (f", {lapped} overwritten before they were read" if lapped else ""),
              file=sys.stderr)
    return 0

