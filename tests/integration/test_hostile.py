"""Hostile input, each case beside 4 honest publishers: only the bad connection is closed,
with its specific reason sent first (SESF frame) and counted; every acked message of the
honest publishers is in the segment exactly once; the broker's memory stays bounded."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from typing import Any

import pytest

from shardbroker.control import client
from shardbroker.publisher import loadgen
from shardbroker.publisher.batches import BatchGeometry
from shardbroker.wire import protocol as p

from .conftest import (
    BACKENDS,
    BrokerFactory,
    closing_reason,
    raw_batch,
    verify_segment,
    wait_for,
)

pytestmark = pytest.mark.integration
GEOM = BatchGeometry.for_batch(2 << 20, 1024)
CID = 31337


def _hs(client_id: int = CID, ack: int = 1, client_req: int = 0, topic: bytes = b"t\0") -> bytes:
    return p.HANDSHAKE.pack(client_id, ack, 0, 0, 0, client_req, topic)


def _hdr(seq: int = 0, client_id: int = CID, num_msg: int = 1, total: int = 128) -> bytes:
    return p.encode_batch_header(p.BatchHeader(seq, client_id, num_msg, total))


def _bad_framing() -> bytes:
    payload = bytearray(p.encode_messages([b"x" * 100, b"y" * 100], CID, 0))
    struct.pack_into("<I", payload, 0, 5000)  # first message claims 5000 bytes
    return _hs() + _hdr(0, CID, 2, len(payload)) + bytes(payload)


CASES: dict[str, tuple[bytes, str]] = {
    "random_bytes": (os.urandom(4096), "handshake."),
    "unknown_client_req": (_hs(client_req=7), "handshake.unknown_client_req"),
    "topic_without_nul": (_hs(topic=b"x" * 32), "handshake.topic_not_nul_terminated"),
    "topic_not_printable": (_hs(topic=b"a\x07b\0"), "handshake.topic_not_printable"),
    "total_size_zero": (_hs() + _hdr(total=0), "batch.total_size_zero"),
    "total_size_above_limit": (_hs() + _hdr(total=1 << 30), "batch.total_size_too_large"),
    "num_msg_above_limit": (_hs() + _hdr(num_msg=10_001, total=10_001 * 64),
                            "batch.num_msg_too_large"),
    "client_id_mismatch": (_hs() + _hdr(client_id=CID + 1), "batch.client_id_mismatch"),
    "broken_message_framing": (_bad_framing(), "payload.bad_message_framing"),
}


def _honest(b: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}
    spec = loadgen.LoadSpec(host=b.host, port=b.port, connections=4, batch_bytes=2 << 20,
                            message_size=1024, total_bytes=160 << 20, rate_bytes_s=16 << 20)
    t = threading.Thread(target=lambda: out.update(loadgen.run(spec, timeout_s=120)))
    t.start()
    return t, out


def _rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/statm") as f:
            total += int(f.read().split()[1]) * 4096
    return total


def _stats(b: Any) -> dict[str, Any]:
    return client.request(b.ready["control"], "stats")  # type: ignore[no-any-return]


def _check_honest(b: Any, t: threading.Thread, out: dict[str, Any]) -> None:
    t.join(150)
    assert not out["errors"], out["errors"]
    assert out["acked_messages"] == out["messages"]
    report = verify_segment(b.segment, out["publishers"], GEOM)
    assert report.ok, report.problems


@pytest.mark.parametrize("backend", BACKENDS)  # a contract: the same under every backend
@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_connection_is_closed_alone(tmp_path: Any, broker: BrokerFactory,
                                            case: str) -> None:
    cfg = tmp_path / "b.toml"
    cfg.write_text("[limits]\nvalidate_payload = true\n[metrics]\ninterval_s = 0.2\n")
    b = broker("--config", str(cfg), blog="512MiB")
    t, out = _honest(b)
    wait_for(lambda: _stats(b)["total"]["batches"] > 4, 30, "honest traffic")
    data, reason = CASES[case]
    bad = socket.create_connection((b.host, b.port), timeout=10)
    with bad:
        bad.sendall(data)
        text = closing_reason(bad)
    assert text.startswith(reason), text
    _check_honest(b, t, out)
    wait_for(lambda: sum(v for k, v in _stats(b)["total"]["rejected"].items()
                         if k.startswith(reason)) == 1, 10, "the per-reason counter")


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncated_handshake(broker: BrokerFactory) -> None:
    b = broker(blog="512MiB")
    t, out = _honest(b)
    s = socket.create_connection((b.host, b.port), timeout=10)
    s.sendall(_hs()[:30])
    time.sleep(0.2)
    s.close()
    _check_honest(b, t, out)
    wait_for(lambda: _stats(b)["total"]["rejected"].get("peer.closed_mid_handshake") == 1, 10,
             "the per-reason counter")


@pytest.mark.parametrize("backend", BACKENDS)
def test_peer_reset_mid_payload(broker: BrokerFactory) -> None:
    b = broker(blog="512MiB")
    t, out = _honest(b)
    s = socket.create_connection((b.host, b.port), timeout=10)
    full = raw_batch(CID, 0, [b"z" * 50_000] * 10)
    s.sendall(_hs() + full[: len(full) // 2])
    time.sleep(0.2)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()  # RST, not FIN
    _check_honest(b, t, out)
    wait_for(lambda: _stats(b)["total"]["disconnects_mid_batch"] == 1
             and _stats(b)["total"]["rejected"].get("peer.closed_mid_batch") == 1, 10,
             "the counters")
    from shardbroker import SegmentReader

    with SegmentReader(b.segment) as r:
        assert not [x for x in r.batches() if x.client_id == CID]


# under io_uring: 500 header RECVs in flight with an SQ ring of 256
@pytest.mark.parametrize("backend", BACKENDS)
def test_500_idle_connections_and_memory_stays_bounded(broker: BrokerFactory) -> None:
    b = broker(blog="512MiB")
    pids = b.receiver_pids() + [b.pid]
    rss0 = _rss(pids)
    idle = []
    try:
        for i in range(500):
            s = socket.create_connection((b.host, b.port), timeout=10)
            if i % 2:
                s.sendall(_hs(client_id=10_000 + i))  # half of them get as far as a handshake
            idle.append(s)
        wait_for(lambda: _stats(b)["total"]["connections_open"] >= 500, 30, "500 connections")
        t, out = _honest(b)
        _check_honest(b, t, out)
        growth = _rss(pids) - rss0
        assert growth < 64 << 20, f"broker RSS grew by {growth >> 20} MiB"
    finally:
        for s in idle:
            s.close()
