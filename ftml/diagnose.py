"""Diagnosis: operator rules first, then a classifier that names the root cause of an event,
with a confidence, abstaining as ``unknown`` below a cut chosen in training."""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import GroupKFold, KFold, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier, export_text
from sklearn.utils.multiclass import unique_labels
from sklearn.utils.validation import check_is_fitted, validate_data

from ftml.config import DiagnoseConfig
from ftml.errors import ConfigError

_GC = DiagnoseConfig()  # the defaults' one home
UNKNOWN = "unknown"
CLASSIFIERS = ("tree", "svm", "forest")
# SVC training is quadratic in rows and predicts ~700 rows/s: cap what it sees.
SVM_MAX_TRAIN = 4000
TREE_MAX_TRAIN = 200_000


class Diagnoser(ClassifierMixin, BaseEstimator):
    """Names the cause of windows. ``classifier`` is ``tree`` (depth-limited, readable),
    ``svm`` (scaled RBF with probabilities) or ``forest``. ``min_confidence_`` is learned with
    grouped cross-validation so that answers above it are right ``target_precision`` of the time,
    an answer being what :meth:`diagnose` gives for one group's windows (``groups``: incidents).
    """

    def __init__(self, *, classifier: str = _GC.classifier, max_depth: int = _GC.max_depth,
                 target_precision: float = _GC.target_precision,
                 random_state: int | None = 0):
        self.classifier = classifier
        self.max_depth = max_depth
        self.target_precision = target_precision
        self.random_state = random_state

    def _make(self, y: np.ndarray):
        if self.classifier == "tree":
            return DecisionTreeClassifier(max_depth=self.max_depth, min_samples_leaf=5,
                                          class_weight="balanced", random_state=self.random_state)
        if self.classifier == "svm":
            # Probabilities by calibration on held-out folds (SVC(probability=True) is
            # deprecated in scikit-learn 1.9).
            # A rare cause may have fewer examples than folds: stratify with as many folds as
            # its count allows, and below two examples fall back to plain folds (a fold that
            # lacks the cause gives it probability 0 there) rather than refuse to train.
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
                                          class_weight="balanced",
                                          random_state=self.random_state)
        raise ValueError(f"classifier must be one of {', '.join(CLASSIFIERS)}, "
                         f"got {self.classifier!r}")

    def fit(self, X, y, groups=None):
        X, y = validate_data(self, X, y, dtype=np.float64)
        self.classes_ = unique_labels(y)
        y = np.asarray(y)
        idx = self._subsample(y)
        X, y = X[idx], y[idx]
        groups = np.asarray(groups)[idx] if groups is not None else None
        self.min_confidence_ = self._confidence_cut(X, y, groups)
        self.model_ = self._make(y).fit(X, y)
        return self

    def _subsample(self, y: np.ndarray) -> np.ndarray:
        cap = SVM_MAX_TRAIN if self.classifier == "svm" else TREE_MAX_TRAIN
        if len(y) <= cap:
            return np.arange(len(y))
        rng = np.random.default_rng(self.random_state)
        return np.sort(rng.choice(len(y), size=cap, replace=False))

    def _confidence_cut(self, X, y, groups) -> float:
        """Lowest confidence at which grouped out-of-fold answers are right often enough.

        Judged on the unit :meth:`diagnose` answers for: a group (one incident: its windows,
        one cause), its confidence the top class of its windows' mean probabilities. Judged per
        window instead (a tree's leaves say 1.0 on windows that are often wrong), the cut sits
        above what an event's mean reaches, and events named rightly are held back as unknown."""
        if groups is None:
            groups = np.arange(len(y))
        n_groups = len(np.unique(groups))
        if len(self.classes_) < 2 or n_groups < 3:
            return 0.0
        proba = np.zeros((len(y), len(self.classes_)))
        fitted = np.ones(len(y), dtype=bool)
        for train, test in GroupKFold(n_splits=min(5, n_groups)).split(X, y, groups):
            if len(np.unique(y[train])) < 2:
                fitted[test] = False
                continue
            model = self._make(y[train]).fit(X[train], y[train])
            cols = np.searchsorted(self.classes_, model.classes_)
            proba[np.ix_(test, cols)] = model.predict_proba(X[test])
        _, first, inv = np.unique(groups, return_index=True, return_inverse=True)
        mean = np.zeros((len(first), len(self.classes_)))
        np.add.at(mean, inv, proba)
        mean /= np.bincount(inv)[:, None]
        conf = mean.max(axis=1)
        right = (self.classes_[mean.argmax(axis=1)] == y[first]) & fitted[first]
        conf[~fitted[first]] = 0.0
        order = np.argsort(-conf, kind="stable")
        precision = np.cumsum(right[order]) / np.arange(1, len(conf) + 1)
        ok = np.flatnonzero(precision >= self.target_precision)
        if ok.size == 0:
            return 1.0
        # Deepest cut that keeps precision: answers with at least this confidence.
        return float(conf[order][ok[-1]])

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self, "model_")
        X = validate_data(self, X, dtype=np.float64, reset=False)
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

    def diagnose(self, X) -> tuple[str, float, list[tuple[str, float]]]:
        """One event's windows -> (cause or ``unknown``, confidence, top 3 causes)."""
        proba = self.predict_proba(X).mean(axis=0)
        order = np.argsort(-proba, kind="stable")[:3]
        top = [(str(self.classes_[i]), float(proba[i])) for i in order]
        cause, conf = top[0]
        if conf < self.min_confidence_:
            cause = UNKNOWN
        return cause, conf, top

    def explain(self, feature_names: list[str]) -> str:
        check_is_fitted(self, "model_")
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


# --------------------------------------------------------------------------- rules

_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
        "==": operator.eq, "!=": operator.ne}
_RULE = re.compile(
    r"^\s*(?P<metric>[\w.:/-]+)\s*(?P<op>>=|<=|==|!=|>|<)\s*(?P<value>-?[\d.]+(?:e-?\d+)?)\s*"
    r"(?:for\s+(?P<n>\d+)\s+windows?\s*)?->\s*(?P<cause>[\w.-]+)\s*$")


@dataclass(frozen=True)
class Rule:
    """``metric op value for n windows -> cause``: holds when at least ``n`` of an event's
    windows end with the metric's value meeting the condition."""

    name: str
    metric: str
    op: str
    value: float
    windows: int
    cause: str

    def holds(self, last_values: np.ndarray) -> bool:
        """``last_values``: the metric's value at the end of each of the event's windows."""
        ok = _OPS[self.op](last_values, self.value)
        return int(np.count_nonzero(ok & np.isfinite(last_values))) >= self.windows

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.value:g} for {self.windows} windows -> {self.cause}"


def parse_rule(text: str, name: str, source: str) -> Rule:
    m = _RULE.match(text)
    if not m:
        raise ConfigError(f"cannot read rule {text!r}", source=source, where=name,
                          hint="write e.g. 'disk_used_pct > 95 for 3 windows -> disk_full'")
    return Rule(name=name, metric=m["metric"], op=m["op"], value=float(m["value"]),
                windows=int(m["n"] or 1), cause=m["cause"])


def load_rules(path: str | Path | None, metrics: list[str] | None = None) -> list[Rule]:
    """YAML: ``rules:`` a list of strings, or of mappings ``{name, when, for, cause}``."""
    if path is None:
        return []
    source = str(path)
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read rules: {exc.strerror}", source=source) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError("not valid YAML", source=source,
                          where=f"line {mark.line + 1}" if mark else None) from None
    items = data.get("rules") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ConfigError("expected a list under 'rules'", source=source,
                          hint="rules:\n  - 'disk_used_pct > 95 for 3 windows -> disk_full'")
    rules = []
    for i, item in enumerate(items):
        where = f"rules[{i}]"
        if isinstance(item, str):
            rule = parse_rule(item, f"rule{i + 1}", source)
        elif isinstance(item, dict) and {"when", "cause"} <= set(item):
            text = f"{item['when']} for {int(item.get('for', 1))} windows -> {item['cause']}"
            rule = parse_rule(text, str(item.get("name", f"rule{i + 1}")), source)
        else:
            raise ConfigError("a rule is a string or a mapping with 'when' and 'cause'",
                              source=source, where=where)
        if metrics is not None and rule.metric not in metrics:
            raise ConfigError(f"rule names unknown metric '{rule.metric}'", source=source,
                              where=where, hint=f"metrics are {', '.join(metrics)}")
        rules.append(rule)
    return rules


def apply_rules(rules: list[Rule], metrics: list[str], last_values: np.ndarray
                ) -> Rule | None:
    """First rule that holds for an event whose windows end with ``last_values``
    (windows x metrics), or None."""
    for rule in rules:
        if rule.holds(last_values[:, metrics.index(rule.metric)]):
            return rule
    return None
