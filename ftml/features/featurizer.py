"""The featurizer: learns which metrics are counters and each entity's baseline, and turns
metric frames into feature windows, block by block (:meth:`Featurizer.window_blocks`, the one
loop every driver's windows come from)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import pandas as pd

from ftml.config import FeatureConfig
from ftml.features.baseline import Baseline, fit_baseline
from ftml.features.counters import (
    _counters_to_rates_in_place,
    counters_to_rates,
    detect_counters,
)
from ftml.features.level import LevelCarry, trailing_level
from ftml.features.statistics import LEGACY_STATS, STAT, STATS, feature_names, window_stats
from ftml.features.windows import WindowBlock, Windows, complete_windows
from ftml.io import MetricData, to_ns

_FC = FeatureConfig()  # the defaults' one home
# z is clipped: a metric that is flat in training must not turn into infinite features later.
Z_CLIP = 1e3
DEFAULT_CHUNK_ROWS = 65_536

_NEVER = np.iinfo(np.int64).min
_END_OF_TIME = np.iinfo(np.int64).max


class Featurizer:
    """Learns which metrics are counters and each entity's baseline; turns metric frames into
    feature windows. Parameters in the constructor, fitted state ends in ``_``."""

    def __init__(self, *, window: int = _FC.window, stride: int = _FC.stride,
                 hour_of_day: bool = _FC.hour_of_day, level_window: int = _FC.level_window,
                 level_clip: float = _FC.level_clip, stem_baselines: bool = True):
        self.window = window
        self.stride = stride
        self.hour_of_day = hour_of_day
        self.level_window = level_window
        self.level_clip = level_clip
        self.stem_baselines = stem_baselines  # Baseline.stems (read.stem_baselines)

    @property
    def history_steps(self) -> int:
        """Rows before a window's last row that its features depend on: the window's other
        rows, the trailing level's span before its first row, and one more (a counter's rate
        needs the row before). Chunked, online and distributed callers carry this many."""
        return int(self.window) + self._level_span()

    @property
    def stats(self) -> tuple[str, ...]:
        """The window stats of its features: those it was fitted with (before the stats
        table, a featurizer computed the legacy seven)."""
        return tuple(getattr(self, "stats_", LEGACY_STATS))

    def _level_span(self) -> int:
        # Bundles from before the drift correction have no level_window: no correction.
        return int(getattr(self, "level_window", 0) or 0)

    def fit(self, data: MetricData, exclude_rows: np.ndarray | None = None,
            counters: list[str] | None = None,
            min_scale: Mapping[str, float] | None = None) -> Featurizer:
        """Learn counters and baselines; ``exclude_rows`` (bool per row) keeps incident time out
        of the baseline. ``counters``: which metrics are counters, when decided elsewhere
        (Dask training decides over the whole fleet, then fits each group's baselines).
        ``min_scale``: metric -> the least scale of its baseline (:func:`fit_baseline`), e.g.
        one line for counts of log lines, which are mostly 0 in training."""
        self.metrics_ = list(data.metrics)
        self.step_ = data.step
        codes, names = data.entity_codes()
        values = data.frame[self.metrics_].to_numpy(dtype=np.float64, copy=True)
        self.counters_ = (detect_counters(values, codes, self.metrics_) if counters is None
                          else [c for c in self.metrics_ if c in set(counters)])
        values = self._rates(values, codes, in_place=True)
        if exclude_rows is not None and exclude_rows.any():
            values[exclude_rows] = np.nan
        floor = None
        if min_scale:
            floor = np.array([float(min_scale.get(m, 0.0)) for m in self.metrics_])
        self.baseline_ = fit_baseline(values, codes, names, to_ns(data.frame["timestamp"]),
                                      self.hour_of_day, min_scale=floor)
        self.baseline_.stems = bool(self.stem_baselines)
        self.stats_ = STATS
        self.feature_names_ = feature_names(self.metrics_, self.stats_)
        return self

    def with_baseline(self, metrics: list[str], step: pd.Timedelta, counters: list[str],
                      baseline: Baseline) -> Featurizer:
        """This featurizer, fitted with a baseline made elsewhere (e.g. the groups' baselines
        of Dask training, :meth:`Baseline.concat`); returns self, as ``fit`` does."""
        self.metrics_ = list(metrics)
        self.step_ = step
        self.counters_ = [c for c in self.metrics_ if c in set(counters)]
        self.baseline_ = baseline
        self.baseline_.stems = bool(self.stem_baselines)
        self.stats_ = STATS
        self.feature_names_ = feature_names(self.metrics_, self.stats_)
        return self

    def _rates(self, values: np.ndarray, segments: np.ndarray, in_place: bool = False
               ) -> np.ndarray:
        cols = [self.metrics_.index(c) for c in self.counters_]
        if in_place:
            return _counters_to_rates_in_place(values, segments, cols,
                                               self.step_.total_seconds())
        return counters_to_rates(values, segments, cols, self.step_.total_seconds())

    def standardise(self, frame: pd.DataFrame, level: bool = True
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Frame in the contract -> (z values, segment ids, values with counters as rates).

        With a ``level_window``, each z has its trailing level (:func:`trailing_level`)
        taken off, so that a slow drift of an entity's level is not read as a fault; a row's
        level needs the ``level_window`` rows before it in ``frame``. ``level=False`` gives
        the z before that (what :meth:`remove_level` takes)."""
        codes, names = pd.factorize(frame["entity"], sort=False)  # fast on categoricals
        codes = codes.astype(np.int64)
        known = self.baseline_.entity_index(names)[codes]
        z, values = self.standardise_arrays(
            frame[self.metrics_].to_numpy(dtype=np.float64, copy=True), codes, known,
            to_ns(frame["timestamp"]))
        if level:
            z = self.remove_level(z, codes)
        return z, codes, values

    def standardise_arrays(self, values: np.ndarray, segments: np.ndarray, known: np.ndarray,
                           timestamps_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`standardise` (``level=False``) on plain arrays: values in ``metrics_``
        order (counters turned into rates in place), each row's entity segment and its
        ``Baseline.entity_index``. (z, values)."""
        values = self._rates(values, segments, in_place=True)
        index = self.baseline_.row_index_of(known, timestamps_ns)
        center, scale = self._tables()
        # (values - centre) / scale, clipped: the same operations, without temporaries.
        z = np.subtract(values, center[index])
        z /= scale[index]
        np.clip(z, -Z_CLIP, Z_CLIP, out=z)
        return z, values

    def remove_level(self, z: np.ndarray, segments: np.ndarray) -> np.ndarray:
        """z (before levels, in place) minus each row's trailing level; no-op without a
        ``level_window``."""
        span = self._level_span()
        if span > 0:
            z -= trailing_level(z, segments, span, float(self.level_clip))
        return z

    def _tables(self) -> tuple[np.ndarray, np.ndarray]:
        cached = getattr(self, "_tables_cache", None)
        if cached is None or cached[0] is not self.baseline_:
            cached = (self.baseline_, *self.baseline_.tables())
            self._tables_cache = cached
        return cached[1], cached[2]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_tables_cache", None)  # derived: not part of the model
        return state

    def transform_frame(self, frame: pd.DataFrame) -> Windows:
        """All complete windows of a frame in the contract (sorted by entity, time)."""
        return Windows.concat([b.windows() for b in self.window_blocks(frame, len(frame))],
                              len(self.stats) * len(self.metrics_), len(self.metrics_))

    def level_carry(self) -> LevelCarry:
        """An empty :class:`LevelCarry` for this featurizer's frames (chunked scoring)."""
        return LevelCarry(span=self._level_span(), clip=float(self.level_clip),
                          n_metrics=len(self.metrics_))

    def window_blocks(self, frame: pd.DataFrame, block_rows: int,
                      since: dict[str, int] | None = None, until: dict[str, int] | None = None,
                      carry: LevelCarry | None = None) -> Iterator[WindowBlock]:
        """The complete windows of ``frame`` (in the contract), block by block of about
        ``block_rows`` rows: the one loop every driver's windows come from.

        A block standardises its rows plus the :attr:`history_steps` rows before them (a
        window, its levels' span, the row before for rates), so no window is lost or repeated
        and each gets the same bits as in one piece. With ``stride``, windows are counted from
        each entity's first row in ``frame``. With ``since`` / ``until`` (entity -> ns), only
        windows ending after ``since`` and at most ``until`` of their entity (chunked callers:
        new in this chunk, and final).

        With a ``carry`` (chunked scoring), each entity's rows up to its commit are context
        only (gap filling, rates; ``since`` must lie past the windows they are in), the levels
        of the rows after it start from the carried ring (the z of its last ``level_window``
        rows), a stride counts from the entity's first slot ever, and once the blocks are
        exhausted the carry moves on to the last final window of ``until`` less ``window - 1``
        rows: the next frame needs only the rows from there (and ``max_fill_steps + 1``
        before, for filling and rates)."""
        n = len(frame)
        if n == 0:
            return
        codes, names = _entity_codes_names(frame["entity"])
        ts = to_ns(frame["timestamp"])
        lo_ns = hi_ns = None
        if since is not None:
            lo_ns = np.array([since.get(str(e), _NEVER) for e in names], dtype=np.int64)
        if until is not None:
            hi_ns = np.array([until.get(str(e), _END_OF_TIME) for e in names], dtype=np.int64)
        seg_start = None
        if self.stride > 1 or carry is not None:
            seg_start = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
        if carry is not None:
            ent, slots, capture, new_commit = self._carry_begin(carry, codes, names, ts,
                                                                 seg_start, lo_ns, until)
            capture_rows: list[tuple] = []
        overlap = self.history_steps
        start = 0
        while start < n:
            stop = min(n, start + max(1, block_rows))
            lo = max(0, start - overlap)
            if carry is None:
                z, seg, values = self.standardise(frame.iloc[lo:stop])
            else:
                z, seg, values = self.standardise(frame.iloc[lo:stop], level=False)
                own = None
                if capture is not None:  # the rows the carry keeps: this block's own, once
                    own = capture[lo:stop].copy()
                    own[:start - lo] = False
                z, kept = carry.remove_level(z, seg, ent[codes[lo:stop]], slots[lo:stop],
                                             keep=own)
                if kept is not None:
                    capture_rows.append(kept)
            end = complete_windows(np.isnan(z).any(axis=1), seg, self.window)
            end = end[end + lo >= start]
            if carry is not None and self.stride > 1:
                # Counted from each entity's first slot ever, not its first row here.
                first = carry.first[ent[codes[end + lo]]]
                end = end[(slots[end + lo] - first - (self.window - 1)) % self.stride == 0]
            elif seg_start is not None and self.stride > 1:
                end = end[self._stride_ok(seg_start, end + lo)]
            c = codes[end + lo]
            end_ns = ts[end + lo]
            if lo_ns is not None or hi_ns is not None:
                keep = np.ones(len(end), dtype=bool)
                if lo_ns is not None:
                    keep &= end_ns > lo_ns[c]
                if hi_ns is not None:
                    keep &= end_ns <= hi_ns[c]
                if not keep.all():
                    end, c, end_ns = end[keep], c[keep], end_ns[keep]
            yield WindowBlock(self.window, self.stats, lo, end, end + lo, c, names, end_ns, z,
                              values)
            start = stop
        if carry is not None and new_commit is not None:
            carry.finish(*new_commit, capture_rows)
            moved, commit = new_commit
            carry.final[moved] = np.maximum(carry.final[moved], commit + self.window - 1)

    def _carry_begin(self, carry: LevelCarry, codes: np.ndarray, names: np.ndarray,
                     ts: np.ndarray, seg_start: np.ndarray, lo_ns: np.ndarray | None,
                     until: dict[str, int] | None):
        """:meth:`window_blocks` with a carry: each frame entity's place in it (gaps after a
        commit moved in), each row's slot, which rows the carry keeps after this frame, and
        the entities and slots of the new commits (None: no ``until``, nothing moves)."""
        step = int(self.step_.value)
        slots = ts // step
        ent = carry.codes([str(e) for e in names])
        if lo_ns is not None:
            # Windows over context rows would be wrong: the caller's bounds must skip the
            # windows final before (a commit moved over a gap has no windows past them).
            final = carry.final[ent]
            bad = (final != _NEVER) & (lo_ns < final * step)
            if bad.any():
                raise ValueError("window_blocks: since is before the carry's final windows "
                                 f"of {names[np.flatnonzero(bad)[0]]!r}")
        present = codes[seg_start]
        carry.begin(ent[present], slots[seg_start])
        c = carry.commit[ent]
        if until is None:
            return ent, slots, None, None
        hi = np.array([until.get(str(e), _NEVER) for e in names], dtype=np.int64)
        moves = np.flatnonzero(hi != _NEVER)
        new = np.full(len(names), _NEVER, dtype=np.int64)
        new[moves] = np.floor_divide(hi[moves], step) - (self.window - 1)
        row_new, row_c = new[codes], c[codes]
        capture = None
        if carry.span:
            capture = (row_new != _NEVER) & (slots <= row_new) & (slots > row_c) \
                & (slots > row_new - carry.span)
        return ent, slots, capture, (ent[moves], new[moves])

    def _stride_ok(self, seg_start: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Windows ending at ``rows`` that the stride keeps, counted from each entity's first row
        (``seg_start``: first rows of the frame's entities), not from a chunk's."""
        first_row = seg_start[np.searchsorted(seg_start, rows, side="right") - 1]
        return (rows - first_row - (self.window - 1)) % self.stride == 0

    def iter_windows(self, data: MetricData, chunk_rows: int = DEFAULT_CHUNK_ROWS
                     ) -> Iterator[Windows]:
        """Windows of ``data`` in chunks of about ``chunk_rows`` rows, so that memory stays
        bounded (see :meth:`window_blocks`)."""
        for blk in self.window_blocks(data.frame, chunk_rows):
            yield blk.windows()

    def complete_rows(self, frame: pd.DataFrame, chunk_rows: int = 1 << 20) -> np.ndarray:
        """The last row of every complete window of ``frame`` (the windows ``iter_windows``
        gives), computed without any feature."""
        n = len(frame)
        missing = np.zeros(n, dtype=bool)
        cols = [self.metrics_.index(c) for c in self.counters_]
        start = 0
        while start < n:  # in blocks: values are copied to compute rates
            stop = min(n, start + chunk_rows)
            lo = max(0, start - 1)
            part = frame.iloc[lo:stop]
            values = part[self.metrics_].to_numpy(dtype=np.float64)
            if cols:
                values = _counters_to_rates_in_place(
                    values.copy(), _entity_codes(part["entity"]), cols,
                    self.step_.total_seconds())
            missing[start:stop] = np.isnan(values).any(axis=1)[start - lo:]
            start = stop
        codes = _entity_codes(frame["entity"])
        return complete_windows(missing, codes, self.window, self.stride)

    def features_at(self, frame: pd.DataFrame, rows: np.ndarray,
                    stats: list[str] | tuple[str, ...] | None = None,
                    chunk_rows: int = 1 << 18) -> tuple[np.ndarray, np.ndarray]:
        """``(X, last)`` of the windows ending at ``rows`` (ascending; complete windows, as
        :meth:`complete_rows` gives): X as :func:`window_stats` (all stats, or only ``stats``),
        ``last`` the values (counters as rates) at each window's last row. Only the rows these
        windows need are standardised, block by block."""
        rows = np.asarray(rows, dtype=np.int64)
        stats = self.stats if stats is None else stats
        width = len(stats) * len(self.metrics_)
        X = np.empty((len(rows), width))
        last = np.empty((len(rows), len(self.metrics_)))
        w = self.window
        a = 0
        while a < len(rows):
            # A block: windows whose rows (and the rows before them: levels, rates) span
            # <= chunk_rows.
            first = rows[a] - self.history_steps
            b = a + max(1, int(np.searchsorted(rows[a:], first + chunk_rows, side="right")))
            lo = max(0, int(first))
            hi = int(rows[b - 1]) + 1
            z, _, values = self.standardise(frame.iloc[lo:hi])
            X[a:b] = window_stats(z, rows[a:b] - lo, w, stats)
            last[a:b] = values[rows[a:b] - lo]
            a = b
        return X, last

    def windows_at(self, frame: pd.DataFrame, rows: np.ndarray) -> Windows:
        """The :class:`Windows` (all features) ending at ``rows`` of ``frame``."""
        rows = np.asarray(rows, dtype=np.int64)
        X, last = self.features_at(frame, rows)
        ts = to_ns(frame["timestamp"])
        return Windows(X, _entity_array(frame["entity"], rows), ts[rows], rows, last)

    def transform(self, data: MetricData) -> Windows:
        return Windows.concat(list(self.iter_windows(data)), len(self.feature_names_),
                              len(self.metrics_))

    def deviation(self, X: np.ndarray) -> np.ndarray:
        """Per metric, how far a window is from normal: max |z| over the stats that say so
        (:attr:`Stat.deviation`: mean, min, max and last)."""
        m = len(self.metrics_)
        parts = [np.abs(X[:, k * m:(k + 1) * m]) for k, s in enumerate(self.stats)
                 if STAT[s].deviation]
        return np.maximum.reduce(parts)


def _entity_codes(entity: pd.Series) -> np.ndarray:
    """Integer code per row (equal names, equal codes), cheap for a categorical column."""
    if isinstance(entity.dtype, pd.CategoricalDtype):
        return entity.cat.codes.to_numpy().astype(np.int64)
    return pd.factorize(entity, sort=False)[0].astype(np.int64)


def _entity_codes_names(entity: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Integer code per row and the names they index (object array)."""
    if isinstance(entity.dtype, pd.CategoricalDtype):
        return (entity.cat.codes.to_numpy().astype(np.int64),
                np.asarray(entity.cat.categories, dtype=object))
    codes, names = pd.factorize(entity, sort=False)
    return codes.astype(np.int64), np.asarray(names, dtype=object)


def _entity_array(entity: pd.Series, rows: np.ndarray) -> np.ndarray:
    """Entity names (object array) at ``rows``, without turning the whole column into objects."""
    if isinstance(entity.dtype, pd.CategoricalDtype):
        names = np.asarray(entity.cat.categories, dtype=object)
        return names[entity.cat.codes.to_numpy()[rows]]
    return entity.to_numpy(dtype=object)[rows]


# A bundle names each class it holds by its module (ftml.bundle's codec), and a pickle too:
# Featurizer keeps the name it was always stored under.
Featurizer.__module__ = "ftml.features"
