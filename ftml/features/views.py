"""What the forest sees of a window: the chosen stats per metric and the largest deviations
across metrics, on a signed log scale (:func:`detector_view`)."""

from __future__ import annotations

import numpy as np

from ftml.features.statistics import STATS, stat_columns, window_stats


def detector_view(X: np.ndarray, n_metrics: int, stats: list[str] | tuple[str, ...],
                  all_stats: tuple[str, ...] = STATS) -> np.ndarray:
    """What the forest sees: the chosen stats per metric plus, across metrics, the largest and
    second-largest deviation, all on a signed log scale.

    Why: an isolation tree splits on a feature picked at random, so a fault that moves two of
    thirteen metrics is isolated only by trees that happen to pick them. The cross-metric
    deviations let every tree see any metric's fault, and the log scale stops heavy-tailed
    metrics (latency, error rates) from taking every split.
    """
    return stats_view(X[:, stat_columns(stats, n_metrics, all_stats)], n_metrics)


def stats_view(S: np.ndarray, n_metrics: int) -> np.ndarray:
    """:func:`detector_view` of the chosen stats alone: ``S`` holds them stat-major, as
    ``window_stats(z, end, window, stats)`` returns them."""
    m = n_metrics
    n, k = len(S), S.shape[1] // max(m, 1)
    view = np.empty((n, S.shape[1] + 2))
    np.abs(S, out=view[:, :-2])
    dev = view[:, :-2].reshape(n, k, m).max(axis=1)
    if m > 1:
        dev = np.negative(dev, out=dev)
        top2 = np.partition(dev, 1, axis=1)[:, :2]
        np.negative(top2, out=view[:, -2:])
    else:
        view[:, -2] = view[:, -1] = dev[:, 0]
    # sign(v) * log1p(|v|), in place (|v| of the chosen stats is already there); copysign
    # gives the same numbers in one pass (only a zero may keep its sign: -0.0 == 0.0).
    np.log1p(view, out=view)
    np.copysign(view[:, :-2], S, out=view[:, :-2])
    return view


_ORDER_STATS = {"min", "max", "median", "last"}


def window_view(z: np.ndarray, end: np.ndarray, window: int,
                stats: list[str] | tuple[str, ...]) -> np.ndarray:
    """``stats_view(window_stats(z, end, window, stats), n_metrics)``, the same bits.

    When every stat is an order statistic (min, max, last, the median of an odd window), the
    signed log is taken of each row once, before the windows: a monotone function of the
    k-th smallest value is the k-th smallest of its values, so the windows then pick the same
    numbers. That is one log per row and metric instead of one per window and stat."""
    m = z.shape[1]
    order_only = set(stats) <= _ORDER_STATS and ("median" not in stats or window % 2 == 1)
    if not order_only or len(end) == 0:
        return stats_view(window_stats(z, end, window, stats), m)
    # Only the rows the windows cover (not, say, a chunk's rows carried for history), in runs.
    w, n = int(window), len(z)
    end = np.asarray(end, dtype=np.int64)
    edge = np.bincount(end - (w - 1), minlength=n + 1) - np.bincount(end + 1, minlength=n + 1)
    covered = np.r_[False, np.cumsum(edge[:n]) > 0, False]
    bounds = np.flatnonzero(covered[1:] != covered[:-1]).reshape(-1, 2)
    if int((bounds[:, 1] - bounds[:, 0]).sum()) > len(stats) * len(end):
        return stats_view(window_stats(z, end, window, stats), m)  # fewer logs per window
    y = np.empty_like(z)
    for a, b in bounds:
        np.abs(z[a:b], out=y[a:b])
        np.log1p(y[a:b], out=y[a:b])
        np.copysign(y[a:b], z[a:b], out=y[a:b])
    S = window_stats(y, end, window, stats)  # the signed logs of the stats
    n, k = len(S), len(stats)
    view = np.empty((n, k * m + 2))
    view[:, :-2] = S
    dev = np.abs(S[:, :m])  # log1p of each metric's largest |stat|
    for i in range(1, k):  # stat by stat: a max over the middle axis is many times slower
        np.maximum(dev, np.abs(S[:, i * m:(i + 1) * m]), out=dev)
    if m > 1:
        dev = np.negative(dev, out=dev)
        np.negative(np.partition(dev, 1, axis=1)[:, :2], out=view[:, -2:])
    else:
        view[:, -2] = view[:, -1] = dev[:, 0]
    return view
