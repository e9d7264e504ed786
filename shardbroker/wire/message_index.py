"""Vectorised message framing: a batch payload's message offsets and sizes as numpy arrays.

Messages are chained (each 64-byte header's ``paddedSize`` rule gives the next offset), so a
general walk is sequential. Publishers almost always send one message size per batch; then
the offsets are ``k * stride`` and one numpy gather of the size fields confirms it. Anything
else falls back to a Python walk, with the same errors as ``protocol.iter_messages``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from shardbroker.wire.protocol import (
    MESSAGE_HEADER_SIZE,
    ProtocolError,
    Reason,
    message_stride,
)

IntArray = npt.NDArray[np.int64]


def message_arrays(payload: memoryview | bytes, num_msg: int) -> tuple[IntArray, IntArray]:
    """(offsets of each message's *data*, data sizes) for the ``num_msg`` messages in
    ``payload``. Zero-copy reads; the arrays are new (int64). Raises ProtocolError on bad
    framing."""
    end = len(payload)
    if num_msg <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if end < MESSAGE_HEADER_SIZE:
        raise ProtocolError(Reason.PAYLOAD_BAD_FRAMING, "message header past payload end")
    raw = np.frombuffer(payload, dtype=np.uint8)
    first = int(raw[:4].view("<u4")[0])
    stride = message_stride(first)
    last = (num_msg - 1) * stride
    if last + MESSAGE_HEADER_SIZE + first <= end:  # room for the uniform guess
        starts = np.arange(num_msg, dtype=np.int64) * stride
        fields = raw[starts[:, None] + np.arange(4, dtype=np.int64)]  # each header's size
        sizes = fields.view("<u4").reshape(num_msg).astype(np.int64)
        if bool((sizes == first).all()):
            return starts + MESSAGE_HEADER_SIZE, sizes
    return _walk(raw, num_msg, end)


def _walk(raw: npt.NDArray[np.uint8], num_msg: int, end: int) -> tuple[IntArray, IntArray]:
    offsets = np.empty(num_msg, np.int64)
    sizes = np.empty(num_msg, np.int64)
    off = 0
    for i in range(num_msg):
        if off + MESSAGE_HEADER_SIZE > end:
            raise ProtocolError(Reason.PAYLOAD_BAD_FRAMING, "message header past payload end")
        size = int(raw[off: off + 4].view("<u4")[0])
        start = off + MESSAGE_HEADER_SIZE
        if start + size > end:
            raise ProtocolError(Reason.PAYLOAD_BAD_FRAMING, "message body past payload end")
        offsets[i] = start
        sizes[i] = size
        off += message_stride(size)
    return offsets, sizes
