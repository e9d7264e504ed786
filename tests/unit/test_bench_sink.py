"""The sink (the senders' ceiling): its stream counter, fed any split of a publish stream, and
its read-and-ack loop over a socketpair. Plus where it runs and how the report labels it."""

from __future__ import annotations

import random
import socket
import struct
import threading

import pytest

from shardbroker.bench import report
from shardbroker.bench.contenders import by_name
from shardbroker.bench.contenders.sink import SinkConn, drain
from shardbroker.bench.document import build_document
from shardbroker.bench.result import RunResult
from shardbroker.bench.runner import ContenderOutcome, ScenarioOutcome
from shardbroker.bench.scenarios import FULL, QUICK, SENDER_CEILING, plan_cpus
from shardbroker.bench.schema import validate
from shardbroker.bench.wire import AckStream, StreamCounter
from shardbroker.wire.protocol import (
    BATCH_HEADER_SIZE,
    BatchHeader,
    Handshake,
    encode_batch_header,
    encode_handshake,
)

# (num_msg, total_size): sizes around the header size and a zero-length payload, so every
# kind of cut (inside the handshake, a header, a payload, right on a boundary) happens.
BATCHES = [(4, 4096), (1, 0), (3, 127), (2, 128), (5, 129), (64, 65536), (7, 1), (9, 4096)]


def stream(batches: list[tuple[int, int]] = BATCHES) -> tuple[bytes, list[tuple[int, int]]]:
    """A publish stream and, per batch, (offset just past its last byte, messages so far).
    Payloads are copies of a header with a huge total_size: a counter that looked inside a
    payload instead of skipping it by length would go wrong at once."""
    decoy = encode_batch_header(BatchHeader(0, 7, 999, 1 << 40))
    out = bytearray(encode_handshake(Handshake(7, 1, 0, "bench")))
    ends, messages = [], 0
    for seq, (num_msg, size) in enumerate(batches):
        out += encode_batch_header(BatchHeader(seq, 7, num_msg, size))
        out += (decoy * (size // len(decoy) + 1))[:size]
        messages += num_msg
        ends.append((len(out), messages))
    return bytes(out), ends


def expected_at(ends: list[tuple[int, int]], offset: int) -> int:
    """Messages of the batches wholly within the first ``offset`` bytes."""
    return max([m for end, m in ends if end <= offset], default=0)


def test_whole_stream_in_one_feed() -> None:
    data, ends = stream()
    c = StreamCounter()
    assert c.feed(data) == sum(n for n, _ in BATCHES) == ends[-1][1]
    assert c.batches == len(BATCHES)
    assert c.payload_bytes == sum(s for _, s in BATCHES)
    assert c.at_boundary and not c.head


def test_byte_by_byte_counts_each_batch_when_its_last_byte_arrives() -> None:
    data, ends = stream()
    c = StreamCounter()
    for i in range(len(data)):
        got = c.feed(memoryview(data)[i:i + 1])
        assert got == expected_at(ends, i + 1), f"after byte {i}"
    assert c.batches == len(BATCHES) and c.at_boundary


@pytest.mark.parametrize("seed", range(20))
def test_random_splits(seed: int) -> None:
    rnd = random.Random(seed)
    batches = [(rnd.randint(1, 50), rnd.choice([0, 1, 64, 127, 128, 129, 4096, 70_000]))
               for _ in range(rnd.randint(1, 40))]
    data, ends = stream(batches)
    cuts = sorted(rnd.sample(range(1, len(data)), min(len(data) - 1, rnd.randint(1, 60))))
    c = StreamCounter()
    for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True):
        assert c.feed(bytearray(data[a:b])) == expected_at(ends, b)
    assert (c.messages, c.batches) == (ends[-1][1], len(batches))
    assert c.payload_bytes == sum(s for _, s in batches) and c.at_boundary


def test_not_at_boundary_inside_handshake_header_or_payload() -> None:
    data, ends = stream()
    first_end = ends[0][0]
    for cut in (10, 64 + 5, 64 + BATCH_HEADER_SIZE + 1, first_end - 1):
        c = StreamCounter()
        c.feed(data[:cut])
        assert not c.at_boundary, cut
        assert c.messages == 0
    c = StreamCounter()
    c.feed(data[:first_end])
    assert c.at_boundary and c.messages == BATCHES[0][0]


def test_counts_come_from_offsets_20_and_64() -> None:
    hdr = bytearray(BATCH_HEADER_SIZE)
    struct.pack_into("<I", hdr, 20, 11)
    struct.pack_into("<Q", hdr, 64, 3)
    c = StreamCounter()
    assert c.feed(bytes(64) + hdr + b"abc") == 11
    assert c.payload_bytes == 3


def _drain_in_thread(payload: bytes) -> tuple[SinkConn, bytes]:
    a, b = socket.socketpair()
    st = SinkConn()
    t = threading.Thread(target=drain, args=(b, memoryview(bytearray(1000)), st))
    t.start()
    a.sendall(payload)
    a.shutdown(socket.SHUT_WR)
    acks = bytearray()
    while chunk := a.recv(4096):
        acks += chunk
    t.join(10)
    a.close()
    return st, bytes(acks)


def test_drain_acks_cumulative_counts_the_senders_understand() -> None:
    data, ends = stream()
    st, raw = _drain_in_thread(data)
    assert st.error is None and st.recv_calls >= len(data) // 1000
    acks = AckStream()
    assert acks.feed(raw) == ends[-1][1]
    assert acks.broker_id == 0
    counts = struct.unpack(f"<{(len(raw) - 4) // 8}Q", raw[4:])
    assert list(counts) == sorted(set(counts))  # one ack per read that completed a batch


def test_drain_reports_a_stream_cut_mid_batch() -> None:
    data, ends = stream()
    st, _ = _drain_in_thread(data[:ends[2][0] + 5])
    assert st.error is not None and "mid-batch" in st.error
    assert st.counter.messages == ends[2][1]


def test_sink_runs_in_s1_s3_s4_only_and_not_in_s5() -> None:
    in_sc = {s.id for s in FULL if SENDER_CEILING in s.contenders}
    assert in_sc == {"S1", "S3", "S4"}
    assert {s.id for s in QUICK if SENDER_CEILING in s.contenders} == {"S1", "S4"}
    sink = by_name()[SENDER_CEILING]
    assert sink.supports(FULL[4]) is not None and sink.supports(FULL[3]) is None
    assert "not a contender" in sink.description


def _run(name: str, gbps: float) -> RunResult:
    return RunResult(name, "S3", 0, bytes=int(gbps * 1e9), batches=1000, seconds=1.0,
                     data_check={"ok": True, "problems": []})


def _doc(sink_gbps: float) -> dict[str, object]:
    s3 = FULL[2]
    out = ScenarioOutcome(s3, plan_cpus([0, 1], 1, 1), [
        ContenderOutcome("shardbroker-epoll", "broker", None, [_run("shardbroker-epoll", 2.0)]),
        ContenderOutcome("staging", "staging", None, [_run("staging", 1.0)]),
        ContenderOutcome(SENDER_CEILING, "ceiling", None, [_run(SENDER_CEILING, sink_gbps)]),
    ])
    return build_document([out], options={"repeat": 1, "quick": False, "scenarios": ["S3"]},
                          machine={"cpu_model": "x", "cpus_online": 2, "kernel": "6",
                                   "python": "3.11"}, environment={}, started="2025-01-02T00",
                          finished="2025-01-02T01")


def test_report_marks_the_sink_as_the_sender_ceiling() -> None:
    d = _doc(sink_gbps=4.0)
    assert validate(d) == []
    s = d["scenarios"][0]  # type: ignore[index]
    epoll = next(e for e in s["contenders"] if e["name"] == "shardbroker-epoll")
    assert epoll["ratios"]["vs_sink"] == 0.5
    text = report.render_text(d)
    assert "sink (sender ceiling)" in text and "x sink" in text
    assert "none was limited by the load generator" in text
    md = report.render_markdown(d)
    assert "| sink (sender ceiling) |" in md


def test_report_flags_contenders_near_the_ceiling() -> None:
    text = report.render_text(_doc(sink_gbps=2.2))
    assert "may be limited by the load generator: shardbroker-epoll (0.91)" in text
    assert "staging (" not in text.split("load generator:")[1]


def test_no_sink_column_where_the_scenario_has_no_sink() -> None:
    d = _doc(4.0)
    s = d["scenarios"][0]  # type: ignore[index]
    s["contenders"] = [e for e in s["contenders"] if e["name"] != SENDER_CEILING]
    for e in s["contenders"]:
        e["ratios"].pop("vs_sink")
    assert validate(d) == []
    text = report.render_text(d)
    assert "x sink" not in text and "sender ceiling" not in text
