"""Per-connection receive state: handshake -> batch header -> payload, and the ack stream.

The connection owns no policy: the event loop (loop.py) drives it and decides what to do with
the ProtocolError or disconnect it reports.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from shardbroker.segment.writer import Reservation
from shardbroker.wire.protocol import (
    ACK_BROKER_ID,
    ACK_COUNT,
    BATCH_HEADER_SIZE,
    HANDSHAKE_SIZE,
    Handshake,
)

PHASE_HANDSHAKE = 0
PHASE_HEADER = 1
PHASE_PAYLOAD = 2


class Connection:
    """Mutable per-connection state; plain attributes because the hot loop reads them."""

    __slots__ = (
        "sock", "fd", "peer", "phase", "hbuf", "hview", "hfill", "handshake", "topic_idx",
        "res", "target", "left", "batch_seq", "orig_seq", "num_msg", "session_epoch",
        "lowat", "acked", "ack_sock", "out_partial", "out_latest", "want_write",
        "batches", "closing", "header_ns", "recvs", "batch_recvs_start", "moving",
        "dedupe_below", "duplicate", "opened_at", "progress_mark", "idle_since", "parked",
    )

    def __init__(self, sock: socket.socket, peer: str) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.phase = PHASE_HANDSHAKE
        self.dedupe_below = 0  # batch_seqs below this were committed before (a reconnect)
        self.duplicate = False  # the batch being received is one of those: ack, don't commit
        self.opened_at = time.monotonic()
        self.progress_mark: tuple[int, int, int, int] = (0, 0, 0, 0)  # timeouts: see sweep
        self.idle_since = self.opened_at
        self.hbuf = bytearray(BATCH_HEADER_SIZE)
        self.hview = memoryview(self.hbuf)
        self.hfill = 0
        self.handshake: Handshake | None = None
        self.topic_idx = 0
        self.res: Reservation | None = None
        self.target: memoryview | None = None
        self.left = 0
        self.batch_seq = 0
        self.orig_seq = 0
        self.num_msg = 0
        self.session_epoch = 0
        self.lowat = 1  # the kernel's default SO_RCVLOWAT
        self.acked = 0  # cumulative messages committed for this client on this connection
        self.ack_sock: socket.socket | None = None  # None: no acks (ack level 0)
        self.out_partial = b""  # unsent tail of an ack frame
        self.out_latest: int | None = None  # newest cumulative count not yet sent
        self.want_write = False
        self.batches = 0
        self.closing = False  # stop requested: close at the next batch boundary
        self.header_ns = 0  # monotonic ns when the current batch's header completed
        self.recvs = 0  # recv calls on this connection
        self.batch_recvs_start = 0  # self.recvs when the current batch began
        self.moving = False  # hand this connection to another receiver at a batch boundary
        self.parked = False  # header read, waiting for segment room (retention `block`)

    @property
    def header_need(self) -> int:
        return (HANDSHAKE_SIZE if self.phase == PHASE_HANDSHAKE else BATCH_HEADER_SIZE) - self.hfill

    @property
    def source(self) -> str:
        """The peer's address without the port."""
        return self.peer.rsplit(":", 1)[0]

    @property
    def in_batch(self) -> bool:
        return (self.phase == PHASE_PAYLOAD or self.parked
                or (self.phase == PHASE_HEADER and self.hfill > 0))

    def state(self) -> dict[str, object]:
        """What another receiver needs to continue this connection (at a batch boundary)."""
        hs = self.handshake
        return {
            "peer": self.peer, "acked": self.acked, "batches": self.batches,
            "dedupe_below": self.dedupe_below,
            "lowat": self.lowat, "separate_ack": self.ack_sock is not None
            and self.ack_sock is not self.sock,
            "handshake": None if hs is None else {
                "client_id": hs.client_id, "ack": hs.ack, "port": hs.port, "topic": hs.topic,
                "client_req": hs.client_req, "num_msg": hs.num_msg, "last_addr": hs.last_addr,
            },
        }

    def restore(self, st: dict[str, Any], ack_sock: socket.socket | None) -> None:
        self.peer = str(st["peer"])
        self.dedupe_below = int(st.get("dedupe_below", 0))
        self.acked = int(st["acked"])
        self.batches = int(st["batches"])
        self.lowat = int(st["lowat"])
        hs = st["handshake"]
        if hs is not None:
            self.handshake = Handshake(**hs)
            self.phase = PHASE_HEADER
            if self.handshake.ack >= 1:
                self.ack_sock = ack_sock if ack_sock is not None else self.sock

    def queue_ack(self, count: int) -> None:
        self.out_latest = count  # counts are cumulative: only the newest matters

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
