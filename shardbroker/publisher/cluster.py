"""ClusterPublisher: one client spreading its batches over every broker of a cluster.

One connection per broker (membership.py says which brokers), one ``client_id`` and one
``batch_seq`` counter across all of them, so a reader merging several brokers' segments orders
and dedupes by ``(client_id, batch_seq)`` (segment/merge.py). Each batch goes to the broker with
the fewest bytes in flight (or round robin); each broker's acks are tracked on its own.

When a broker fails (reset, EOF, a send error, or no ack progress for ``timeout``), its unacked
batches are sent again, at once, to the brokers that are up (placed like new batches, so the
failed one too once it is back), each batch at most ``retries`` more times; the failed broker
is reconnected with backoff and, once back (same or new address), used again.

The contract this relies on: within one broker's segment a batch is committed exactly once --
at a publisher's handshake the broker looks up which of this client's batch_seqs its segment
still holds, and skips (acks without committing) a resend of exactly those; any other
batch_seq, old or new, it commits. So any broker may take any re-sent batch. Across brokers, a
batch whose ack was lost (committed, then the broker failed before the ack arrived) may be in
two segments: the failed broker's and the one it was re-sent to. ``(client_id, batch_seq)``
removes that copy; the merged reader (segment/merge.py) does.

The parts: link.py (one broker: socket, in-flight queue, state, backoff, counters),
placement.py (which broker takes a batch), failover.py (the batches to send again, the retry
bound, the failover events); this module composes them with membership.py.
"""

from __future__ import annotations

import random
import select
import socket
import time
from collections.abc import Callable, Sequence
from functools import partial
from types import TracebackType
from typing import Any

from shardbroker.errors import PublishError
from shardbroker.publisher.batcher import MessageBatcher
from shardbroker.publisher.connection import Payload, send_batch
from shardbroker.publisher.failover import Resends
from shardbroker.publisher.link import DOWN, LEFT, UP, BrokerLink, OutBatch
from shardbroker.publisher.membership import (
    REFRESH_S,
    Endpoint,
    Membership,
    Resolver,
    parse_targets,
)
from shardbroker.publisher.placement import Placement


class ClusterPublisher:
    """``with ClusterPublisher("a:1214,b:1214") as pub: pub.publish(b"...")``.

    ``connect``: HOST:PORT entries (a string with commas or a list); a name stands for every
    address it resolves to. ``max_in_flight`` is per broker. ``retries``: how many more times
    one batch may be sent after the broker it was on failed. ``timeout``: waiting for acks, for
    a broker to come back, and the ack silence after which a broker counts as failed.
    ``resend_source(seq)`` returns a batch's bytes again (load generators); without it a copy
    of each unacked batch is kept. ``clock`` is injectable for tests."""

    def __init__(
        self,
        connect: str | Sequence[str],
        *,
        topic: str = "default",
        client_id: int | None = None,
        ack: int = 1,
        batch_bytes: int = 2 << 20,
        max_in_flight: int = 32,
        timeout: float = 30.0,
        connect_timeout: float = 2.0,
        retries: int = 3,
        placement: str = "least-bytes",
        refresh_s: float = REFRESH_S,
        resolver: Resolver | None = None,
        resend_source: Callable[[int], Payload] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.placement = Placement(placement)
        self.client_id = client_id if client_id is not None else random.getrandbits(31) | 1
        self.topic = topic
        self.ack = ack
        self.batch_bytes = batch_bytes
        self.max_in_flight = max(1, max_in_flight)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.resend_source = resend_source
        self.clock = clock
        self.membership = Membership(parse_targets(connect), resolver, refresh_s)
        self.resends = Resends(retries)
        self.next_batch_seq = 0
        self.sent_messages = 0
        self.sent_bytes = 0
        self.acked_messages = 0
        self.acked_bytes = 0
        self._links: dict[Endpoint, BrokerLink] = {}
        self._retired: list[BrokerLink] = []  # brokers that left the membership
        self._messages = MessageBatcher(batch_bytes, self.client_id,
                                        lambda: self.next_batch_seq,
                                        partial(self._publish, owned=True))
        self._source_calls = 0
        now = self.clock()
        for e in self.membership.start(now):
            self._add(e, now)
        if not any(link.state == UP for link in self._links.values()):
            raise PublishError("no broker reachable: " + self._errors(),
                               hint="is `shardbroker run` listening there?")

    # ------------------------------------------------------------------ context manager

    def __enter__(self) -> ClusterPublisher:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if et is None:
                self.flush()
        finally:
            self.close()

    def close(self) -> None:
        for link in self._links.values():
            link.close()

    # ------------------------------------------------------------------ publishing

    def publish(self, data: bytes | bytearray | memoryview) -> None:
        """Queue one message; a full batch goes out (and may wait for acks)."""
        self._messages.add(data)

    def publish_batch(self, payload: Payload, num_msg: int) -> int:
        """Send one already framed batch (``num_msg`` messages). Returns its batch_seq."""
        return self._publish(payload, num_msg, owned=False)

    def _publish(self, payload: Payload, num_msg: int, owned: bool) -> int:
        calls = self._source_calls  # a resend from resend_source reuses the caller's buffer
        self._maintain()
        seq = self.next_batch_seq
        self.next_batch_seq = seq + 1
        self.sent_messages += num_msg
        self.sent_bytes += len(payload)
        keep: Payload | None = None
        if self.ack and self.resend_source is None:
            keep = payload if owned else bytes(payload)
        batch = OutBatch(seq, num_msg, len(payload), keep)
        deadline = self.clock() + self.timeout
        while (link := self._choose()) is None:
            left = deadline - self.clock()
            if left <= 0:
                raise PublishError(f"batch {seq}: no broker up with room for it within "
                                   f"{self.timeout:g} s", reason="publish.no_broker",
                                   hint="brokers: " + self._errors())
            self._wait(left)
        if self._source_calls != calls and self.resend_source is not None:
            payload = self._source(seq)
        self._send(link, batch, payload)
        return seq

    def flush(self, timeout: float | None = None) -> None:
        """Send the partial batch and wait until every batch is acked by some broker."""
        self._messages.send_pending()
        if not self.ack:
            return
        deadline = self.clock() + (self.timeout if timeout is None else timeout)
        while self.resends.pending or any(link.in_flight for link in self._links.values()):
            self._maintain()
            left = deadline - self.clock()
            if left <= 0:
                raise PublishError(f"{self.unacked} batches not acked within the timeout "
                                   f"({len(self.resends.pending)} waiting for a broker to "
                                   "take them)", reason="publish.timeout",
                                   hint="brokers: " + self._errors())
            self._wait(left)

    @property
    def unacked(self) -> int:
        return len(self.resends.pending) + sum(len(link.in_flight)
                                               for link in self._links.values())

    def unacked_seqs(self) -> list[int]:
        seqs = [b.seq for b in self.resends.pending]
        for link in self._links.values():
            seqs += [s.batch.seq for s in link.in_flight]
        return sorted(seqs)

    @property
    def resent(self) -> int:
        """Batches sent again after their broker failed."""
        return self.resends.resent

    @property
    def failovers(self) -> list[dict[str, Any]]:
        """One entry per broker failure: when, why, and when and where the first batch went."""
        return self.resends.events

    def brokers(self) -> list[dict[str, Any]]:
        """Each broker's state and counters, current members first."""
        return [link.report() for link in (*self._links.values(), *self._retired)]

    # ------------------------------------------------------------------ sending

    def _choose(self) -> BrokerLink | None:
        return self.placement.choose(self._links.values(), self.max_in_flight)

    def _send(self, link: BrokerLink, batch: OutBatch, payload: Payload) -> bool:
        """Send on ``link``; False (and the link failed over) when the send fails."""
        assert link.sock is not None
        link.note_sent(batch, bool(self.ack), self.clock())
        try:
            send_batch(link.sock, batch.seq, self.client_id, batch.num_msg, payload)
        except OSError as exc:
            self._fail(link, f"send: {exc}")
            return False
        return True

    def _source(self, seq: int) -> Payload:
        assert self.resend_source is not None
        self._source_calls += 1
        return self.resend_source(seq)

    def _payload(self, batch: OutBatch) -> Payload:
        return batch.payload if batch.payload is not None else self._source(batch.seq)

    def _resend(self) -> None:
        """Send pending batches (oldest first) to any broker that is up and has room.

        Called from ``_maintain``, so before ``_publish`` places a new batch: pending batches
        take the free room first. Not for the brokers' dedupe (any broker commits any resend
        it does not hold) but so that a steady stream of new batches cannot starve them: each
        keeps its bytes in memory until acked, and ``flush`` waits for it."""
        for batch in self.resends.oldest_first():
            link = self._choose()
            if link is None:
                return  # no room anywhere: they stay pending until acks or a broker free some
            payload = self._payload(batch)
            self.resends.sent(batch, link.endpoint.label, self.clock())
            link.resent_in += 1
            self._send(link, batch, payload)  # if that fails too, the batch is pending again

    # ------------------------------------------------------------------ membership, links

    def _add(self, e: Endpoint, now: float) -> None:
        back = [ln for ln in self._retired if ln.endpoint == e]
        if back:  # it left the membership and is back: keep its counters
            link = back[0]
            self._retired.remove(link)
            link.state, link.listed = DOWN, True
        else:
            link = BrokerLink(e)
        self._links[e] = link
        self._try_connect(link, now)

    def _maintain(self) -> None:
        """Re-resolve when due, reconnect failed brokers whose backoff is over, resend."""
        now = self.clock()
        if self.membership.due(now):
            change = self.membership.refresh(now)
            for e in change.added:
                if e in self._links:
                    self._links[e].listed = True
                else:
                    self._add(e, now)
            for e in change.removed:
                link = self._links[e]
                link.listed = False  # an up broker stays in use until it fails
                if link.state != UP:
                    self._retire(link)
        for link in list(self._links.values()):
            if link.state == DOWN and now >= link.next_attempt:
                self._try_connect(link, now)
        self._resend()

    def _retire(self, link: BrokerLink) -> None:
        link.state = LEFT
        link.close()
        del self._links[link.endpoint]
        self._retired.append(link)

    def _try_connect(self, link: BrokerLink, now: float) -> None:
        if not link.connect(self.client_id, self.ack, self.topic, self.connect_timeout,
                            self.timeout, now) and not link.listed:
            self._retire(link)

    def _fail(self, link: BrokerLink, why: str) -> None:
        """The broker failed: its unacked batches become pending, to be sent again (any broker)."""
        now = self.clock()
        self._count_acked(link.drain(now))
        if link.acks.closed_reason is not None:
            why = f"{why}; broker said: {link.acks.closed_reason}"
        link.failures += 1
        link.mark_down(now, why)
        unacked = link.take_unacked()
        self.membership.note_failure(now)
        try:
            self.resends.take_over(link.endpoint.label, why, unacked, now)
        finally:
            if not link.listed:
                self._retire(link)

    # ------------------------------------------------------------------ acks

    def _count_acked(self, acked: list[OutBatch]) -> None:
        for b in acked:
            self.acked_messages += b.num_msg
            self.acked_bytes += b.size

    def _wait(self, limit: float) -> None:
        """Wait (at most ``limit`` s, less when a reconnect is due) for acks or failures."""
        now = self.clock()
        up = [ln for ln in self._links.values() if ln.state == UP and ln.sock is not None]
        waits = [limit]
        for ln in self._links.values():
            if ln.state == DOWN:
                waits.append(max(0.0, ln.next_attempt - now))
            elif ln.in_flight:
                waits.append(max(0.0, ln.last_progress + self.timeout - now))
        if self.membership.dynamic:
            waits.append(max(0.0, self.membership.next_refresh_at - now))
        wait = max(0.001, min(waits))
        if not up:
            time.sleep(wait)
            self._maintain()
            return
        by_sock = {ln.sock: ln for ln in up if ln.sock is not None}
        readable, _, _ = select.select(list(by_sock), [], [], wait)
        for s in readable:
            link = by_sock[s]
            try:
                data = s.recv(1 << 16, socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            except OSError as exc:
                self._fail(link, f"recv: {exc}")
                continue
            if not data:
                self._fail(link, "closed by the broker")
                continue
            self._count_acked(link.on_data(data, self.clock()))
            if link.acks.closed_reason is not None:
                self._fail(link, "closed by the broker")
        now = self.clock()
        for ln in up:
            if ln.state == UP and ln.in_flight and now - ln.last_progress > self.timeout:
                self._fail(ln, f"no ack for {self.timeout:g} s")
        self._maintain()

    def _errors(self) -> str:
        parts = [f"{ln.endpoint.label} {ln.state}" + (f" ({ln.last_error})"
                                                       if ln.last_error else "")
                 for ln in self._links.values()]
        parts += [f"{name}: {why}" for name, why in self.membership.errors.items()]
        return "; ".join(parts) or "none known"
