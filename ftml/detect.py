"""Detection in three separate steps: score (IsolationForest), threshold (calibrated to a
false-alarm budget), and decision (window flags -> events with minimum duration, merging and
cooldown). The same :class:`EventBuilder` serves one-shot batch, chunked batch and the online
loop, so all three give the same events for the same windows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.ensemble import IsolationForest
from sklearn.utils.validation import check_is_fitted, validate_data

NS_PER_DAY = 86_400 * 10**9


class IsolationDetector(BaseEstimator):
    """IsolationForest that scores windows on a readable 0..1 scale (higher = more anomalous).

    The score is the anomaly score of the original paper, ``2 ** (-E[h(x)] / c(n))``: about
    0.5 for ordinary points, close to 1 for points isolated in very few splits.
    """

    def __init__(self, n_estimators: int = 200, max_samples: int | float | str = 512,
                 random_state: int | None = 0, n_jobs: int | None = None):
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.random_state = random_state
        self.n_jobs = n_jobs

    def fit(self, X, y=None):
        X = validate_data(self, X, dtype=np.float64)
        max_samples = self.max_samples
        if isinstance(max_samples, int):
            max_samples = min(max_samples, X.shape[0])
        self.forest_ = IsolationForest(n_estimators=self.n_estimators, max_samples=max_samples,
                                       random_state=self.random_state, n_jobs=self.n_jobs).fit(X)
        return self

    def score_samples(self, X) -> np.ndarray:
        check_is_fitted(self, "forest_")
        X = validate_data(self, X, dtype=np.float64, reset=False)
        if X.shape[0] == 0:
            return np.empty(0)
        return -self._scorer().score_samples(X)

    def _scorer(self):
        # The fast scorer is compiled from the fitted forest when first needed, never pickled:
        # a bundle then holds only scikit-learn's forest and loads whatever ftml.fast becomes.
        fast = self.__dict__.get("_fast")
        if fast is None:
            fast = self.__dict__["_fast"] = _compile(self.forest_) or self.forest_
        return fast

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_fast", None)
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags


def _compile(forest):
    """A faster, identical scorer when ftml.fast is available; else None (sklearn scores)."""
    try:
        from ftml.fast import compile_forest
    except ImportError:
        return None
    return compile_forest(forest)


# --------------------------------------------------------------------------- events


@dataclass
class EventRules:
    """How window flags become events. Durations are in steps."""

    min_windows: int = 5  # k flagged windows ...
    of_windows: int = 8  # ... within the last n steps make the event active
    merge_gap: int = 10  # active windows this close belong to one event
    cooldown: int = 30  # after an event, a new one this soon is suppressed


@dataclass
class RawEvent:
    """An event before diagnosis: where, when, how strong, and its most anomalous windows."""

    entity: str
    start_ns: int  # first flagged window that made the event
    end_ns: int  # last active window
    detected_ns: int  # when the k-of-n condition first held
    peak_score: float
    n_windows: int
    payload: np.ndarray  # what the caller pushed for the highest-scored windows (features)
    top_scores: np.ndarray


def find_runs(t: np.ndarray, flags: np.ndarray, rules: EventRules
              ) -> list[tuple[int, int, int]]:
    """One entity's windows (``t`` in steps, increasing) -> runs of active windows as
    ``(start_index, first_active_index, last_active_index)``; no cooldown applied."""
    n = len(t)
    if n == 0 or not flags.any():
        return []
    counts = np.r_[0, np.cumsum(flags)]
    lo = np.searchsorted(t, t - rules.of_windows, side="right")
    active = flags & (counts[np.arange(1, n + 1)] - counts[lo] >= rules.min_windows)
    idx = np.flatnonzero(active)
    if idx.size == 0:
        return []
    new = np.r_[True, np.diff(t[idx]) > rules.merge_gap]
    firsts = idx[new]
    lasts = idx[np.r_[new[1:], True]]
    # The event starts at the first flag inside the k-of-n lookback of its first active window.
    flag_idx = np.flatnonzero(flags)
    starts = flag_idx[np.searchsorted(flag_idx, lo[firsts], side="left")]
    return list(zip(starts.tolist(), firsts.tolist(), lasts.tolist(), strict=True))


@dataclass
class _EntityState:
    t: np.ndarray  # pending windows of this entity (time in steps)
    scores: np.ndarray
    payload: np.ndarray  # per window: whatever the caller needs back (features, indexes)
    last_kept_end: float = -np.inf  # end of the last reported event (for the cooldown)


@dataclass
class EventBuilder:
    """Streaming window flags -> events. Feed windows in time order per entity with
    :meth:`push`; events come out once they can no longer change; :meth:`flush` ends the
    stream. Whatever the chunking, the events are the same."""

    rules: EventRules
    threshold: float
    step_ns: int
    top_windows: int = 32
    _state: dict[str, _EntityState] = field(default_factory=dict)

    def push(self, entity: np.ndarray, end_ns: np.ndarray, scores: np.ndarray,
             payload: np.ndarray) -> list[RawEvent]:
        """Windows (any order) -> events that ended. ``payload`` rows (e.g. the features) come
        back in :attr:`RawEvent.payload` for the event's highest-scored windows."""
        out: list[RawEvent] = []
        if len(end_ns) == 0:
            return out
        codes, names = pd.factorize(entity)
        ordered = (np.all(np.diff(codes) >= 0) and
                   np.all((np.diff(end_ns) > 0) | (np.diff(codes) > 0)))
        if not ordered:  # batch chunks come ordered already; online ticks do not
            order = np.lexsort((end_ns, codes))
            codes, end_ns, scores, payload = (codes[order], end_ns[order], scores[order],
                                              payload[order])
        entity = np.asarray(names, dtype=object)[codes]
        bounds = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1], True])
        t_all = end_ns // self.step_ns
        for a, b in zip(bounds[:-1], bounds[1:], strict=False):  # per entity, not per row
            out.extend(self._push_entity(str(entity[a]), t_all[a:b], scores[a:b], payload[a:b],
                                         final=False))
        return out

    def flush(self) -> list[RawEvent]:
        out: list[RawEvent] = []
        for name in sorted(self._state):
            st = self._state[name]
            out.extend(self._push_entity(name, st.t[:0], st.scores[:0], st.payload[:0], final=True))
        return out

    def open_events(self) -> list[RawEvent]:
        """Events still active at the end of what was pushed (for the online loop)."""
        out = []
        for name, st in self._state.items():
            runs = find_runs(st.t, st.scores >= self.threshold, self.rules)
            for r in runs:
                if st.t[-1] - st.t[r[2]] <= self.rules.merge_gap:
                    out.append(self._event(name, st, r))
        return out

    def _push_entity(self, name: str, t, scores, payload, final: bool) -> list[RawEvent]:
        st = self._state.get(name)
        quiet = not (scores >= self.threshold).any() and (
            st is None or not (st.scores >= self.threshold).any())
        if quiet and not final and len(t):
            # Nothing flagged anywhere: only the k-of-n look-back needs keeping (copied, so
            # that the caller's chunk can be freed).
            keep = slice(np.searchsorted(t, t[-1] - self.rules.of_windows, side="left"), None)
            tail = (t[keep].copy(), scores[keep].copy(), payload[keep].copy())
            if st is None:
                self._state[name] = _EntityState(*tail)
            else:
                st.t, st.scores, st.payload = tail
            return []
        if st is None:
            st = self._state[name] = _EntityState(t, scores, payload)
        else:
            st.t = np.concatenate([st.t, t])
            st.scores = np.concatenate([st.scores, scores])
            st.payload = np.concatenate([st.payload, payload])
        if len(st.t) == 0:
            return []
        runs = find_runs(st.t, st.scores >= self.threshold, self.rules)
        now = st.t[-1]
        out = []
        keep_from = None
        for run in runs:
            start, first, last = run
            if not final and now - st.t[last] <= self.rules.merge_gap:
                keep_from = first  # still open: keep its windows and their lookback
                break
            if st.t[start] - st.last_kept_end <= self.rules.cooldown:
                continue  # flapping right after an event: suppressed
            st.last_kept_end = st.t[last]
            out.append(self._event(name, st, run))
        if final:
            del self._state[name]
            return out
        if keep_from is not None:
            cut = np.searchsorted(st.t, st.t[keep_from] - self.rules.of_windows, side="left")
        else:
            cut = np.searchsorted(st.t, now - self.rules.of_windows, side="left")
        st.t, st.scores, st.payload = (st.t[cut:].copy(), st.scores[cut:].copy(),
                                       st.payload[cut:].copy())
        return out

    def _event(self, name: str, st: _EntityState, run: tuple[int, int, int]) -> RawEvent:
        start, first, last = run
        seg = slice(start, last + 1)
        scores = st.scores[seg]
        k = min(self.top_windows, len(scores))
        top = np.argsort(-scores, kind="stable")[:k]
        top = np.sort(top)
        return RawEvent(entity=name, start_ns=int(st.t[start] * self.step_ns),
                        end_ns=int(st.t[last] * self.step_ns),
                        detected_ns=int(st.t[first] * self.step_ns),
                        peak_score=float(scores.max()), n_windows=int(last - start + 1),
                        payload=st.payload[seg][top], top_scores=scores[top])


def build_events(entity: np.ndarray, end_ns: np.ndarray, scores: np.ndarray,
                 threshold: float, rules: EventRules, step_ns: int) -> list[RawEvent]:
    """All events of a complete set of windows; payload = index into the given arrays."""
    builder = EventBuilder(rules, threshold, step_ns, top_windows=1)
    events = builder.push(entity, end_ns, scores, np.arange(len(end_ns)))
    return events + builder.flush()


# --------------------------------------------------------------------------- threshold


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

    budget: float = 0.2
    rules: EventRules = field(default_factory=EventRules)

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
        self.false_alarms_ = int(false_alarms(self.threshold_))
        self.false_alarms_per_entity_day_ = self.false_alarms_ / days if days else 0.0
        return self


def _entity_days(entity: np.ndarray, end_ns: np.ndarray, step_ns: int) -> float:
    if len(end_ns) == 0:
        return 0.0
    # Count windows, not spans: gaps in the data are not time in which alarms could be raised.
    return len(end_ns) * step_ns / NS_PER_DAY

