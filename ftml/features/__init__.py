"""Sliding-window features, per entity, against each entity's own robust baseline.

One function, :func:`window_features`, computes the features for batch scoring, chunked
scoring and the online loop alike: the callers only differ in how many rows they hand it.
Features are computed on baseline-standardised values ``z = (x - median) / scale`` so that one
model serves a fleet of differently sized entities and every feature reads as "how far from
this entity's normal"; with a ``level_window``, less each metric's trailing level
(:func:`trailing_level`), so that a slow drift of an entity's level is not read as a fault.

Speed: :func:`window_features` is :func:`complete_windows` (which windows exist) and
:func:`window_stats` (their stats, all entities at once, in the C kernel
``ftml._window_kernel`` or its numpy twin). Callers that need only some windows or some stats
(training's sample, scoring's forest view) ask for just those: each window's figures depend on
its rows alone, so any subset gives the same bits as the whole.

One module per seam; each imports only the ones above it:

* ``statistics``: the stats table (:data:`STAT_TABLE`, a row per statistic) and
  :func:`window_stats`, the kernel's and its numpy twin's;
* ``views``: what the forest sees of a window (:func:`detector_view`, :func:`window_view`);
* ``windows``: which windows exist (:func:`complete_windows`), :func:`window_features`, and
  the :class:`Windows` / :class:`WindowBlock` they travel in;
* ``counters``: which metrics are counters, and their rates;
* ``screen``: which metrics cannot help (training's screen);
* ``baseline``: each entity's robust median and scale, per hour (:class:`Baseline`);
* ``level``: the trailing level, and the running sums the online loop keeps of it;
* ``featurizer``: :class:`Featurizer`, and its block loop (:meth:`Featurizer.window_blocks`).

Every public name is importable from ``ftml.features`` itself.
"""

from __future__ import annotations

from ftml.features.baseline import IQR_TO_SIGMA, P01_P99_TO_SIGMA, Baseline, fit_baseline
from ftml.features.counters import (
    counter_counts,
    counters_from_counts,
    counters_to_rates,
    detect_counters,
)
from ftml.features.featurizer import DEFAULT_CHUNK_ROWS, Z_CLIP, Featurizer
from ftml.features.level import LevelCarry, level_of_sums, level_units, trailing_level
from ftml.features.screen import metric_presence, metrics_to_drop
from ftml.features.statistics import (
    KERNEL_AVAILABLE,
    LEGACY_STATS,
    STAT,
    STAT_TABLE,
    STATS,
    Stat,
    feature_names,
    stat_columns,
    window_stats,
)
from ftml.features.views import detector_view, stats_view, window_view
from ftml.features.windows import WindowBlock, Windows, complete_windows, window_features

__all__ = [
    "DEFAULT_CHUNK_ROWS", "IQR_TO_SIGMA", "KERNEL_AVAILABLE", "LEGACY_STATS",
    "P01_P99_TO_SIGMA", "STAT", "STATS", "STAT_TABLE", "Z_CLIP", "Baseline", "Featurizer",
    "LevelCarry", "Stat", "WindowBlock", "Windows", "complete_windows", "counter_counts",
    "counters_from_counts", "counters_to_rates", "detect_counters", "detector_view",
    "feature_names", "fit_baseline", "level_of_sums", "level_units", "metric_presence",
    "metrics_to_drop", "stat_columns", "stats_view", "trailing_level", "window_features",
    "window_stats", "window_view",
]
