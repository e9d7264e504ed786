"""Pre-built batch payloads for load generation and their verification twin.

A batch is built once with numpy (message headers included); per batch only the ``batch_seq``
column of the message headers is patched, so generating load costs about what iperf3's client
does per byte. Message bodies are a fixed pattern derived from (client_id, counter), so a
verifier can rebuild the expected bytes of any batch without having seen it sent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# No BLAS is used here, but OpenBLAS starts a spinning thread pool at import; on a small
# broker box those threads steal CPU from the receivers. Set before numpy is first imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import numpy.typing as npt

from shardbroker.wire.protocol import MESSAGE_HEADER_SIZE, message_stride

U32_SIZE_COL = 0  # message header field columns, in u32 units
U32_COUNTER_COL = 4
U32_CLIENT_ID_COL = 12  # client_id is a u64 at byte 48: low word here, high word next
U32_BATCH_SEQ_COL = 14


@dataclass(frozen=True)
class BatchGeometry:
    message_size: int
    messages: int

    @property
    def stride(self) -> int:
        return message_stride(self.message_size)

    @property
    def payload_bytes(self) -> int:
        return self.stride * self.messages

    @classmethod
    def for_batch(cls, batch_bytes: int, message_size: int, max_messages: int = 10_000
                  ) -> BatchGeometry:
        stride = message_stride(message_size)
        n = max(1, min(max_messages, batch_bytes // stride))
        return cls(message_size, n)


class BatchTemplate:
    """One client's batch payload; ``for_seq(s)`` patches it for batch_seq ``s`` in place."""

    def __init__(self, client_id: int, geom: BatchGeometry) -> None:
        self.client_id = client_id
        self.geom = geom
        n, stride = geom.messages, geom.stride
        self.array = np.zeros(geom.payload_bytes, dtype=np.uint8)
        rows = self.array.reshape(n, stride)
        # Bodies: a byte pattern that differs per client and per message.
        body = (np.arange(geom.message_size, dtype=np.uint32)[None, :] * 7
                + np.arange(n, dtype=np.uint32)[:, None] * 13 + (client_id * 101) % 256) & 0xFF
        rows[:, MESSAGE_HEADER_SIZE: MESSAGE_HEADER_SIZE + geom.message_size] = body
        words = self.words
        words[:, U32_SIZE_COL] = geom.message_size
        words[:, U32_COUNTER_COL] = np.arange(n, dtype=np.uint32)
        words[:, U32_CLIENT_ID_COL] = client_id & 0xFFFF_FFFF
        words[:, U32_CLIENT_ID_COL + 1] = client_id >> 32

    @property
    def words(self) -> npt.NDArray[np.uint32]:
        return self.array.view("<u4").reshape(self.geom.messages, self.geom.stride // 4)

    def for_seq(self, batch_seq: int) -> memoryview:
        self.words[:, U32_BATCH_SEQ_COL] = batch_seq & 0xFFFF_FFFF
        return memoryview(self.array)  # type: ignore[arg-type]

    def matches(self, payload: memoryview, batch_seq: int) -> bool:
        """True when ``payload`` is exactly this client's batch ``batch_seq``."""
        if len(payload) != self.geom.payload_bytes:
            return False
        got = np.frombuffer(payload, dtype="<u4").reshape(self.geom.messages, -1)
        want = self.words
        c = U32_BATCH_SEQ_COL
        return bool(
            (got[:, c] == (batch_seq & 0xFFFF_FFFF)).all()
            and np.array_equal(got[:, :c], want[:, :c])
            and np.array_equal(got[:, c + 1:], want[:, c + 1:])
        )

    def headers_match(self, payload: memoryview, batch_seq: int) -> bool:
        """Cheaper check of the message headers only (sizes, counters, ids, batch_seq)."""
        if len(payload) != self.geom.payload_bytes:
            return False
        got = np.frombuffer(payload, dtype="<u4").reshape(self.geom.messages, -1)
        want = self.words
        c = U32_BATCH_SEQ_COL
        return bool((got[:, c] == (batch_seq & 0xFFFF_FFFF)).all()
                    and np.array_equal(got[:, :c], want[:, :c]))
