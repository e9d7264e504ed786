"""Pure helpers for the bench's own protocol senders: several pre-framed batches in one
buffer, and an incremental parser of the ack stream. No sockets, no clock.

A chunk is ``m`` consecutive wire batches (128-byte BatchHeader + payload) built once with
numpy from the same ``BatchTemplate`` the verifier rebuilds; per chunk only the ``batch_seq``
of each header and of each message header is patched, vectorised. Small batches can then go
out many to one ``sendmsg``, so the sender costs about a memory copy per byte even at 4 KiB.
"""

from __future__ import annotations

import struct

import numpy as np

from shardbroker.publisher.batches import U32_BATCH_SEQ_COL, BatchTemplate
from shardbroker.wire.protocol import (
    ACK_BROKER_ID,
    ACK_COUNT,
    BATCH_HEADER_SIZE,
    CONTROL_FRAME,
    CONTROL_MAGIC,
    CONTROL_TEXT_MAX,
    BatchHeader,
    encode_batch_header,
)


class ChunkBuilder:
    def __init__(self, template: BatchTemplate, batches_per_chunk: int) -> None:
        if batches_per_chunk < 1:
            raise ValueError("batches_per_chunk must be >= 1")
        g = template.geom
        self.m = batches_per_chunk
        self.messages = g.messages
        self.payload_bytes = g.payload_bytes
        self.frame = BATCH_HEADER_SIZE + g.payload_bytes
        if self.frame % 8:
            raise ValueError("payload size must be a multiple of 8")
        self.buf = np.zeros(self.m * self.frame, dtype=np.uint8)
        rows = self.buf.reshape(self.m, self.frame)
        rows[:, :BATCH_HEADER_SIZE] = np.frombuffer(encode_batch_header(BatchHeader(
            0, template.client_id, g.messages, g.payload_bytes)), dtype=np.uint8)
        rows[:, BATCH_HEADER_SIZE:] = template.array
        self._seq64 = self.buf.view("<u8").reshape(self.m, self.frame // 8)
        self._words = self.buf.view("<u4").reshape(self.m, self.frame // 4)
        # batch_seq of every message header: a plain strided slice (no fancy indexing)
        first = BATCH_HEADER_SIZE // 4 + U32_BATCH_SEQ_COL
        step = g.stride // 4
        self._cols = slice(first, first + g.messages * step, step)
        self._view = memoryview(self.buf)  # type: ignore[arg-type]

    def fill(self, first_seq: int, count: int) -> memoryview:
        """Batches ``first_seq .. first_seq+count-1`` framed back to back (count <= m)."""
        if not 1 <= count <= self.m:
            raise ValueError(f"count must be within 1..{self.m}")
        seqs = np.arange(first_seq, first_seq + count, dtype=np.uint64)
        self._seq64[:count, 0] = seqs
        self._words[:count, self._cols] = (seqs & 0xFFFF_FFFF).astype(np.uint32)[:, None]
        return self._view[: count * self.frame]


def batches_per_chunk(batch_bytes: int, target_bytes: int = 256 << 10) -> int:
    """How many batches to frame per send: about ``target_bytes`` worth, at least one."""
    return max(1, target_bytes // (batch_bytes + BATCH_HEADER_SIZE))


class AckError(Exception):
    """The broker closed the ack stream with a stated reason."""


class AckStream:
    """Feed raw bytes from the ack direction; ``count`` is the latest cumulative message count.

    The stream is one i32 broker id, then u64 counts; a ``SESF`` control frame carries the
    reason for a close and raises AckError."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.broker_id: int | None = None
        self.count = 0

    def feed(self, data: bytes | bytearray | memoryview) -> int:
        self.buf += data
        buf, pos = self.buf, 0
        while True:
            need = 4 if self.broker_id is None else 8
            if len(buf) - pos < need:
                break
            (word,) = struct.unpack_from("<I", buf, pos)
            if word == CONTROL_MAGIC:
                if len(buf) - pos < CONTROL_FRAME.size:
                    break
                _magic, length = CONTROL_FRAME.unpack_from(buf, pos)
                length = min(length, CONTROL_TEXT_MAX)
                start = pos + CONTROL_FRAME.size
                if len(buf) < start + length:
                    break
                raise AckError(bytes(buf[start:start + length]).decode("utf-8", "replace"))
            if self.broker_id is None:
                (self.broker_id,) = ACK_BROKER_ID.unpack_from(buf, pos)
                pos += 4
            else:
                (self.count,) = ACK_COUNT.unpack_from(buf, pos)
                pos += 8
        del buf[:pos]
        return self.count
