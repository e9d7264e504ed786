"""`shardbroker demo` on a real broker: a checker too slow to keep up with the publishers still
says OK (retention `block` holds them back instead of lapping it), and a batch erased or
corrupted in the segment before the checker reads it still says FAILED."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shardbroker.demo import run_demo
from shardbroker.segment import shm
from shardbroker.segment.layout import SLOT_PUBLISH_COMMIT, U64, read_shard_state, slot_offset
from shardbroker.segment.reader import Batch
from shardbroker.wire.protocol import UINT64_MAX

pytestmark = pytest.mark.integration

BLOG = 32 << 20  # small rings: a short run wraps them many times
SHORT: dict[str, Any] = {"duration_s": 1.0, "connections": 2, "threads": 1}
BROKER_ARGS = ("--blog-size", str(BLOG), "--pbr-slots", "256")


def _demo(capsys: pytest.CaptureFixture[str], tmp_path: Path,
          before_check: Callable[[Batch], None], *broker_args: str) -> dict[str, Any]:
    t0 = time.monotonic()
    code = run_demo(**SHORT, broker_args=(*BROKER_ARGS, *broker_args), as_json=True,
                    log_path=str(tmp_path / "broker.log"), before_check=before_check,
                    progress=False)
    assert time.monotonic() - t0 < 60
    summary: dict[str, Any] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == (0 if summary["ok"] else 1)
    return summary


def _slow(_b: Batch) -> None:
    time.sleep(0.003)  # ~600 MB/s of 2 MiB batches: slower than the publishers here


def test_a_checker_slower_than_the_publishers_still_says_ok(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    s = _demo(capsys, tmp_path, _slow)
    assert s["verdict"].startswith("OK: every acked message"), s["verdict"]
    v = s["verify"]
    assert v["missing_acked_batches"] == v["lapped"] == v["corrupt"] == 0
    assert v["batches_checked"] == s["batches"] > 0
    assert s["bytes"] > 4 * BLOG  # the rings wrapped several times while it checked
    assert s["parks"] > 0  # and the broker held publishers back for it instead of lapping it
    assert s["checker"]["expired"] == 0
    log = (tmp_path / "broker.log").read_text()
    assert "supervisor.segment.created" in log  # the broker logged to the file


def test_the_same_slow_checker_is_lapped_under_overwrite(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The control for the test above: without `block` this checker does fall behind (the
    old demo's false "acked batches missing")."""
    s = _demo(capsys, tmp_path, _slow, "--retention", "overwrite")
    assert not s["ok"] and s["verify"]["lapped"] > 0, s["verdict"]


class _Eraser:
    """Once, erase the next committed batch of a shard (its publish_commit, as an overwrite
    would) before the checker reaches it."""

    def __init__(self) -> None:
        self.erased: tuple[int, int] | None = None

    def __call__(self, b: Batch) -> None:
        if self.erased is not None:
            return
        m = shm.attach(b.segment, writable=True)
        try:
            nxt = b.index + 1
            if read_shard_state(m.buf, m.geometry, b.shard).pbr_committed > nxt:
                off = slot_offset(m.geometry, b.shard, nxt) + SLOT_PUBLISH_COMMIT
                U64.pack_into(m.buf, off, UINT64_MAX)
                self.erased = (b.shard, nxt)
        finally:
            m.close()


def _corrupt_first(b: Batch) -> None:
    """Flip a byte of the first batch's first message header before it is checked."""
    if b.index != 0 or b.shard != 0:
        return
    m = shm.attach(b.segment, writable=True)
    try:
        m.buf[b.slot.log_idx] ^= 0xFF
    finally:
        m.close()


@pytest.fixture(params=["erased", "corrupted"])
def damage(request: pytest.FixtureRequest) -> Iterator[tuple[str, Callable[[Batch], None]]]:
    yield request.param, (_Eraser() if request.param == "erased" else _corrupt_first)


def test_a_damaged_batch_says_failed(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                     damage: tuple[str, Callable[[Batch], None]]) -> None:
    kind, hook = damage

    def slow_and_damaging(b: Batch) -> None:
        hook(b)
        time.sleep(0.001)  # committed batches pile up ahead of the checker: one to erase

    s = _demo(capsys, tmp_path, slow_and_damaging)
    v = s["verify"]
    assert not s["ok"] and s["verdict"].startswith("FAILED: "), s["verdict"]
    if kind == "erased":
        assert isinstance(hook, _Eraser) and hook.erased is not None
        assert v["missing_acked_batches"] == 1 and v["corrupt"] == 0
        assert "1 acked batches missing" in s["verdict"]
    else:
        assert v["corrupt"] == 1 and v["missing_acked_batches"] == 0
        assert "1 batches with wrong bytes" in s["verdict"]
