"""Which windows exist (:func:`complete_windows`), their features (:func:`window_features`),
and the containers windows travel in (:class:`Windows`, :class:`WindowBlock`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ftml.features.statistics import STATS, window_stats


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
