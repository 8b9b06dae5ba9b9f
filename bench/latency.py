"""Latency summaries: percentiles by linear interpolation, in milliseconds."""

from __future__ import annotations

import math
from collections.abc import Iterable

PERCENTILES = (50, 95, 99)


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, linearly interpolated."""
    if not sorted_values:
        return math.nan
    position = (len(sorted_values) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def summary(seconds: Iterable[float]) -> dict[str, float]:
    """``{"n", "mean", "p50", "p95", "p99", "max"}``; times in milliseconds."""
    values = sorted(seconds)
    if not values:
        return {"n": 0}
    result = {"n": len(values), "mean": round(1000 * sum(values) / len(values), 1)}
    for q in PERCENTILES:
        result[f"p{q}"] = round(1000 * percentile(values, q), 1)
    result["max"] = round(1000 * values[-1], 1)
    return result
