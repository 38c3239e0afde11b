"""The forest's fitting half: :class:`IsolationDetector`, an IsolationForest that scores
windows on a readable 0..1 scale (higher = more anomalous), scikit-learn's kind of estimator.

Imported on first use of ``ftml.detect.IsolationDetector`` (training, tests, the estimator
checks): scoring a saved model needs only :class:`~ftml.detect.scorer.ForestScorer`, which
this is too, and never imports scikit-learn.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.ensemble import IsolationForest
from sklearn.utils.validation import check_is_fitted, validate_data

from ftml.config import DetectConfig
from ftml.detect.scorer import ENSEMBLES, VIEWS, ForestScorer

_DC = DetectConfig()  # the defaults' one home


class IsolationDetector(ForestScorer, BaseEstimator):
    """IsolationForest that scores windows on a readable 0..1 scale (higher = more anomalous).

    The score is the anomaly score of the original paper, ``2 ** (-E[h(x)] / c(n))``: about
    0.5 for ordinary points, close to 1 for points isolated in very few splits.
    """

    def __init__(self, *, n_estimators: int = _DC.n_estimators,
                 max_samples: int | float | str = _DC.max_samples,
                 random_state: int | None = _DC.random_state, n_jobs: int | None = None,
                 ensemble: str = _DC.ensemble, view: str = _DC.view):
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.ensemble = ensemble
        self.view = view

    def fit(self, X, y=None):
        X = validate_data(self, X, dtype=np.float64)
        if self.ensemble not in ENSEMBLES:
            raise ValueError(f"unknown ensemble {self.ensemble!r}; use one of "
                             f"{', '.join(ENSEMBLES)}")
        if self.view not in VIEWS:
            raise ValueError(f"unknown view {self.view!r}; use one of {', '.join(VIEWS)}")
        max_samples = self.max_samples
        if isinstance(max_samples, int):
            max_samples = min(max_samples, X.shape[0])
        self.forest_ = IsolationForest(n_estimators=self.n_estimators, max_samples=max_samples,
                                       random_state=self.random_state, n_jobs=self.n_jobs).fit(
            self._forest_input(X))
        self.__dict__.pop("_fast", None)  # a refit forest is compiled afresh
        self.scales_ = None
        if self.ensemble != "forest" and X.shape[0]:
            # Each part's typical value and its 99.9 % on the fit windows: the two become one
            # score by how far into their own tail they are, in the forest's units.
            forest, robust = self.component_scores(X)
            self.scales_ = np.array([np.quantile(forest, [0.5, 0.999]),
                                     np.quantile(robust, [0.5, 0.999])])
        return self

    def _windows(self, X) -> np.ndarray:
        # scikit-learn's own checks and messages (the estimator checks hold it to them).
        check_is_fitted(self, "forest_")
        return validate_data(self, X, dtype=np.float64, reset=False)

    def __getstate__(self):
        state = BaseEstimator.__getstate__(self)
        state.pop("_fast", None)
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags


# A bundle names each class it holds by its module (ftml.bundle's codec), and a pickle too:
# IsolationDetector keeps the name it was always stored under.
IsolationDetector.__module__ = "ftml.detect"
