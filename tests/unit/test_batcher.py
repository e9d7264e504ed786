"""MessageBatcher (publisher/batcher.py): how ``publish(bytes)`` groups messages into batches,
shared by Publisher and ClusterPublisher. Pure: no sockets."""

from __future__ import annotations

from shardbroker.publisher.batcher import MessageBatcher
from shardbroker.wire.protocol import MESSAGE_HEADER, message_stride


def _batcher(batch_bytes: int) -> tuple[MessageBatcher, list[tuple[bytes, int, int]]]:
    """A batcher whose sends are recorded as (payload, num_msg, batch_seq); each send
    advances the batch_seq, as the publishers' ``_publish`` does."""
    sent: list[tuple[bytes, int, int]] = []
    seq = [7]

    def send(payload: bytearray, n: int) -> None:
        sent.append((bytes(payload), n, seq[0]))
        seq[0] += 1

    return MessageBatcher(batch_bytes, 0x1_2345_6789, lambda: seq[0], send), sent


def _headers(payload: bytes) -> list[tuple[int, ...]]:
    out, off = [], 0
    while off < len(payload):
        h = MESSAGE_HEADER.unpack_from(payload, off)
        out.append(h)
        off += message_stride(h[0])
    return out


def test_a_batch_goes_out_when_full_or_when_the_next_message_would_overfill_it() -> None:
    stride = message_stride(100)
    b, sent = _batcher(batch_bytes=2 * stride + 10)
    for _ in range(2):
        b.add(b"x" * 100)
    assert sent == []  # 2 strides < batch_bytes
    b.add(b"y" * 100)  # would overfill: the first two go, this one starts the next batch
    assert [(len(p), n, s) for p, n, s in sent] == [(2 * stride, 2, 7)]
    b.add(b"z" * (3 * stride))  # larger than batch_bytes: alone, sent at once
    assert [(n, s) for _, n, s in sent] == [(2, 7), (1, 8), (1, 9)]
    # each message is framed with the seq its batch goes out with, asked after the send
    assert [[m[9] for m in _headers(p)] for p, _, _ in sent] == [[7, 7], [8], [9]]
    b.send_pending()  # nothing pending: nothing sent
    assert len(sent) == 3


def test_messages_carry_counter_client_id_and_the_seq_of_their_batch() -> None:
    b, sent = _batcher(batch_bytes=1 << 20)
    b.add(b"abc")
    b.add(b"")
    b.send_pending()
    b.add(b"next")
    b.send_pending()
    (first, n1, seq1), (second, n2, seq2) = sent
    h = _headers(first)
    assert (n1, seq1, n2, seq2) == (2, 7, 1, 8)
    assert [(m[0], m[3], m[8], m[9]) for m in h] == [(3, 0, 0x1_2345_6789, 7),
                                                     (0, 1, 0x1_2345_6789, 7)]
    assert first[64:67] == b"abc"
    assert [(m[0], m[3], m[9]) for m in _headers(second)] == [(4, 0, 8)]
    assert second[64:68] == b"next"
