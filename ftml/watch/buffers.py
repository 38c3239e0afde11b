"""Per entity: the raw rows kept, its progress in slots, the fast path's ring and the last
window scores; and the recovery engine's reader over them."""

from __future__ import annotations

from typing import Any

import numpy as np

from ftml.playbooks import RECOVERED_PREFIX

NO_SLOT = np.iinfo(np.int64).min // 4  # "no slot yet"; far below any real slot, no overflow


class Buffers:
    """Per entity: the raw rows of the last ``keep`` steps (flat, growable arrays) and the
    standardised values of the last window (``ring``)."""

    def __init__(self, metrics: list[str], step_ns: int, keep_steps: int, window: int,
                 recent: int, win_rows: int | None = None):
        self.metrics = metrics
        self.m = len(metrics)
        self.step_ns = step_ns
        self.keep = keep_steps
        self.w = window
        self.nw = recent
        self.names: list[str] = []
        self.index: dict[str, int] = {}
        self._last_names: list[str] | None = None
        self._last_codes = np.empty(0, dtype=np.int64)
        self.n = 0
        self._ent = np.empty(1024, dtype=np.int64)
        self._ts = np.empty(1024, dtype=np.int64)
        self._vals = np.empty((1024, self.m))
        e = 0
        # Progress, in slots (timestamp // step):
        self.newest = np.empty(e, dtype=np.int64)  # newest slot read
        self.first = np.empty(e, dtype=np.int64)  # first slot ever read (stride alignment)
        self.done = np.empty(e, dtype=np.int64)  # windows ending at or before are scored
        self.last_finite = np.empty((e, self.m), dtype=np.int64)  # per metric
        self.last_score = np.empty(e)
        # The fast path: z (before levels are taken off) of the last grid rows a window needs
        # (``window``: the featurizer's history_steps), the last raw row, and whether they are
        # exactly what normalising the buffer would give.
        self.ring = np.empty((e, window, self.m))
        self.lastval = np.empty((e, self.m))
        self.ring_ok = np.empty(e, dtype=bool)
        # The ring is circular (a slot's row at slot % rows). With a trailing level: the last
        # window's rows less their levels (oldest first), and the fixed-point sum and count,
        # per metric, of the level's span before the next row (features.trailing_level).
        self.win = np.empty((e, window if win_rows is None else win_rows, self.m))
        self.lsum = np.empty((e, self.m), dtype=np.int64)
        self.lcnt = np.empty((e, self.m), dtype=np.int64)
        # Each entity's last `recent` window scores (circular; readers order them by time):
        # what the verify condition `recovered for N windows` reads.
        self.score_t = np.empty((e, recent), dtype=np.int64)
        self.score_s = np.empty((e, recent))
        self.score_head = np.empty(e, dtype=np.int64)

    _PER_ENTITY = {"newest": NO_SLOT, "first": -NO_SLOT, "done": NO_SLOT, "last_finite": NO_SLOT,
                   "last_score": np.nan, "ring": np.nan, "lastval": np.nan, "ring_ok": False,
                   "win": np.nan, "lsum": 0, "lcnt": 0, "score_t": NO_SLOT, "score_s": np.nan,
                   "score_head": 0}

    @property
    def ent(self) -> np.ndarray:
        return self._ent[:self.n]

    @property
    def ts(self) -> np.ndarray:
        return self._ts[:self.n]

    @property
    def vals(self) -> np.ndarray:
        return self._vals[:self.n]

    def codes(self, names: list[str]) -> np.ndarray:
        if names == self._last_names:  # the usual tick: the same entities as the last one
            return self._last_codes
        out = []
        for n in names:  # per distinct entity, not per row
            c = self.index.get(n)
            if c is None:
                c = self.index[n] = len(self.names)
                self.names.append(n)
            out.append(c)
        self._grow()
        self._last_names, self._last_codes = list(names), np.asarray(out, dtype=np.int64)
        return self._last_codes

    def _grow(self) -> None:
        k = len(self.names) - len(self.newest)
        if k <= 0:
            return
        for key, fill in self._PER_ENTITY.items():
            cur = getattr(self, key)
            extra = np.full((k, *cur.shape[1:]), fill, dtype=cur.dtype)
            setattr(self, key, np.concatenate([cur, extra]))

    def slots(self, ts: np.ndarray) -> np.ndarray:
        return np.floor_divide(ts + self.step_ns // 2, self.step_ns)  # as normalise rounds

    def add(self, ent: np.ndarray, ts: np.ndarray, vals: np.ndarray
            ) -> tuple[np.ndarray, int, np.ndarray]:
        """Append rows. Returns (entities touched, rows dropped as too old, a mask of the
        rows that take the fast path: an entity's only new row, the step after its newest,
        complete, with nothing of the entity waiting)."""
        slot = self.slots(ts)
        # Late: older than what the buffer still holds (a backlog newer than that is kept
        # whole until its windows are built, then trimmed).
        old = slot <= self.newest[ent] - self.keep
        late = int(old.sum())
        if late:
            ent, ts, vals, slot = ent[~old], ts[~old], vals[~old], slot[~old]
        prev = self.newest[ent]
        fast = ((np.bincount(ent, minlength=len(self.names))[ent] == 1) & (slot == prev + 1)
                & np.isfinite(vals).all(axis=1) & self.ring_ok[ent] & (self.done[ent] == prev))
        np.maximum.at(self.newest, ent, slot)
        np.minimum.at(self.first, ent, slot)
        r, c = np.nonzero(np.isfinite(vals))
        np.maximum.at(self.last_finite, (ent[r], c), slot[r])
        self._append(ent, ts, vals)
        return np.unique(ent), late, fast

    def _append(self, ent: np.ndarray, ts: np.ndarray, vals: np.ndarray) -> None:
        n, k = self.n, len(ent)
        if n + k > len(self._ent):
            cap = max(2 * len(self._ent), n + k)
            # New arrays, never resized in place: a reader's snapshot stays intact.
            self._ent = np.concatenate([self._ent[:n], np.empty(cap - n, dtype=np.int64)])
            self._ts = np.concatenate([self._ts[:n], np.empty(cap - n, dtype=np.int64)])
            self._vals = np.concatenate([self._vals[:n], np.empty((cap - n, self.m))])
        self._ent[n:n + k] = ent
        self._ts[n:n + k] = ts
        self._vals[n:n + k] = vals
        self.n = n + k

    def drop_rows(self, start: int, codes: np.ndarray) -> None:
        """Forget the rows from ``start`` on of these entities (a tick whose rows failed)."""
        recent = np.arange(self.n) >= start
        keep = ~(recent & np.isin(self.ent, codes))
        self._rebuild(self.ent[keep], self.ts[keep], self.vals[keep])

    def _rebuild(self, ent: np.ndarray, ts: np.ndarray, vals: np.ndarray) -> None:
        # New arrays: a reader's snapshot of the old ones stays intact.
        cap = max(1024, 2 * len(ent))
        self._ent = np.empty(cap, dtype=np.int64)
        self._ts = np.empty(cap, dtype=np.int64)
        self._vals = np.empty((cap, self.m))
        self.n = 0
        self._append(ent, ts, vals)

    def trim(self, factor: float = 2.0) -> bool:
        """Drop rows older than ``keep`` steps behind their entity's newest. Amortised: only
        once the arrays hold ``factor`` times what is needed (0: always). True if it did."""
        if self.n <= factor * self.keep * max(1, len(self.names)) + 4096 * (factor > 0):
            return False
        keep = self.slots(self.ts) > self.newest[self.ent] - self.keep
        self._rebuild(self.ent[keep], self.ts[keep], self.vals[keep])
        return True

    def final_slots(self, codes: np.ndarray, limit: int) -> np.ndarray:
        """Per entity, the last slot whose windows can no longer change: the newest, unless a
        metric's trailing gap is short enough to be filled now and might still grow too long
        to fill (then windows over the gap wait)."""
        newest = self.newest[codes]
        lf = self.last_finite[codes]
        gap = newest[:, None] - lf
        waits = (gap > 0) & (gap <= limit) & (lf > NO_SLOT)
        return np.minimum(newest, np.where(waits, lf, newest[:, None]).min(axis=1))

    # Checkpointed per-entity arrays. Not the fast path's ring, window and level sums (a
    # level_window's rows of every entity: the bulk of a checkpoint): after a restore the
    # general path rebuilds them from the raw rows, exactly (ring_ok starts False).
    ARRAYS = ("newest", "first", "done", "last_finite", "last_score", "lastval", "score_t",
              "score_s", "score_head")

    def remember_scores(self, codes: np.ndarray, t: np.ndarray, scores: np.ndarray) -> None:
        """Keep the last ``nw`` scores of each entity; windows sorted by entity, then time."""
        n = self.nw
        starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
        counts = np.diff(np.r_[starts, len(codes)])
        rank = np.arange(len(codes)) - np.repeat(starts, counts)  # within its entity
        skip = np.repeat(np.maximum(counts - n, 0), counts)  # older than the last n
        keep = rank >= skip
        c = codes[keep]
        pos = (self.score_head[c] + rank[keep] - skip[keep]) % n
        self.score_t[c, pos] = t[keep]
        self.score_s[c, pos] = scores[keep]
        uc = codes[starts]
        self.score_head[uc] = (self.score_head[uc] + np.minimum(counts, n)) % n


class BufferReader:
    """The recovery engine's :class:`ftml.recover.MetricReader` over the loop's buffers: the
    latest raw value of a metric, or None when the newest is older than ``max_age``."""

    def __init__(self, watcher: Any, max_age: float):
        self.watcher = watcher
        self.max_age = max_age

    def latest(self, entity: str, metric: str) -> float | None:
        b = self.watcher._buffers
        code = b.index.get(entity)
        if code is not None and metric.startswith(RECOVERED_PREFIX):
            return self.recovered(entity, code, int(metric[len(RECOVERED_PREFIX):]))
        if code is None or metric not in b.metrics:
            return None
        ent, ts, vals = self.watcher._snapshot  # arrays of one tick: never half-updated
        j = b.metrics.index(metric)
        mask = (ent == code) & np.isfinite(vals[:, j])
        if not mask.any():
            return None
        i = np.flatnonzero(mask)[np.argmax(ts[mask])]
        if self.watcher.clock.now() - ts[i] / 1e9 > self.max_age:
            return None
        return float(vals[i, j])

    def recovered(self, entity: str, code: int, n: int) -> float:
        """1.0 when the entity has no firing alert, or its last ``n`` window scores are all
        under the model's threshold (the verify condition ``recovered for n windows``)."""
        w = self.watcher
        with w.book.lock:
            firing = any(f["entity"] == entity for f in w.book.firing.values())
        if not firing:
            return 1.0
        b = w._buffers
        n = min(n, b.nw)  # the loop remembers the last of_windows windows of each entity
        t, s = b.score_t[code].copy(), b.score_s[code].copy()
        have = t != NO_SLOT
        last = s[have][np.argsort(t[have])][-n:]
        ok = len(last) == n and bool((last < w.model.threshold).all())
        return 1.0 if ok else 0.0
