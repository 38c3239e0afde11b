"""Each entity's normal: robust centre (median) and scale (IQR / 1.349) of each metric,
optionally per hour of day, with fallbacks for entities not seen in training: the baseline of
the trained entities of their stem (a pod renamed by a deploy), else the fleet's
(:class:`Baseline`, :func:`fit_baseline`)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ftml.io import entity_stem

# IQR of a normal distribution is 1.349 sigma: dividing by it makes z read like a z-score.
IQR_TO_SIGMA = 1.349
P01_P99_TO_SIGMA = 4.653


@dataclass
class Baseline:
    """Robust per-entity centre (median) and scale (IQR / 1.349) of each metric, optionally per
    hour of day. An entity not seen in training borrows, with ``stems``
    (``read.stem_baselines``), the baseline of the trained entities of its stem
    (:func:`ftml.io.entity_stem`: 'checkout-b21c0' that of 'checkout-7f3a9', or the median of
    several such pods); else, or without ``stems``, a fleet-wide fallback serves it."""

    entities: list[str]
    center: np.ndarray  # (entities, hours, metrics); hours = 24 or 1
    scale: np.ndarray
    fleet_center: np.ndarray  # (hours, metrics)
    fleet_scale: np.ndarray
    # A bundle from before stems existed decodes with this class default (its events change
    # only for entities it never saw, which got the fleet's baseline).
    stems: bool = True

    @classmethod
    def of_entities(cls, entities: list[str], center: np.ndarray, scale: np.ndarray
                    ) -> Baseline:
        """A baseline of these entities' centres and scales; the fleet fallback (for entities
        not seen in training) is the median over all of them."""
        fleet_center = np.median(center, axis=0)
        fleet_scale = _floor_scale(np.median(scale, axis=0), fleet_center)
        return cls(list(entities), center, scale, fleet_center, fleet_scale)

    @classmethod
    def concat(cls, parts: list[Baseline]) -> Baseline:
        """One baseline of the entities of several (e.g. fitted on separate Dask workers), with
        the fleet fallback over all of them, as :func:`fit_baseline` on all at once gives."""
        return cls.of_entities([e for p in parts for e in p.entities],
                               np.concatenate([p.center for p in parts]),
                               np.concatenate([p.scale for p in parts]))

    @property
    def by_hour(self) -> bool:
        return self.center.shape[1] == 24

    def rows(self, entity_names: np.ndarray, timestamps_ns: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
        """Centre and scale for each row, given its entity name and time."""
        index = self.row_index(entity_names, timestamps_ns)
        center, scale = self.tables()
        return center[index], scale[index]

    def tables(self) -> tuple[np.ndarray, np.ndarray]:
        """Centre and scale, one row per (entity, hour), then per fleet hour, then (``stems``)
        per hour of each stem shared by several trained entities: what :meth:`row_index`
        points into. The rows of trained entities and the fleet's are the same with stems or
        without, so are their z."""
        m = self.center.shape[2]
        _, s_center, s_scale = self._stem_table()
        return (np.concatenate([self.center.reshape(-1, m), self.fleet_center,
                                s_center.reshape(-1, m)]),
                np.concatenate([self.scale.reshape(-1, m), self.fleet_scale,
                                s_scale.reshape(-1, m)]))

    def row_index(self, entity_names, timestamps_ns: np.ndarray) -> np.ndarray:
        """Per row, its row in :meth:`tables`: the entity's own baseline (for its hour), or the
        fleet's for an entity not seen in training."""
        inverse, names = pd.factorize(entity_names)  # fast on categoricals, keeps order
        return self.row_index_of(self.entity_index(names)[inverse], timestamps_ns)

    def entity_index(self, names) -> np.ndarray:
        """Per distinct name, whose baseline it gets: its own place in the baseline; for one
        not seen in training (``stems``) that of the one trained entity of its stem, or
        ``len(entities) + 1 + k`` for the k-th stem shared by several (the rows after the
        fleet's in :meth:`tables`); else -1 (the fleet's)."""
        index = self.own_index(names)
        if self.stems and (index < 0).any():
            by_stem, _, _ = self._stem_table()
            unseen = np.flatnonzero(index < 0)
            index[unseen] = [by_stem.get(entity_stem(str(names[i])), -1) for i in unseen]
        return index

    def own_index(self, names) -> np.ndarray:
        """Per distinct name, the entity's place in the baseline, or -1 if not seen in
        training."""
        index = {e: i for i, e in enumerate(self.entities)}
        return np.array([index.get(str(n), -1) for n in names], dtype=np.int64)

    def borrowed_stems(self, names) -> list[str | None]:
        """Per name not seen in training, the stem whose trained entities' baseline it is
        scored against (None: the fleet's)."""
        names = [str(n) for n in names]
        if not self.stems:
            return [None] * len(names)
        by_stem, _, _ = self._stem_table()
        return [s if s in by_stem else None for s in map(entity_stem, names)]

    def _stem_table(self) -> tuple[dict[str, int], np.ndarray, np.ndarray]:
        """{stem of trained entities: its :meth:`entity_index`} and the centre and scale
        (stems, hours, metrics) of the stems shared by several: the median over them, as the
        fleet's is over all. Derived from the fitted baseline once, not stored."""
        cached = self.__dict__.get("_stem_cache")
        if cached is not None and cached[0] is self.center and cached[1] == self.stems:
            return cached[2]
        n, hours, m = self.center.shape
        by_stem: dict[str, int] = {}
        if self.stems and n:
            codes, stems = pd.factorize(pd.Series([entity_stem(e) for e in self.entities]))
            sizes = np.bincount(codes, minlength=len(stems))
            shared = np.flatnonzero(sizes > 1)
            s_center = np.empty((len(shared), hours, m))
            s_scale = np.empty((len(shared), hours, m))
            for k, g in enumerate(shared):  # distinct stems: few, once per baseline
                members = codes == g
                s_center[k] = np.median(self.center[members], axis=0)
                s_scale[k] = _floor_scale(np.median(self.scale[members], axis=0), s_center[k])
            _, first = np.unique(codes, return_index=True)  # each stem's (first) entity
            place = first.astype(np.int64)
            place[shared] = n + 1 + np.arange(len(shared))
            by_stem = dict(zip(map(str, stems), place.tolist(), strict=True))
        else:
            s_center = s_scale = np.empty((0, hours, m))
        table = (by_stem, s_center, s_scale)
        self.__dict__["_stem_cache"] = (self.center, self.stems, table)
        return table

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_stem_cache", None)  # derived: not part of the model
        return state

    def row_index_of(self, known: np.ndarray, timestamps_ns: np.ndarray) -> np.ndarray:
        """:meth:`row_index` from each row's :meth:`entity_index`."""
        hours = self.center.shape[1]
        hour = (timestamps_ns // 3_600_000_000_000) % 24 if self.by_hour else \
            np.zeros(len(timestamps_ns), dtype=np.int64)
        return np.where(known >= 0, known * hours + hour, len(self.entities) * hours + hour)


_QUANTILES = np.true_divide(np.array([1, 25, 50, 75, 99]), 100)


def _group_percentiles(values: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Per group of rows (``values[bounds[g]:bounds[g + 1]]``), what
    ``np.nanpercentile(rows, [1, 25, 50, 75, 99], axis=0)`` gives, with numpy's own arithmetic
    (the linear method): (groups, 5, columns).

    The groups are sorted all at once, as lanes of a NaN-padded cube (NaN sorts last), a batch
    of groups at a time so that the cube stays small."""
    n, m = values.shape
    sizes = np.diff(bounds)
    out = np.empty((len(sizes), len(_QUANTILES), m))
    q = _QUANTILES[None, :, None]
    g0 = 0
    while g0 < len(sizes):
        width = int(sizes[g0])
        g1 = g0 + 1
        # Grow the batch while the cube (groups x columns x widest group) stays <= 2^22 cells
        # and padding at most doubles it.
        while g1 < len(sizes):
            w2 = max(width, int(sizes[g1]))
            rows = int(bounds[g1 + 1] - bounds[g0])
            if (g1 + 1 - g0) * w2 * m > 1 << 22 or (g1 + 1 - g0) * w2 > 2 * rows + 64:
                break
            width, g1 = w2, g1 + 1
        a, b = int(bounds[g0]), int(bounds[g1])
        group = np.repeat(np.arange(g1 - g0), sizes[g0:g1])
        pos = np.arange(b - a) - np.repeat(bounds[g0:g1] - a, sizes[g0:g1])
        cube = np.full((g1 - g0, m, width), np.nan)
        cube[group, :, pos] = values[a:b]
        cube.sort(axis=2)
        count = width - np.isnan(cube).sum(axis=2)  # values per lane
        nq = count[:, None, :].astype(np.float64)
        # numpy's virtual index of the linear method and _get_gamma, then _lerp
        virtual = (nq - 1) * q
        prev = np.floor(virtual)
        gamma = virtual - prev
        top = np.maximum(count - 1, 0)[:, None, :]
        prev_i = np.clip(prev.astype(np.int64), 0, top)
        next_i = np.clip(prev_i + 1, 0, top)
        lanes = cube.reshape(-1, width)
        lane = (np.arange(g1 - g0)[:, None, None] * m + np.arange(m)[None, None, :])
        lane = np.broadcast_to(lane, prev_i.shape)
        lo_v, hi_v = lanes[lane, prev_i], lanes[lane, next_i]
        diff = hi_v - lo_v
        res = np.where(gamma >= 0.5, hi_v - diff * (1 - gamma), lo_v + diff * gamma)
        out[g0:g1] = np.where(count[:, None, :] > 0, res, np.nan)
        g0 = g1
    return out


def fit_baseline(values: np.ndarray, entity_codes: np.ndarray, entity_names: list[str],
                 timestamps_ns: np.ndarray, by_hour: bool,
                 min_scale: np.ndarray | None = None) -> Baseline:
    """Median and IQR per entity (and hour), ignoring missing values. ``min_scale`` (one per
    metric, 0 for none): the least scale of each metric, for metrics whose unit says how
    small a change can be (a count of log lines moves by whole lines)."""
    hours = 24 if by_hour else 1
    hour = (timestamps_ns // 3_600_000_000_000) % 24 if by_hour else \
        np.zeros(len(values), dtype=np.int64)
    n_ent, m = len(entity_names), values.shape[1]
    center = np.full((n_ent, hours, m), np.nan)
    scale = np.full((n_ent, hours, m), np.nan)
    key = entity_codes * hours + hour
    # A stable sort of small keys (uint16: numpy's radix sort) is the same order, faster.
    small = n_ent * hours < 2**16 and len(key) and key.min() >= 0
    order = np.argsort(key.astype(np.uint16) if small else key, kind="stable")
    bounds = np.flatnonzero(np.r_[True, np.diff(key[order]) != 0, True])
    if len(order):
        k = key[order[bounds[:-1]]]  # one group per entity-hour
        with np.errstate(invalid="ignore"):
            q01, q25, q50, q75, q99 = _group_percentiles(values[order], bounds).transpose(1, 0, 2)
        center[k // hours, k % hours] = q50
        # The IQR alone is 0 for metrics that are mostly zero (errors, retransmits), which
        # would make every blip look infinite: the 1-99 % range (4.65 sigma when normal)
        # stands in when it is wider, so routine spikes stay routine.
        scale[k // hours, k % hours] = np.maximum((q75 - q25) / IQR_TO_SIGMA,
                                                  (q99 - q01) / P01_P99_TO_SIGMA)
    # Entity-level values stand in for hours with too little data.
    with warnings.catch_warnings():  # an entity with no data at all: NaN, filled below
        warnings.simplefilter("ignore", RuntimeWarning)
        ent_center = np.nanmedian(center, axis=1, keepdims=True)
        ent_scale = np.nanmedian(scale, axis=1, keepdims=True)
    center = np.where(np.isnan(center), ent_center, center)
    scale = np.where(np.isnan(scale), ent_scale, scale)
    center = np.nan_to_num(center, nan=0.0)
    scale = _floor_scale(np.nan_to_num(scale, nan=0.0), center)
    if min_scale is not None:
        scale = np.maximum(scale, np.asarray(min_scale, dtype=np.float64))
    return Baseline.of_entities(list(entity_names), center, scale)


def _floor_scale(scale: np.ndarray, center: np.ndarray) -> np.ndarray:
    # A metric flat in training (IQR 0) still needs a scale: 1 % of its level, or 1e-3.
    return np.maximum(scale, np.maximum(np.abs(center) * 0.01, 1e-3))


# A bundle names each class it holds by its module (ftml.bundle's codec), and a pickle too:
# Baseline keeps the name it was always stored under.
Baseline.__module__ = "ftml.features"
