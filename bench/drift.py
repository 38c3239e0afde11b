"""Drift-following scores (bench/PROTOCOL_generalization.md, round 3; measured, not the
default: bench/SELECTION_generalization.md): each entity's score
taken down by how far its own previous UTC day sat above normal, and narrowed by how much
wider that day spread, so that an entity whose normal moved after calibration stops raising
alarms on its new normal from the next day on (a causal, label-free correction, like DSPOT's
drift term). One-sided: a quiet day never raises scores.

``s' = M + (s - max(0, m - M) - M) / max(1, (q - m) / (Q - M))``, with ``m``, ``q`` the median
and :data:`DRIFT_QUANTILE` quantile of the entity's scores on the previous UTC day (of a
window's last step) and ``M``, ``Q`` the same of the forest's scores on its fit windows. A day
whose previous day holds fewer than a quarter of a day's steps of the entity's windows keeps
its scores.

Round 4 (amendment 2026-12-06 22:24): :func:`band_scores`, the median shift alone, and only by
how far the previous day moved beyond a dead band, the healthy training days' wobble
(:func:`dead_band`); optionally the smaller of the two previous days' (persistence).
"""

from __future__ import annotations

import numpy as np

NS_PER_DAY = 86_400 * 10**9
#: The spread of a day: its median to this quantile (incidents fill a few % of windows at
#: most, so the 90 % quantile is a healthy day's, not an incident's).
DRIFT_QUANTILE = 0.9
#: A previous day counts when it holds at least this share of a day's steps of windows.
DRIFT_MIN_DAY_SHARE = 0.25


def sorted_quantile(v: np.ndarray, p: float) -> float:
    """numpy's linear quantile of an ascending array (the same arithmetic as
    :func:`day_stats`, so one day's figure is the same bits however it was gathered)."""
    n = len(v)
    x = (n - 1) * p
    lo = int(np.floor(x))
    hi = min(lo + 1, n - 1)
    return float(v[lo] + (v[hi] - v[lo]) * (x - lo))


def day_stats(entity: np.ndarray, end_ns: np.ndarray, scores: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per (entity, UTC day) of the windows: entity, day, count, median, 90 % quantile."""
    day = np.asarray(end_ns, dtype=np.int64) // NS_PER_DAY
    ent = np.asarray(entity).astype(str)
    order = np.lexsort((scores, day, ent))
    e, d, s = ent[order], day[order], np.asarray(scores, dtype=np.float64)[order]
    if not len(s):
        return (np.empty(0, dtype=ent.dtype), np.empty(0, np.int64), np.empty(0, np.int64),
                np.empty(0), np.empty(0))
    start = np.flatnonzero(np.r_[True, (e[1:] != e[:-1]) | (d[1:] != d[:-1])])
    count = np.diff(np.r_[start, len(s)])

    def q(p: float) -> np.ndarray:
        x = (count - 1) * p
        lo = np.floor(x).astype(np.int64)
        hi = np.minimum(lo + 1, count - 1)
        a, b = s[start + lo], s[start + hi]
        return a + (b - a) * (x - lo)

    return e[start], d[start], count, q(0.5), q(DRIFT_QUANTILE)


def drift_adjust(scores: np.ndarray, prev_median: np.ndarray, prev_q: np.ndarray,
                 valid: np.ndarray, reference: tuple[float, float], widen: bool = True
                 ) -> np.ndarray:
    """Each score corrected by its previous day's median and spread (where ``valid``)."""
    M, Q = reference
    s = np.asarray(scores, dtype=np.float64)
    shift = np.where(valid, np.maximum(0.0, prev_median - M), 0.0)
    out = s - shift
    if widen:
        w = np.where(valid, np.maximum(1.0, (prev_q - prev_median) / max(Q - M, 1e-12)), 1.0)
        out = M + (out - M) / w
    return out


def _previous_days(entity: np.ndarray, end_ns: np.ndarray, scores: np.ndarray, step_ns: int,
                   lag: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per window: the median and 90 % quantile of its entity's scores ``lag`` UTC days before
    its own day, and whether that day counts (at least a quarter of a day's steps)."""
    e, d, count, med, q = day_stats(entity, end_ns, scores)
    min_count = DRIFT_MIN_DAY_SHARE * NS_PER_DAY / step_ns
    ent = np.asarray(entity).astype(str)
    day = np.asarray(end_ns, dtype=np.int64) // NS_PER_DAY
    # Each window's (entity, day - lag) among the groups (sorted by entity, then day), by a
    # search on integer keys: entity code, then day.
    names, code = np.unique(ent, return_inverse=True)
    g_code = np.searchsorted(names, e)
    span = int(max(d.max(), day.max()) - min(d.min(), day.min())) + lag + 1
    base = int(min(d.min(), day.min()))
    keys = g_code.astype(np.int64) * span + (d - base + lag)  # the day each group serves
    mine = code.astype(np.int64) * span + (day - base)
    pos = np.clip(np.searchsorted(keys, mine), 0, len(keys) - 1)
    valid = (keys[pos] == mine) & (count[pos] >= min_count)
    return med[pos], q[pos], valid


def drift_scores(entity: np.ndarray, end_ns: np.ndarray, scores: np.ndarray, step_ns: int,
                 reference: tuple[float, float], widen: bool = True) -> np.ndarray:
    """:func:`drift_adjust` of every window of one scored period at once (all its windows
    given: each day's correction comes from the day before in the same data)."""
    if not len(scores):
        return np.asarray(scores, dtype=np.float64)
    med, q, valid = _previous_days(entity, end_ns, scores, step_ns, 1)
    return drift_adjust(scores, med, q, valid, reference, widen)


# --------------------------------------------------------------------------- round 4: dead band

#: The dead band: this quantile of healthy training days' median excess (round 4).
BAND_QUANTILE = 0.99


def dead_band(entity: np.ndarray, end_ns: np.ndarray, scores: np.ndarray, step_ns: int,
              median: float) -> float:
    """How far a healthy day's median sits above ``median`` at most (its
    :data:`BAND_QUANTILE`), over the (entity, UTC day)s of the given windows (the training
    windows clear of incidents) with at least a quarter of a day's steps; ``inf`` when no day
    counts (the wobble is unknown, so nothing may be corrected)."""
    if not len(scores):
        return float("inf")
    _, _, count, med, _ = day_stats(entity, end_ns, scores)
    ok = count >= DRIFT_MIN_DAY_SHARE * NS_PER_DAY / step_ns
    if not ok.any():
        return float("inf")
    return max(0.0, float(np.quantile(med[ok] - median, BAND_QUANTILE)))


def band_scores(entity: np.ndarray, end_ns: np.ndarray, scores: np.ndarray, step_ns: int,
                median: float, band: float, days: int = 1) -> np.ndarray:
    """Each score less how far its entity's previous day's median moved beyond the dead band
    (``s - max(0, m - median - band)``); with ``days=2`` the smaller of the two previous days'
    medians, both days counting (a regime persists, an incident of hours does not). One-sided:
    a quiet day never raises scores; a day whose previous day(s) do not count is unchanged."""
    s = np.asarray(scores, dtype=np.float64)
    if not len(s) or not np.isfinite(band):
        return s.copy()
    m, _, valid = _previous_days(entity, end_ns, s, step_ns, 1)
    for lag in range(2, days + 1):
        m2, _, v2 = _previous_days(entity, end_ns, s, step_ns, lag)
        m, valid = np.minimum(m, m2), valid & v2
    return s - np.where(valid, np.maximum(0.0, m - median - band), 0.0)
