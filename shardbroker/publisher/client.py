"""Publisher library: ``from shardbroker import Publisher``.

Speaks the Embarcadero publish protocol (wire/protocol.py): one handshake, then batches of
framed messages; acks come back on the same connection as cumulative message counts.
``publish(bytes)`` batches messages up to ``batch_bytes``; ``publish_batch`` sends an already
framed payload (what load generators use, so the client costs about what iperf3 does per byte).
At most ``max_in_flight`` batches wait for acks; ``flush()`` waits for all of them.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import socket
import struct
import time
from collections import deque
from types import TracebackType
from typing import NoReturn

from shardbroker.errors import PublishError
from shardbroker.wire.protocol import (
    ACK_BROKER_ID,
    ACK_COUNT,
    CONTROL_FRAME,
    CONTROL_MAGIC,
    CONTROL_TEXT_MAX,
    MESSAGE_HEADER,
    MESSAGE_HEADER_SIZE,
    BatchHeader,
    Handshake,
    encode_batch_header,
    encode_handshake,
    message_stride,
)


class Publisher:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        topic: str = "default",
        client_id: int | None = None,
        ack: int = 1,
        batch_bytes: int = 2 << 20,
        max_in_flight: int = 32,
        timeout: float = 30.0,
    ) -> None:
        self.client_id = client_id if client_id is not None else random.getrandbits(31) | 1
        self.topic = topic
        self.ack = ack
        self.batch_bytes = batch_bytes
        self.max_in_flight = max(1, max_in_flight)
        self.timeout = timeout
        self.broker_id: int | None = None
        self.next_batch_seq = 0
        self.sent_messages = 0
        self.sent_bytes = 0
        self.acked_messages = 0
        self._in_flight: deque[int] = deque()  # cumulative message count after each batch
        self._ackbuf = bytearray()
        self._closed_reason: str | None = None
        self._batch = bytearray()
        self._batch_msgs = 0
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise PublishError(f"cannot connect to broker at {host}:{port}: {exc}",
                               hint="is `shardbroker run` listening there?") from exc
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(None)
        self.sock.sendall(encode_handshake(Handshake(self.client_id, ack, 0, topic)))

    # ------------------------------------------------------------------ context manager

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        if et is None:
            self.flush()
        self.close()

    # ------------------------------------------------------------------ publishing

    def publish(self, data: bytes | bytearray | memoryview) -> None:
        """Queue one message; a full batch goes out (and may wait for acks)."""
        stride = message_stride(len(data))
        if self._batch and len(self._batch) + stride > self.batch_bytes:
            self._send_pending()
        off = len(self._batch)
        self._batch += bytes(stride)
        MESSAGE_HEADER.pack_into(self._batch, off, len(data), 0, time.time_ns(),
                                 self._batch_msgs, 0, 0, 0, 0, self.client_id,
                                 self.next_batch_seq & 0xFFFF_FFFF, 0)
        self._batch[off + MESSAGE_HEADER_SIZE: off + MESSAGE_HEADER_SIZE + len(data)] = data
        self._batch_msgs += 1
        if len(self._batch) >= self.batch_bytes:
            self._send_pending()

    def _send_pending(self) -> None:
        if self._batch_msgs:
            payload, n = self._batch, self._batch_msgs
            self._batch, self._batch_msgs = bytearray(), 0
            self.publish_batch(payload, n)

    def publish_batch(self, payload: bytes | bytearray | memoryview, num_msg: int) -> int:
        """Send one already framed batch (``num_msg`` messages). Returns its batch_seq."""
        self._check_open()
        if self.ack:
            self._reap_acks(block=len(self._in_flight) >= self.max_in_flight)
        seq = self.next_batch_seq
        header = encode_batch_header(BatchHeader(seq, self.client_id, num_msg, len(payload)))
        try:
            self._send_all([header, payload])
        except OSError as exc:
            self._raise_closed(exc)
        self.next_batch_seq = seq + 1
        self.sent_messages += num_msg
        self.sent_bytes += len(payload)
        if self.ack:
            self._in_flight.append(self.sent_messages)
        return seq

    def _send_all(self, parts: list[bytes | bytearray | memoryview]) -> None:
        """One sendmsg for header and payload (a blocking socket sends it all unless a signal
        interrupts); finish any remainder the same way."""
        views = [memoryview(x).cast("B") for x in parts]
        while views:
            sent = self.sock.sendmsg(views)
            while views and sent >= len(views[0]):
                sent -= len(views[0])
                views.pop(0)
            if views and sent:
                views[0] = views[0][sent:]

    def flush(self, timeout: float | None = None) -> None:
        """Send the partial batch and wait until every batch is acked."""
        self._send_pending()
        if not self.ack:
            return
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while self._in_flight:
            if time.monotonic() > deadline:
                raise PublishError(
                    f"{len(self._in_flight)} batches not acked within the timeout",
                    hint="the broker may be overloaded or stopped",
                )
            self._reap_acks(block=True, deadline=deadline)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    # ------------------------------------------------------------------ acks

    def _check_open(self) -> None:
        if self._closed_reason is not None:
            raise PublishError(f"broker closed the connection: {self._closed_reason}",
                               reason=self._closed_reason.split(":", 1)[0])

    def _raise_closed(self, exc: OSError | None) -> NoReturn:
        """The connection broke: find the broker's stated reason if it sent one."""
        try:
            self.sock.settimeout(0.5)
            while self._closed_reason is None:
                data = self.sock.recv(65536)
                if not data:
                    break
                self._ackbuf += data
                self._parse_acks()
        except OSError:
            pass
        reason = self._closed_reason or (f"connection lost: {exc}" if exc else "connection lost")
        self._closed_reason = reason
        raise PublishError(f"broker closed the connection: {reason}",
                           reason=reason.split(":", 1)[0]) from exc

    def _reap_acks(self, block: bool, deadline: float | None = None) -> None:
        """Read acks that arrived. ``block``: wait until at least one batch is acked."""
        before = len(self._in_flight)
        while True:
            try:
                data = self.sock.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                if not block or len(self._in_flight) < before:
                    return
                wait = self.timeout if deadline is None else max(0.0, deadline - time.monotonic())
                readable, _, _ = select.select([self.sock], [], [], wait)
                if not readable:
                    raise PublishError("no ack from the broker within the timeout",
                                       hint="the broker may be overloaded or stopped") from None
                continue
            except OSError as exc:
                self._raise_closed(exc)
            if not data:
                self._raise_closed(None)
            self._ackbuf += data
            self._parse_acks()
            if self._closed_reason is not None:
                self._raise_closed(None)

    def _parse_acks(self) -> None:
        buf = self._ackbuf
        pos = 0
        while True:
            if self.broker_id is None:
                if len(buf) - pos < 4:
                    break
                (word,) = struct.unpack_from("<I", buf, pos)
                if word == CONTROL_MAGIC:
                    if not self._parse_control(buf, pos):
                        break
                    pos = len(buf)
                    break
                (self.broker_id,) = ACK_BROKER_ID.unpack_from(buf, pos)
                pos += 4
                continue
            if len(buf) - pos < 8:
                break
            (word,) = struct.unpack_from("<I", buf, pos)
            if word == CONTROL_MAGIC:
                if not self._parse_control(buf, pos):
                    break
                pos = len(buf)
                break
            (count,) = ACK_COUNT.unpack_from(buf, pos)
            pos += 8
            self.acked_messages = count
            while self._in_flight and self._in_flight[0] <= count:
                self._in_flight.popleft()
        del buf[:pos]

    def _parse_control(self, buf: bytearray, pos: int) -> bool:
        if len(buf) - pos < CONTROL_FRAME.size:
            return False
        _magic, length = CONTROL_FRAME.unpack_from(buf, pos)
        length = min(length, CONTROL_TEXT_MAX)
        start = pos + CONTROL_FRAME.size
        if len(buf) < start + length:
            return False
        self._closed_reason = bytes(buf[start: start + length]).decode("utf-8", "replace")
        return True


def random_client_id() -> int:
    return int.from_bytes(os.urandom(4), "little") | 1
