"""The score: :class:`IsolationDetector`, an IsolationForest on a readable 0..1 scale (higher =
more anomalous), scored by ftml's compiled kernel (:mod:`ftml.fast`); and the opt-in ensemble of
the forest with the robust statistic (:func:`combine_scores`)."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.ensemble import IsolationForest
from sklearn.utils.validation import check_is_fitted, validate_data

from ftml.config import DetectConfig

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

    def anomaly_score(self, X) -> np.ndarray:
        """Each window's anomaly score: higher = more anomalous (about 0.5 ordinary, near 1
        isolated at once; with an ensemble, in the forest's units).

        Not ``score_samples``: scikit-learn's outlier detectors mean the opposite by that name
        (lower = more abnormal), so there is none here, and code that expects either meaning
        fails instead of reading the scores upside down."""
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


# A bundle names each class it holds by its module (ftml.bundle's codec), and a pickle too:
# IsolationDetector keeps the name it was always stored under.
IsolationDetector.__module__ = "ftml.detect"
