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
    trailing level's span of raw rows: up to which slot its rows are final (``commit``: the
    next frame's rows up to it are context only, for gap filling and rates), the z before
    levels of the ``span`` rows up to it (a ring by slot, NaN where missing: their
    :func:`level_units` are the level's state), and its first slot ever (a stride counts from
    it).

    :meth:`Featurizer.window_blocks` reads and advances it. With it a frame needs only the
    rows of the windows not yet final and the ``max_fill_steps + 1`` before them, and every
    row's level is the same bits as with the ``span`` rows before it in the frame: the ring's
    rows go in front of the entity's rows after the commit into :func:`trailing_level`, the
    very values (so the very integers) those rows had."""

    def __init__(self, *, span: int, clip: float, n_metrics: int):
        self.span = int(span)
        self.clip = float(clip)
        self.n_metrics = int(n_metrics)
        self.index: dict[str, int] = {}
        self.commit = np.empty(0, np.int64)
        self.first = np.empty(0, np.int64)
        self.final = np.empty(0, np.int64)  # the last final window's slot (its caller's)
        self.ring = np.full((0, self.n_metrics), np.nan)  # entity e, slot s: e * span + s % span

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
        self.final = np.r_[self.final, np.full(extra, _NONE, np.int64)]
        ring = np.full((n * self.span, self.n_metrics), np.nan)
        ring[:len(self.ring)] = self.ring
        self.ring = ring

    def begin(self, ent: np.ndarray, first_slot: np.ndarray) -> None:
        """A frame whose entities ``ent`` start at ``first_slot``: a new entity's first slot
        is remembered; an entity whose rows resume after a gap past its commit has the gap's
        slots (no rows: missing) moved into its ring, so that its frame starts right after its
        commit."""
        new = self.first[ent] == _NONE
        self.first[ent[new]] = first_slot[new]
        c = self.commit[ent]
        gap = (c != _NONE) & (first_slot > c + 1)
        if gap.any():
            self._advance(ent[gap], c[gap], first_slot[gap] - 1, None)

    def _at(self, ent: np.ndarray, lo: np.ndarray, n: np.ndarray) -> np.ndarray:
        """Ring rows of slots lo .. lo + n - 1 of each entity, in order."""
        off = np.r_[0, np.cumsum(n)]
        s = np.repeat(lo - off[:-1], n) + np.arange(int(off[-1]))
        return np.repeat(ent, n) * self.span + s % self.span

    def _advance(self, ent: np.ndarray, old: np.ndarray, new: np.ndarray,
                 rows: tuple | None) -> None:
        """Move the commits of ``ent`` from ``old`` to ``new`` (slots): the ring's slots in
        between become the z of ``rows`` (entity, slot, z: among them) where there are rows,
        else missing."""
        if self.span:
            lo = np.where(old == _NONE, new - self.span, np.maximum(old, new - self.span))
            self.ring[self._at(ent, lo + 1, (new - lo).clip(0, self.span))] = np.nan
            if rows is not None and len(rows[0]):
                re, rs, rz = rows
                self.ring[re * self.span + rs % self.span] = rz
        self.commit[ent] = new

    def finish(self, ent: np.ndarray, new: np.ndarray, rows: list[tuple]) -> None:
        """After a frame: the commits of ``ent`` move on to ``new`` (slots; never back), with
        the frame's rows up to there (entity, slot, z before levels; the rows after the old
        commit and in the last ``span`` slots before the new one, each once)."""
        c = self.commit[ent]
        on = (c == _NONE) | (new > c)
        ent, c, new = ent[on], c[on], new[on]
        if not len(ent):
            return
        parts = [p for p in rows if len(p[0])]
        cat = None
        if parts:
            cat = tuple(np.concatenate([p[k] for p in parts]) for k in range(3))
        self._advance(ent, c, new, cat)

    def remove_level(self, z: np.ndarray, segments: np.ndarray, ent: np.ndarray,
                     slot: np.ndarray, keep: np.ndarray | None = None
                     ) -> tuple[np.ndarray, tuple | None]:
        """z (before levels, in place) minus each row's trailing level, for rows of a frame's
        block: ``ent`` each row's place in the carry, ``slot`` its time in steps. Rows up to
        their entity's commit are context (no window's: level 0). Where the block holds an
        entity's row right after its commit, the ring's ``span`` rows go in front of it; an
        entity whose rows start later in the frame than the block has none of its levels' span
        from the carry in the block's windows. Also (entity, slot, z before levels) of the rows
        ``keep`` (None: none)."""
        kept = None
        if keep is not None:
            k = np.flatnonzero(keep)
            kept = (ent[k], slot[k], z[k])
        if not self.span:
            return z, kept
        c = self.commit[ent]
        context = (c != _NONE) & (slot <= c)
        use = np.flatnonzero(~context)
        if not len(use):
            return z, kept
        e, sl, cu = ent[use], slot[use], c[use]
        run = np.flatnonzero(np.r_[True, e[1:] != e[:-1]])
        # The ring goes in front of a run that starts right after its entity's commit.
        primed = (cu[run] != _NONE) & (sl[run] == cu[run] + 1)
        kernel = getattr(_window_kernel, "trailing_level_ring", None)
        if not primed.any():
            level = trailing_level(z[use] if len(use) < len(z) else z, segments[use],
                                   self.span, self.clip)
        elif kernel is not None and 0.0 <= self.clip <= 2.0**31:
            # In C, the ring read where it lies: its units summed once per run, each of its
            # rows again only when it leaves a row's span (no copy, no levels of ring rows).
            zu = np.ascontiguousarray(z[use] if len(use) < len(z) else z)
            base = np.where(primed, e[run] * self.span, -1).astype(np.int64)
            turn = np.where(primed, (cu[run] + 1) % self.span, 0).astype(np.int64)
            level = np.empty_like(zu)
            kernel(zu, run.astype(np.int64), base, turn, self.ring, self.span, self.clip, level)
        else:
            # Runs are contiguous rows of the block (an entity's context rows come first):
            # the kernel's input is, run by run, the ring's rows in slot order (two slices of
            # the entity's ring) and then the run's rows, copied once.
            span = self.span
            stop = np.r_[run[1:], len(use)]
            first, last = use[run], use[stop - 1] + 1
            pieces, lengths = [], []
            for k, (a, b, p) in enumerate(zip(first.tolist(), last.tolist(),
                                             primed.tolist(), strict=True)):
                if p:
                    base = int(e[run[k]]) * span
                    turn = int((cu[run[k]] + 1) % span)
                    pieces += [self.ring[base + turn:base + span], self.ring[base:base + turn]]
                pieces.append(z[a:b])
                lengths.append(b - a + (span if p else 0))
            both = np.concatenate(pieces)
            seg = np.repeat(segments[first], lengths)
            is_row = np.ones(len(both), dtype=bool)
            at = np.r_[0, np.cumsum(lengths)[:-1]][primed]
            is_row[(at[:, None] + np.arange(span)).ravel()] = False
            level = trailing_level(both, seg, span, self.clip)[is_row]
        if len(use) == len(z):
            z -= level
        else:
            z[use] -= level
        return z, kept
