"""The decision: window flags -> events, with minimum duration, merging and cooldown
(:class:`EventBuilder`, by the :class:`EventRules`). The same builder serves one-shot batch,
chunked batch and the online loop, so all three give the same events for the same windows."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ftml.config import DetectConfig
from ftml.errors import InputError

_DC = DetectConfig()  # the defaults' one home


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


# A bundle names each class it holds by its module (ftml.bundle's codec), and a pickle too:
# EventRules keeps the name it was always stored under.
EventRules.__module__ = "ftml.detect"
