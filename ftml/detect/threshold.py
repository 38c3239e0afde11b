"""The threshold: the lowest score whose events raise at most the false-alarm budget on
calibration windows (:class:`AlarmThreshold`), empirical or no lower than a peaks-over-threshold
tail fit puts it (:func:`tail_threshold`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ftml.config import DetectConfig
from ftml.detect.builder import EventRules, build_events

NS_PER_DAY = 86_400 * 10**9
_DC = DetectConfig()  # the defaults' one home


def overlaps(entity: str, start_ns: int, end_ns: int, incidents: dict[str, np.ndarray],
             tolerance_ns: int = 0) -> bool:
    spans = incidents.get(entity)
    if spans is None or len(spans) == 0:
        return False
    return bool(np.any((spans[:, 0] - tolerance_ns <= end_ns) & (spans[:, 1] + tolerance_ns
                                                                 >= start_ns)))


@dataclass
class AlarmThreshold:
    """Chooses the lowest score threshold whose events, on calibration windows, raise at most
    ``budget`` false alarms per entity per day (events that overlap no labelled incident)."""

    budget: float = _DC.alarm_budget
    rules: EventRules = field(default_factory=EventRules)
    # "empirical": the lowest threshold within budget on the calibration windows; "pot": no
    # lower than that, and no lower than where a generalised Pareto tail fitted to the
    # calibration's false-alarm peaks puts the budget (see tail_threshold).
    tail: str = _DC.threshold_tail

    def fit(self, entity: np.ndarray, end_ns: np.ndarray, scores: np.ndarray, step_ns: int,
            incidents: dict[str, np.ndarray] | None = None) -> AlarmThreshold:
        incidents = incidents or {}
        days = _entity_days(entity, end_ns, step_ns)
        self.entity_days_ = days
        tol = self.rules.of_windows * step_ns

        def false_alarms(thr: float) -> int:
            evs = build_events(entity, end_ns, scores, thr, self.rules, step_ns)
            return sum(not overlaps(e.entity, e.start_ns, e.end_ns, incidents, tol) for e in evs)

        allowed = self.budget * days
        # Candidates: high quantiles of the scores; false alarms fall as the threshold rises,
        # so a bisection finds the lowest threshold within budget.
        qs = 1.0 - np.geomspace(0.3, 1e-6, 80)
        cands = np.unique(np.quantile(scores, qs)) if len(scores) else np.array([1.0])
        cands = np.r_[cands, np.nextafter(scores.max(), np.inf) if len(scores) else 1.0]
        lo, hi = 0, len(cands) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if false_alarms(cands[mid]) <= allowed:
                hi = mid
            else:
                lo = mid + 1
        self.threshold_ = float(cands[lo])
        self.empirical_threshold_ = self.threshold_
        self.tail_ = None
        if self.tail == "pot":
            self.tail_ = tail_threshold(entity, end_ns, scores, self.rules, step_ns,
                                        incidents, self.budget, days)
            if self.tail_ is not None:
                self.threshold_ = max(self.threshold_, self.tail_["threshold"])
        elif self.tail != "empirical":
            raise ValueError(f"unknown threshold tail {self.tail!r}; use empirical or pot")
        self.false_alarms_ = int(false_alarms(self.threshold_))
        self.false_alarms_per_entity_day_ = self.false_alarms_ / days if days else 0.0
        return self


def _entity_days(entity: np.ndarray, end_ns: np.ndarray, step_ns: int) -> float:
    if len(end_ns) == 0:
        return 0.0
    # Count windows, not spans: gaps in the data are not time in which alarms could be raised.
    return len(end_ns) * step_ns / NS_PER_DAY



# --------------------------------------------------------------------------- tail fit

#: Fewest false-alarm peaks above the base level for a tail fit; with fewer, no tail.
MIN_TAIL_PEAKS = 8
#: Peaks the base level aims at (SPOT's 98 % quantile gives a few dozen on a day of windows).
TAIL_PEAKS = 30
#: A tail fitted to a few dozen peaks is trusted to reach this many times fewer false alarms
#: than it saw, no further: a calibration slice far shorter than the budget's horizon (an hour
#: of windows, a budget per day) leaves the empirical threshold in charge.
MAX_TAIL_EXTRAPOLATION = 100.0
#: The fitted shape is kept within these bounds: a few dozen peaks cannot tell a bounded
#: tail (shape < 0) from noise, and a promise about the future must not bet on one.
TAIL_SHAPE = (0.0, 0.5)


def opening_scores(entity: np.ndarray, end_ns: np.ndarray, scores: np.ndarray,
                   rules: EventRules, step_ns: int) -> np.ndarray:
    """Per window, the highest threshold at which the k-of-n rule would hold there: the
    smaller of its own score and the k-th highest score among the windows of its entity in
    the ``of_windows`` steps up to it (as :func:`find_runs` counts them). An event opens at a
    threshold exactly where this reaches it."""
    n, k = int(rules.of_windows), int(rules.min_windows)
    m = len(scores)
    if m == 0:
        return np.empty(0)
    order = np.lexsort((end_ns, entity))
    ent, t, s = entity[order], end_ns[order] // step_ns, scores[order].astype(np.float64)
    last = np.full((m, n), -np.inf)
    for j in range(n):  # n (8) shifted copies: windows j places back, if in the look-back
        same = np.zeros(m, dtype=bool)
        same[j:] = (ent[j:] == ent[:m - j]) & (t[j:] - t[:m - j] < n)
        last[j:, j] = np.where(same[j:], s[:m - j], -np.inf)
    kth = -np.sort(-last, axis=1)[:, k - 1] if k <= n else np.full(m, -np.inf)
    out = np.empty(m)
    out[order] = np.minimum(s, kth)
    return out


def _peaks(entity: np.ndarray, end_ns: np.ndarray, opening: np.ndarray, level: float,
           rules: EventRules, step_ns: int, incidents: dict[str, np.ndarray]
           ) -> np.ndarray:
    """Peak opening score of each would-be event above ``level`` that overlaps no incident:
    windows above it closer than ``merge_gap + cooldown`` steps are one event."""
    above = np.flatnonzero(opening >= level)
    if not len(above):
        return np.empty(0)
    order = above[np.lexsort((end_ns[above], entity[above]))]
    ent, t, o = entity[order], end_ns[order], opening[order]
    gap = (rules.merge_gap + rules.cooldown) * step_ns
    new = np.r_[True, (ent[1:] != ent[:-1]) | (np.diff(t) > gap)]
    group = np.cumsum(new) - 1
    peak = np.full(group[-1] + 1, -np.inf)
    np.maximum.at(peak, group, o)
    first, last = np.flatnonzero(new), np.r_[np.flatnonzero(new)[1:], len(t)] - 1
    tol = rules.of_windows * step_ns
    false = np.array([not overlaps(str(ent[a]), int(t[a]) - rules.of_windows * step_ns,
                                   int(t[b]), incidents, tol)
                      for a, b in zip(first, last, strict=True)], dtype=bool)
    return peak[false]


def tail_threshold(entity: np.ndarray, end_ns: np.ndarray, scores: np.ndarray,
                   rules: EventRules, step_ns: int, incidents: dict[str, np.ndarray] | None,
                   budget: float, entity_days: float) -> dict[str, Any] | None:
    """Peaks over threshold (SPOT, Siffer et al. KDD'17) on the would-be false alarms: the
    peak opening score (:func:`opening_scores`) of each false alarm a low base level would
    raise on the calibration windows; a generalised Pareto distribution fitted to their
    excesses over that level; and the level whose expected false alarms per entity-day equal
    ``budget``. None when the calibration windows give too few peaks to fit."""
    if entity_days <= 0 or budget <= 0 or len(scores) < rules.of_windows:
        return None
    from scipy.stats import genpareto

    incidents = incidents or {}
    opening = opening_scores(entity, end_ns, scores, rules, step_ns)
    finite = opening[np.isfinite(opening)]
    if len(finite) < MIN_TAIL_PEAKS:
        return None
    # The highest base level with about TAIL_PEAKS false-alarm peaks above it: a bisection over
    # the opening scores' quantiles (peaks fall as the level rises).
    qs = 1.0 - np.geomspace(0.5, 1e-5, 60)
    levels = np.unique(np.quantile(finite, qs))
    counts = {}

    def n_peaks(i: int) -> int:
        if i not in counts:
            counts[i] = len(_peaks(entity, end_ns, opening, levels[i], rules, step_ns,
                                   incidents))
        return counts[i]

    lo, hi = 0, len(levels) - 1
    while lo < hi:  # the highest level with at least TAIL_PEAKS peaks
        mid = (lo + hi + 1) // 2
        if n_peaks(mid) >= TAIL_PEAKS:
            lo = mid
        else:
            hi = mid - 1
    level = levels[lo]
    peaks = _peaks(entity, end_ns, opening, level, rules, step_ns, incidents)
    if len(peaks) < MIN_TAIL_PEAKS:
        return None
    excess = peaks - level
    rate = len(peaks) / entity_days  # false alarms per entity-day at the base level
    if rate <= budget:
        return {"threshold": float(level), "base": float(level), "peaks": int(len(peaks)),
                "shape": None, "scale": None}
    if np.ptp(excess) <= 0 or rate / budget > MAX_TAIL_EXTRAPOLATION:
        return None
    shape, _, scale = genpareto.fit(excess, floc=0.0)
    shape = float(np.clip(shape, *TAIL_SHAPE))
    if scale <= 0 or not np.isfinite(scale):
        return None
    ratio = rate / budget
    rise = scale * np.log(ratio) if abs(shape) < 1e-6 else scale / shape * (ratio ** shape - 1)
    return {"threshold": float(level + rise), "base": float(level), "peaks": int(len(peaks)),
            "shape": shape, "scale": float(scale)}
