"""Sliding-window features, per entity, against each entity's own robust baseline.

One function, :func:`window_features`, computes the features for batch scoring, chunked
scoring and the online loop alike: the callers only differ in how many rows they hand it.
Features are computed on baseline-standardised values ``z = (x - median) / scale`` so that one
model serves a fleet of differently sized entities and every feature reads as "how far from
this entity's normal".
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage

from ftml.io import MetricData, to_ns

STATS = ("mean", "std", "min", "max", "last", "slope", "median")
# IQR of a normal distribution is 1.349 sigma: dividing by it makes z read like a z-score.
IQR_TO_SIGMA = 1.349
P01_P99_TO_SIGMA = 4.653
# z is clipped: a metric that is flat in training must not turn into infinite features later.
Z_CLIP = 1e3
DEFAULT_CHUNK_ROWS = 65_536


def feature_names(metrics: list[str]) -> list[str]:
    return [f"{m}:{s}" for s in STATS for m in metrics]


def stat_columns(stats: list[str] | tuple[str, ...], n_metrics: int) -> np.ndarray:
    """Column indexes of the given stats in a feature matrix (stat-major layout)."""
    unknown = [s for s in stats if s not in STATS]
    if unknown:
        raise ValueError(f"unknown stat(s) {unknown}; known: {', '.join(STATS)}")
    return np.concatenate([np.arange(n_metrics) + STATS.index(s) * n_metrics for s in stats])


def detector_view(X: np.ndarray, n_metrics: int, stats: list[str] | tuple[str, ...]
                  ) -> np.ndarray:
    """What the forest sees: the chosen stats per metric plus, across metrics, the largest and
    second-largest deviation, all on a signed log scale.

    Why: an isolation tree splits on a feature picked at random, so a fault that moves two of
    thirteen metrics is isolated only by trees that happen to pick them. The cross-metric
    deviations let every tree see any metric's fault, and the log scale stops heavy-tailed
    metrics (latency, error rates) from taking every split.
    """
    cols = stat_columns(stats, n_metrics)
    m = n_metrics
    dev = np.abs(X[:, cols]).reshape(len(X), len(stats), m).max(axis=1)
    top2 = -np.partition(-dev, 1, axis=1)[:, :2] if m > 1 else np.c_[dev, dev]
    view = np.hstack([X[:, cols], top2])
    return np.sign(view) * np.log1p(np.abs(view))


def window_features(z: np.ndarray, segments: np.ndarray, window: int,
                    stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Features of every complete window in ``z`` (rows x metrics, standardised).

    ``segments`` labels rows that belong together (one entity's contiguous rows); a window is
    complete when all its rows are of one segment and none has a missing value. Returns
    ``(X, end)``: X has ``len(STATS) * n_metrics`` columns (stat-major, see
    :func:`feature_names`) and ``end`` the row index of each window's last row.
    """
    n, m = z.shape
    w = int(window)
    if n < w:
        return np.empty((0, len(STATS) * m)), np.empty(0, dtype=np.int64)
    missing_row = np.isnan(z).any(axis=1)
    end = np.arange(w - 1, n)
    missing_count = np.cumsum(np.r_[0, missing_row.astype(np.int64)])
    ok = (missing_count[end + 1] - missing_count[end + 1 - w] == 0) & \
         (segments[end] == segments[end + 1 - w])
    if stride > 1:
        seg_start = np.flatnonzero(np.r_[True, segments[1:] != segments[:-1]])
        first_row = seg_start[np.searchsorted(seg_start, end, side="right") - 1]
        ok &= (end - first_row - (w - 1)) % stride == 0
    end = end[ok]
    if end.size == 0:
        return np.empty((0, len(STATS) * m)), end.astype(np.int64)
    zf = np.where(missing_row[:, None], 0.0, z)
    t = np.arange(n, dtype=np.float64)[:, None]
    c1 = np.vstack([np.zeros((1, m)), np.cumsum(zf, axis=0)])
    c2 = np.vstack([np.zeros((1, m)), np.cumsum(zf * zf, axis=0)])
    ct = np.vstack([np.zeros((1, m)), np.cumsum(zf * t, axis=0)])
    lo, hi = end + 1 - w, end + 1
    s1 = c1[hi] - c1[lo]
    s2 = c2[hi] - c2[lo]
    st = ct[hi] - ct[lo]
    mean = s1 / w
    var = np.maximum(s2 / w - mean * mean, 0.0)
    # Least-squares slope against the row index: sum((t - t_mean) * z) / sum((t - t_mean)^2).
    t_mean = (lo + hi - 1)[:, None] / 2.0
    denom = w * (w * w - 1) / 12.0
    slope = (st - t_mean * s1) / denom if w > 1 else np.zeros_like(mean)
    # Rolling min / max / median in C (scipy.ndimage, O(n) for min and max); a filter centred
    # on row c covers rows c - w//2 .. c - w//2 + w - 1, so the window ending at e is c =
    # e - (w - 1) + w // 2.
    centre = end - (w - 1) + w // 2
    X = np.empty((end.size, len(STATS) * m))
    X[:, 0 * m:1 * m] = mean
    X[:, 1 * m:2 * m] = np.sqrt(var)
    X[:, 2 * m:3 * m] = ndimage.minimum_filter1d(zf, w, axis=0, mode="nearest")[centre]
    X[:, 3 * m:4 * m] = ndimage.maximum_filter1d(zf, w, axis=0, mode="nearest")[centre]
    X[:, 4 * m:5 * m] = zf[end]
    X[:, 5 * m:6 * m] = slope
    # The median ignores spikes shorter than half a window (deploy restarts, bursts).
    X[:, 6 * m:7 * m] = _rolling_median(zf, w)[centre]
    return X, end.astype(np.int64)


def _rolling_median(z: np.ndarray, w: int) -> np.ndarray:
    """Centred rolling median along rows; for an even window the mean of the middle two, as
    numpy and pandas define it."""
    if w % 2:
        return ndimage.median_filter(z, size=(w, 1), mode="nearest")
    lo = ndimage.rank_filter(z, w // 2 - 1, size=(w, 1), mode="nearest")
    hi = ndimage.rank_filter(z, w // 2, size=(w, 1), mode="nearest")
    return (lo + hi) / 2.0


def detect_counters(values: np.ndarray, segments: np.ndarray, metrics: list[str]) -> list[str]:
    """Metrics that behave like monotonic counters (cumulative bytes, packets): they rise in most
    steps, fall only at rare resets and are never negative."""
    out = []
    same = segments[1:] == segments[:-1]
    for j, name in enumerate(metrics):
        col = values[:, j]
        d = np.diff(col)[same]
        d = d[np.isfinite(d)]
        if d.size < 10 or np.nanmin(col) < 0:
            continue
        rises, falls = np.mean(d > 0), np.mean(d < 0)
        if rises >= 0.5 and falls <= 0.01:
            out.append(name)
    return out


def counters_to_rates(values: np.ndarray, segments: np.ndarray, columns: list[int],
                      step_seconds: float) -> np.ndarray:
    """Counter columns -> per-second rates, as Prometheus' rate() does: a fall is a reset, and
    the increase after it is the new value. The first row of each segment has no rate."""
    if not columns:
        return values
    out = values.copy()
    first = np.r_[True, segments[1:] != segments[:-1]]
    for j in columns:
        col = values[:, j]
        d = np.r_[np.nan, np.diff(col)]
        d = np.where(d < 0, col, d)
        d[first] = np.nan
        out[:, j] = d / step_seconds
    return out


@dataclass
class Baseline:
    """Robust per-entity centre (median) and scale (IQR / 1.349) of each metric, optionally per
    hour of day; a fleet-wide fallback serves entities not seen in training."""

    entities: list[str]
    center: np.ndarray  # (entities, hours, metrics); hours = 24 or 1
    scale: np.ndarray
    fleet_center: np.ndarray  # (hours, metrics)
    fleet_scale: np.ndarray

    @property
    def by_hour(self) -> bool:
        return self.center.shape[1] == 24

    def rows(self, entity_names: np.ndarray, timestamps_ns: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
        """Centre and scale for each row, given its entity name and time."""
        index = {e: i for i, e in enumerate(self.entities)}
        inverse, names = pd.factorize(entity_names)  # fast on categoricals, keeps order
        known = np.array([index.get(str(n), -1) for n in names], dtype=np.int64)[inverse]
        hour = (timestamps_ns // 3_600_000_000_000) % 24 if self.by_hour else \
            np.zeros(len(timestamps_ns), dtype=np.int64)
        center = np.where((known >= 0)[:, None], self.center[np.maximum(known, 0), hour],
                          self.fleet_center[hour])
        scale = np.where((known >= 0)[:, None], self.scale[np.maximum(known, 0), hour],
                         self.fleet_scale[hour])
        return center, scale


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
    order = np.argsort(key, kind="stable")
    bounds = np.flatnonzero(np.r_[True, np.diff(key[order]) != 0, True])
    for a, b in zip(bounds[:-1], bounds[1:], strict=False):  # one group per entity-hour
        rows = values[order[a:b]]
        k = key[order[a]]
        pct = np.percentile if not np.isnan(rows).any() else np.nanpercentile
        q01, q25, q50, q75, q99 = pct(rows, [1, 25, 50, 75, 99], axis=0)
        center[k // hours, k % hours] = q50
        # The IQR alone is 0 for metrics that are mostly zero (errors, retransmits), which
        # would make every blip look infinite: the 1-99 % range (4.65 sigma when normal)
        # stands in when it is wider, so routine spikes stay routine.
        scale[k // hours, k % hours] = np.maximum((q75 - q25) / IQR_TO_SIGMA,
                                                  (q99 - q01) / P01_P99_TO_SIGMA)
    # Entity-level values stand in for hours with too little data.
    ent_center = np.nanmedian(center, axis=1, keepdims=True)
    ent_scale = np.nanmedian(scale, axis=1, keepdims=True)
    center = np.where(np.isnan(center), ent_center, center)
    scale = np.where(np.isnan(scale), ent_scale, scale)
    center = np.nan_to_num(center, nan=0.0)
    scale = _floor_scale(np.nan_to_num(scale, nan=0.0), center)
    fleet_center = np.median(center, axis=0)
    fleet_scale = _floor_scale(np.median(scale, axis=0), fleet_center)
    return Baseline(list(entity_names), center, scale, fleet_center, fleet_scale)


def _floor_scale(scale: np.ndarray, center: np.ndarray) -> np.ndarray:
    # A metric flat in training (IQR 0) still needs a scale: 1 % of its level, or 1e-3.
    return np.maximum(scale, np.maximum(np.abs(center) * 0.01, 1e-3))


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


class Featurizer:
    """Learns which metrics are counters and each entity's baseline; turns metric frames into
    feature windows. Parameters in the constructor, fitted state ends in ``_``."""

    def __init__(self, window: int = 15, stride: int = 1, hour_of_day: bool = False):
        self.window = window
        self.stride = stride
        self.hour_of_day = hour_of_day

    def fit(self, data: MetricData, exclude_rows: np.ndarray | None = None) -> Featurizer:
        """Learn counters and baselines; ``exclude_rows`` (bool per row) keeps incident time out
        of the baseline."""
        self.metrics_ = list(data.metrics)
        self.step_ = data.step
        codes, names = data.entity_codes()
        values = data.values()
        self.counters_ = detect_counters(values, codes, self.metrics_)
        values = self._rates(values, codes)
        if exclude_rows is not None and exclude_rows.any():
            values = np.where(exclude_rows[:, None], np.nan, values)
        self.baseline_ = fit_baseline(values, codes, names, to_ns(data.frame["timestamp"]),
                                      self.hour_of_day)
        self.feature_names_ = feature_names(self.metrics_)
        return self

    def _rates(self, values: np.ndarray, segments: np.ndarray) -> np.ndarray:
        cols = [self.metrics_.index(c) for c in self.counters_]
        return counters_to_rates(values, segments, cols, self.step_.total_seconds())

    def standardise(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Frame in the contract -> (z values, segment ids, values with counters as rates)."""
        codes = pd.factorize(frame["entity"], sort=False)[0].astype(np.int64)
        values = self._rates(frame[self.metrics_].to_numpy(dtype=np.float64), codes)
        center, scale = self.baseline_.rows(frame["entity"], to_ns(frame["timestamp"]))
        z = np.clip((values - center) / scale, -Z_CLIP, Z_CLIP)
        return z, codes, values

    def transform_frame(self, frame: pd.DataFrame) -> Windows:
        """All complete windows of a frame in the contract (sorted by entity, time)."""
        z, codes, values = self.standardise(frame)
        X, end = window_features(z, codes, self.window, self.stride)
        ts = to_ns(frame["timestamp"])
        ent = frame["entity"].to_numpy(dtype=object)
        return Windows(X, ent[end], ts[end], end, values[end])

    def iter_windows(self, data: MetricData, chunk_rows: int = DEFAULT_CHUNK_ROWS
                     ) -> Iterator[Windows]:
        """Windows of ``data`` in chunks of about ``chunk_rows`` rows, so that memory stays
        bounded; chunks overlap by a window so that no window is lost or repeated."""
        frame = data.frame
        n = len(frame)
        overlap = self.window  # one more than a window: counters need the previous row
        start = 0
        while start < n:
            stop = min(n, start + chunk_rows)
            lo = max(0, start - overlap)
            part = self.transform_frame(frame.iloc[lo:stop])
            yield part.take(part.row + lo >= start, row_offset=lo)
            start = stop

    def transform(self, data: MetricData) -> Windows:
        return Windows.concat(list(self.iter_windows(data)), len(self.feature_names_),
                              len(self.metrics_))

    def deviation(self, X: np.ndarray) -> np.ndarray:
        """Per metric, how far a window is from normal: max |z| over mean, min, max and last."""
        m = len(self.metrics_)
        parts = [np.abs(X[:, k * m:(k + 1) * m]) for k in (0, 2, 3, 4)]
        return np.maximum.reduce(parts)
