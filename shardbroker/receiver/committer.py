"""What every connection of one receiver shares: the shard's single writer, the reservations
still being received, the connections waiting for room (retention ``block``), and the
receive-path counters.

Pure: no sockets, no logging. The clock is passed in (``clock_ns``), so tests need no sleeps.
Sessions (session.py) call it for every batch; the receive loop reads its counters.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from shardbroker.segment.writer import ShardWriter
from shardbroker.wire.protocol import Limits, check_message_framing

if TYPE_CHECKING:
    from shardbroker.receiver.session import Session

HIST_BUCKETS = (1, 2, 4, 8, 16, 32)  # recv calls per batch: <=1, <=2, ..., <=32, then >32
HIST_LABELS = ("1", "2", "4", "8", "16", "32", ">32")
LATENCY_RING = 4096  # commit latencies kept for p50/p99 per snapshot


def hist_bucket(n: int) -> int:
    """Index into HIST_LABELS for ``n`` recv calls: 1->0, 2->1, 3-4->2, ..., 33+->6."""
    return min(6, (n - 1).bit_length()) if n > 0 else 0


class ShardCommitter:
    """Commits batches into one shard for all of a receiver's sessions."""

    def __init__(self, writer: ShardWriter, limits: Limits, validate_payload: bool = False,
                 clock_ns: Callable[[], int] = time.monotonic_ns) -> None:
        self.writer = writer
        self.seg = writer.buf
        self.limits = limits
        self.validate_payload = validate_payload
        self.blocking = writer.blocking
        self.clock_ns = clock_ns
        # direct reservations being received: session -> blog_abs (lap checks, block floor)
        self.in_flight: dict[Session, int] = {}
        # sessions waiting for room, oldest first (dicts keep insertion order)
        self.parked: dict[Session, None] = {}
        self.lapped: list[Session] = []  # their reservation was overwritten: reject them
        # called with a lapped session before the lapping batch is written, so a driver
        # with a kernel receive in flight into the old space can stop it first
        self.on_lapped: Callable[[Session], None] | None = None
        # counters (plain ints: the hot path must not pay for metrics)
        self.batches = 0
        self.messages = 0
        self.bytes = 0
        self.duplicates_skipped = 0
        self.lapped_in_flight = 0
        self.recv_hist = [0] * len(HIST_LABELS)
        self.latency_ns = [0] * LATENCY_RING
        self.latency_count = 0

    # ------------------------------------------------------------------ space

    def may_reserve(self, session: Session, size: int) -> bool:
        """Retention ``block``: may ``session`` reserve ``size`` bytes now? First come, first
        served: while others wait, a newcomer waits behind them."""
        if self.parked and next(iter(self.parked)) is not session:
            return False
        pending = min(self.in_flight.values()) if self.in_flight else None
        return self.writer.has_room(size, pending)

    def check_laps(self) -> None:
        """After a reservation: in-flight reservations whose bytes it reclaimed can never be
        committed; they are reported (``on_lapped`` first) and listed in ``lapped``."""
        if self.in_flight:
            reclaim = self.writer.reclaim
            for s, a in list(self.in_flight.items()):
                if a < reclaim:
                    del self.in_flight[s]
                    self.lapped_in_flight += 1
                    self.lapped.append(s)
                    if self.on_lapped is not None:
                        self.on_lapped(s)

    def park(self, session: Session) -> None:
        self.parked[session] = None

    def unpark(self, session: Session) -> None:
        self.parked.pop(session, None)

    def forget(self, session: Session) -> None:
        """The session's connection is gone: it holds no reservation and waits for nothing."""
        self.in_flight.pop(session, None)
        self.parked.pop(session, None)

    # ------------------------------------------------------------------ commits

    def check_payload(self, blog_abs: int, size: int, num_msg: int) -> None:
        """limits.validate_payload: walk the message headers before committing."""
        w = self.writer
        idx = w.blog_off + blog_abs % w.blog_bytes
        view = self.seg[idx: idx + size]
        try:
            check_message_framing(view, num_msg, self.limits)
        finally:
            view.release()

    def note_latency(self, ns: int) -> None:
        self.latency_ns[self.latency_count % LATENCY_RING] = ns
        self.latency_count += 1
