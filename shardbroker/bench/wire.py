"""Pure helpers for the bench's own protocol senders: several pre-framed batches in one
buffer, an incremental parser of the ack stream, and the sink's counter of the publish stream
(the sender-ceiling receiver). No sockets, no clock.

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
    HANDSHAKE_SIZE,
    OFF_NUM_MSG,
    OFF_TOTAL_SIZE,
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


# Bytes framed per send: 1 MiB, iperf3's `-l 1M` (the limit contender). On loopback the
# sending CPU is the bottleneck and bigger writes cost it less per byte (DESIGN §4: iperf3
# 4.1 GB/s with 128 KiB writes, 6.0 with 1 MiB). Per-send costs (the syscall, the numpy patch
# of sequence numbers, ~6 us; the ack drain) then stay far below the copy even at 4 KiB
# batches (248 per send); a 64 KiB scenario sends 15 batches at a time instead of 3.
CHUNK_TARGET_BYTES = 1 << 20


def batches_per_chunk(batch_bytes: int, target_bytes: int = CHUNK_TARGET_BYTES) -> int:
    """How many batches to frame per send: about ``target_bytes`` worth, at least one."""
    return max(1, target_bytes // (batch_bytes + BATCH_HEADER_SIZE))


def chunk_plan(batch_bytes: int, window_bytes: int,
               target_bytes: int = CHUNK_TARGET_BYTES) -> tuple[int, int]:
    """(batches per send, batches in flight): a send is at most half the window (unacked
    payload bytes, at least two batches), so one send can be acked while the next goes out."""
    window = max(2, window_bytes // batch_bytes)
    return min(batches_per_chunk(batch_bytes, target_bytes), max(1, window // 2)), window


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


# num_msg (u32 at offset 20) and total_size (u64 at offset 64) in one unpack.
_COUNTS = struct.Struct(f"<{OFF_NUM_MSG}xI{OFF_TOTAL_SIZE - OFF_NUM_MSG - 4}xQ")


class StreamCounter:
    """Follows one publish stream without keeping it (the sink): skips the handshake, then
    reads each 128-byte batch header for num_msg and total_size and skips the payload by
    length. ``feed`` any split of the stream; ``messages`` is the cumulative count to ack.

    A batch counts once its last payload byte is in, as the broker acks. Only a header split
    across two feeds is copied (into ``head``); the rest is arithmetic on offsets, so a 1 MiB
    read of 4 KiB batches costs ~250 header unpacks."""

    def __init__(self) -> None:
        self.skip = HANDSHAKE_SIZE  # bytes still to pass over: the handshake, then a payload
        self.head = bytearray()  # the start of a header cut off at the end of a feed
        self.pending: tuple[int, int] | None = None  # (num_msg, total_size) being skipped
        self.messages = self.batches = self.payload_bytes = 0

    @property
    def at_boundary(self) -> bool:
        """The handshake and every batch begun are complete: a clean place for EOF."""
        return not self.head and self.skip == 0

    def feed(self, data: bytes | bytearray | memoryview) -> int:
        n = len(data)
        pos = self._pass(0, n)
        if self.head and pos < n:
            pos = self._finish_head(data, pos, n)
        if self.skip == 0:
            pos = self._whole_headers(data, pos, n)
        if self.skip == 0 and pos < n:
            self.head += data[pos:]  # less than a header left: keep it for the next feed
        return self.messages

    def _finish_head(self, data: bytes | bytearray | memoryview, pos: int, n: int) -> int:
        take = min(BATCH_HEADER_SIZE - len(self.head), n - pos)
        self.head += data[pos:pos + take]
        if len(self.head) < BATCH_HEADER_SIZE:
            return pos + take
        self.pending = _COUNTS.unpack_from(self.head)
        self.skip = self.pending[1]
        self.head.clear()
        return self._pass(pos + take, n)

    def _whole_headers(self, data: bytes | bytearray | memoryview, pos: int, n: int) -> int:
        """Every header wholly in ``data`` from ``pos``: batches that end in it are counted,
        one that runs past its end is left pending. The hot loop: locals only."""
        unpack = _COUNTS.unpack_from
        messages = batches = size = 0
        while n - pos >= BATCH_HEADER_SIZE:
            num_msg, total = unpack(data, pos)
            pos += BATCH_HEADER_SIZE + total
            if pos > n:
                self.pending, self.skip, pos = (num_msg, total), pos - n, n
                break
            messages += num_msg
            batches += 1
            size += total
        self.messages += messages
        self.batches += batches
        self.payload_bytes += size
        return pos

    def _pass(self, pos: int, n: int) -> int:
        """Skip what is owed from ``pos`` (the handshake or a payload), counting the batch
        whose payload this completes; returns the new position."""
        step = min(self.skip, n - pos)
        self.skip -= step
        if self.skip == 0 and self.pending is not None:
            num_msg, total = self.pending
            self.messages += num_msg
            self.batches += 1
            self.payload_bytes += total
            self.pending = None
        return pos + step
