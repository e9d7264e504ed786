"""A cluster publisher's book of batches to send again (publisher/cluster.py).

When a broker fails, its unacked batches are taken over here: each failure is recorded as an
event (which broker, why, how many batches, when the first of them was re-sent and where),
every batch is checked against the retry bound, and the batches wait in ``pending`` until a
broker that is up and has room takes them (any broker: it commits a resend unless its segment
holds that exact batch_seq). No sockets and no clock: ``now`` is passed in.
"""

from __future__ import annotations

from typing import Any

from shardbroker.errors import PublishError
from shardbroker.publisher.link import InFlight, OutBatch


class Resends:
    def __init__(self, retries: int) -> None:
        self.retries = max(0, retries)  # sends allowed per batch after the first
        self.pending: list[OutBatch] = []
        self.events: list[dict[str, Any]] = []  # one per broker failure
        self.resent = 0  # batches sent again after their broker failed

    def take_over(self, broker: str, why: str, unacked: list[InFlight], now: float) -> None:
        """``broker`` failed with ``unacked`` in flight: record the failure and queue them.
        Raises when a batch has used up its sends -- after queueing every one of them, so
        the publisher's count of unacked batches stays whole."""
        event = len(self.events)
        self.events.append({"broker": broker, "down_at": now, "why": why,
                            "unacked": len(unacked), "first_resend_at": None,
                            "first_resend_to": None, "resent": 0})
        spent = None
        for s in unacked:
            b = s.batch
            if b.sends > self.retries and spent is None:
                spent = b
            b.failover = event
            self.pending.append(b)
        if spent is not None:
            raise PublishError(f"batch {spent.seq} was sent {spent.sends} times and never "
                               f"acked (last on {broker}: {why})", reason="publish.retries",
                               hint="raise --retries, or see why the brokers fail")

    def oldest_first(self) -> list[OutBatch]:
        return sorted(self.pending, key=lambda b: b.seq)

    def sent(self, batch: OutBatch, to: str, now: float) -> None:
        """``batch`` left the pending list for broker ``to``. Its failover event times (and
        counts) only resends to another broker than the one it was unacked on."""
        self.pending.remove(batch)
        self.resent += 1
        if batch.failover is not None:
            ev = self.events[batch.failover]
            if ev["broker"] != to:
                if ev["first_resend_at"] is None:
                    ev.update(first_resend_at=now, first_resend_to=to)
                ev["resent"] += 1
