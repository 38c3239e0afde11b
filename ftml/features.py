"""Sliding-window features, per entity, against each entity's own robust baseline.

One function, :func:`window_features`, computes the features for batch scoring, chunked
scoring and the online loop alike: the callers only differ in how many rows they hand it.
Features are computed on baseline-standardised values ``z = (x - median) / scale`` so that one
model serves a fleet of differently sized entities and every feature reads as "how far from
this entity's normal"; with a ``level_window``, less each metric's trailing level
(:func:`trailing_level`), so that a slow drift of an entity's level is not read as a fault.

Speed: :func:`window_features` is :func:`complete_windows` (which windows exist) and
:func:`window_stats` (their stats, all entities at once, in the C kernel
``ftml._window_kernel`` or its numpy twin). Callers that need only some windows or some stats
(training's sample, scoring's forest view) ask for just those: each window's figures depend on
its rows alone, so any subset gives the same bits as the whole.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ftml.config import FeatureConfig
from ftml.io import MetricData, to_ns

_FC = FeatureConfig()  # the defaults' one home

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
# IQR of a normal distribution is 1.349 sigma: dividing by it makes z read like a z-score.
IQR_TO_SIGMA = 1.349
P01_P99_TO_SIGMA = 4.653
# z is clipped: a metric that is flat in training must not turn into infinite features later.
Z_CLIP = 1e3
DEFAULT_CHUNK_ROWS = 65_536


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


def complete_windows(missing_row: np.ndarray, segments: np.ndarray, window: int,
                     stride: int = 1) -> np.ndarray:
    """Row index of the last row of every complete window: ``window`` rows of one segment, none
    missing; with ``stride`` > 1 every stride-th of them, counted from each segment's start."""
    n = len(missing_row)
    w = int(window)
    if n < w:
        return np.empty(0, dtype=np.int64)
    end = np.arange(w - 1, n, dtype=np.int64)
    missing_count = np.cumsum(np.r_[0, missing_row.astype(np.int64)])
    ok = (missing_count[end + 1] - missing_count[end + 1 - w] == 0) & \
         (segments[end] == segments[end + 1 - w])
    if stride > 1:
        seg_start = np.flatnonzero(np.r_[True, segments[1:] != segments[:-1]])
        first_row = seg_start[np.searchsorted(seg_start, end, side="right") - 1]
        ok &= (end - first_row - (w - 1)) % stride == 0
    return end[ok]


def window_features(z: np.ndarray, segments: np.ndarray, window: int,
                    stride: int = 1, stats: tuple[str, ...] = STATS
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Features of every complete window in ``z`` (rows x metrics, standardised).

    ``segments`` labels rows that belong together (one entity's contiguous rows); a window is
    complete when all its rows are of one segment and none has a missing value. Returns
    ``(X, end)``: X has ``len(STATS) * n_metrics`` columns (stat-major, see
    :func:`feature_names`) and ``end`` the row index of each window's last row.
    """
    end = complete_windows(np.isnan(z).any(axis=1), segments, window, stride)
    return window_stats(z, end, window, stats), end


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


def metric_presence(values: np.ndarray, segments: np.ndarray, names: list[str],
                    window: int) -> dict[str, np.ndarray]:
    """Per metric, what the training screen of metrics (:func:`metrics_to_drop`) needs of
    some rows (``segments``: each row's entity, an index into ``names``; an entity's rows
    together): observed rows (rows with any reading), readings, lowest and highest value, and
    the largest share of one entity's windows that the metric's gaps leave incomplete (and
    that entity). Only windows of ``window`` rows that all have some reading count, so the
    steps between runs cost no metric anything. Counts of separate groups of entities
    combine (Dask training screens the whole fleet)."""
    n, m = values.shape
    w = int(window)
    present = np.isfinite(values)
    observed = present.any(axis=1)
    worst = np.zeros(m)
    worst_entity = np.full(m, "", dtype=object)
    if n >= w:
        end = np.arange(w - 1, n, dtype=np.int64)
        seen = np.r_[0, np.cumsum(observed)]
        whole = seen[end + 1] - seen[end + 1 - w] == w  # every row with some reading
        end = end[(segments[end] == segments[end + 1 - w]) & whole]
        n_ent = int(segments.max()) + 1
        windows = np.bincount(segments[end], minlength=n_ent)
        lost = np.zeros((n_ent, m))
        for j in range(m):  # a loop over metrics, vectorized over rows
            gaps = np.r_[0, np.cumsum(~present[:, j])]
            hit = gaps[end + 1] - gaps[end + 1 - w] > 0
            lost[:, j] = np.bincount(segments[end[hit]], minlength=n_ent)
        share = lost / np.maximum(windows, 1)[:, None]
        at = share.argmax(axis=0)
        worst = share[at, np.arange(m)]
        worst_entity = np.asarray(names, dtype=object)[at]
    return {"observed": np.int64(observed.sum()), "present": present.sum(axis=0),
            "worst_share": worst, "worst_entity": worst_entity,
            "low": np.fmin.reduce(values, axis=0) if n else np.full(m, np.nan),
            "high": np.fmax.reduce(values, axis=0) if n else np.full(m, np.nan)}


def metrics_to_drop(counts: list[dict[str, np.ndarray]], metrics: list[str],
                    missing_fraction: float, gappy_fraction: float) -> dict[str, str]:
    """Metrics that cannot help, over all the given :func:`metric_presence`, and why: no
    reading at all ("empty"), one value everywhere ("constant"), missing in at least
    ``missing_fraction`` of the observed rows, or with gaps that leave more than
    ``gappy_fraction`` of one entity's windows incomplete (a window needs every metric: such
    a metric would cost that entity those windows of every metric, so it costs the fleet its
    own features instead)."""
    observed = sum(int(c["observed"]) for c in counts)
    present = sum(c["present"] for c in counts)
    low = np.fmin.reduce(np.array([c["low"] for c in counts]), axis=0)
    high = np.fmax.reduce(np.array([c["high"] for c in counts]), axis=0)
    shares = np.array([c["worst_share"] for c in counts])
    worst_part = shares.argmax(axis=0)
    out: dict[str, str] = {}
    for j, name in enumerate(metrics):  # a loop over metrics, not rows
        missing = 1.0 - present[j] / max(observed, 1)
        share = shares[worst_part[j], j]
        if present[j] == 0:
            out[name] = "empty"
        elif low[j] == high[j]:
            out[name] = "constant"
        elif missing >= missing_fraction:
            out[name] = f"missing in {missing:.1%} of rows"
        elif share > gappy_fraction:
            entity = counts[worst_part[j]]["worst_entity"][j]
            out[name] = f"its gaps cost {share:.0%} of {entity}'s windows"
    return out


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


@dataclass
class Baseline:
    """Robust per-entity centre (median) and scale (IQR / 1.349) of each metric, optionally per
    hour of day; a fleet-wide fallback serves entities not seen in training."""

    entities: list[str]
    center: np.ndarray  # (entities, hours, metrics); hours = 24 or 1
    scale: np.ndarray
    fleet_center: np.ndarray  # (hours, metrics)
    fleet_scale: np.ndarray

    @classmethod
    def of_entities(cls, entities: list[str], center: np.ndarray, scale: np.ndarray
                    ) -> Baseline:
        """A baseline of these entities' centres and scales; the fleet fallback (for entities
        not seen in training) is the median over all of them."""
        fleet_center = np.median(center, axis=0)
        fleet_scale = _floor_scale(np.median(scale, axis=0), fleet_center)
        return cls(list(entities), center, scale, fleet_center, fleet_scale)

    @classmethod
    def concat(cls, parts: list[Baseline]) -> Baseline:
        """One baseline of the entities of several (e.g. fitted on separate Dask workers), with
        the fleet fallback over all of them, as :func:`fit_baseline` on all at once gives."""
        return cls.of_entities([e for p in parts for e in p.entities],
                               np.concatenate([p.center for p in parts]),
                               np.concatenate([p.scale for p in parts]))

    @property
    def by_hour(self) -> bool:
        return self.center.shape[1] == 24

    def rows(self, entity_names: np.ndarray, timestamps_ns: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
        """Centre and scale for each row, given its entity name and time."""
        index = self.row_index(entity_names, timestamps_ns)
        center, scale = self.tables()
        return center[index], scale[index]

    def tables(self) -> tuple[np.ndarray, np.ndarray]:
        """Centre and scale, one row per (entity, hour) then per fleet hour: what
        :meth:`row_index` points into."""
        m = self.center.shape[2]
        return (np.concatenate([self.center.reshape(-1, m), self.fleet_center]),
                np.concatenate([self.scale.reshape(-1, m), self.fleet_scale]))

    def row_index(self, entity_names, timestamps_ns: np.ndarray) -> np.ndarray:
        """Per row, its row in :meth:`tables`: the entity's own baseline (for its hour), or the
        fleet's for an entity not seen in training."""
        inverse, names = pd.factorize(entity_names)  # fast on categoricals, keeps order
        return self.row_index_of(self.entity_index(names)[inverse], timestamps_ns)

    def entity_index(self, names) -> np.ndarray:
        """Per distinct name, the entity's place in the baseline, or -1 if not seen in
        training."""
        index = {e: i for i, e in enumerate(self.entities)}
        return np.array([index.get(str(n), -1) for n in names], dtype=np.int64)

    def row_index_of(self, known: np.ndarray, timestamps_ns: np.ndarray) -> np.ndarray:
        """:meth:`row_index` from each row's :meth:`entity_index`."""
        hours = self.center.shape[1]
        hour = (timestamps_ns // 3_600_000_000_000) % 24 if self.by_hour else \
            np.zeros(len(timestamps_ns), dtype=np.int64)
        return np.where(known >= 0, known * hours + hour, len(self.entities) * hours + hour)


_QUANTILES = np.true_divide(np.array([1, 25, 50, 75, 99]), 100)


def _group_percentiles(values: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Per group of rows (``values[bounds[g]:bounds[g + 1]]``), what
    ``np.nanpercentile(rows, [1, 25, 50, 75, 99], axis=0)`` gives, with numpy's own arithmetic
    (the linear method): (groups, 5, columns).

    The groups are sorted all at once, as lanes of a NaN-padded cube (NaN sorts last), a batch
    of groups at a time so that the cube stays small."""
    n, m = values.shape
    sizes = np.diff(bounds)
    out = np.empty((len(sizes), len(_QUANTILES), m))
    q = _QUANTILES[None, :, None]
    g0 = 0
    while g0 < len(sizes):
        width = int(sizes[g0])
        g1 = g0 + 1
        # Grow the batch while the cube (groups x columns x widest group) stays <= 2^22 cells
        # and padding at most doubles it.
        while g1 < len(sizes):
            w2 = max(width, int(sizes[g1]))
            rows = int(bounds[g1 + 1] - bounds[g0])
            if (g1 + 1 - g0) * w2 * m > 1 << 22 or (g1 + 1 - g0) * w2 > 2 * rows + 64:
                break
            width, g1 = w2, g1 + 1
        a, b = int(bounds[g0]), int(bounds[g1])
        group = np.repeat(np.arange(g1 - g0), sizes[g0:g1])
        pos = np.arange(b - a) - np.repeat(bounds[g0:g1] - a, sizes[g0:g1])
        cube = np.full((g1 - g0, m, width), np.nan)
        cube[group, :, pos] = values[a:b]
        cube.sort(axis=2)
        count = width - np.isnan(cube).sum(axis=2)  # values per lane
        nq = count[:, None, :].astype(np.float64)
        # numpy's virtual index of the linear method and _get_gamma, then _lerp
        virtual = (nq - 1) * q
        prev = np.floor(virtual)
        gamma = virtual - prev
        top = np.maximum(count - 1, 0)[:, None, :]
        prev_i = np.clip(prev.astype(np.int64), 0, top)
        next_i = np.clip(prev_i + 1, 0, top)
        lanes = cube.reshape(-1, width)
        lane = (np.arange(g1 - g0)[:, None, None] * m + np.arange(m)[None, None, :])
        lane = np.broadcast_to(lane, prev_i.shape)
        lo_v, hi_v = lanes[lane, prev_i], lanes[lane, next_i]
        diff = hi_v - lo_v
        res = np.where(gamma >= 0.5, hi_v - diff * (1 - gamma), lo_v + diff * gamma)
        out[g0:g1] = np.where(count[:, None, :] > 0, res, np.nan)
        g0 = g1
    return out


def fit_baseline(values: np.ndarray, entity_codes: np.ndarray, entity_names: list[str],
                 timestamps_ns: np.ndarray, by_hour: bool) -> Baseline:
    """Median and IQR per entity (and hour), ignoring missing values."""
    hours = 24 if by_hour else 1
    hour = (timestamps_ns // 3_600_000_000_000) % 24 if by_hour else \
        np.zeros(len(values), dtype=np.int64)
    n_ent, m = len(entity_names), values.shape[1]
    center = np.full((n_ent, hours, m), np.nan)
    scale = np.full((n_ent, hours, m), np.nan)
    key = entity_codes * hours + hour
    # A stable sort of small keys (uint16: numpy's radix sort) is the same order, faster.
    small = n_ent * hours < 2**16 and len(key) and key.min() >= 0
    order = np.argsort(key.astype(np.uint16) if small else key, kind="stable")
    bounds = np.flatnonzero(np.r_[True, np.diff(key[order]) != 0, True])
    if len(order):
        k = key[order[bounds[:-1]]]  # one group per entity-hour
        with np.errstate(invalid="ignore"):
            q01, q25, q50, q75, q99 = _group_percentiles(values[order], bounds).transpose(1, 0, 2)
        center[k // hours, k % hours] = q50
        # The IQR alone is 0 for metrics that are mostly zero (errors, retransmits), which
        # would make every blip look infinite: the 1-99 % range (4.65 sigma when normal)
        # stands in when it is wider, so routine spikes stay routine.
        scale[k // hours, k % hours] = np.maximum((q75 - q25) / IQR_TO_SIGMA,
                                                  (q99 - q01) / P01_P99_TO_SIGMA)
    # Entity-level values stand in for hours with too little data.
    with warnings.catch_warnings():  # an entity with no data at all: NaN, filled below
        warnings.simplefilter("ignore", RuntimeWarning)
        ent_center = np.nanmedian(center, axis=1, keepdims=True)
        ent_scale = np.nanmedian(scale, axis=1, keepdims=True)
    center = np.where(np.isnan(center), ent_center, center)
    scale = np.where(np.isnan(scale), ent_scale, scale)
    center = np.nan_to_num(center, nan=0.0)
    scale = _floor_scale(np.nan_to_num(scale, nan=0.0), center)
    return Baseline.of_entities(list(entity_names), center, scale)


def _floor_scale(scale: np.ndarray, center: np.ndarray) -> np.ndarray:
    # A metric flat in training (IQR 0) still needs a scale: 1 % of its level, or 1e-3.
    return np.maximum(scale, np.maximum(np.abs(center) * 0.01, 1e-3))


# Fixed point of the trailing level's sums: integer cumulative sums are exact, so a row's
# level is the same bits whatever row a frame (a chunk, the online ring) starts at.
_LEVEL_BITS = 20


def trailing_level(z: np.ndarray, segments: np.ndarray, span: int, clip: float) -> np.ndarray:
    """Per row, the slow level of each metric: the mean of ``z`` clipped to ``+-clip`` over the
    ``span`` rows before it in its segment (missing values skipped). A mean of fewer than
    ``span // 2`` values is shrunk towards 0 (divided by ``span // 2``), so a short history
    gives a small level, not a noisy one. The clip bounds how much of a long real fault the
    level can absorb: at most ``clip`` of each metric's z.

    Computed in fixed point (integer cumulative sums), so each row's level depends on the
    ``span`` rows before it alone, exactly: the same bits however the rows are chunked, as
    long as those rows are there (:attr:`Featurizer.history_steps`)."""
    n, m = z.shape
    level = np.zeros((n, m))
    if n == 0 or span <= 0:
        return level
    kernel = getattr(_window_kernel, "trailing_level", None)
    segments = np.asarray(segments)
    if kernel is not None and 0.0 <= clip <= 2.0**31 and segments.dtype.kind in "iub":
        # The same bits, by running sums in C.
        kernel(np.ascontiguousarray(z, dtype=np.float64),
               np.ascontiguousarray(segments, dtype=np.int64), int(span), float(clip), level)
        return level
    units, valid = level_units(z, clip)
    sums = np.zeros((n + 1, m), dtype=np.int64)
    np.cumsum(units, axis=0, out=sums[1:])
    counts = np.zeros((n + 1, m), dtype=np.int64)
    np.cumsum(valid, axis=0, out=counts[1:])
    idx = np.arange(n, dtype=np.int64)
    seg_start = np.flatnonzero(np.r_[True, segments[1:] != segments[:-1]])
    first = seg_start[np.searchsorted(seg_start, idx, side="right") - 1]
    lo = np.maximum(first, idx - span)
    return level_of_sums(sums[idx] - sums[lo], counts[idx] - counts[lo], span)


def level_units(z: np.ndarray, clip: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`trailing_level`'s integers: each z clipped to +-clip in fixed point (0 when
    missing), and 1 where present. Sums of these over a span give its level
    (:func:`level_of_sums`); the online loop keeps them as running sums."""
    valid = ~np.isnan(z)
    q = np.clip(z, -clip, clip)
    q *= float(1 << _LEVEL_BITS)
    np.rint(q, out=q)
    q[~valid] = 0.0
    return q.astype(np.int64), valid.astype(np.int64)


def level_of_sums(total: np.ndarray, count: np.ndarray, span: int) -> np.ndarray:
    """The trailing level from the fixed-point sum and count of :func:`level_units` over the
    span before a row (shrunk towards 0 below ``span // 2`` values)."""
    level = total.astype(np.float64)
    level *= 1.0 / (1 << _LEVEL_BITS)
    level /= np.maximum(count, max(span // 2, 1))
    return level


@dataclass
class Windows:
    """Feature windows: ``X`` rows, with the entity and end time of each window."""

    X: np.ndarray
    entity: np.ndarray  # entity names (object array)
    end_ns: np.ndarray  # int64 timestamps of each window's last row
    row: np.ndarray  # index of the last row in the frame the windows came from
    last: np.ndarray  # metric values (counters as rates) at each window's last row

    def __len__(self) -> int:
        return len(self.end_ns)

    @staticmethod
    def concat(parts: list[Windows], n_features: int, n_metrics: int) -> Windows:
        if not parts:
            return Windows(np.empty((0, n_features)), np.empty(0, dtype=object),
                           np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64),
                           np.empty((0, n_metrics)))
        return Windows(np.vstack([p.X for p in parts]), np.concatenate([p.entity for p in parts]),
                       np.concatenate([p.end_ns for p in parts]),
                       np.concatenate([p.row for p in parts]),
                       np.vstack([p.last for p in parts]))

    def take(self, mask: np.ndarray, row_offset: int = 0) -> Windows:
        return Windows(self.X[mask], self.entity[mask], self.end_ns[mask],
                       self.row[mask] + row_offset, self.last[mask])


_NEVER = np.iinfo(np.int64).min
_END_OF_TIME = np.iinfo(np.int64).max


@dataclass
class WindowBlock:
    """One block of :meth:`Featurizer.window_blocks`: standardised rows ``lo:`` of a frame and
    the complete windows among them."""

    window: int
    stats: tuple[str, ...]  # the featurizer's
    lo: int  # first frame row of z / values
    end: np.ndarray  # each window's last row, in z
    rows: np.ndarray  # ... and in the frame (end + lo)
    codes: np.ndarray  # each window's entity, as an index into names
    names: np.ndarray  # the frame's entity names (object)
    end_ns: np.ndarray  # each window's end time
    z: np.ndarray  # standardised rows (levels taken off)
    values: np.ndarray  # the same rows' values, counters as rates

    def windows(self) -> Windows:
        """The block's windows with all their features."""
        return Windows(window_stats(self.z, self.end, self.window, self.stats),
                       self.names[self.codes],
                       self.end_ns, self.rows, self.values[self.end])


class Featurizer:
    """Learns which metrics are counters and each entity's baseline; turns metric frames into
    feature windows. Parameters in the constructor, fitted state ends in ``_``."""

    def __init__(self, *, window: int = _FC.window, stride: int = _FC.stride,
                 hour_of_day: bool = _FC.hour_of_day, level_window: int = _FC.level_window,
                 level_clip: float = _FC.level_clip):
        self.window = window
        self.stride = stride
        self.hour_of_day = hour_of_day
        self.level_window = level_window
        self.level_clip = level_clip

    @property
    def history_steps(self) -> int:
        """Rows before a window's last row that its features depend on: the window's other
        rows, the trailing level's span before its first row, and one more (a counter's rate
        needs the row before). Chunked, online and distributed callers carry this many."""
        return int(self.window) + self._level_span()

    @property
    def stats(self) -> tuple[str, ...]:
        """The window stats of its features: those it was fitted with (before the stats
        table, a featurizer computed the legacy seven)."""
        return tuple(getattr(self, "stats_", LEGACY_STATS))

    def _level_span(self) -> int:
        # Bundles from before the drift correction have no level_window: no correction.
        return int(getattr(self, "level_window", 0) or 0)

    def fit(self, data: MetricData, exclude_rows: np.ndarray | None = None,
            counters: list[str] | None = None) -> Featurizer:
        """Learn counters and baselines; ``exclude_rows`` (bool per row) keeps incident time out
        of the baseline. ``counters``: which metrics are counters, when decided elsewhere
        (Dask training decides over the whole fleet, then fits each group's baselines)."""
        self.metrics_ = list(data.metrics)
        self.step_ = data.step
        codes, names = data.entity_codes()
        values = data.frame[self.metrics_].to_numpy(dtype=np.float64, copy=True)
        self.counters_ = (detect_counters(values, codes, self.metrics_) if counters is None
                          else [c for c in self.metrics_ if c in set(counters)])
        values = self._rates(values, codes, in_place=True)
        if exclude_rows is not None and exclude_rows.any():
            values[exclude_rows] = np.nan
        self.baseline_ = fit_baseline(values, codes, names, to_ns(data.frame["timestamp"]),
                                      self.hour_of_day)
        self.stats_ = STATS
        self.feature_names_ = feature_names(self.metrics_, self.stats_)
        return self

    def with_baseline(self, metrics: list[str], step: pd.Timedelta, counters: list[str],
                      baseline: Baseline) -> Featurizer:
        """This featurizer, fitted with a baseline made elsewhere (e.g. the groups' baselines
        of Dask training, :meth:`Baseline.concat`); returns self, as ``fit`` does."""
        self.metrics_ = list(metrics)
        self.step_ = step
        self.counters_ = [c for c in self.metrics_ if c in set(counters)]
        self.baseline_ = baseline
        self.stats_ = STATS
        self.feature_names_ = feature_names(self.metrics_, self.stats_)
        return self

    def _rates(self, values: np.ndarray, segments: np.ndarray, in_place: bool = False
               ) -> np.ndarray:
        cols = [self.metrics_.index(c) for c in self.counters_]
        if in_place:
            return _counters_to_rates_in_place(values, segments, cols,
                                               self.step_.total_seconds())
        return counters_to_rates(values, segments, cols, self.step_.total_seconds())

    def standardise(self, frame: pd.DataFrame, level: bool = True
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Frame in the contract -> (z values, segment ids, values with counters as rates).

        With a ``level_window``, each z has its trailing level (:func:`trailing_level`)
        taken off, so that a slow drift of an entity's level is not read as a fault; a row's
        level needs the ``level_window`` rows before it in ``frame``. ``level=False`` gives
        the z before that (what :meth:`remove_level` takes)."""
        codes, names = pd.factorize(frame["entity"], sort=False)  # fast on categoricals
        codes = codes.astype(np.int64)
        known = self.baseline_.entity_index(names)[codes]
        z, values = self.standardise_arrays(
            frame[self.metrics_].to_numpy(dtype=np.float64, copy=True), codes, known,
            to_ns(frame["timestamp"]))
        if level:
            z = self.remove_level(z, codes)
        return z, codes, values

    def standardise_arrays(self, values: np.ndarray, segments: np.ndarray, known: np.ndarray,
                           timestamps_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`standardise` (``level=False``) on plain arrays: values in ``metrics_``
        order (counters turned into rates in place), each row's entity segment and its
        ``Baseline.entity_index``. (z, values)."""
        values = self._rates(values, segments, in_place=True)
        index = self.baseline_.row_index_of(known, timestamps_ns)
        center, scale = self._tables()
        # (values - centre) / scale, clipped: the same operations, without temporaries.
        z = np.subtract(values, center[index])
        z /= scale[index]
        np.clip(z, -Z_CLIP, Z_CLIP, out=z)
        return z, values

    def remove_level(self, z: np.ndarray, segments: np.ndarray) -> np.ndarray:
        """z (before levels, in place) minus each row's trailing level; no-op without a
        ``level_window``."""
        span = self._level_span()
        if span > 0:
            z -= trailing_level(z, segments, span, float(self.level_clip))
        return z

    def _tables(self) -> tuple[np.ndarray, np.ndarray]:
        cached = getattr(self, "_tables_cache", None)
        if cached is None or cached[0] is not self.baseline_:
            cached = (self.baseline_, *self.baseline_.tables())
            self._tables_cache = cached
        return cached[1], cached[2]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_tables_cache", None)  # derived: not part of the model
        return state

    def transform_frame(self, frame: pd.DataFrame) -> Windows:
        """All complete windows of a frame in the contract (sorted by entity, time)."""
        return Windows.concat([b.windows() for b in self.window_blocks(frame, len(frame))],
                              len(self.stats) * len(self.metrics_), len(self.metrics_))

    def window_blocks(self, frame: pd.DataFrame, block_rows: int,
                      since: dict[str, int] | None = None, until: dict[str, int] | None = None
                      ) -> Iterator[WindowBlock]:
        """The complete windows of ``frame`` (in the contract), block by block of about
        ``block_rows`` rows: the one loop every driver's windows come from.

        A block standardises its rows plus the :attr:`history_steps` rows before them (a
        window, its levels' span, the row before for rates), so no window is lost or repeated
        and each gets the same bits as in one piece. With ``stride``, windows are counted from
        each entity's first row in ``frame``. With ``since`` / ``until`` (entity -> ns), only
        windows ending after ``since`` and at most ``until`` of their entity (chunked callers:
        new in this chunk, and final)."""
        n = len(frame)
        if n == 0:
            return
        codes, names = _entity_codes_names(frame["entity"])
        ts = to_ns(frame["timestamp"])
        lo_ns = hi_ns = None
        if since is not None:
            lo_ns = np.array([since.get(str(e), _NEVER) for e in names], dtype=np.int64)
        if until is not None:
            hi_ns = np.array([until.get(str(e), _END_OF_TIME) for e in names], dtype=np.int64)
        seg_start = None
        if self.stride > 1:
            seg_start = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
        overlap = self.history_steps
        start = 0
        while start < n:
            stop = min(n, start + max(1, block_rows))
            lo = max(0, start - overlap)
            z, seg, values = self.standardise(frame.iloc[lo:stop])
            end = complete_windows(np.isnan(z).any(axis=1), seg, self.window)
            end = end[end + lo >= start]
            if seg_start is not None:
                end = end[self._stride_ok(seg_start, end + lo)]
            c = codes[end + lo]
            end_ns = ts[end + lo]
            if lo_ns is not None or hi_ns is not None:
                keep = np.ones(len(end), dtype=bool)
                if lo_ns is not None:
                    keep &= end_ns > lo_ns[c]
                if hi_ns is not None:
                    keep &= end_ns <= hi_ns[c]
                if not keep.all():
                    end, c, end_ns = end[keep], c[keep], end_ns[keep]
            yield WindowBlock(self.window, self.stats, lo, end, end + lo, c, names, end_ns, z,
                              values)
            start = stop

    def _stride_ok(self, seg_start: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Windows ending at ``rows`` that the stride keeps, counted from each entity's first row
        (``seg_start``: first rows of the frame's entities), not from a chunk's."""
        first_row = seg_start[np.searchsorted(seg_start, rows, side="right") - 1]
        return (rows - first_row - (self.window - 1)) % self.stride == 0

    def iter_windows(self, data: MetricData, chunk_rows: int = DEFAULT_CHUNK_ROWS
                     ) -> Iterator[Windows]:
        """Windows of ``data`` in chunks of about ``chunk_rows`` rows, so that memory stays
        bounded (see :meth:`window_blocks`)."""
        for blk in self.window_blocks(data.frame, chunk_rows):
            yield blk.windows()

    def complete_rows(self, frame: pd.DataFrame, chunk_rows: int = 1 << 20) -> np.ndarray:
        """The last row of every complete window of ``frame`` (the windows ``iter_windows``
        gives), computed without any feature."""
        n = len(frame)
        missing = np.zeros(n, dtype=bool)
        cols = [self.metrics_.index(c) for c in self.counters_]
        start = 0
        while start < n:  # in blocks: values are copied to compute rates
            stop = min(n, start + chunk_rows)
            lo = max(0, start - 1)
            part = frame.iloc[lo:stop]
            values = part[self.metrics_].to_numpy(dtype=np.float64)
            if cols:
                values = _counters_to_rates_in_place(
                    values.copy(), _entity_codes(part["entity"]), cols,
                    self.step_.total_seconds())
            missing[start:stop] = np.isnan(values).any(axis=1)[start - lo:]
            start = stop
        codes = _entity_codes(frame["entity"])
        return complete_windows(missing, codes, self.window, self.stride)

    def features_at(self, frame: pd.DataFrame, rows: np.ndarray,
                    stats: list[str] | tuple[str, ...] | None = None,
                    chunk_rows: int = 1 << 18) -> tuple[np.ndarray, np.ndarray]:
        """``(X, last)`` of the windows ending at ``rows`` (ascending; complete windows, as
        :meth:`complete_rows` gives): X as :func:`window_stats` (all stats, or only ``stats``),
        ``last`` the values (counters as rates) at each window's last row. Only the rows these
        windows need are standardised, block by block."""
        rows = np.asarray(rows, dtype=np.int64)
        stats = self.stats if stats is None else stats
        width = len(stats) * len(self.metrics_)
        X = np.empty((len(rows), width))
        last = np.empty((len(rows), len(self.metrics_)))
        w = self.window
        a = 0
        while a < len(rows):
            # A block: windows whose rows (and the rows before them: levels, rates) span
            # <= chunk_rows.
            first = rows[a] - self.history_steps
            b = a + max(1, int(np.searchsorted(rows[a:], first + chunk_rows, side="right")))
            lo = max(0, int(first))
            hi = int(rows[b - 1]) + 1
            z, _, values = self.standardise(frame.iloc[lo:hi])
            X[a:b] = window_stats(z, rows[a:b] - lo, w, stats)
            last[a:b] = values[rows[a:b] - lo]
            a = b
        return X, last

    def windows_at(self, frame: pd.DataFrame, rows: np.ndarray) -> Windows:
        """The :class:`Windows` (all features) ending at ``rows`` of ``frame``."""
        rows = np.asarray(rows, dtype=np.int64)
        X, last = self.features_at(frame, rows)
        ts = to_ns(frame["timestamp"])
        return Windows(X, _entity_array(frame["entity"], rows), ts[rows], rows, last)

    def transform(self, data: MetricData) -> Windows:
        return Windows.concat(list(self.iter_windows(data)), len(self.feature_names_),
                              len(self.metrics_))

    def deviation(self, X: np.ndarray) -> np.ndarray:
        """Per metric, how far a window is from normal: max |z| over the stats that say so
        (:attr:`Stat.deviation`: mean, min, max and last)."""
        m = len(self.metrics_)
        parts = [np.abs(X[:, k * m:(k + 1) * m]) for k, s in enumerate(self.stats)
                 if STAT[s].deviation]
        return np.maximum.reduce(parts)


def _entity_codes(entity: pd.Series) -> np.ndarray:
    """Integer code per row (equal names, equal codes), cheap for a categorical column."""
    if isinstance(entity.dtype, pd.CategoricalDtype):
        return entity.cat.codes.to_numpy().astype(np.int64)
    return pd.factorize(entity, sort=False)[0].astype(np.int64)


def _entity_codes_names(entity: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Integer code per row and the names they index (object array)."""
    if isinstance(entity.dtype, pd.CategoricalDtype):
        return (entity.cat.codes.to_numpy().astype(np.int64),
                np.asarray(entity.cat.categories, dtype=object))
    codes, names = pd.factorize(entity, sort=False)
    return codes.astype(np.int64), np.asarray(names, dtype=object)


def _entity_array(entity: pd.Series, rows: np.ndarray) -> np.ndarray:
    """Entity names (object array) at ``rows``, without turning the whole column into objects."""
    if isinstance(entity.dtype, pd.CategoricalDtype):
        names = np.asarray(entity.cat.categories, dtype=object)
        return names[entity.cat.codes.to_numpy()[rows]]
    return entity.to_numpy(dtype=object)[rows]
