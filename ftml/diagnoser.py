"""The diagnosis classifier: :class:`Diagnoser`, scikit-learn's kind of estimator.

Imported on first use of ``ftml.diagnose.Diagnoser`` (training, a bundle that has one): the
operator rules, and scoring with a model that has no diagnoser, never import scikit-learn.
The class keeps its name ``ftml.diagnose.Diagnoser`` (bundles, pickles). Moved here verbatim
from ftml/diagnose.py; the constants and helpers it uses stay there.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import RandomForestClassifier
from sklearn.isotonic import IsotonicRegression
from sklearn.model_selection import GroupKFold, KFold, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier, export_text
from sklearn.utils.multiclass import unique_labels
from sklearn.utils.validation import check_is_fitted, validate_data

from ftml.diagnose import (
    _GC,
    CLASSIFIERS,
    MIN_CALIBRATION_EVENTS,
    MIN_SCALE,
    NO_FAULT,
    SVM_MAX_TRAIN,
    TREE_MAX_TRAIN,
    UNKNOWN,
    _class_weight,
    _distance_cuts,
    _group_mean,
    _nearest,
    _nearest_else,
    _scale_of,
    _signed_log,
    expected_calibration_error,
)

#: Where the open-set distance is taken: every feature, or those the classifier splits on.
OPEN_SET_SPACES = ("all", "used")
#: Features left out of the open-set distance: none; ``novelty``, the columns given as
#: ``novelty_features`` (the pipeline gives those of ``log:unseen``: 0 in training by
#: construction); ``still``, every feature whose spread over the training windows is at the
#: scale floor (it did not move in training). Logs ablation, amendment 2.
OPEN_SET_IGNORES = ("none", "novelty", "still")
#: What the diagnoser sees of a window (``change_features``): the features as they are; those
#: plus each metric's change within the window (last less median); or each metric's change and
#: slope alone (amendment 5 of bench/PROTOCOL_diagnosis.md).
CHANGE_FEATURES = ("none", "add", "only")


def split_features(model) -> np.ndarray | None:
    """The feature columns a fitted tree or forest splits on (sorted), or None for a
    classifier without splits (the svm pipeline)."""
    trees = [model] if hasattr(model, "tree_") else list(getattr(model, "estimators_", []))
    if not trees or not all(hasattr(t, "tree_") for t in trees):
        return None
    used = np.concatenate([t.tree_.feature[t.tree_.feature >= 0] for t in trees])
    return np.unique(used).astype(np.int64)


class Diagnoser(ClassifierMixin, BaseEstimator):
    """Names the cause of windows. ``classifier`` is ``tree`` (depth-limited, readable),
    ``svm`` (scaled RBF with probabilities) or ``forest``. ``min_confidence_`` is learned with
    grouped cross-validation so that answers above it are right ``target_precision`` of the time,
    an answer being what :meth:`diagnose` gives for one group's windows (``groups``: incidents).

    Knowing when it does not know (three mechanisms, each can be switched off for ablation):

    - a ``no_fault`` class: windows labelled :data:`NO_FAULT` (flagged but healthy) are a class
      like any other; an event that looks like them comes out ``no_fault``;
    - ``calibrate``: an event's confidence is the out-of-fold share of events of that raw
      confidence that were named rightly (isotonic, :attr:`calibration_x_` ->
      :attr:`calibration_y_`), so a pure tree leaf's 1.00 says how often such answers are right;
    - ``open_set``: an event farther from every training incident of its named cause than
      those incidents lie from each other (:attr:`distance_cut_`, in standardized signed-log
      feature space) is ``unknown``: a fault never seen is not forced into a known one. The
      cut is ``open_set_margin`` times the cause's largest nearest-sibling distance, or with
      ``open_set_rate`` > 0 the one at which that share of training incidents (left out one at
      a time) would be answered unknown; with ``open_set_space`` ``used`` the distance is
      taken over the features the classifier splits on only (:attr:`space_`), so features it
      ignores (a thousand of them on a wide data set, most barely moving in training) cannot
      make an event far; ``open_set_ignore`` leaves features out of that distance (see
      :data:`OPEN_SET_IGNORES`; :attr:`ignored_`): a feature that is 0 in training by
      construction (lines of templates never seen) sits at the scale floor there, so any
      later value is tens of floors away and would make every event that has it far,
      however like its cause it is otherwise; with ``open_set_ratio`` rho > 0 an event beyond
      the cut keeps its name when it lies at most rho times as far from its cause's nearest
      incident as from the nearest incident of any other cause or flagged-but-healthy run
      (the nearest-neighbour distance ratio): a cause learnt from a handful of incidents has a
      cut tighter than where its next incident falls, while the gap to everything else known
      still says which cause it is;
    - ``no_fault_margin`` > 0: an event named a cause that lies farther from that cause's
      training incidents than ``no_fault_margin`` times its distance to the nearest
      flagged-but-healthy run (:attr:`healthy_reference_`) is ``no_fault``: it looks more like
      a false alarm than like the fault.
    """

    def __init__(self, *, classifier: str = _GC.classifier, max_depth: int = _GC.max_depth,
                 target_precision: float = _GC.target_precision,
                 calibrate: bool = _GC.calibrate, open_set: bool = _GC.open_set,
                 open_set_margin: float = _GC.open_set_margin,
                 open_set_rate: float = _GC.open_set_rate,
                 no_fault_margin: float = _GC.no_fault_margin,
                 open_set_space: str = _GC.open_set_space,
                 open_set_ignore: str = _GC.open_set_ignore,
                 open_set_ratio: float = _GC.open_set_ratio,
                 novelty_features: tuple[int, ...] = (),
                 change_features: str = _GC.change_features,
                 change_columns: tuple[tuple[int, ...], ...] = (),
                 random_state: int | None = 0):
        self.classifier = classifier
        self.max_depth = max_depth
        self.target_precision = target_precision
        self.calibrate = calibrate
        self.open_set = open_set
        self.open_set_margin = open_set_margin
        self.open_set_rate = open_set_rate
        self.no_fault_margin = no_fault_margin
        self.open_set_space = open_set_space
        self.open_set_ignore = open_set_ignore
        self.open_set_ratio = open_set_ratio
        self.novelty_features = novelty_features
        self.change_features = change_features
        self.change_columns = change_columns
        self.random_state = random_state

    def _make(self, y: np.ndarray):
        if self.classifier == "tree":
            return DecisionTreeClassifier(max_depth=self.max_depth, min_samples_leaf=5,
                                          class_weight=_class_weight(y), random_state=self.random_state)
        if self.classifier == "svm":
            # Probabilities by calibration on held-out folds (SVC(probability=True) is
            # deprecated in scikit-learn 1.9).
            # A rare cause may have fewer examples than folds: stratify with as many folds as
            # its count allows, and below two examples fall back to plain folds (a fold that
            # lacks the cause gives it probability 0 there) rather than refuse to train.
            # (CalibratedClassifierCV hands SVC encoded labels: weights by name cannot reach it.)
            svc = SVC(kernel="rbf", class_weight="balanced", C=10.0)
            if len(y) < 2:
                raise ValueError(f"the svm diagnoser needs two examples or more, got "
                                 f"n_samples={len(y)}")
            rarest = int(np.unique(y, return_counts=True)[1].min())
            cv = (StratifiedKFold(n_splits=min(3, rarest)) if rarest >= 2
                  else KFold(n_splits=min(3, len(y)), shuffle=True,
                             random_state=self.random_state))
            return make_pipeline(StandardScaler(),
                                 CalibratedClassifierCV(svc, ensemble=False, cv=cv))
        if self.classifier == "forest":
            return RandomForestClassifier(n_estimators=200, min_samples_leaf=2,
                                          class_weight=_class_weight(y),
                                          random_state=self.random_state)
        raise ValueError(f"classifier must be one of {', '.join(CLASSIFIERS)}, "
                         f"got {self.classifier!r}")

    def fit(self, X, y, groups=None):
        if self.open_set_space not in OPEN_SET_SPACES:
            raise ValueError(f"open_set_space must be one of {', '.join(OPEN_SET_SPACES)}, "
                             f"got {self.open_set_space!r}")
        if self.open_set_ignore not in OPEN_SET_IGNORES:
            raise ValueError(f"open_set_ignore must be one of {', '.join(OPEN_SET_IGNORES)}, "
                             f"got {self.open_set_ignore!r}")
        if not 0.0 <= self.open_set_ratio < 1.0:
            raise ValueError("open_set_ratio must be >= 0 (0: off) and < 1 (nearer to the "
                             f"named cause than to anything else), got {self.open_set_ratio!r}")
        X, y = validate_data(self, X, y, dtype=np.float64)
        self._check_change_columns()
        X = self._view(X)
        self.classes_ = unique_labels(y)
        y = np.asarray(y)
        idx = self._subsample(y)
        X, y = X[idx], y[idx]
        groups = np.asarray(groups)[idx] if groups is not None else np.arange(len(y))
        raw, right, answered = self._out_of_fold(X, y, groups)
        self._fit_calibration(raw[answered], right[answered])
        self.min_confidence_ = self._confidence_cut(self._calibrated(raw), right, answered)
        conf = self._calibrated(raw[answered])
        self.ece_ = expected_calibration_error(conf, right[answered]) if answered.any() \
            else float("nan")
        self.model_ = self._make(y).fit(X, y)
        self.scale_center_, self.scale_width_ = _scale_of(X)
        self.ignored_ = self._ignored(X.shape[1])
        self.space_ = self._space_of(self.model_, X.shape[1])
        self._fit_references(X, y, groups)
        self.unseen_unknown_ = self._leave_cause_out(X, y, groups)
        counts = np.array([len(np.unique(groups[y == c])) for c in self.classes_])
        fault = self.classes_ != NO_FAULT
        known = np.isfinite(self.unseen_unknown_) & fault
        self.unseen_unknown_rate_ = (
            float(np.average(self.unseen_unknown_[known], weights=counts[known]))
            if known.any() else float("nan"))
        return self

    def _subsample(self, y: np.ndarray) -> np.ndarray:
        cap = SVM_MAX_TRAIN if self.classifier == "svm" else TREE_MAX_TRAIN
        if len(y) <= cap:
            return np.arange(len(y))
        rng = np.random.default_rng(self.random_state)
        return np.sort(rng.choice(len(y), size=cap, replace=False))

    def _out_of_fold(self, X, y, groups) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per group (in ``np.unique`` order): the raw confidence of grouped out-of-fold
        answers, whether they were right, and whether a model could be fitted for it.

        Judged on the unit :meth:`diagnose` answers for: a group (one incident: its windows,
        one cause), its confidence the top class of its windows' mean probabilities. Judged per
        window instead (a tree's leaves say 1.0 on windows that are often wrong), the cut sits
        above what an event's mean reaches, and events named rightly are held back as unknown."""
        _, first, inv = np.unique(groups, return_index=True, return_inverse=True)
        n_groups = len(first)
        if len(self.classes_) < 2 or n_groups < 3:
            return (np.zeros(n_groups), np.zeros(n_groups, dtype=bool),
                    np.zeros(n_groups, dtype=bool))
        proba = np.zeros((len(y), len(self.classes_)))
        fitted = np.ones(len(y), dtype=bool)
        for train, test in GroupKFold(n_splits=min(5, n_groups)).split(X, y, groups):
            if len(np.unique(y[train])) < 2:
                fitted[test] = False
                continue
            model = self._make(y[train]).fit(X[train], y[train])
            cols = np.searchsorted(self.classes_, model.classes_)
            proba[np.ix_(test, cols)] = model.predict_proba(X[test])
            # A held-out incident whose cause the fold never saw measures the open set (see
            # _leave_cause_out), not how often a known cause is named rightly.
            fitted[test] &= np.isin(y[test], model.classes_)
        mean = _group_mean(proba, inv, n_groups)
        right = (self.classes_[mean.argmax(axis=1)] == y[first]) & fitted[first]
        # Calibration says how often a named fault is the right one, judged on faults: the
        # flagged-but-healthy runs are many more in training than false alarms are later
        # (they are the top share of calibration windows, not those past the threshold), and
        # counted here they would sink every cause that resembles them.
        return mean.max(axis=1), right, fitted[first] & (y[first] != NO_FAULT)

    def _fit_calibration(self, raw: np.ndarray, right: np.ndarray) -> None:
        """The map raw event confidence -> share right, as (x, y) points for ``np.interp``;
        the identity when switched off or with too few events to learn from."""
        self.calibration_x_, self.calibration_y_ = np.array([0.0, 1.0]), np.array([0.0, 1.0])
        if not self.calibrate or len(raw) < MIN_CALIBRATION_EVENTS:
            return
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(
            raw, right.astype(float))
        self.calibration_x_ = np.asarray(iso.X_thresholds_, dtype=np.float64)
        self.calibration_y_ = np.asarray(iso.y_thresholds_, dtype=np.float64)

    def _calibrated(self, raw) -> np.ndarray:
        x = getattr(self, "calibration_x_", None)
        if x is None:  # a diagnoser fitted before calibration existed
            return np.asarray(raw, dtype=np.float64)
        return np.interp(raw, x, self.calibration_y_)

    def _confidence_cut(self, conf: np.ndarray, right: np.ndarray, answered: np.ndarray
                        ) -> float:
        """Lowest (calibrated) confidence at which grouped out-of-fold answers are right
        ``target_precision`` of the time."""
        if not answered.any():
            return 0.0
        conf, right = conf[answered], right[answered]
        order = np.argsort(-conf, kind="stable")
        precision = np.cumsum(right[order]) / np.arange(1, len(conf) + 1)
        # A cut answers every event of its confidence: judged only where a run of equal
        # confidences ends (calibrated confidences come in steps).
        s = conf[order]
        block_end = np.r_[s[1:] != s[:-1], True]
        ok = np.flatnonzero((precision >= self.target_precision) & block_end)
        if ok.size == 0:
            return 1.0
        # Deepest cut that keeps precision: answers with at least this confidence.
        return float(conf[order][ok[-1]])

    # -- open set --------------------------------------------------------------------

    def _ignored(self, n_features: int) -> np.ndarray:
        """The feature columns ``open_set_ignore`` leaves out of the distance (sorted)."""
        how = getattr(self, "open_set_ignore", "none")
        if how == "novelty":
            cols = np.asarray(self.novelty_features, dtype=np.int64).reshape(-1)
            n_raw = self.n_features_in_
            if cols.size and (cols.min() < 0 or cols.max() >= n_raw):
                raise ValueError(f"novelty_features must be columns of X (0..{n_raw - 1}),"
                                 f" got {sorted(set(cols.tolist()))}")
            return self._view_columns(np.unique(cols))
        if how == "still":
            # At the floor: the training windows' spread was below it (see _scale_of).
            return np.flatnonzero(self.scale_width_ <= MIN_SCALE).astype(np.int64)
        return np.empty(0, dtype=np.int64)

    # -- what the diagnoser sees of a window ------------------------------------------

    def _change_parts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per metric, the columns of its last value, its median and its slope."""
        last, median, slope = (np.asarray(c, dtype=np.int64) for c in self.change_columns)
        return last, median, slope

    def _check_change_columns(self) -> None:
        how = getattr(self, "change_features", "none")
        if how not in CHANGE_FEATURES:
            raise ValueError(f"change_features must be one of {', '.join(CHANGE_FEATURES)}, "
                             f"got {how!r}")
        if how == "none":
            return
        if len(self.change_columns) != 3 or len({len(c) for c in self.change_columns}) != 1 \
                or not len(self.change_columns[0]):
            raise ValueError("change_features needs change_columns: per metric the columns of "
                             "its last value, its median and its slope (three equal lists)")
        cols = np.concatenate(self._change_parts())
        if cols.min() < 0 or cols.max() >= self.n_features_in_:
            raise ValueError(f"change_columns must be columns of X (0..{self.n_features_in_ - 1})")

    def _view(self, X: np.ndarray) -> np.ndarray:
        """Windows (the featurizer's features) -> what the classifier and every distance see
        (``change_features``): as they are, with each metric's change within the window
        appended, or each metric's change and slope alone. A change (last less median, in
        robust z) is blind to a level the window sits at as a whole."""
        how = getattr(self, "change_features", "none")  # a diagnoser fitted before it existed
        if how == "none":
            return X
        last, median, slope = self._change_parts()
        change = X[:, last] - X[:, median]
        if how == "add":
            return np.hstack([X, change])
        return np.hstack([change, X[:, slope]])

    def _view_columns(self, cols: np.ndarray) -> np.ndarray:
        """Columns of the features -> the columns of the view that come from them (sorted):
        a metric's change comes from its last value and median, its slope from its slope."""
        how = getattr(self, "change_features", "none")
        if how == "none" or not cols.size:
            return cols
        last, median, slope = self._change_parts()
        changed = np.flatnonzero(np.isin(last, cols) | np.isin(median, cols))
        if how == "add":
            return np.unique(np.r_[cols, self.n_features_in_ + changed]).astype(np.int64)
        sloped = np.flatnonzero(np.isin(slope, cols))
        return np.unique(np.r_[changed, len(last) + sloped]).astype(np.int64)

    def view_names(self, feature_names: list[str]) -> list[str]:
        """The names of the view's columns, from the features' names."""
        how = getattr(self, "change_features", "none")
        if how == "none":
            return list(feature_names)
        names = np.asarray(feature_names, dtype=object)
        last, _, slope = self._change_parts()
        change = [f"{str(n).rsplit(':', 1)[0]}:change" for n in names[last]]
        if how == "add":
            return [*map(str, names), *change]
        return [*change, *map(str, names[slope])]

    def _space_of(self, model, n_features: int) -> np.ndarray:
        """The feature columns distances are taken over: every one, or with
        ``open_set_space`` ``used`` those ``model`` splits on (all of them when it splits on
        none, or is a classifier without splits); less :attr:`ignored_` (unless that would
        leave none)."""
        space = np.arange(n_features)
        if getattr(self, "open_set_space", "all") == "used":
            used = split_features(model)
            if used is not None and used.size:
                space = used
        ignored = getattr(self, "ignored_", None)
        if ignored is not None and ignored.size:
            kept = space[~np.isin(space, ignored)]
            if kept.size:
                return kept
        return space

    def _embed(self, X: np.ndarray, space: np.ndarray | None = None) -> np.ndarray:
        """Windows -> the space distances are taken in: signed log (a fault's z of 300 and of
        30 are both far; neither should drown every other feature), then standardized, on the
        columns ``space`` (default :attr:`space_`; every column for a diagnoser fitted
        before it existed)."""
        if space is None:
            space = getattr(self, "space_", None)
        if space is None:
            return (_signed_log(X) - self.scale_center_) / self.scale_width_
        return (_signed_log(X[:, space]) - self.scale_center_[space]) / self.scale_width_[space]

    def _fit_references(self, X, y, groups) -> None:
        """Each training incident (a group of a fault cause) as its windows' mean embedding,
        and per cause the distance beyond which an event is not one of its kind."""
        ref, ref_class = self._references(X, y, groups)
        self.reference_, self.reference_class_ = ref, ref_class
        self.distance_cut_ = _distance_cuts(ref, ref_class, len(self.classes_),
                                            self.open_set_margin, self.open_set_rate)
        self.healthy_reference_ = self._healthy_references(X, y, groups)

    def _healthy_references(self, X, y, groups, space=None) -> np.ndarray:
        """Each flagged-but-healthy run (a group of class no_fault) as its windows' mean
        embedding."""
        keep = y == NO_FAULT
        if not keep.any():
            return np.empty((0, self._embed(X[:0], space).shape[1]))
        _, first, inv = np.unique(groups[keep], return_index=True, return_inverse=True)
        return _group_mean(self._embed(X[keep], space), inv, len(first))

    def _references(self, X, y, groups, space=None) -> tuple[np.ndarray, np.ndarray]:
        keep = y != NO_FAULT
        if not keep.any():
            return (np.empty((0, self._embed(X[:0], space).shape[1])),
                    np.empty(0, dtype=np.int64))
        _, first, inv = np.unique(groups[keep], return_index=True, return_inverse=True)
        ref = _group_mean(self._embed(X[keep], space), inv, len(first))
        return ref, np.searchsorted(self.classes_, y[keep][first]).astype(np.int64)

    def _open_set_why(self, emb: np.ndarray, named: np.ndarray, ref: np.ndarray,
                      ref_class: np.ndarray, cuts: np.ndarray, healthy: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Events (mean embeddings ``emb``, named class ``named``) -> their distance to the
        nearest training incident of the named class, and whether each is ``no_fault`` by the
        no_fault margin or ``unknown`` by the open-set cut (each only when switched on)."""
        dist = np.full(len(named), np.inf)
        for c in np.unique(named):  # one pass per named class: a handful
            r = ref[ref_class == c]
            at = named == c
            if len(r):
                dist[at] = _nearest(emb[at], r)
        margin = getattr(self, "no_fault_margin", 0.0)
        as_no_fault = np.zeros(len(named), dtype=bool)
        if margin > 0 and len(healthy):
            as_no_fault = dist > margin * _nearest(emb, healthy)
        far = (dist > cuts[named]) if getattr(self, "open_set", False) \
            else np.zeros(len(named), dtype=bool)
        ratio = getattr(self, "open_set_ratio", 0.0)
        if ratio > 0 and far.any():
            other = _nearest_else(emb, named, far, ref, ref_class, healthy)
            far &= ~(np.isfinite(other) & (dist <= ratio * other))  # nothing else: no vouching
        return dist, as_no_fault, far & ~as_no_fault

    def _leave_cause_out(self, X, y, groups) -> np.ndarray:
        """Per class: the share of its incidents answered unknown (or no_fault) by a diagnoser
        trained without that cause at all (NaN: not measurable, e.g. no_fault itself or fewer
        than two other classes). Uses this fit's calibration and cut, a fresh classifier and
        fresh references (in the fresh classifier's space)."""
        out = np.full(len(self.classes_), np.nan)
        for ci, cause in enumerate(self.classes_):
            rest = y != cause
            if cause == NO_FAULT or len(np.unique(y[rest])) < 2:
                continue
            model = self._make(y[rest]).fit(X[rest], y[rest])
            space = self._space_of(model, X.shape[1])
            ref, ref_class = self._references(X[rest], y[rest], groups[rest], space)
            cuts = _distance_cuts(ref, ref_class, len(self.classes_), self.open_set_margin,
                                  self.open_set_rate)
            _, first, inv = np.unique(groups[~rest], return_index=True, return_inverse=True)
            proba = np.zeros((int((~rest).sum()), len(self.classes_)))
            proba[:, np.searchsorted(self.classes_, model.classes_)] = model.predict_proba(
                np.require(X[~rest], requirements="W"))
            mean = _group_mean(proba, inv, len(first))
            named = mean.argmax(axis=1)
            abstain = (self.classes_[named] == NO_FAULT) | \
                (self._calibrated(mean.max(axis=1)) < self.min_confidence_)
            emb = _group_mean(self._embed(X[~rest], space), inv, len(first))
            healthy = self._healthy_references(X[rest], y[rest], groups[rest], space)
            _, as_no_fault, far = self._open_set_why(emb, named, ref, ref_class, cuts, healthy)
            out[ci] = float((abstain | as_no_fault | far).mean())
        return out

    # -- answering -------------------------------------------------------------------

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self, "model_")
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return self._proba(self._view(X))

    def _proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities of windows already in the view (:meth:`_view`)."""
        # libsvm's Cython wants a writable buffer; a read-only (memory-mapped) input gets a copy.
        proba = self.model_.predict_proba(np.require(X, requirements="W"))
        # Align to classes_ (a class absent after subsampling gets probability 0).
        out = np.zeros((X.shape[0], len(self.classes_)))
        cols = np.searchsorted(self.classes_, self.model_.classes_)
        out[:, cols] = proba
        return out

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self, "model_")
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    def assess(self, X) -> dict:
        """One event's windows -> the whole answer: ``cause`` (a class, ``unknown`` or
        ``no_fault``), calibrated ``confidence``, the ``raw`` top probability, ``top`` 3
        classes by probability, the ``distance`` to the nearest training incident of the
        named class and its ``distance_cut``, and ``why`` (``named``, ``no_fault``,
        ``low_confidence``, ``looks_healthy``: the no_fault margin, or
        ``far_from_training``)."""
        X = self._view(validate_data(self, X, dtype=np.float64, reset=False))
        proba = self._proba(X).mean(axis=0)
        order = np.argsort(-proba, kind="stable")[:3]
        top = [(str(self.classes_[i]), float(proba[i])) for i in order]
        best = int(order[0])
        cause, raw = top[0]
        conf = float(self._calibrated(raw))
        distance, cut = float("nan"), float("inf")
        as_no_fault = far = False
        if getattr(self, "reference_", None) is not None and cause != NO_FAULT:
            healthy = getattr(self, "healthy_reference_", np.empty((0, X.shape[1])))
            d, nf, fr = self._open_set_why(self._embed(X).mean(axis=0)[None, :],
                                           np.array([best]), self.reference_,
                                           self.reference_class_, self.distance_cut_, healthy)
            distance, as_no_fault, far = float(d[0]), bool(nf[0]), bool(fr[0])
            cut = float(self.distance_cut_[best])
        why = "named"
        if cause == NO_FAULT:
            why = "no_fault"
        elif conf < self.min_confidence_:
            cause, why = UNKNOWN, "low_confidence"
        elif as_no_fault:
            cause, why = NO_FAULT, "looks_healthy"
        elif far:
            cause, why = UNKNOWN, "far_from_training"
        return {"cause": cause, "confidence": conf, "raw": raw, "top": top,
                "distance": distance, "distance_cut": cut, "why": why}

    def diagnose(self, X) -> tuple[str, float, list[tuple[str, float]]]:
        """One event's windows -> (cause, ``unknown`` or ``no_fault``; calibrated confidence;
        top 3 causes by probability). See :meth:`assess`."""
        a = self.assess(X)
        return a["cause"], a["confidence"], a["top"]

    def explain(self, feature_names: list[str]) -> str:
        check_is_fitted(self, "model_")
        feature_names = self.view_names(feature_names)
        if self.classifier == "tree":
            return export_text(self.model_, feature_names=list(feature_names), decimals=2)
        final = self.model_[-1] if hasattr(self.model_, "steps") else self.model_
        if hasattr(final, "feature_importances_"):
            imp = final.feature_importances_
            order = np.argsort(-imp)[:15]
            lines = [f"{feature_names[i]:40s} {imp[i]:.3f}" for i in order]
            return "most important features:\n" + "\n".join(lines)
        return (f"{self.classifier}: scaled RBF SVM with calibrated probabilities over "
                f"{self.n_features_in_} features; classes: {', '.join(map(str, self.classes_))}")

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags


# Its bundles and pickles name it where it was always found (ftml.diagnose loads it lazily).
Diagnoser.__module__ = "ftml.diagnose"
