"""One publisher connection as the receiver holds it: its socket(s), its sans-IO session
(session.py: parse state, buffers, commits) and its ack stream.

The connection owns no policy: the receiver (receiver.py) and its I/O driver decide what to do
with the events, the ProtocolError or the disconnect the session reports.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from shardbroker.receiver.session import Session
from shardbroker.wire.protocol import ACK_BROKER_ID, ACK_COUNT


class Connection:
    """Mutable per-connection state; plain attributes because the hot loop reads them."""

    __slots__ = (
        "sock", "fd", "peer", "session", "ack_sock", "out_partial", "out_latest", "sent",
        "want_write", "closing", "moving", "opened_at", "progress_mark", "idle_since",
        "batch_mark", "lowat", "driver", "ack_mark",
    )

    def __init__(self, sock: socket.socket, peer: str, session: Session) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.session = session
        self.ack_sock: socket.socket | None = None  # None: no acks (ack level 0)
        self.out_partial = b""  # unsent tail of an ack frame
        self.out_latest: int | None = None  # newest cumulative count not yet sent
        self.sent = 0  # the cumulative count last queued for sending
        self.want_write = False
        self.closing = False  # stop requested: close at the next batch boundary
        self.moving = False  # hand this connection to another receiver at a batch boundary
        self.opened_at = time.monotonic()
        self.progress_mark: tuple[int, int] = (0, 0)  # timeouts: see Receiver.sweep_timeouts
        self.idle_since = self.opened_at
        self.batch_mark: tuple[int, float] | None = None  # (batches, since) while mid-batch
        self.lowat = 1  # the kernel's default SO_RCVLOWAT
        self.driver: Any = None  # what the I/O driver keeps per connection
        self.ack_mark = 0  # session.bytes_in when an ack count last went out (coalescing)

    @property
    def source(self) -> str:
        """The peer's address without the port."""
        return self.peer.rsplit(":", 1)[0]

    @property
    def parked(self) -> bool:
        return self.session.parked

    def state(self) -> dict[str, object]:
        """What another receiver needs to continue this connection (at a batch boundary)."""
        st = self.session.to_state()
        st.update({"peer": self.peer, "lowat": self.lowat,
                   "separate_ack": self.ack_sock is not None and self.ack_sock is not self.sock})
        return st

    def restore(self, st: dict[str, Any], ack_sock: socket.socket | None) -> None:
        self.peer = str(st["peer"])
        self.lowat = int(st["lowat"])
        self.session.restore(st)
        self.sent = self.session.acked
        if self.session.acks:
            self.ack_sock = ack_sock if ack_sock is not None else self.sock

    def queue_ack(self) -> None:
        """The session committed more: the newest cumulative count is what goes out."""
        acked = self.session.acked
        if acked != self.sent:
            self.sent = acked
            self.out_latest = acked

    def flush_acks(self) -> bool:
        """Send what is pending without blocking. True when nothing is left to send."""
        sock = self.ack_sock
        if sock is None:
            self.out_latest = None
            return True
        try:
            if self.out_partial:
                n = sock.send(self.out_partial)
                self.out_partial = self.out_partial[n:]
                if self.out_partial:
                    return False
            if self.out_latest is not None:
                frame = ACK_COUNT.pack(self.out_latest)
                n = sock.send(frame)  # BlockingIOError keeps out_latest for the next try
                self.out_latest = None
                if n < len(frame):
                    self.out_partial = frame[n:]
                    return False
        except BlockingIOError:
            return False
        return True

    def start_ack_stream(self, broker_id: int) -> None:
        """Acks begin with the broker id (i32), Embarcadero style."""
        self.out_partial = ACK_BROKER_ID.pack(broker_id)
