"""Pure aggregation: medians with min–max over repeated runs, percentiles, and ratios.

No clock, no I/O: lists of numbers in, small records out.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Spread:
    """Median and range of one figure over the clean runs that produced it."""

    median: float
    min: float
    max: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {"median": self.median, "min": self.min, "max": self.max, "n": self.n}


def spread(values: Iterable[float | None]) -> Spread | None:
    """Median/min/max of the values that are numbers; None when there are none."""
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not xs:
        return None
    return Spread(statistics.median(xs), min(xs), max(xs), len(xs))


def aggregate(runs: Sequence[dict[str, Any]], metrics: Sequence[str]) -> dict[str, Spread]:
    """One Spread per metric present in at least one run (each run is a flat dict)."""
    out: dict[str, Spread] = {}
    for m in metrics:
        s = spread(r.get(m) for r in runs)
        if s is not None:
            out[m] = s
    return out


def ratio(numerator: Spread | None, denominator: Spread | None) -> float | None:
    """Ratio of medians; None when either side is missing or the denominator is zero."""
    if numerator is None or denominator is None or denominator.median == 0:
        return None
    return numerator.median / denominator.median


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an already sorted, non-empty sequence."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError("q must be within 0..100")
    rank = max(1, math.ceil(round(q * len(sorted_values) / 100, 9)))  # 99.9 % of 1000: 999
    return float(sorted_values[rank - 1])


def latency_summary(samples_ns: Sequence[int]) -> dict[str, float]:
    """p50/p99/p99.9/max in microseconds from unsorted nanosecond samples."""
    xs = sorted(samples_ns)
    if not xs:
        return {}
    return {
        "p50_us": percentile(xs, 50) / 1e3,
        "p99_us": percentile(xs, 99) / 1e3,
        "p999_us": percentile(xs, 99.9) / 1e3,
        "max_us": xs[-1] / 1e3,
        "samples": float(len(xs)),
    }


def per(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, None when either is unknown or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator
