"""Detection in three separate steps: score (IsolationForest), threshold (calibrated to a
false-alarm budget), and decision (window flags -> events with minimum duration, merging and
cooldown). The same :class:`EventBuilder` serves one-shot batch, chunked batch and the online
loop, so all three give the same events for the same windows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.ensemble import IsolationForest
from sklearn.utils.validation import check_is_fitted, validate_data

from ftml.config import DetectConfig
from ftml.errors import InputError

NS_PER_DAY = 86_400 * 10**9
_DC = DetectConfig()  # the defaults' one home


class IsolationDetector(BaseEstimator):
    """IsolationForest that scores windows on a readable 0..1 scale (higher = more anomalous).

    The score is the anomaly score of the original paper, ``2 ** (-E[h(x)] / c(n))``: about
    0.5 for ordinary points, close to 1 for points isolated in very few splits.
    """

    def __init__(self, *, n_estimators: int = _DC.n_estimators,
                 max_samples: int | float | str = _DC.max_samples,
                 random_state: int | None = _DC.random_state, n_jobs: int | None = None,
                 ensemble: str = _DC.ensemble):
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.ensemble = ensemble

    def fit(self, X, y=None):
        X = validate_data(self, X, dtype=np.float64)
        if self.ensemble not in ENSEMBLES:
            raise ValueError(f"unknown ensemble {self.ensemble!r}; use one of "
                             f"{', '.join(ENSEMBLES)}")
        max_samples = self.max_samples
        if isinstance(max_samples, int):
            max_samples = min(max_samples, X.shape[0])
        self.forest_ = IsolationForest(n_estimators=self.n_estimators, max_samples=max_samples,
                                       random_state=self.random_state, n_jobs=self.n_jobs).fit(X)
        self.scales_ = None
        if self.ensemble != "forest" and X.shape[0]:
            # Each part's typical value and its 99.9 % on the fit windows: the two become one
            # score by how far into their own tail they are, in the forest's units.
            forest, robust = self.component_scores(X)
            self.scales_ = np.array([np.quantile(forest, [0.5, 0.999]),
                                     np.quantile(robust, [0.5, 0.999])])
        return self

    def component_scores(self, X) -> tuple[np.ndarray, np.ndarray]:
        """The forest's score and the robust statistic of each window: the largest deviation
        of any metric (the view's cross-metric column, signed log of the robust z)."""
        check_is_fitted(self, "forest_")
        X = validate_data(self, X, dtype=np.float64, reset=False)
        if X.shape[0] == 0:
            return np.empty(0), np.empty(0)
        return -self._scorer().score_samples(X), X[:, -2].copy()

    def score_samples(self, X) -> np.ndarray:
        check_is_fitted(self, "forest_")
        X = validate_data(self, X, dtype=np.float64, reset=False)
        if X.shape[0] == 0:
            return np.empty(0)
        forest = -self._scorer().score_samples(X)
        scales = getattr(self, "scales_", None)
        if scales is None:
            return forest
        return combine_scores(forest, X[:, -2], scales, self.ensemble)

    def _scorer(self):
        # The fast scorer is compiled from the fitted forest when first needed, never pickled.
        # A bundle holds the compiled arrays (ftml.bundle), so a loaded detector's forest_ is
        # the FastForest itself and scores with no scikit-learn forest rebuilt.
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


#: What scores a window: the forest alone, or the forest and the robust statistic together,
#: each as a distance into its own tail: their mean ("forest+robust") or the larger
#: ("forest|robust", either one alone can flag).
ENSEMBLES = ("forest", "forest+robust", "forest|robust")


def combine_scores(forest: np.ndarray, robust: np.ndarray, scales: np.ndarray,
                   how: str = "forest+robust") -> np.ndarray:
    """One score from the forest's and the robust statistic's: each as a distance into its
    own tail on the fit windows ((s - median) / (q99.9 - median)), then their mean
    (``forest+robust``) or the larger (``forest|robust``), put back in the forest's units (so
    ordinary windows still score about the forest's median)."""
    (f50, f999), (r50, r999) = scales
    fs = max(f999 - f50, 1e-12)
    rs = max(r999 - r50, 1e-12)
    f, r = (forest - f50) / fs, (robust - r50) / rs
    return f50 + fs * (np.maximum(f, r) if how == "forest|robust" else 0.5 * (f + r))


def _compile(forest):
    """A faster, identical scorer when ftml.fast is available; else None (sklearn scores)."""
    try:
        from ftml.fast import FastForest, compile_forest
    except ImportError:
        return None
    if isinstance(forest, FastForest):  # a detector loaded from a bundle: compiled already
        return forest
    return compile_forest(forest)


# --------------------------------------------------------------------------- events


@dataclass
class EventRules:
    """How window flags become events. Durations are in steps."""

    min_windows: int = _DC.min_windows  # k flagged windows ...
    of_windows: int = _DC.of_windows  # ... within the last n steps make the event active
    merge_gap: int = _DC.merge_gap  # active windows this close belong to one event
    cooldown: int = _DC.cooldown  # after an event, no new one starts this soon (a longer one
    # does after)

    @property
    def reach(self) -> int:
        """Every window the builder needs to see is at most this many steps after a flagged
        window of its entity: the flags in an event's k-of-n look-back (``of_windows``), the
        windows between its active ones (at most ``merge_gap`` apart, and active windows are
        flagged), and the first window past ``merge_gap`` after its last active one, which
        closes it."""
        return max(self.of_windows, self.merge_gap + 1)


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
class _Run:
    """The part of an open run already folded away: where it started and its best windows."""

    start_t: int  # its start (first flag), in steps
    start_seq: int  # ... and that window's number
    first_t: int  # its first active window, in steps
    peak: float
    scores: np.ndarray  # the top windows so far (at most top_windows), in time order
    seq: np.ndarray
    payload: np.ndarray


@dataclass
class _EntityState:
    t: np.ndarray  # windows held (time in steps, increasing)
    scores: np.ndarray
    payload: np.ndarray  # per window: whatever the caller needs back (features, indexes)
    seq: np.ndarray  # each window's number among the entity's windows pushed (n_windows)
    active: np.ndarray  # k-of-n held at the window (decided once, when it came)
    next_seq: int = 0
    last_kept_end: float = -np.inf  # end of the last reported event (for the cooldown)
    run: _Run | None = None  # the open run's windows folded out of the arrays above


#: Version of :meth:`EventBuilder.state_dict`; :meth:`EventBuilder.load_state` reads only it.
BUILDER_STATE_VERSION = 1
_STATE_ARRAYS = ("next_seq", "last_kept_end", "held", "t", "scores", "seq", "active",
                 "payload", "run", "run_start_t", "run_start_seq", "run_first_t", "run_peak",
                 "cands", "cand_scores", "cand_seq", "cand_payload")


@dataclass
class EventBuilder:
    """Streaming window flags -> events. Feed windows in time order per entity with
    :meth:`push`; events come out once they can no longer change; :meth:`flush` ends the
    stream. Whatever the chunking, the events are the same.

    Memory is bounded per entity: the last ``of_windows`` steps of windows (the k-of-n
    look-back), and for an open run its windows since the last active one plus its
    ``top_windows`` best windows so far: a run that stays open for days holds O(top_windows)
    payload rows, not one per window. :meth:`state_dict` / :meth:`load_state` save and
    restore all of it (e.g. across a restart of the online loop)."""

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

    def open_events(self, entities: Iterable[str] | None = None) -> list[RawEvent]:
        """Events active at the end of what was pushed (for the online loop), as they would
        be reported if they ended now; of these entities only, if given. An event the
        cooldown will suppress when it ends is not one."""
        out = []
        names = self._state.keys() if entities is None else entities
        for name in names:
            st = self._state.get(name)
            if st is None or len(st.t) == 0:
                continue
            runs = self._runs(st.t, st.scores >= self.threshold, st.active,
                              st.last_kept_end, st.run is not None)
            if not runs:
                continue
            run = runs[-1]  # runs before the last one are closed: at most one is open
            if st.t[-1] - st.t[run[2]] > self.rules.merge_gap:
                continue
            cont = len(runs) == 1 and st.run is not None
            out.append(self._event(name, st, run, cont, st.t, st.scores, st.payload, st.seq))
        return out

    def last_ns(self, entity: str) -> int | None:
        """End of the newest window held for ``entity``; None when nothing is held."""
        st = self._state.get(entity)
        if st is None or len(st.t) == 0:
            return None
        return int(st.t[-1]) * self.step_ns

    # -- state -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything the builder holds, as plain data: ints, floats, lists of str and numpy
        arrays (per-entity fields concatenated, with counts). Picklable; the arrays go into
        ``numpy.savez`` and the rest into JSON. ``version`` is
        :data:`BUILDER_STATE_VERSION`; restore with :meth:`load_state`."""
        names = list(self._state)
        sts = [self._state[n] for n in names]
        runs = [s.run for s in sts]

        def cat(parts, dtype, width=None):
            parts = [np.asarray(p) for p in parts]
            if parts:
                return np.concatenate(parts).astype(dtype, copy=False)
            return np.empty((0,) if width is None else (0, width), dtype=dtype)

        pay_dtype = sts[0].payload.dtype if sts else np.float64
        return {
            "version": BUILDER_STATE_VERSION, "threshold": float(self.threshold),
            "step_ns": int(self.step_ns), "top_windows": int(self.top_windows),
            "rules": {k: int(v) for k, v in vars(self.rules).items()}, "entities": names,
            "next_seq": np.array([s.next_seq for s in sts], dtype=np.int64),
            "last_kept_end": np.array([s.last_kept_end for s in sts], dtype=np.float64),
            "held": np.array([len(s.t) for s in sts], dtype=np.int64),
            "t": cat([s.t for s in sts], np.int64), "scores": cat([s.scores for s in sts],
                                                                    np.float64),
            "seq": cat([s.seq for s in sts], np.int64),
            "active": cat([s.active for s in sts], bool),
            "payload": cat([s.payload for s in sts], pay_dtype),
            "run": np.array([r is not None for r in runs], dtype=bool),
            "run_start_t": np.array([r.start_t if r else 0 for r in runs], dtype=np.int64),
            "run_start_seq": np.array([r.start_seq if r else 0 for r in runs], dtype=np.int64),
            "run_first_t": np.array([r.first_t if r else 0 for r in runs], dtype=np.int64),
            "run_peak": np.array([r.peak if r else np.nan for r in runs], dtype=np.float64),
            "cands": np.array([len(r.seq) if r else 0 for r in runs], dtype=np.int64),
            "cand_scores": cat([r.scores for r in runs if r], np.float64),
            "cand_seq": cat([r.seq for r in runs if r], np.int64),
            "cand_payload": cat([r.payload for r in runs if r], pay_dtype),
        }

    def load_state(self, state: Mapping[str, Any]) -> EventBuilder:
        """Replace what the builder holds with a :meth:`state_dict` (also one that went
        through JSON: lists are taken for arrays). Refuses another version, or the state of a
        builder with other rules, threshold, step or top_windows."""
        version = state.get("version") if isinstance(state, Mapping) else None
        if version != BUILDER_STATE_VERSION:
            raise InputError(f"event builder state version {version!r} is not supported "
                             f"(this ftml reads {BUILDER_STATE_VERSION})",
                             source="event builder state",
                             hint="start the builder afresh (e.g. without the old checkpoint)")
        mine = {"threshold": float(self.threshold), "step_ns": int(self.step_ns),
                "top_windows": int(self.top_windows),
                "rules": {k: int(v) for k, v in vars(self.rules).items()}}
        theirs = {k: state.get(k) for k in mine}
        if theirs != mine:
            raise InputError("event builder state is of another builder (rules, threshold, "
                             f"step or top_windows differ: {theirs} vs {mine})",
                             source="event builder state", hint="start the builder afresh")
        missing = [k for k in ("entities", *_STATE_ARRAYS) if k not in state]
        if missing:
            raise InputError(f"event builder state lacks {', '.join(missing)}",
                             source="event builder state", hint="start the builder afresh")
        a = {k: np.asarray(state[k]) for k in _STATE_ARRAYS}
        names = [str(n) for n in state["entities"]]
        held = np.r_[0, np.cumsum(a["held"].astype(np.int64))]
        cands = np.r_[0, np.cumsum(a["cands"].astype(np.int64))]
        out: dict[str, _EntityState] = {}
        for i, name in enumerate(names):
            h, c = slice(held[i], held[i + 1]), slice(cands[i], cands[i + 1])
            run = None
            if bool(a["run"][i]):
                run = _Run(int(a["run_start_t"][i]), int(a["run_start_seq"][i]),
                           int(a["run_first_t"][i]), float(a["run_peak"][i]),
                           a["cand_scores"][c].astype(np.float64),
                           a["cand_seq"][c].astype(np.int64), a["cand_payload"][c].copy())
            out[name] = _EntityState(a["t"][h].astype(np.int64), a["scores"][h].astype(
                np.float64), a["payload"][h].copy(), a["seq"][h].astype(np.int64),
                a["active"][h].astype(bool), int(a["next_seq"][i]),
                float(a["last_kept_end"][i]), run)
        self._state = out
        return self

    # -- internals ----------------------------------------------------------------------

    def _runs(self, t: np.ndarray, flags: np.ndarray, active: np.ndarray, kept: float,
              cont: bool) -> list[tuple[int, int, int]]:
        """``find_runs`` over held windows whose activity is already decided, with the
        cooldown: a window within ``cooldown`` steps after the end of the last reported event
        (``kept``) cannot start a run, so a flap right after an event is suppressed, but a
        fault that outlasts the cooldown opens an event from its first active window after
        it. With a folded run (``cont``), the first run continues it (its start and first lie
        in ``st.run``; it cleared the cooldown when it opened)."""
        idx = np.flatnonzero(active)
        if idx.size == 0:
            return []
        rules = self.rules
        new = np.r_[True, np.diff(t[idx]) > rules.merge_gap]
        chain_firsts = idx[new]
        chain_lasts = idx[np.r_[new[1:], True]]
        firsts, lasts = [], []
        # One step per run of active windows (a handful per push), not per window.
        for i, (first, last) in enumerate(zip(chain_firsts.tolist(), chain_lasts.tolist(),
                                              strict=True)):
            if not (i == 0 and cont):
                limit = kept + rules.cooldown
                if t[last] <= limit:
                    continue  # wholly inside the cooldown: suppressed
                if t[first] <= limit:
                    first = int(idx[np.searchsorted(t[idx], limit, side="right")])
            firsts.append(first)
            lasts.append(last)
            kept = t[last]  # the runs before the last one are reported, in this order
        if not firsts:
            return []
        firsts_a = np.asarray(firsts, dtype=np.int64)
        flag_idx = np.flatnonzero(flags)
        lo = np.searchsorted(t, t[firsts_a] - rules.of_windows, side="right")
        starts = flag_idx[np.searchsorted(flag_idx, lo, side="left")]
        return list(zip(starts.tolist(), firsts, lasts, strict=True))

    def _push_entity(self, name: str, t, scores, payload, final: bool) -> list[RawEvent]:
        rules = self.rules
        n = rules.of_windows
        st = self._state.get(name)
        if st is None:
            st = _EntityState(t[:0].copy(), scores[:0].copy(), payload[:0].copy(),
                              np.empty(0, dtype=np.int64), np.empty(0, dtype=bool))
        seq = np.arange(st.next_seq, st.next_seq + len(t), dtype=np.int64)
        st.next_seq += len(t)
        quiet = st.run is None and not (scores >= self.threshold).any() and \
            not (st.scores >= self.threshold).any()
        if quiet and not final and len(t):
            # Nothing flagged anywhere: only the k-of-n look-back needs keeping (copied, so
            # that the caller's chunk can be freed).
            keep = slice(np.searchsorted(t, t[-1] - n, side="left"), None)
            st.t, st.scores, st.payload, st.seq = (t[keep].copy(), scores[keep].copy(),
                                                   payload[keep].copy(), seq[keep])
            st.active = np.zeros(len(st.t), dtype=bool)
            self._state[name] = st
            return []
        m = len(st.t)
        T = np.concatenate([st.t, t])
        S = np.concatenate([st.scores, scores])
        P = np.concatenate([st.payload, payload])
        Q = np.concatenate([st.seq, seq])
        flags = S >= self.threshold
        # Activity of the new windows, once: their k-of-n look-back is held.
        counts = np.r_[0, np.cumsum(flags)]
        lo = np.searchsorted(T, T[m:] - n, side="right")
        A = np.concatenate([st.active, flags[m:] & (counts[m + 1:] - counts[lo]
                                                   >= rules.min_windows)])
        if len(T) == 0:
            self._state.pop(name, None)
            return []
        runs = self._runs(T, flags, A, st.last_kept_end, st.run is not None)
        now = T[-1]
        out = []
        open_run = None
        closed_to = -1
        for i, run in enumerate(runs):
            start, first, last = run
            cont = i == 0 and st.run is not None
            if not final and now - T[last] <= rules.merge_gap:
                open_run = (run, cont)  # still open: keep its windows and their look-back
                break
            closed_to = last
            st.last_kept_end = T[last]  # _runs has left out what the cooldown suppresses
            out.append(self._event(name, st, run, cont, T, S, P, Q))
            if cont:
                st.run = None
        if final:
            self._state.pop(name, None)
            return out
        if closed_to >= 0:
            # Closed runs are reported: their windows stay only as look-back flags.
            A[:closed_to + 1] = False
        if open_run is not None:
            (start, first, last), cont = open_run
            cut = 0 if cont else np.searchsorted(T, T[first] - n, side="left")
            # Fold the run's windows that nothing can change any more into its summary:
            # in the event for sure (before its last active window) and older than any
            # future window's look-back. Done in batches of top_windows (amortised).
            seg0 = 0 if cont else start
            fold = min(last, int(np.searchsorted(T, now - n, side="left")))
            if fold - seg0 >= max(self.top_windows, 1):
                self._fold(st, T, S, P, Q, start, first, seg0, fold, cont)
                cut = fold
        else:
            cut = np.searchsorted(T, now - n, side="left")
        st.t, st.scores, st.payload, st.seq, st.active = (
            T[cut:].copy(), S[cut:].copy(), P[cut:].copy(), Q[cut:].copy(), A[cut:].copy())
        self._state[name] = st
        return out

    def _fold(self, st: _EntityState, T, S, P, Q, start: int, first: int, seg0: int,
              fold: int, cont: bool) -> None:
        scores, seq, payload, peak, start_t, start_seq, first_t = self._gather(
            st, T, S, P, Q, start, first, slice(seg0, fold), cont)
        top = self._top(scores, seq)
        st.run = _Run(int(start_t), int(start_seq), int(first_t), float(peak),
                      scores[top].copy(), seq[top].copy(), payload[top].copy())

    @staticmethod
    def _gather(st: _EntityState, T, S, P, Q, start: int, first: int, seg: slice,
                cont: bool) -> tuple:
        """A run's windows ``seg`` of the held ones, after its folded part when it continues
        one: (scores, seq, payload, peak, start_t, start_seq, first_t)."""
        if cont:
            r = st.run
            return (np.concatenate([r.scores, S[seg]]), np.concatenate([r.seq, Q[seg]]),
                    np.concatenate([r.payload, P[seg]]), np.max(np.r_[r.peak, S[seg]]),
                    r.start_t, r.start_seq, r.first_t)
        return S[seg], Q[seg], P[seg], S[seg].max(), T[start], Q[start], T[first]

    def _top(self, scores: np.ndarray, seq: np.ndarray) -> np.ndarray:
        """The top_windows highest scores (ties: the earlier window), in time order. The top
        of a union is the top of the union of tops: folding keeps exactly these."""
        k = min(self.top_windows, len(scores))
        top = np.lexsort((seq, -scores))[:k]
        return top[np.argsort(seq[top], kind="stable")]

    def _event(self, name: str, st: _EntityState, run: tuple[int, int, int], cont: bool,
               T, S, P, Q) -> RawEvent:
        start, first, last = run
        # With a folded part: it, then the held windows up to the last active one.
        seg = slice(0, last + 1) if cont else slice(start, last + 1)
        scores, seq, payload, peak, start_t, start_seq, first_t = self._gather(
            st, T, S, P, Q, start, first, seg, cont)
        top = self._top(scores, seq)
        return RawEvent(entity=name, start_ns=int(start_t * self.step_ns),
                        end_ns=int(T[last] * self.step_ns),
                        detected_ns=int(first_t * self.step_ns),
                        peak_score=float(peak), n_windows=int(Q[last] - start_seq + 1),
                        payload=payload[top], top_scores=scores[top])


def build_events(entity: np.ndarray, end_ns: np.ndarray, scores: np.ndarray,
                 threshold: float, rules: EventRules, step_ns: int) -> list[RawEvent]:
    """All events of a complete set of windows; payload = index into the given arrays."""
    builder = EventBuilder(rules, threshold, step_ns, top_windows=1)
    events = builder.push(entity, end_ns, scores, np.arange(len(end_ns)))
    return events + builder.flush()


#: Version of :meth:`FlagGate.state_dict`.
GATE_STATE_VERSION = 1


@dataclass
class FlagGate:
    """Which scored windows go on to the :class:`EventBuilder`: those at most
    :attr:`EventRules.reach` steps after a flagged window of their entity (this push's or an
    earlier one's). The builder counts k-of-n by time, not by windows seen, so it gives the
    same events from these as from every window, for a fraction of the features and of its
    work; and an event closes at the same window as with every window.

    The one gate of batch, chunked, Dask and online scoring. It keeps one number per entity
    (the step of its last flag); :meth:`state_dict` / :meth:`load_state` carry it across
    chunks, tasks and restarts."""

    rules: EventRules
    threshold: float
    step_ns: int
    _last_flag: dict[str, int] = field(default_factory=dict)

    def select(self, entity: np.ndarray, end_ns: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Mask of the windows to push; windows sorted by entity, then time. Remembers the
        flags."""
        n = len(end_ns)
        if n == 0:
            return np.zeros(0, dtype=bool)
        t = end_ns // self.step_ns
        flags = scores >= self.threshold
        codes, names = pd.factorize(entity, sort=False)
        names = [str(x) for x in names]
        before = np.array([self._last_flag.get(x, _NO_FLAG) for x in names], dtype=np.int64)
        # The last flag at or before each window in this push, of the same entity...
        idx = np.where(flags, np.arange(n), -1)
        np.maximum.accumulate(idx, out=idx)
        j = np.maximum(idx, 0)
        same = (idx >= 0) & (codes[j] == codes)
        # ... else the entity's last flag from before.
        prev = np.where(same, t[j], before[codes])
        near = (prev != _NO_FLAG) & (t - prev <= self.rules.reach)
        if flags.any():
            newest = np.full(len(names), _NO_FLAG, dtype=np.int64)
            np.maximum.at(newest, codes[flags], t[flags])
            for name, v in zip(names, newest.tolist(), strict=True):
                if v != _NO_FLAG and v > self._last_flag.get(name, _NO_FLAG):
                    self._last_flag[name] = v
        return near

    def forget(self, entities) -> None:
        for name in entities:
            self._last_flag.pop(str(name), None)

    def state_dict(self) -> dict[str, Any]:
        names = list(self._last_flag)
        return {"version": GATE_STATE_VERSION, "entities": names,
                "last_flag": np.array([self._last_flag[n] for n in names], dtype=np.int64)}

    def load_state(self, state: Mapping[str, Any]) -> FlagGate:
        if not isinstance(state, Mapping) or state.get("version") != GATE_STATE_VERSION:
            raise InputError("gate state of another version", source="gate state",
                             hint="start afresh (e.g. without the old checkpoint)")
        self._last_flag = {str(n): int(v) for n, v in
                           zip(state["entities"], np.asarray(state["last_flag"]), strict=True)}
        return self


_NO_FLAG = np.iinfo(np.int64).min


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
