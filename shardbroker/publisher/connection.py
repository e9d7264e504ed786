"""One publisher connection's wire handling, shared by ``Publisher`` and ``ClusterPublisher``.

``open_connection`` connects and sends the handshake; ``send_batch`` sends one batch header and
its payload with one ``sendmsg``; ``AckStream`` is the pure parser of what the broker sends back
(an i32 broker id, then u64 cumulative message counts, or an SESF control frame that states why
the broker is closing the connection). See wire/protocol.py for the byte layouts.
"""

from __future__ import annotations

import socket
import struct

from shardbroker.errors import PublishError
from shardbroker.wire.protocol import (
    ACK_BROKER_ID,
    ACK_COUNT,
    CONTROL_FRAME,
    CONTROL_MAGIC,
    CONTROL_TEXT_MAX,
    BatchHeader,
    Handshake,
    encode_batch_header,
    encode_handshake,
)

Payload = bytes | bytearray | memoryview


def open_connection(host: str, port: int, client_id: int, ack: int, topic: str,
                    timeout: float) -> socket.socket:
    """A blocking TCP connection to a broker with the handshake sent (TCP_NODELAY on)."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise PublishError(f"cannot connect to broker at {host}:{port}: {exc}",
                           hint="is `shardbroker run` listening there?") from exc
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(None)
        sock.sendall(encode_handshake(Handshake(client_id, ack, 0, topic)))
    except OSError as exc:
        sock.close()
        raise PublishError(f"broker at {host}:{port} closed the connection at the handshake: "
                           f"{exc}", hint="is `shardbroker run` listening there?") from exc
    return sock


def send_batch(sock: socket.socket, seq: int, client_id: int, num_msg: int,
               payload: Payload) -> None:
    """Header and payload in one sendmsg (a blocking socket sends it all unless a signal
    interrupts or its timeout expires); any remainder is finished the same way."""
    header = encode_batch_header(BatchHeader(seq, client_id, num_msg, len(payload)))
    views = [memoryview(header), memoryview(payload).cast("B")]
    while views:
        sent = sock.sendmsg(views)
        while views and sent >= len(views[0]):
            sent -= len(views[0])
            views.pop(0)
        if views and sent:
            views[0] = views[0][sent:]


class AckStream:
    """Bytes from the broker in, ``broker_id`` / ``count`` / ``closed_reason`` out. No socket.

    ``count`` is the broker's latest cumulative message count for this connection.
    ``closed_reason`` is the text of a control frame (``"batch.total_size_zero: ..."``): the
    broker says why it closes the connection; nothing after it is parsed."""

    def __init__(self) -> None:
        self.broker_id: int | None = None
        self.count = 0
        self.closed_reason: str | None = None
        self._buf = bytearray()

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self.closed_reason is not None:
            return
        buf = self._buf
        buf += data
        pos = 0
        while True:
            # the stream starts with an i32 broker id, then u64 counts; either position may
            # instead hold an SESF control frame (the broker's reason for closing)
            need = 4 if self.broker_id is None else 8
            if len(buf) - pos < need:
                break
            if struct.unpack_from("<I", buf, pos)[0] == CONTROL_MAGIC:
                if self._parse_control(buf, pos):
                    pos = len(buf)
                break
            if self.broker_id is None:
                (self.broker_id,) = ACK_BROKER_ID.unpack_from(buf, pos)
                pos += 4
                continue
            (self.count,) = ACK_COUNT.unpack_from(buf, pos)
            pos += 8
        del buf[:pos]

    def _parse_control(self, buf: bytearray, pos: int) -> bool:
        if len(buf) - pos < CONTROL_FRAME.size:
            return False
        _magic, length = CONTROL_FRAME.unpack_from(buf, pos)
        length = min(length, CONTROL_TEXT_MAX)
        start = pos + CONTROL_FRAME.size
        if len(buf) < start + length:
            return False
        self.closed_reason = bytes(buf[start: start + length]).decode("utf-8", "replace")
        return True
