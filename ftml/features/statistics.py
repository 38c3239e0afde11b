"""The window statistics: one table (:data:`STAT_TABLE`, a row per statistic) and the one
function that computes them, :func:`window_stats`, in the C kernel ``ftml._window_kernel`` or
its numpy twin (the same bits)."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

try:
    from ftml import _window_kernel
except ImportError:  # not built (a source tree never pip-installed): numpy does the same sums
    _window_kernel = None

KERNEL_AVAILABLE = _window_kernel is not None
# Below this many windows per thread, starting a thread costs more than it saves.
_MIN_WINDOWS_PER_THREAD = 20_000
try:
    _CPUS = len(os.sched_getaffinity(0))
except AttributeError:  # not on Linux
    _CPUS = os.cpu_count() or 1


def _slope(g: np.ndarray) -> np.ndarray:
    w = g.shape[1]
    r = np.arange(w) - (w - 1) / 2.0
    return np.tensordot(r, g, axes=(0, 1)) / (w * (w * w - 1) / 12.0) if w > 1 else \
        np.zeros((g.shape[0], g.shape[2]))


@dataclass(frozen=True)
class Stat:
    """One window statistic: one row of :data:`STAT_TABLE`.

    Adding a statistic is adding a row: its name, a numpy function of a block of windows
    (``(windows, rows, metrics) -> (windows, metrics)``), and, if the compiled kernel computes
    it, its slot there (``S_*`` in ``_window_kernel.c``; the kernel's numpy twin
    :func:`_window_stats_numpy` then gives the same bits). A fitted featurizer records the
    stats it was fitted with (``stats_``), so a model trained before a stat was added keeps its
    features, and its bundle loads as it is."""

    name: str
    numpy: Callable[[np.ndarray], np.ndarray]
    kernel_slot: int | None = None
    deviation: bool = False  # counts in Featurizer.deviation ("how far from normal")


STAT_TABLE: tuple[Stat, ...] = (
    Stat("mean", lambda g: g.mean(axis=1), kernel_slot=0, deviation=True),
    Stat("std", lambda g: g.std(axis=1), kernel_slot=1),
    Stat("min", lambda g: g.min(axis=1), kernel_slot=2, deviation=True),
    Stat("max", lambda g: g.max(axis=1), kernel_slot=3, deviation=True),
    Stat("last", lambda g: g[:, -1], kernel_slot=4, deviation=True),
    Stat("slope", _slope, kernel_slot=5),
    Stat("median", lambda g: np.median(g, axis=1), kernel_slot=6),
)
STAT = {st.name: st for st in STAT_TABLE}
STATS = tuple(STAT)
# The kernel's slots (the order of its S_* enum) and the stats before the table existed:
# what a featurizer fitted then computes.
_KERNEL_SLOTS = 7
LEGACY_STATS = ("mean", "std", "min", "max", "last", "slope", "median")


def feature_names(metrics: list[str], stats: tuple[str, ...] = STATS) -> list[str]:
    return [f"{m}:{s}" for s in stats for m in metrics]


def stat_columns(stats: list[str] | tuple[str, ...], n_metrics: int,
                 all_stats: tuple[str, ...] = STATS) -> np.ndarray:
    """Column indexes of the given stats in a feature matrix of ``all_stats`` (stat-major)."""
    unknown = [s for s in stats if s not in all_stats]
    if unknown:
        raise ValueError(f"unknown stat(s) {unknown}; known: {', '.join(all_stats)}")
    all_stats = tuple(all_stats)
    return np.concatenate([np.arange(n_metrics) + all_stats.index(s) * n_metrics
                           for s in stats])


def window_stats(z: np.ndarray, end: np.ndarray, window: int,
                 stats: list[str] | tuple[str, ...] | None = None) -> np.ndarray:
    """The features of the windows ending at rows ``end`` of ``z``; each window must be complete
    (no NaN in its rows). Columns are stat-major as in :func:`window_features`; with ``stats``,
    only those stats, in that order (what :func:`detector_view` needs, without the rest).

    Every value is a function of its window's rows alone, in a fixed order of operations
    (sums from the first row to the last; order statistics are exact), so a window gets the
    same bits however the rows around it are chunked. The compiled kernel
    (``ftml._window_kernel``) and the numpy fallback do the same arithmetic.
    """
    names = STATS if stats is None else tuple(stats)
    unknown = [s for s in names if s not in STAT]
    if unknown:
        raise ValueError(f"unknown stat(s) {unknown}; known: {', '.join(STATS)}")
    z = np.ascontiguousarray(z, dtype=np.float64)
    end = np.ascontiguousarray(end, dtype=np.int64)
    m = z.shape[1]
    w = int(window)
    X = np.empty((len(end), len(names) * m))
    if len(end) == 0:
        return X
    if len(set(names)) != len(names):  # a repeated stat: compute once, copy
        Y = window_stats(z, end, w, tuple(dict.fromkeys(names)))
        first = {s: i for i, s in enumerate(dict.fromkeys(names))}
        for i, s in enumerate(names):
            X[:, i * m:(i + 1) * m] = Y[:, first[s] * m:(first[s] + 1) * m]
        return X
    col = [-1] * _KERNEL_SLOTS
    numpy_only = []
    for i, s in enumerate(names):
        if STAT[s].kernel_slot is None:
            numpy_only.append((i, STAT[s]))
        else:
            col[STAT[s].kernel_slot] = i * m
    if numpy_only:
        _numpy_stats(z, end, w, numpy_only, X)
        if all(c < 0 for c in col):
            return X
    if _window_kernel is None:
        _window_stats_numpy(z, end, w, col, X)
        return X
    n_threads = min(_CPUS, len(end) // _MIN_WINDOWS_PER_THREAD)
    if n_threads <= 1:
        _window_kernel.window_stats(z, end, X, w, tuple(col))
        return X
    # The kernel releases the GIL: threads split the windows (each part in order, so that
    # sliding windows stay sliding).
    edges = np.linspace(0, len(end), n_threads + 1).astype(np.int64)
    with ThreadPoolExecutor(max_workers=n_threads) as pool:
        jobs = [pool.submit(_window_kernel.window_stats, z, end[a:b], X[a:b], w, tuple(col))
                for a, b in zip(edges[:-1], edges[1:], strict=True)]
        for job in jobs:
            job.result()
    return X


def _numpy_stats(z: np.ndarray, end: np.ndarray, w: int, stats: list[tuple[int, Stat]],
                 X: np.ndarray) -> None:
    """The stats the kernel does not compute, by their table functions, block by block of
    windows; ``stats``: (position in X, stat)."""
    m = z.shape[1]
    block = max(1, 2**20 // max(1, w * m))
    for a in range(0, len(end), block):
        g = z[end[a:a + block, None] - (w - 1) + np.arange(w)]  # (windows, w, m)
        for i, st in stats:
            X[a:a + block, i * m:(i + 1) * m] = st.numpy(g)


def _window_stats_numpy(z: np.ndarray, end: np.ndarray, w: int, col: list[int],
                        X: np.ndarray) -> None:
    """The kernel's arithmetic in numpy, block by block of windows; ``col[i]`` is the first
    column of ``STATS[i]`` in X (-1: not wanted)."""
    m = z.shape[1]
    at = {s: (slice(col[i], col[i] + m) if col[i] >= 0 else None)
          for i, s in enumerate(LEGACY_STATS)}  # the kernel's slots, in S_* order
    half = (w - 1) / 2.0
    denom = w * (w * w - 1) / 12.0
    block = max(1, 2**20 // max(1, w * m))
    for a in range(0, len(end), block):
        e = end[a:a + block]
        g = z[e[:, None] - (w - 1) + np.arange(w)]  # (windows, w, m)
        out = X[a:a + block]
        if at["mean"] or at["std"] or at["slope"]:
            # One pass, shifted by the window's first row (see the kernel).
            x0 = g[:, 0]
            acc, acc2, acc3 = (np.zeros_like(x0) for _ in range(3))
            for r in range(1, w):
                d = g[:, r] - x0
                acc += d
                acc2 += d * d
                acc3 += (r - half) * d
            md = acc / w
            if at["mean"]:
                out[:, at["mean"]] = x0 + md
            if at["std"]:
                var = acc2 / w - md * md
                out[:, at["std"]] = np.sqrt(np.where(var > 0.0, var, 0.0))
            if at["slope"]:
                out[:, at["slope"]] = acc3 / denom if w > 1 else 0.0
        if at["min"] or at["max"] or at["median"]:
            s = np.sort(g, axis=1)
            if at["min"]:
                out[:, at["min"]] = s[:, 0] + 0.0
            if at["max"]:
                out[:, at["max"]] = s[:, w - 1] + 0.0
            if at["median"]:
                med = s[:, w // 2] if w % 2 else (s[:, w // 2 - 1] + s[:, w // 2]) / 2.0
                out[:, at["median"]] = med + 0.0
        if at["last"]:
            out[:, at["last"]] = g[:, w - 1]
