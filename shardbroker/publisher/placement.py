"""Which broker a cluster publisher's next batch goes to (publisher/cluster.py).

``least-bytes`` (default): the broker with the fewest bytes in flight -- a slow or busy broker
acks later, so it gets less -- ties broken by fewest bytes sent so far, so idle brokers share
evenly. ``round-robin``: plain rotation over the brokers that are up and have room. New and
re-sent batches are placed alike.
"""

from __future__ import annotations

from collections.abc import Iterable

from shardbroker.publisher.link import BrokerLink

PLACEMENTS = ("least-bytes", "round-robin")


class Placement:
    def __init__(self, policy: str = "least-bytes") -> None:
        if policy not in PLACEMENTS:
            raise ValueError(f"placement {policy!r}: use one of {', '.join(PLACEMENTS)}")
        self.policy = policy
        self._rr = 0

    def choose(self, links: Iterable[BrokerLink], max_in_flight: int) -> BrokerLink | None:
        """The broker for the next batch among those up with room; None when none is."""
        ok = [ln for ln in links if ln.has_room(max_in_flight)]
        if not ok:
            return None
        if self.policy == "round-robin":
            self._rr += 1
            return ok[self._rr % len(ok)]
        return min(ok, key=lambda ln: (ln.in_flight_bytes, ln.bytes))
