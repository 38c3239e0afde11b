"""The trailing level: each metric's slow level over the rows before (:func:`trailing_level`),
in fixed point so that a row's level is the same bits however rows are chunked; the online loop
keeps its sums running (:func:`level_units`, :func:`level_of_sums`)."""

from __future__ import annotations

import numpy as np

try:
    from ftml import _window_kernel
except ImportError:  # not built (a source tree never pip-installed): numpy does the same sums
    _window_kernel = None


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
