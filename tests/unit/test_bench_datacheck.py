"""The checks that keep broken runs out of the bench figures (pure parts)."""

from __future__ import annotations

from shardbroker.bench.datacheck import count_problems, counts_check, tail_problem


def test_tail_contiguous_to_last_sent() -> None:
    assert tail_problem(1, range(90, 100), 100) is None
    assert tail_problem(1, [0, 1, 2], 3) is None
    assert tail_problem(1, [], 0) is None


def test_tail_problems() -> None:
    assert "none of its 5" in (tail_problem(1, [], 5) or "")
    assert "newest batch in the segment is 8" in (tail_problem(1, range(5, 9), 10) or "")
    assert "2 batches missing" in (tail_problem(1, [5, 6, 9], 10) or "")
    assert "none sent" in (tail_problem(1, [0], 0) or "")


def test_tail_empty_is_fine_once_the_ring_lapped() -> None:
    # another publisher on the same shard overwrote every batch of this one
    assert tail_problem(1, [], 512, ring_lapped=True) is None
    assert "2 batches missing" in (tail_problem(1, [5, 6, 9], 10, ring_lapped=True) or "")


def _sender(cid: int, batches: int, acked: int | None = None) -> dict[str, int]:
    msgs = batches * 2
    return {"client_id": cid, "batches": batches, "messages": msgs, "bytes": batches * 100,
            "acked_messages": msgs if acked is None else acked}


def test_count_problems() -> None:
    senders = [_sender(1, 10), _sender(2, 5)]
    assert count_problems({"batches": 15, "messages": 30, "bytes": 1500}, senders) == []
    probs = count_problems({"batches": 14, "messages": 28, "bytes": 1400}, senders)
    assert len(probs) == 3 and "committed 14 batches" in probs[0]
    probs = count_problems({"batches": 10, "messages": 20, "bytes": 1000},
                           [_sender(1, 10, acked=18)])
    assert probs == ["client 1: 18 of 20 messages acked"]


def test_counts_check() -> None:
    assert counts_check(10, 10, 1000, 1000)["ok"]
    c = counts_check(10, 9, 1000, 900, sample_checked=4, sample_bad=1)
    assert not c["ok"] and len(c["problems"]) == 3
    assert c["kind"] == "counts + sampled payloads"
