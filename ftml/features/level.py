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


_NONE = np.iinfo(np.int64).min


class LevelCarry:
    """What chunked scoring keeps of each entity from one chunk to the next in place of the
    trailing level's raw rows (the running sums that watch keeps too): up to which slot its
    rows are final (``commit``: the next frame's rows up to it are context only, for gap
    filling and rates), :func:`level_units` and valid flags of the ``span`` rows up to it (a
    ring by slot) with their sums, and its first slot ever (a stride counts from it).

    :meth:`Featurizer.window_blocks` reads and advances it; with it a frame needs only the
    rows of the windows not yet final and the ``max_fill_steps + 1`` before them, and every
    row's level is the same bits as with all the ``span`` rows before it in the frame."""

    def __init__(self, *, span: int, clip: float, n_metrics: int):
        self.span = int(span)
        self.clip = float(clip)
        self.n_metrics = int(n_metrics)
        # Clipped units fit in 32 bits below a clip of 2^11 (2^20 per unit of z).
        self._dtype = np.int32 if self.clip * (1 << _LEVEL_BITS) < 2**31 - 1 else np.int64
        self.index: dict[str, int] = {}
        self.commit = np.empty(0, np.int64)
        self.first = np.empty(0, np.int64)
        self.units = np.zeros((0, self.span, self.n_metrics), self._dtype)
        self.valid = np.zeros((0, self.span, self.n_metrics), bool)
        self.total = np.zeros((0, self.n_metrics), np.int64)
        self.count = np.zeros((0, self.n_metrics), np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def codes(self, names) -> np.ndarray:
        """Each name's place in the carry (new names get a fresh, empty one)."""
        out = np.empty(len(names), dtype=np.int64)
        for k, name in enumerate(names):
            out[k] = self.index.setdefault(str(name), len(self.index))
        if len(self.index) > len(self.commit):
            self._grow(max(len(self.index), 2 * len(self.commit)))
        return out

    def _grow(self, n: int) -> None:
        extra = n - len(self.commit)
        self.commit = np.r_[self.commit, np.full(extra, _NONE, np.int64)]
        self.first = np.r_[self.first, np.full(extra, _NONE, np.int64)]
        for name in ("units", "valid", "total", "count"):
            old = getattr(self, name)
            new = np.zeros((n, *old.shape[1:]), old.dtype)
            new[:len(old)] = old
            setattr(self, name, new)

    def begin(self, ent: np.ndarray, first_slot: np.ndarray) -> None:
        """A frame whose entities ``ent`` start at ``first_slot``: a new entity's first slot
        is remembered; an entity whose rows resume after a gap past its commit has the gap's
        slots (no rows: nothing in the level) moved into its ring, so that its frame starts
        right after its commit."""
        new = self.first[ent] == _NONE
        self.first[ent[new]] = first_slot[new]
        c = self.commit[ent]
        gap = (c != _NONE) & (first_slot > c + 1)
        if gap.any():
            self._advance(ent[gap], c[gap], first_slot[gap] - 1, None)

    def _advance(self, ent: np.ndarray, old: np.ndarray, new: np.ndarray,
                 rows: tuple | None) -> None:
        """Move the commits of ``ent`` from ``old`` to ``new`` (slots): the ring's slots in
        between are cleared, then written from ``rows`` (entity, slot, units, valid) where
        there are rows; then the sums are taken afresh."""
        if self.span:
            lo = np.where(old == _NONE, new - self.span, np.maximum(old, new - self.span))
            n = (new - lo).clip(0, self.span)
            e = np.repeat(ent, n)
            s = np.repeat(lo + 1 - np.r_[0, np.cumsum(n)[:-1]], n) + np.arange(int(n.sum()))
            pos = s % self.span
            self.units[e, pos] = 0
            self.valid[e, pos] = False
            if rows is not None and len(rows[0]):
                re, rs, ru, rv = rows
                self.units[re, rs % self.span] = ru
                self.valid[re, rs % self.span] = rv
            self.total[ent] = self.units[ent].sum(axis=1, dtype=np.int64)
            self.count[ent] = self.valid[ent].sum(axis=1, dtype=np.int64)
        self.commit[ent] = new

    def finish(self, ent: np.ndarray, new: np.ndarray, rows: list[tuple]) -> None:
        """After a frame: the commits of ``ent`` move on to ``new`` (slots; never back), with
        the frame's rows up to there (entity, slot, units, valid; the rows after the old commit
        and in the last ``span`` slots before the new one, each once)."""
        c = self.commit[ent]
        on = (c == _NONE) | (new > c)
        ent, c, new = ent[on], c[on], new[on]
        if not len(ent):
            return
        parts = [p for p in rows if len(p[0])]
        cat = None
        if parts:
            cat = tuple(np.concatenate([p[k] for p in parts]) for k in range(4))
        self._advance(ent, c, new, cat)

    def remove_level(self, z: np.ndarray, segments: np.ndarray, ent: np.ndarray,
                     slot: np.ndarray) -> np.ndarray:
        """z (before levels, in place) minus each row's trailing level, for rows of a frame's
        block: ``ent`` each row's place in the carry, ``slot`` its time in steps. Rows within
        ``span`` after their entity's commit take the ring's part of their span from the carry
        (where the block holds their entity's row right after the commit; other such rows are
        history no window of the block uses); the rest is :func:`trailing_level` on the block.
        Rows up to the commit are context: their level is no window's."""
        if not self.span:
            return z
        level = trailing_level(z, segments, self.span, self.clip)
        c = self.commit[ent]
        j = slot - c
        near = (c != _NONE) & (j >= 1) & (j <= self.span)
        if near.any():
            # The block must hold the row right after the commit of the entity: its rows start
            # at or before that slot.
            run = np.flatnonzero(np.r_[True, ent[1:] != ent[:-1]])
            start_slot = slot[run][np.searchsorted(run, np.arange(len(ent)), side="right") - 1]
            near &= start_slot <= c + 1
        rows = np.flatnonzero(near)
        if len(rows):
            e, pos = ent[rows], slot[rows] % self.span
            u, v = level_units(z[rows], self.clip)
            # The span of row t is the ring's (the span of the row after the commit), plus each
            # row since the commit entering, less the ring's row leaving (slot t - span).
            du = u - self.units[e, pos]
            dv = v - self.valid[e, pos]
            first = np.flatnonzero(np.r_[True, e[1:] != e[:-1]])
            at = np.searchsorted(first, np.arange(len(rows)), side="right") - 1
            du = np.cumsum(du, axis=0, out=du)
            dv = np.cumsum(dv, axis=0, out=dv)
            base_u = np.vstack([np.zeros((1, du.shape[1]), du.dtype), du])[first]
            base_v = np.vstack([np.zeros((1, dv.shape[1]), dv.dtype), dv])[first]
            # Exclusive sums within each entity's run: the rows before t since the commit.
            tot = self.total[e] + np.vstack([np.zeros((1, du.shape[1]), du.dtype), du[:-1]]) \
                - base_u[at]
            cnt = self.count[e] + np.vstack([np.zeros((1, dv.shape[1]), dv.dtype), dv[:-1]]) \
                - base_v[at]
            level[rows] = level_of_sums(tot, cnt, self.span)
        z -= level
        return z
