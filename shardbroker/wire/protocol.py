"""Embarcadero publish protocol: pure framing, no sockets, no clock, no logging.

All integers are little-endian.

Handshake (64 bytes, once per connection, ``<IIQQII32s``)::

    off  size  field       meaning
      0     4  client_id   publisher id
      4     4  ack         ack level: 0 none, 1 after commit (2 = Embarcadero "ordered",
                           served as 1 here because this node runs no sequencer)
      8     8  num_msg     publishers put the broker count here; ignored
     16     8  last_addr   ignored for publish
     24     4  port        0: acks flow back on this connection; else the broker connects
                           back to the publisher's address at this port
     28     4  client_req  i32: 0 = publish (anything else is rejected)
     32    32  topic       NUL-terminated printable ASCII topic name

BatchHeader / PBR slot (128 bytes, ``<QQIIIIIIHHIQQQQQQQQ16x``)::

    off  size  field                       set by
      0     8  batch_seq                   publisher
      8     8  original_client_batch_seq   (kept)
     16     4  client_id                   publisher; must equal the handshake's
     20     4  num_msg                     publisher
     24     4  batch_complete              broker: 1 once the payload is in the segment
     28     4  broker_id                   broker
     32     4  ordered                     (sequencer; 0)
     36     4  flags                       broker
     40     2  epoch_created               broker
     42     2  session_epoch               publisher hint
     44     4  session_epoch32             broker
     48     8  batch_id                    broker: (broker_id << 48) | pbr_absolute_index
     56     8  pbr_absolute_index          broker: per-shard batch counter, never wraps
     64     8  total_size                  publisher: payload bytes that follow
     72     8  start_logical_offset        broker: shard index of the batch's first message
     80     8  log_idx                     broker: payload offset in the segment
     88     8  total_order                 (sequencer)
     96     8  batch_off_to_export         (sequencer)
    104     8  publish_commit              broker, written last
    112    16  pad on the wire; in a PBR slot the segment layout uses it (segment/layout.py)

Message inside a payload: a 64-byte header, then ``size`` bytes, padded so the next message
starts at ``align64(64 + size)``::

    off  size  field          off  size  field
      0     4  size            32     8  total_order
      4     4  received        40     8  ordered_ts
      8     8  ts              48     8  client_id
     16     4  counter         56     4  batch_seq
     20     4  flags           60     4  pad
     24     8  processed_ts

Acks (broker -> publisher): one i32 broker_id, then a stream of u64 cumulative message counts
for the client. A control frame on that stream is ``{u32 0x53455346 "SESF", u32 len}`` then
``len`` bytes of UTF-8 text; the broker uses it to tell a publisher why it is being closed.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator
from dataclasses import dataclass

HANDSHAKE = struct.Struct("<IIQQII32s")
BATCH_HEADER = struct.Struct("<QQIIIIIIHHIQQQQQQQQ16x")
MESSAGE_HEADER = struct.Struct("<IIQIIQQQQII")
ACK_BROKER_ID = struct.Struct("<i")
ACK_COUNT = struct.Struct("<Q")
CONTROL_FRAME = struct.Struct("<II")

HANDSHAKE_SIZE = HANDSHAKE.size  # 64
BATCH_HEADER_SIZE = BATCH_HEADER.size  # 128
MESSAGE_HEADER_SIZE = MESSAGE_HEADER.size  # 64
CONTROL_MAGIC = 0x53455346  # "SESF" read as a little-endian u32
CONTROL_TEXT_MAX = 4096
UINT64_MAX = 0xFFFF_FFFF_FFFF_FFFF

# Byte offsets inside the 128-byte header that the broker patches in place.
OFF_BATCH_SEQ = 0
OFF_CLIENT_ID = 16
OFF_NUM_MSG = 20
OFF_BATCH_COMPLETE = 24
OFF_TOTAL_SIZE = 64
OFF_PUBLISH_COMMIT = 104

# Embarcadero's limits, also this broker's defaults.
MAX_MESSAGE_PAYLOAD = 1 << 20
MAX_MESSAGES_PER_BATCH = 10_000

REQ_PUBLISH = 0
ACK_LEVELS = (0, 1, 2)

assert HANDSHAKE_SIZE == 64 and BATCH_HEADER_SIZE == 128 and MESSAGE_HEADER_SIZE == 64


@enum.unique
class Reason(enum.StrEnum):
    """Why a connection was rejected. Stable strings: they name log events and counters."""

    HANDSHAKE_UNKNOWN_REQUEST = "handshake.unknown_client_req"
    HANDSHAKE_BAD_ACK_LEVEL = "handshake.bad_ack_level"
    HANDSHAKE_TOPIC_NOT_TERMINATED = "handshake.topic_not_nul_terminated"
    HANDSHAKE_TOPIC_EMPTY = "handshake.topic_empty"
    HANDSHAKE_TOPIC_NOT_PRINTABLE = "handshake.topic_not_printable"
    BATCH_SIZE_ZERO = "batch.total_size_zero"
    BATCH_SIZE_TOO_LARGE = "batch.total_size_too_large"
    BATCH_NO_MESSAGES = "batch.num_msg_zero"
    BATCH_TOO_MANY_MESSAGES = "batch.num_msg_too_large"
    BATCH_TOO_SMALL_FOR_MESSAGES = "batch.total_size_below_message_headers"
    BATCH_CLIENT_ID_MISMATCH = "batch.client_id_mismatch"
    PAYLOAD_BAD_FRAMING = "payload.bad_message_framing"
    PEER_CLOSED_MID_BATCH = "peer.closed_mid_batch"
    PEER_CLOSED_MID_HANDSHAKE = "peer.closed_mid_handshake"
    # Broker-side reasons a connection is closed (not violations by the bytes themselves).
    ACK_CONNECT_FAILED = "ack.connect_back_failed"
    TOPIC_TABLE_FULL = "segment.topic_table_full"
    LAPPED_IN_FLIGHT = "segment.lapped_in_flight"
    TIMEOUT_HANDSHAKE = "timeout.handshake"
    TIMEOUT_BATCH = "timeout.batch"
    TIMEOUT_IDLE = "timeout.idle"


class ProtocolError(Exception):
    """A peer violated the protocol; the connection must be closed, nothing committed."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds a broker enforces on values a publisher controls."""

    max_batch_bytes: int = 64 << 20
    max_messages_per_batch: int = MAX_MESSAGES_PER_BATCH
    max_message_bytes: int = MAX_MESSAGE_PAYLOAD

    def __post_init__(self) -> None:
        if self.max_batch_bytes < MESSAGE_HEADER_SIZE:
            raise ValueError(f"max_batch_bytes must be >= {MESSAGE_HEADER_SIZE}")
        if self.max_messages_per_batch < 1:
            raise ValueError("max_messages_per_batch must be >= 1")


@dataclass(frozen=True, slots=True)
class Handshake:
    client_id: int
    ack: int
    port: int
    topic: str
    client_req: int = REQ_PUBLISH
    num_msg: int = 0
    last_addr: int = 0


@dataclass(frozen=True, slots=True)
class BatchHeader:
    """The publisher-set fields of a batch header (the broker fills in the rest)."""

    batch_seq: int
    client_id: int
    num_msg: int
    total_size: int
    session_epoch: int = 0
    original_client_batch_seq: int = 0


# --------------------------------------------------------------------------- encoders


def encode_handshake(h: Handshake) -> bytes:
    topic = h.topic.encode("ascii")
    if len(topic) > 31:
        raise ValueError(f"topic {h.topic!r} is longer than 31 bytes")
    return HANDSHAKE.pack(
        h.client_id, h.ack, h.num_msg, h.last_addr, h.port, h.client_req, topic
    )


def encode_batch_header(b: BatchHeader, broker_id: int = 0) -> bytes:
    return BATCH_HEADER.pack(
        b.batch_seq, b.original_client_batch_seq, b.client_id, b.num_msg,
        0, broker_id, 0, 0, 0, b.session_epoch, 0,
        0, 0, b.total_size, 0, 0, 0, 0, UINT64_MAX,
    )


def align64(n: int) -> int:
    return (n + 63) & ~63


def message_stride(payload_size: int) -> int:
    """Bytes one message of ``payload_size`` occupies in a batch, header included."""
    return align64(MESSAGE_HEADER_SIZE + payload_size)


def encode_messages(messages: list[bytes], client_id: int, batch_seq: int) -> bytes:
    """A batch payload holding ``messages``, each framed by a 64-byte header."""
    out = bytearray(sum(message_stride(len(m)) for m in messages))
    off = 0
    for counter, m in enumerate(messages):
        MESSAGE_HEADER.pack_into(
            out, off, len(m), 0, 0, counter, 0, 0, 0, 0, client_id, batch_seq & 0xFFFF_FFFF, 0
        )
        out[off + MESSAGE_HEADER_SIZE: off + MESSAGE_HEADER_SIZE + len(m)] = m
        off += message_stride(len(m))
    return bytes(out)


def encode_control_frame(text: str) -> bytes:
    data = text.encode("utf-8")[:CONTROL_TEXT_MAX]
    return CONTROL_FRAME.pack(CONTROL_MAGIC, len(data)) + data


# --------------------------------------------------------------------------- validation


def _is_printable_ascii(raw: bytes) -> bool:
    return all(0x20 <= c < 0x7F for c in raw)


def parse_handshake(raw: bytes | memoryview) -> Handshake:
    """Decode and validate a 64-byte handshake; raises ProtocolError."""
    client_id, ack, num_msg, last_addr, port, client_req, topic_raw = HANDSHAKE.unpack(raw)
    if client_req != REQ_PUBLISH:
        raise ProtocolError(
            Reason.HANDSHAKE_UNKNOWN_REQUEST,
            f"client_req={client_req}; this node serves publish (0) only",
        )
    if ack not in ACK_LEVELS:
        raise ProtocolError(Reason.HANDSHAKE_BAD_ACK_LEVEL, f"ack={ack}; expected 0, 1 or 2")
    nul = topic_raw.find(b"\0")
    if nul < 0:
        raise ProtocolError(Reason.HANDSHAKE_TOPIC_NOT_TERMINATED, "topic has no NUL in 32 bytes")
    if nul == 0:
        raise ProtocolError(Reason.HANDSHAKE_TOPIC_EMPTY, "topic is empty")
    topic = topic_raw[:nul]
    if not _is_printable_ascii(topic):
        raise ProtocolError(
            Reason.HANDSHAKE_TOPIC_NOT_PRINTABLE, f"topic bytes {topic!r} are not printable ASCII"
        )
    return Handshake(
        client_id=client_id, ack=ack, port=port, topic=topic.decode("ascii"),
        client_req=client_req, num_msg=num_msg, last_addr=last_addr,
    )


def check_batch_header(
    batch_seq: int, client_id: int, num_msg: int, total_size: int,
    expected_client_id: int, limits: Limits,
) -> None:
    """Validate the publisher-controlled fields of a batch header; raises ProtocolError."""
    if total_size == 0:
        raise ProtocolError(Reason.BATCH_SIZE_ZERO, f"batch {batch_seq}: total_size is 0")
    if total_size > limits.max_batch_bytes:
        raise ProtocolError(
            Reason.BATCH_SIZE_TOO_LARGE,
            f"batch {batch_seq}: total_size {total_size} > limit {limits.max_batch_bytes}",
        )
    if num_msg == 0:
        raise ProtocolError(Reason.BATCH_NO_MESSAGES, f"batch {batch_seq}: num_msg is 0")
    if num_msg > limits.max_messages_per_batch:
        raise ProtocolError(
            Reason.BATCH_TOO_MANY_MESSAGES,
            f"batch {batch_seq}: num_msg {num_msg} > limit {limits.max_messages_per_batch}",
        )
    if total_size < num_msg * MESSAGE_HEADER_SIZE:
        raise ProtocolError(
            Reason.BATCH_TOO_SMALL_FOR_MESSAGES,
            f"batch {batch_seq}: {total_size} bytes cannot hold {num_msg} message headers",
        )
    if client_id != expected_client_id:
        raise ProtocolError(
            Reason.BATCH_CLIENT_ID_MISMATCH,
            f"batch {batch_seq}: client_id {client_id} != handshake's {expected_client_id}",
        )


def check_message_framing(payload: memoryview, num_msg: int, limits: Limits) -> None:
    """Walk the message headers of a received payload; raises ProtocolError on bad framing."""
    off, end = 0, len(payload)
    for i in range(num_msg):
        if off + MESSAGE_HEADER_SIZE > end:
            raise ProtocolError(
                Reason.PAYLOAD_BAD_FRAMING, f"message {i} header runs past the payload end"
            )
        (size,) = struct.unpack_from("<I", payload, off)
        if size > limits.max_message_bytes:
            raise ProtocolError(
                Reason.PAYLOAD_BAD_FRAMING, f"message {i} size {size} > {limits.max_message_bytes}"
            )
        off += message_stride(size)
        if off > end:
            raise ProtocolError(Reason.PAYLOAD_BAD_FRAMING, f"message {i} runs past the payload")
    if off != end:
        raise ProtocolError(
            Reason.PAYLOAD_BAD_FRAMING,
            f"{num_msg} messages use {off} bytes but the payload has {end}",
        )


@dataclass(frozen=True, slots=True)
class MessageView:
    counter: int
    client_id: int
    batch_seq: int
    data: memoryview


def iter_messages(payload: memoryview, num_msg: int) -> Iterator[MessageView]:
    """Yield zero-copy views of the messages in a (committed, well-framed) payload."""
    off, end = 0, len(payload)
    for _ in range(num_msg):
        if off + MESSAGE_HEADER_SIZE > end:
            raise ProtocolError(Reason.PAYLOAD_BAD_FRAMING, "message header past payload end")
        size, _r, _ts, counter, _f, _p, _o, _ots, client_id, batch_seq, _pad = (
            MESSAGE_HEADER.unpack_from(payload, off)
        )
        start = off + MESSAGE_HEADER_SIZE
        if start + size > end:
            raise ProtocolError(Reason.PAYLOAD_BAD_FRAMING, "message body past payload end")
        yield MessageView(counter, client_id, batch_seq, payload[start: start + size])
        off += message_stride(size)


def decode_batch_header(
    raw: bytes | bytearray | memoryview, expected_client_id: int, limits: Limits
) -> BatchHeader:
    f = BATCH_HEADER.unpack_from(raw)
    batch_seq, orig_seq, client_id, num_msg = f[0], f[1], f[2], f[3]
    session_epoch, total_size = f[9], f[13]
    check_batch_header(batch_seq, client_id, num_msg, total_size, expected_client_id, limits)
    return BatchHeader(
        batch_seq=batch_seq, client_id=client_id, num_msg=num_msg, total_size=total_size,
        session_epoch=session_epoch, original_client_batch_seq=orig_seq,
    )
