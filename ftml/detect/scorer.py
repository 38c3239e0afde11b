"""The score, without scikit-learn: :class:`ForestScorer` scores windows with a fitted
forest's node arrays, walked by ftml's compiled kernel (:mod:`ftml.fast`), on a readable 0..1
scale (higher = more anomalous); and the opt-in ensemble of the forest with the robust
statistic (:func:`combine_scores`).

A bundle's detector is rebuilt as a ForestScorer, so scoring a saved model never imports
scikit-learn (seconds of a short run). :class:`~ftml.detect.forest.IsolationDetector`, which
fits the forest, is a ForestScorer and scikit-learn's kind of estimator; both give the same
scores, bit for bit (the same kernel on the same float64 rows).
"""

from __future__ import annotations

import numpy as np


class ForestScorer:
    """What scoring needs of a fitted :class:`~ftml.detect.IsolationDetector`: its ``forest_``
    (a :class:`~ftml.fast.FastForest`, or the scikit-learn forest it compiles from), its
    ``n_features_in_``, and with an ensemble its ``ensemble`` and ``scales_``."""

    def anomaly_score(self, X) -> np.ndarray:
        """Each window's anomaly score: higher = more anomalous (about 0.5 ordinary, near 1
        isolated at once; with an ensemble, in the forest's units).

        Not ``score_samples``: scikit-learn's outlier detectors mean the opposite by that name
        (lower = more abnormal), so there is none here, and code that expects either meaning
        fails instead of reading the scores upside down."""
        X = self._windows(X)
        if X.shape[0] == 0:
            return np.empty(0)
        forest = -self._scorer().score_samples(self._forest_input(X))
        scales = getattr(self, "scales_", None)
        if scales is None:
            return forest
        return combine_scores(forest, X[:, -2], scales, self.ensemble)

    def component_scores(self, X) -> tuple[np.ndarray, np.ndarray]:
        """The forest's score and the robust statistic of each window: the largest deviation
        of any metric (the view's cross-metric column, signed log of the robust z)."""
        X = self._windows(X)
        if X.shape[0] == 0:
            return np.empty(0), np.empty(0)
        return -self._scorer().score_samples(self._forest_input(X)), X[:, -2].copy()

    def _forest_input(self, X: np.ndarray) -> np.ndarray:
        """What the forest walks: the view itself, or with ``view="balanced"`` the view with
        its cross-metric columns repeated (:func:`balanced_view`). A detector saved before
        the setting existed has no ``view``: the view itself."""
        if self.__dict__.get("view", "plain") == "balanced":
            return balanced_view(X)
        return X

    def _windows(self, X) -> np.ndarray:
        """X as the float64 rows the kernel walks, refused as scikit-learn's validation
        refuses it (not fitted, not 2-d, another number of features, NaN or infinity)."""
        if "forest_" not in self.__dict__:
            raise AttributeError(f"this {type(self).__name__} is not fitted")
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2:
            raise ValueError(f"expected a 2-d array of windows, got {X.ndim} dimension(s)")
        n_features = self.__dict__.get("n_features_in_")
        if n_features is not None and X.shape[1] != n_features:
            raise ValueError(f"X has {X.shape[1]} features, but {type(self).__name__} is "
                             f"expecting {n_features} features as input.")
        if not np.isfinite(X.sum()) and not np.isfinite(X).all():  # the sum: one cheap pass
            raise ValueError("Input X contains NaN or infinity.")
        return X

    def _scorer(self):
        # The fast scorer is compiled from the fitted forest when first needed, never pickled.
        # A bundle holds the compiled arrays (ftml.bundle), so a loaded detector's forest_ is
        # the FastForest itself and scores with no scikit-learn forest rebuilt.
        fast = self.__dict__.get("_fast")
        if fast is None:
            fast = self.__dict__["_fast"] = _compile(self.forest_) or self.forest_
        return fast

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_fast", None)
        return state


#: What the forest sees of the detector view: "plain" (the view), or "balanced" (the
#: cross-metric columns repeated until they are as many as the per-metric ones).
VIEWS = ("plain", "balanced")


def balanced_view(X: np.ndarray) -> np.ndarray:
    """The detector view with its two cross-metric columns (the largest and second-largest
    deviation, the last two) repeated: ``p - 2`` copies, alternately of each, inserted before
    them (``p`` the per-metric columns; none when ``p <= 2``), so that the cross-metric
    columns are as many as the per-metric ones and the last two columns stay where they were.

    Why: an isolation tree splits on a column drawn at random, so with 38 metrics (76
    per-metric columns) it picks a cross-metric one at 2 of 78 splits, and a fault that moves
    one metric far scores as ordinary (bench/PROTOCOL_generalization.md, round 5: one metric
    at 1000 robust scales flagged in 0 % of SMD windows). Balanced, about half the splits see
    "how far is the farthest metric"."""
    p = X.shape[1] - 2
    if p <= 2:
        return X
    cols = np.r_[np.arange(p), p + (np.arange(p - 2) % 2), p, p + 1]
    return X[:, cols]


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
