"""The merge of several segments: each (client_id, batch_seq) once (pure core)."""

from __future__ import annotations

import pytest

from shardbroker.segment.merge import first_per_key


def test_first_segment_wins_and_repeats_are_counted() -> None:
    entries = [((1, 0), (0, 0, 0)), ((1, 2), (0, 0, 1)), ((2, 0), (0, 1, 0)),
               ((1, 1), (1, 0, 0)), ((1, 2), (1, 0, 1)),  # (1, 2) again: lost ack, resent
               ((1, 2), (2, 0, 5))]
    kept, repeats = first_per_key(entries, order="key")
    assert [k for k, _ in kept] == [(1, 0), (1, 1), (1, 2), (2, 0)]
    assert dict(kept)[(1, 2)] == (0, 0, 1)  # the earliest segment given
    assert repeats == 2
    kept, _ = first_per_key(entries, order="segment")
    assert [k for k, _ in kept] == [(1, 0), (1, 2), (2, 0), (1, 1)]


def test_nothing_in_nothing_out_and_unknown_order() -> None:
    assert first_per_key([], "key") == ([], 0)
    with pytest.raises(ValueError, match="order"):
        first_per_key([], "time")
