"""The verifier that integration tests and the demo rely on must itself catch bad logs."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from shardbroker import SegmentReader
from shardbroker.publisher.batches import BatchGeometry, BatchTemplate
from shardbroker.segment import layout, shm
from shardbroker.segment.writer import ShardWriter
from shardbroker.verify import ClientExpectation, Verifier


@pytest.fixture
def seg() -> Iterator[tuple[str, ShardWriter]]:
    name = f"shardbroker-test-{os.getpid()}-{os.urandom(3).hex()}"
    m = shm.create(name, layout.Geometry(1, 64, 4 << 20))
    try:
        yield name, ShardWriter(m, 0, 0)
    finally:
        m.close()
        shm.unlink(name)


GEOM = BatchGeometry(100, 20)


def _commit(w: ShardWriter, client: int, seq: int, corrupt: bool = False) -> None:
    data = bytearray(BatchTemplate(client, GEOM).for_seq(seq))
    if corrupt:
        data[-1] ^= 0xFF
    r = w.reserve(len(data))
    w.buf[r.log_idx: r.log_idx + len(data)] = data
    w.commit(r, seq, 0, client, GEOM.messages, 0, 0)


def _verify(name: str, acked: int, sent: int | None) -> dict[str, object]:
    with SegmentReader(name) as r:
        v = Verifier([ClientExpectation(9, 100, 20, acked, sent)])
        for b in r.batches():
            v.feed(b)
        return v.finish(r.lapped).to_dict()


def test_template_round_trip() -> None:
    t = BatchTemplate(9, GEOM)
    view = t.for_seq(5)
    assert t.matches(view, 5)
    assert not t.matches(view, 6)
    assert GEOM.payload_bytes == 20 * 192


def test_clean_log_passes(seg: tuple[str, ShardWriter]) -> None:
    name, w = seg
    for s in range(3):
        _commit(w, 9, s)
    rep = _verify(name, acked=60, sent=3)
    assert rep["ok"] and rep["batches_checked"] == 3


@pytest.mark.parametrize("problem, field", [
    ("duplicate", "duplicates"), ("missing", "missing_acked_batches"),
    ("corrupt", "corrupt"), ("unsent", "unexpected_batches"),
])
def test_problems_are_caught(seg: tuple[str, ShardWriter], problem: str, field: str) -> None:
    name, w = seg
    seqs = {"duplicate": [0, 1, 1], "missing": [0, 2], "corrupt": [0, 1], "unsent": [0, 1, 2]}
    for i, s in enumerate(seqs[problem]):
        _commit(w, 9, s, corrupt=(problem == "corrupt" and i == 1))
    rep = _verify(name, acked=40 if problem != "missing" else 60, sent=2 if problem == "unsent"
                  else 3)
    assert not rep["ok"]
    assert rep[field]
