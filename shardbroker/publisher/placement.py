"""Which broker a cluster publisher's next batch goes to (publisher/cluster.py).

``least-bytes`` (default): the broker with the fewest bytes in flight -- a slow or busy broker
acks later, so it gets less -- ties broken by fewest bytes sent so far, so idle brokers share
evenly. ``round-robin``: plain rotation over the brokers that may take the batch.
"""

from __future__ import annotations

from collections.abc import Iterable

from shardbroker.publisher.link import BrokerLink, OutBatch

PLACEMENTS = ("least-bytes", "round-robin")


class Placement:
    def __init__(self, policy: str = "least-bytes") -> None:
        if policy not in PLACEMENTS:
            raise ValueError(f"placement {policy!r}: use one of {', '.join(PLACEMENTS)}")
        self.policy = policy
        self._rr = 0

    def choose(self, links: Iterable[BrokerLink], batch: OutBatch, new: bool,
               max_in_flight: int) -> BrokerLink | None:
        """The broker for ``batch`` among those that accept it now; None when none does."""
        ok = [ln for ln in links if ln.accepts(batch, new, max_in_flight)]
        if not ok:
            return None
        if self.policy == "round-robin":
            self._rr += 1
            return ok[self._rr % len(ok)]
        return min(ok, key=lambda ln: (ln.in_flight_bytes, ln.bytes))
