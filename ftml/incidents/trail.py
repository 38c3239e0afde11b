"""The window scores of a run, kept for the rankings that read them (:data:`ONSET_RANKINGS
<ftml.incidents.grouping.ONSET_RANKINGS>`): each entity's scores around a group's onset."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ftml.io import to_ns

#: Groups are read (and walked, ftml.incidents.rank) at most this many (group x window or
#: group x entity) cells at a time, to bound memory.
WALK_CELLS = 2_000_000


class ScoreTrail:
    """Window scores over time, for the rankings that read them (:data:`ONSET_RANKINGS`): per
    scored window its entity, end and detector score. Batch scoring keeps every window of the
    run (16 bytes each), ``ftml watch``'s live grouper those of its horizon. ``version`` counts
    the changes, so a cached grouping knows when the scores it read have moved on."""

    def __init__(self) -> None:
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._joined: tuple[np.ndarray, ...] | None = None
        self.version = 0

    def add(self, names, codes: np.ndarray, end_ns: np.ndarray, scores: np.ndarray) -> None:
        """Windows of entities ``names[codes]``, ending at ``end_ns`` (ns), scored ``scores``."""
        if not len(codes):
            return
        self._parts.append((np.asarray(names, dtype=object), np.asarray(codes, dtype=np.int32),
                            np.asarray(end_ns, dtype=np.int64),
                            np.asarray(scores, dtype=np.float32)))
        self._joined = None
        self.version += 1

    @classmethod
    def from_table(cls, table: pd.DataFrame) -> ScoreTrail:
        """A trail from a per-window table (``--windows-out``: entity, timestamp, score)."""
        trail = cls()
        codes, names = pd.factorize(table["entity"].astype(str))
        trail.add(np.asarray(names, dtype=object), codes,
                  to_ns(pd.to_datetime(table["timestamp"], utc=True)),
                  table["score"].to_numpy(float))
        return trail

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(names, sorted; per window: code into names, end ns, score), by end."""
        if self._joined is None:
            if not self._parts:
                self._joined = (np.empty(0, dtype=object), np.empty(0, dtype=np.int64),
                                np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32))
            else:
                names = np.unique(np.concatenate([p[0] for p in self._parts]).astype(str))
                names = names.astype(object)
                code = np.concatenate([np.searchsorted(names, p[0].astype(str))[p[1]]
                                       for p in self._parts])
                end = np.concatenate([p[2] for p in self._parts])
                score = np.concatenate([p[3] for p in self._parts])
                order = np.argsort(end, kind="stable")
                self._joined = (names, code[order], end[order], score[order])
                # One part from now on: later adds join to it, not to every part again.
                self._parts = [(names, code[order].astype(np.int32), end[order], score[order])]
        return self._joined

    def trim(self, before_ns: int) -> None:
        """Forget the windows ending before ``before_ns``."""
        names, code, end, score = self.arrays()
        keep = int(np.searchsorted(end, before_ns, side="left"))
        if keep:
            self._parts = [(names, code[keep:].astype(np.int32), end[keep:], score[keep:])]
            self._joined = None
            self.version += 1

    def __len__(self) -> int:
        return len(self.arrays()[1])


def onset_scores(trail: ScoreTrail, names: np.ndarray, g_onset: np.ndarray, step_ns: int,
                 span: tuple[int, int], *, how: str = "max"
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Per (group, entity) with a window ending in [onset - span[0], onset + span[1]] steps
    (``how="median"``: in [onset - span[0], onset - span[1]) steps), that largest (median)
    score: (sorted keys group * len(names) + entity code, values). Entities ``names`` does not
    hold are left out. Groups go through at most :data:`WALK_CELLS` windows at a time."""
    t_names, t_code, t_end, t_score = trail.arrays()
    n_names = len(names)
    pos = np.searchsorted(names, t_names) if len(names) else np.zeros(len(t_names), np.int64)
    pos = np.minimum(pos, max(n_names - 1, 0))
    known = (names[pos] == t_names) if n_names else np.zeros(len(t_names), dtype=bool)
    ent_of = np.where(known, pos, -1)[t_code] if len(t_code) else np.empty(0, np.int64)
    lo_t = g_onset - span[0] * step_ns
    hi_t = g_onset + (span[1] if how == "max" else -span[1]) * step_ns
    lo = np.searchsorted(t_end, lo_t, side="left")
    hi = (np.searchsorted(t_end, hi_t, side="right") if how == "max"
          else np.searchsorted(t_end, hi_t, side="left"))
    reps = np.maximum(hi - lo, 0)
    keys_out, vals_out = [], []
    bounds = np.searchsorted(np.cumsum(reps), np.arange(0, int(reps.sum()), WALK_CELLS),
                             side="right")
    bounds = np.unique(np.r_[0, bounds, len(reps)])
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        r = reps[a:b]
        win = np.repeat(lo[a:b], r) + (np.arange(int(r.sum())) - np.repeat(np.cumsum(r) - r, r))
        grp = np.repeat(np.arange(a, b, dtype=np.int64), r)
        ent = ent_of[win]
        ok = ent >= 0
        keys_out.append(grp[ok] * n_names + ent[ok])
        vals_out.append(t_score[win[ok]].astype(float))
    key = np.concatenate(keys_out) if keys_out else np.empty(0, np.int64)
    val = np.concatenate(vals_out) if vals_out else np.empty(0)
    if how == "max":
        uk, inv = np.unique(key, return_inverse=True)
        peak = np.full(len(uk), -np.inf)
        np.maximum.at(peak, inv, val)
        return uk, peak
    order = np.lexsort((val, key))
    key, val = key[order], val[order]
    uk, first, count = np.unique(key, return_index=True, return_counts=True)
    return uk, (val[first + (count - 1) // 2] + val[first + count // 2]) / 2
