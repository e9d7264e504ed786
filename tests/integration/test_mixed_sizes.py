"""Mixed batch sizes (100 B … 4 MiB) on several connections of one receiver: small batches
are carved out of the read-ahead buffer, large ones go straight into the segment, and a
connection switches between the two many times. Every acked message lands exactly once, byte
for byte, on every backend."""

from __future__ import annotations

import hashlib
import os
import threading
from typing import Any

import pytest

from shardbroker import SegmentReader
from shardbroker.publisher.client import Publisher
from shardbroker.wire.protocol import encode_messages
from tests.integration.conftest import BACKENDS, BrokerFactory, skip_unless_backend

pytestmark = pytest.mark.integration

KiB, MiB = 1 << 10, 1 << 20
# per connection, repeated: carved, carved, carved, direct-sized, carved, direct, tiny
CYCLE = (4 * KiB, 4 * KiB, 64 * KiB, 512 * KiB, 4 * KiB, 4 * MiB, 100)
CYCLES = 8
CONNECTIONS = 4


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return skip_unless_backend(request.param)


def _payload(client: int, seq: int, size: int) -> tuple[bytes, int]:
    """A batch of about ``size`` bytes whose bytes depend on (client, seq)."""
    msg = min(size, 1000)
    count = max(1, size // (msg + 64 + 63 & ~63))
    rnd = hashlib.blake2b(f"{client}:{seq}".encode(), digest_size=64).digest()
    body = (rnd * (msg // 64 + 1))[:msg]
    return encode_messages([body] * count, client, seq), count


def _publish(host: str, port: int, client: int, out: dict[int, Any]) -> None:
    sent: dict[int, str] = {}
    try:
        with Publisher(host, port, client_id=client, topic="mixed", batch_bytes=8 * MiB,
                       max_in_flight=16, timeout=60) as pub:
            for i in range(CYCLES * len(CYCLE)):
                payload, count = _payload(client, i, CYCLE[i % len(CYCLE)])
                seq = pub.publish_batch(payload, count)
                sent[seq] = hashlib.sha1(payload).hexdigest()
            pub.flush()
            out[client] = {"sent": sent, "acked": pub.acked_messages,
                           "messages": pub.sent_messages}
    except Exception as exc:  # reported by the test, not lost in a thread
        out[client] = {"error": repr(exc)}


def test_mixed_sizes_on_several_connections_land_exactly_once(broker: BrokerFactory) -> None:
    b = broker(threads=1, blog="512MiB")
    clients = [int.from_bytes(os.urandom(3), "little") | 1 for _ in range(CONNECTIONS)]
    out: dict[int, Any] = {}
    threads = [threading.Thread(target=_publish, args=(b.host, b.port, c, out))
               for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not any(t.is_alive() for t in threads), "publishers did not finish in 180 s"
    for c in clients:
        assert "error" not in out[c], out[c]
        assert out[c]["acked"] == out[c]["messages"]  # everything was acked
    seen: dict[tuple[int, int], str] = {}
    with SegmentReader(b.segment) as r:
        for batch in r.batches():
            key = (batch.client_id, batch.batch_seq)
            assert key not in seen, f"batch {key} committed twice"
            seen[key] = hashlib.sha1(bytes(batch.payload)).hexdigest()
            assert batch.still_valid()
        stats = r.shard_stats(0)
    expected = {(c, seq): digest for c in clients for seq, digest in out[c]["sent"].items()}
    assert seen == expected  # every acked batch, byte for byte, nothing else
    # large payloads were received straight into the segment (reads of their own)
    assert stats["payload_recv_calls"] >= CYCLES * CONNECTIONS
