"""Check a segment against what publishers say was acked: every acked message exactly once,
with the right bytes, and no partial or foreign batch from those clients."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from shardbroker.publisher.batches import BatchGeometry, BatchTemplate
from shardbroker.segment.reader import Batch


@dataclass
class ClientExpectation:
    client_id: int
    message_size: int
    messages_per_batch: int
    acked_messages: int
    batches_sent: int | None = None  # None: unknown (e.g. the publisher was killed)

    @classmethod
    def from_summary(cls, s: dict[str, Any]) -> ClientExpectation:
        return cls(s["client_id"], s["message_size"], s["messages_per_batch"],
                   s["acked_messages"], s.get("batches"))


@dataclass
class VerifyReport:
    batches_checked: int = 0
    bytes_checked: int = 0
    payloads_compared: int = 0
    duplicates: int = 0
    corrupt: int = 0
    missing_acked_batches: int = 0
    unexpected_batches: int = 0
    lapped: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.duplicates or self.corrupt or self.missing_acked_batches
                    or self.unexpected_batches or self.lapped)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "batches_checked": self.batches_checked,
            "bytes_checked": self.bytes_checked, "payloads_compared": self.payloads_compared,
            "duplicates": self.duplicates, "corrupt": self.corrupt,
            "missing_acked_batches": self.missing_acked_batches,
            "unexpected_batches": self.unexpected_batches, "lapped": self.lapped,
            "problems": self.problems[:20],
        }


class Verifier:
    """Feed it batches (in any order, e.g. while following a live segment), then ``finish``.

    ``compare_every``: compare full payload bytes of every Nth batch of a client (1 = all);
    message headers of every batch are always checked.
    """

    def __init__(self, clients: Iterable[ClientExpectation], compare_every: int = 1) -> None:
        self.clients = {c.client_id: c for c in clients}
        self.templates = {
            c.client_id: BatchTemplate(c.client_id, BatchGeometry(c.message_size,
                                                                  c.messages_per_batch))
            for c in self.clients.values()
        }
        self.compare_every = max(1, compare_every)
        self.seen: dict[int, set[int]] = defaultdict(set)
        self.report = VerifyReport()

    def feed(self, b: Batch) -> None:
        client = self.clients.get(b.client_id)
        if client is None:
            return  # another publisher's data
        r = self.report
        tmpl = self.templates[b.client_id]
        seen = self.seen[b.client_id]
        if b.batch_seq in seen:
            r.duplicates += 1
            r.problems.append(f"client {b.client_id} batch {b.batch_seq} committed twice")
        seen.add(b.batch_seq)
        full = b.batch_seq % self.compare_every == 0
        good = (b.num_msg == client.messages_per_batch
                and (tmpl.matches(b.payload, b.batch_seq) if full
                     else tmpl.headers_match(b.payload, b.batch_seq)))
        if not b.still_valid():
            r.lapped += 1
            r.problems.append(f"client {b.client_id} batch {b.batch_seq} lapped while checked")
            return
        r.payloads_compared += int(full)
        if not good:
            r.corrupt += 1
            r.problems.append(f"client {b.client_id} batch {b.batch_seq} has wrong bytes")
        r.batches_checked += 1
        r.bytes_checked += b.total_size

    def finish(self, lapped_by_reader: int = 0) -> VerifyReport:
        r = self.report
        r.lapped += lapped_by_reader
        for cid, c in self.clients.items():
            seen = self.seen[cid]
            acked_batches = -(-c.acked_messages // c.messages_per_batch)
            missing = [s for s in range(acked_batches) if s not in seen]
            r.missing_acked_batches += len(missing)
            if missing:
                r.problems.append(f"client {cid}: {len(missing)} acked batches missing, "
                                  f"first {missing[:5]}")
            limit = c.batches_sent if c.batches_sent is not None else None
            if limit is not None:
                extra = [s for s in seen if s >= limit]
                r.unexpected_batches += len(extra)
                if extra:
                    r.problems.append(f"client {cid}: batches {sorted(extra)[:5]} never sent")
        return r
