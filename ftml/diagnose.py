"""Diagnosis: operator rules first, then a classifier that names the root cause of an event,
with a confidence, abstaining as ``unknown`` below a cut chosen in training."""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from ftml.config import DiagnoseConfig
from ftml.errors import ConfigError

_GC = DiagnoseConfig()  # the defaults' one home
UNKNOWN = "unknown"
#: The class of windows the detector flags outside any labelled incident: flagged but healthy.
NO_FAULT = "no_fault"
#: Causes no playbook may act on: the diagnoser does not know, or it is no fault at all.
NOT_A_CAUSE = (UNKNOWN, NO_FAULT)
CLASSIFIERS = ("tree", "svm", "forest")
# SVC training is quadratic in rows and predicts ~700 rows/s: cap what it sees.
SVM_MAX_TRAIN = 4000
TREE_MAX_TRAIN = 200_000


def __getattr__(name: str):
    # Diagnoser is scikit-learn's kind of estimator: importing it imports scikit-learn and
    # scipy (seconds), which the rules, and scoring with a model that has no diagnoser, never
    # need; so it lives in ftml/diagnoser.py and is loaded on first use:
    # ``from ftml.diagnose import Diagnoser`` works as before.
    if name == "Diagnoser":
        from ftml.diagnoser import Diagnoser

        return Diagnoser
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------- helpers

#: Fewer out-of-fold events than this: confidences are left as they are (identity map).
MIN_CALIBRATION_EVENTS = 10
#: Per-feature spread below this (signed-log units) is taken as this: a feature constant in
#: training must not make every later wobble infinitely far.
MIN_SCALE = 0.1
#: A cause's median nearest-sibling distance below this is taken as this (identical
#: incidents must not make a zero cut).
MIN_DISTANCE = 1e-9
#: Bins of the expected calibration error.
ECE_BINS = 10


def _class_weight(y: np.ndarray) -> dict:
    """Fault causes balanced among themselves (as ``class_weight="balanced"``); ``no_fault``
    windows weigh what a window of the average fault cause does, never more: balanced, its
    handful of windows would outweigh whole causes and carve regions where faults fall."""
    classes, counts = np.unique(y, return_counts=True)
    fault = classes != NO_FAULT
    weights = np.ones(len(classes))
    if fault.any():
        weights[fault] = counts[fault].sum() / (fault.sum() * counts[fault])
    return {c: float(w) for c, w in zip(classes, weights, strict=True)}


def _group_mean(values: np.ndarray, inv: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((n, values.shape[1]))
    np.add.at(out, inv, values)
    return out / np.bincount(inv, minlength=n)[:, None]


def _signed_log(X: np.ndarray) -> np.ndarray:
    return np.sign(X) * np.log1p(np.abs(X))


def _scale_of(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    L = _signed_log(X)
    return L.mean(axis=0), np.maximum(L.std(axis=0), MIN_SCALE)


def _nearest(points: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per point: the RMS distance to the nearest row of ``ref``."""
    sq = (points ** 2).mean(axis=1)[:, None] + (ref ** 2).mean(axis=1)[None, :] \
        - 2.0 * points @ ref.T / points.shape[1]
    return np.sqrt(np.maximum(sq, 0.0)).min(axis=1)


def _nearest_else(points: np.ndarray, named: np.ndarray, which: np.ndarray, ref: np.ndarray,
                  ref_class: np.ndarray, healthy: np.ndarray) -> np.ndarray:
    """Per point (rows ``which`` of ``points``; inf elsewhere): the RMS distance to the
    nearest of everything known that is not its named class ``named``: another class's
    references and the ``healthy`` ones. inf where there is none."""
    out = np.full(len(points), np.inf)
    for c in np.unique(named[which]):  # one pass per named class: a handful
        at = which & (named == c)
        other = ref[ref_class != c]
        if len(other):
            out[at] = _nearest(points[at], other)
    if len(healthy) and which.any():
        out[which] = np.minimum(out[which], _nearest(points[which], healthy))
    return out


def _distance_cuts(ref: np.ndarray, ref_class: np.ndarray, n_classes: int, margin: float,
                   rate: float = 0.0) -> np.ndarray:
    """Per class, from each training incident's distance to its nearest sibling (a
    leave-one-out distance: how far a new incident of the cause may lie):

    - ``rate`` 0: ``margin`` times the largest (every training incident is within it);
    - ``rate`` > 0: the cause's median times the ``1 - rate`` quantile of those distances
      divided by their cause's median, pooled over causes: about ``rate`` of the training
      incidents would be answered unknown, and a cause with one outlying incident does not
      widen its cut for every event.

    A class with a single incident gets the median of the others' cuts; no incidents
    (no_fault): inf."""
    cuts = np.full(n_classes, np.inf)
    single, nearest = [], {}
    for c in np.unique(ref_class):
        r = ref[ref_class == c]
        if len(r) < 2:
            single.append(c)
            continue
        d = np.sqrt(((r[:, None, :] - r[None, :, :]) ** 2).mean(axis=2))
        np.fill_diagonal(d, np.inf)
        nearest[c] = d.min(axis=1)
        cuts[c] = margin * float(nearest[c].max())
    if rate > 0 and nearest:
        scale = {c: max(float(np.median(s)), MIN_DISTANCE) for c, s in nearest.items()}
        ratio = np.concatenate([s / scale[c] for c, s in nearest.items()])
        q = float(np.quantile(ratio, 1.0 - rate, method="higher"))
        for c in nearest:
            cuts[c] = q * scale[c]
    finite = cuts[np.isfinite(cuts)]
    for c in single:
        cuts[c] = float(np.median(finite)) if finite.size else np.inf
    return cuts


def expected_calibration_error(confidence: np.ndarray, right: np.ndarray,
                               bins: int = ECE_BINS) -> float:
    """Expected calibration error: the mean gap between confidence and the share right, over
    equal-width confidence bins weighted by their counts."""
    confidence = np.asarray(confidence, dtype=np.float64)
    right = np.asarray(right, dtype=np.float64)
    if not len(confidence):
        return float("nan")
    b = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    n = np.bincount(b, minlength=bins)
    gap = np.abs(np.bincount(b, confidence, bins) - np.bincount(b, right, bins))
    return float(gap.sum() / n.sum())


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
