"""Pure aggregation of the bench: medians, ranges, percentiles, ratios."""

from __future__ import annotations

import math

import pytest

from shardbroker.bench.stats import (
    Spread,
    aggregate,
    latency_summary,
    per,
    percentile,
    ratio,
    spread,
)


def test_spread_median_min_max_ignores_missing() -> None:
    assert spread([3.0, None, 1.0, 2.0, math.nan]) == Spread(2.0, 1.0, 3.0, 3)
    assert spread([4.0, 1.0]) == Spread(2.5, 1.0, 4.0, 2)
    assert spread([None, None]) is None
    assert spread([]) is None


def test_aggregate_per_metric_skips_unmeasured() -> None:
    runs = [{"gbps": 4.0, "wakeups_per_batch": None}, {"gbps": 6.0, "wakeups_per_batch": None},
            {"gbps": 5.0}]
    out = aggregate(runs, ["gbps", "wakeups_per_batch", "absent"])
    assert out == {"gbps": Spread(5.0, 4.0, 6.0, 3)}
    assert out["gbps"].to_dict() == {"median": 5.0, "min": 4.0, "max": 6.0, "n": 3}


def test_ratio_of_medians() -> None:
    assert ratio(Spread(6.0, 5, 7, 3), Spread(4.0, 3, 5, 3)) == 1.5
    assert ratio(None, Spread(4.0, 3, 5, 3)) is None
    assert ratio(Spread(6.0, 5, 7, 3), None) is None
    assert ratio(Spread(6.0, 5, 7, 3), Spread(0.0, 0, 0, 1)) is None


def test_percentile_nearest_rank() -> None:
    xs = list(range(1, 101))
    assert percentile(xs, 50) == 50
    assert percentile(xs, 99) == 99
    assert percentile(xs, 99.9) == 100
    assert percentile(xs, 0) == 1
    assert percentile([7], 99.9) == 7
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile(xs, 101)


def test_latency_summary_in_microseconds() -> None:
    samples = [1000 * i for i in range(1000, 0, -1)]  # 1..1000 us, unsorted
    s = latency_summary(samples)
    assert s["p50_us"] == 500
    assert s["p99_us"] == 990
    assert s["p999_us"] == 999
    assert s["max_us"] == 1000
    assert s["samples"] == 1000
    assert latency_summary([]) == {}


def test_per() -> None:
    assert per(3.0, 2.0) == 1.5
    assert per(None, 2.0) is None
    assert per(1.0, 0.0) is None
