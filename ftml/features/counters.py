"""Monotonic counters: which metrics are counters (:func:`counters_from_counts`, from counts
that add up over groups of entities) and their per-second rates, as Prometheus' rate()."""

from __future__ import annotations

import numpy as np


def counter_counts(values: np.ndarray, segments: np.ndarray, block_rows: int = 1 << 20
                   ) -> dict[str, np.ndarray]:
    """Per metric, what the counter rule (:func:`counters_from_counts`) needs of some rows:
    steps with a finite change, rises, falls, and the lowest value (NaN: none). Counts of
    separate groups of entities add up (Dask training sums them over the fleet)."""
    n, m = values.shape
    same = segments[1:] == segments[:-1]
    finite, rises, falls = (np.zeros(m, dtype=np.int64) for _ in range(3))
    for a in range(0, max(n - 1, 0), block_rows):  # all metrics at once, in blocks of rows
        b = min(n - 1, a + block_rows)
        d = np.diff(values[a:b + 1], axis=0)
        ok = np.isfinite(d) & same[a:b, None]
        finite += ok.sum(axis=0)
        rises += (ok & (d > 0)).sum(axis=0)
        falls += (ok & (d < 0)).sum(axis=0)
    low = np.fmin.reduce(values, axis=0) if n else np.full(m, np.nan)  # nanmin, no warning
    return {"n": finite, "rises": rises, "falls": falls, "min": low}


def counters_from_counts(counts: list[dict[str, np.ndarray]], metrics: list[str]) -> list[str]:
    """Metrics that behave like monotonic counters (cumulative bytes, packets) over all the
    given :func:`counter_counts`: they rise in most steps, fall only at rare resets (at most
    1 %) and are never negative, seen over at least 10 steps."""
    n = sum(c["n"] for c in counts)
    rises = sum(c["rises"] for c in counts)
    falls = sum(c["falls"] for c in counts)
    low = np.fmin.reduce(np.array([c["min"] for c in counts]), axis=0)
    out = []
    for j, name in enumerate(metrics):
        if n[j] < 10 or low[j] < 0:
            continue
        # A name ending in ``_total`` (the Prometheus convention for counters, kept by
        # ``ftml record`` and the ``local`` source) only needs to never be negative and to fall
        # only at rare resets: an idle disk's or an error counter rises in few steps, yet its
        # rate is what matters.
        named = name.endswith("_total")
        if (named or rises[j] / n[j] >= 0.5) and falls[j] / n[j] <= 0.01:
            out.append(name)
    return out


def detect_counters(values: np.ndarray, segments: np.ndarray, metrics: list[str],
                    block_rows: int = 1 << 20) -> list[str]:
    """Metrics of these rows that behave like monotonic counters (see
    :func:`counters_from_counts`)."""
    return counters_from_counts([counter_counts(values, segments, block_rows)], metrics)


def counters_to_rates(values: np.ndarray, segments: np.ndarray, columns: list[int],
                      step_seconds: float) -> np.ndarray:
    """Counter columns -> per-second rates, as Prometheus' rate() does: a fall is a reset, and
    the increase after it is the new value. The first row of each segment has no rate."""
    if not columns:
        return values
    return _counters_to_rates_in_place(values.copy(), segments, columns, step_seconds)


def _counters_to_rates_in_place(values: np.ndarray, segments: np.ndarray, columns: list[int],
                                step_seconds: float) -> np.ndarray:
    """:func:`counters_to_rates` on an array the caller owns (no copy of all of it)."""
    if not columns:
        return values
    first = np.r_[True, segments[1:] != segments[:-1]]
    for j in columns:
        col = values[:, j]
        d = np.r_[np.nan, np.diff(col)]
        d = np.where(d < 0, col, d)
        d[first] = np.nan
        values[:, j] = d / step_seconds
    return values
