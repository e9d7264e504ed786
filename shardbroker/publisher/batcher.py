"""Messages into batches: frame each ``publish(bytes)`` onto a pending batch, send it when full.

Shared by ``Publisher`` (one broker) and ``ClusterPublisher`` (many). Kept apart from
batches.py (numpy-built load-generation payloads) so the publisher library does not import
numpy.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from shardbroker.wire.protocol import MESSAGE_HEADER, MESSAGE_HEADER_SIZE, message_stride


def append_message(batch: bytearray, counter: int, data: bytes | bytearray | memoryview,
                   client_id: int, batch_seq: int) -> None:
    """Frame one message (64-byte header, data, padding) onto the end of ``batch``."""
    off = len(batch)
    batch += bytes(message_stride(len(data)))
    MESSAGE_HEADER.pack_into(batch, off, len(data), 0, time.time_ns(), counter, 0, 0, 0, 0,
                             client_id, batch_seq & 0xFFFF_FFFF, 0)
    batch[off + MESSAGE_HEADER_SIZE: off + MESSAGE_HEADER_SIZE + len(data)] = data


class MessageBatcher:
    """One pending batch of framed messages, at most ``batch_bytes`` unless one message is
    larger. ``next_seq()`` is the batch_seq the pending batch will be sent with (asked per
    message, after any send); ``send(payload, num_msg)`` takes a full batch, and the batcher
    starts a new one."""

    def __init__(self, batch_bytes: int, client_id: int, next_seq: Callable[[], int],
                 send: Callable[[bytearray, int], object]) -> None:
        self.batch_bytes = batch_bytes
        self.client_id = client_id
        self._next_seq = next_seq
        self._send = send
        self._batch = bytearray()
        self._msgs = 0

    def add(self, data: bytes | bytearray | memoryview) -> None:
        """Queue one message; a batch it would overfill goes out first, a full one after."""
        if self._batch and len(self._batch) + message_stride(len(data)) > self.batch_bytes:
            self.send_pending()
        append_message(self._batch, self._msgs, data, self.client_id, self._next_seq())
        self._msgs += 1
        if len(self._batch) >= self.batch_bytes:
            self.send_pending()

    def send_pending(self) -> None:
        """Send the partial batch, if any."""
        if self._msgs:
            payload, n = self._batch, self._msgs
            self._batch, self._msgs = bytearray(), 0
            self._send(payload, n)
