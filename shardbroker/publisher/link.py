"""One broker of a cluster publisher (publisher/cluster.py), over its successive connections.

A ``BrokerLink`` owns the socket to one endpoint, what is in flight there (in send order, with
the cumulative message count each batch completes, so the broker's cumulative acks pop them),
its state (up / down / left), the reconnect backoff and the counters ``report()`` gives.
Which batches it may take does not depend on their batch_seq: the broker skips a resend only
when its segment still holds that exact batch_seq, and commits any other (cluster.py: the
contract), so any up broker with room takes any batch, new or re-sent.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from shardbroker.errors import PublishError
from shardbroker.publisher.connection import AckStream, Payload, open_connection
from shardbroker.publisher.membership import Endpoint

BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 2.0

UP, DOWN, LEFT = "up", "down", "left"  # a broker's state as reported


@dataclass(slots=True)
class OutBatch:
    """A batch this publisher sent, until some broker acks it."""

    seq: int
    num_msg: int
    size: int
    payload: Payload | None  # None: ask resend_source for the bytes
    sends: int = 0
    failover: int | None = None  # index into the failover events while being resent


@dataclass(slots=True)
class InFlight:
    batch: OutBatch
    conn_cum: int  # messages sent on this connection once this batch is in


@dataclass
class BrokerLink:
    """One broker endpoint, over its successive connections."""

    endpoint: Endpoint
    state: str = DOWN
    sock: socket.socket | None = None
    acks: AckStream = field(default_factory=AckStream)
    conn_msgs: int = 0
    in_flight: deque[InFlight] = field(default_factory=deque)
    in_flight_bytes: int = 0
    listed: bool = True  # still in the membership
    next_attempt: float = 0.0
    backoff: float = BACKOFF_FIRST_S
    last_progress: float = 0.0
    # statistics
    batches: int = 0
    bytes: int = 0
    acked_batches: int = 0
    acked_bytes: int = 0
    resent_in: int = 0
    failures: int = 0
    connects: int = 0
    last_error: str = ""

    def report(self) -> dict[str, Any]:
        return {"broker": self.endpoint.label, "name": self.endpoint.name, "state": self.state,
                "listed": self.listed,
                "broker_id": self.acks.broker_id, "batches": self.batches, "bytes": self.bytes,
                "acked_batches": self.acked_batches, "acked_bytes": self.acked_bytes,
                "in_flight": len(self.in_flight), "resent_in": self.resent_in,
                "failures": self.failures, "connects": self.connects,
                "last_error": self.last_error}

    def has_room(self, max_in_flight: int) -> bool:
        """May a batch (any batch: new or re-sent, whatever its seq) go here now?"""
        return self.state == UP and len(self.in_flight) < max_in_flight

    # ------------------------------------------------------------------ connection

    def connect(self, client_id: int, ack: int, topic: str, connect_timeout: float,
                send_timeout: float, now: float) -> bool:
        """Open a connection and, with acks, wait for the handshake to be confirmed. True when
        the link is up; else it is down with ``last_error`` saying why."""
        e = self.endpoint
        try:
            sock = open_connection(e.address, e.port, client_id, ack, topic, connect_timeout)
        except PublishError as exc:
            self.mark_down(now, exc.message)
            return False
        acks = AckStream()
        if ack:
            why = _await_broker_id(sock, acks, connect_timeout)
            if why:
                sock.close()
                self.mark_down(now, why)
                return False
        # A send that cannot finish within the timeout (a hung node) fails the broker instead
        # of blocking the publisher; blocking sends keep one sendmsg per batch.
        sec = int(send_timeout)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                        struct.pack("ll", sec, int((send_timeout - sec) * 1e6)))
        self.sock, self.acks, self.state = sock, acks, UP
        self.conn_msgs = 0
        self.connects += 1
        self.backoff = BACKOFF_FIRST_S
        self.last_progress = now
        self.last_error = ""
        return True

    def mark_down(self, now: float, why: str) -> None:
        """Down until ``next_attempt``; each failure in a row doubles the wait."""
        self.close()
        self.state = DOWN
        self.last_error = why
        self.next_attempt = now + self.backoff
        self.backoff = min(BACKOFF_MAX_S, self.backoff * 2)

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None

    # ------------------------------------------------------------------ batches and acks

    def note_sent(self, batch: OutBatch, track: bool, now: float) -> None:
        """Book ``batch`` as sent here (``track``: acks are on, keep it until acked)."""
        batch.sends += 1
        if track:
            self.conn_msgs += batch.num_msg
            if not self.in_flight:
                self.last_progress = now
            self.in_flight.append(InFlight(batch, self.conn_msgs))
            self.in_flight_bytes += batch.size
        self.batches += 1
        self.bytes += batch.size

    def on_data(self, data: Payload, now: float) -> list[OutBatch]:
        """Feed what the broker sent; returns the batches it acked with it."""
        self.acks.feed(data)
        count = self.acks.count
        acked: list[OutBatch] = []
        while self.in_flight and self.in_flight[0].conn_cum <= count:
            b = self.in_flight.popleft().batch
            self.in_flight_bytes -= b.size
            self.acked_batches += 1
            self.acked_bytes += b.size
            b.payload = None  # the copy kept for a resend is no longer needed
            acked.append(b)
        if acked:
            self.last_progress = now
        return acked

    def drain(self, now: float) -> list[OutBatch]:
        """Read what the broker still sent (acks, maybe its reason) without waiting; returns
        the batches acked by it."""
        acked: list[OutBatch] = []
        if self.sock is None:
            return acked
        try:
            while self.acks.closed_reason is None:
                data = self.sock.recv(65536, socket.MSG_DONTWAIT)
                if not data:
                    break
                acked += self.on_data(data, now)
        except OSError:
            pass  # nothing more to read (EAGAIN) or the connection is gone: either way done
        return acked

    def take_unacked(self) -> list[InFlight]:
        """Empty the in-flight queue (the broker failed); returns what was in it, in send
        order, for the failover book to send again."""
        unacked = list(self.in_flight)
        self.in_flight.clear()
        self.in_flight_bytes = 0
        return unacked


def _await_broker_id(sock: socket.socket, acks: AckStream, timeout: float) -> str:
    """Wait for the ack stream's broker id: the broker then accepted the handshake (a
    rejection arrives as its reason instead). Returns why not, or ""."""
    deadline = time.monotonic() + timeout
    try:
        while acks.broker_id is None and acks.closed_reason is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return "no broker id within the connect timeout"
            sock.settimeout(left)
            data = sock.recv(4096)
            if not data:
                return "closed at the handshake"
            acks.feed(data)
    except OSError as exc:
        return f"handshake: {exc}"
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(None)
    if acks.closed_reason is not None:
        return f"rejected: {acks.closed_reason}"
    return ""
