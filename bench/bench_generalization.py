"""Generalization (issue #14): ftml with its default settings on every labelled data set in
``../shared/data`` and on held-out simulator seeds, next to the simple tools a user would pick
instead, all judged by one rule (bench/PROTOCOL_generalization.md, written before the results).

Each data set is split in time order (train -> judge) and, by entity / series / seed, into a
*selection* part (defaults may be chosen on it) and a *held-out* part (only reported); ``all``
pools both (counts added up). Every detector sees ftml's windows, is fitted on ftml's fit
windows, thresholded by ftml's ``AlarmThreshold`` on the training calibration slice to the same
budget (0.1 false alarms per entity-day) and put through the same event rule. ``ftml`` = event
F1 of the default; ``anchor`` = the best event F1 of {static robust z, PyOD ECOD, PyOD IForest}
(named in ``vs``); ``fa_cal`` / ``fa_judged`` = false alarms per entity-day on the calibration
slice (what the threshold promised) and on the judged period; each baseline's cell gives its
F1, false alarms calibration -> judged, and AUC-PR. Rows: worst data set first (lowest held-out
ratio). Nezha has two days only: both directions are held-out, nothing selects on them.
``forest only`` / ``robust only``: the two parts of ftml's score alone (the ablation).
``R1``-``R4``: the second round's candidates (protocol amendment of 2026-12-04; none became
the default, see bench/SELECTION_generalization.md): the two parts as tail ranks against the
calibration slice, their max (R1) or mean (R2); R1 and the forest with per-entity thresholds
shrunk toward the fleet's (R3, R4). ``X1``, ``X2``: round 2 (amendment 2026-12-04 15:25):
the threshold from cross-fitted (out-of-fold) forest scores of the whole training period, the
forest (X1) or R1's rank max against all training windows (X2). ``Y1``, ``Y1s``, ``Y1X2``:
round 3 (amendment 2026-12-06 21:54): each entity's score corrected by its own previous UTC
day's median and spread (bench/drift.py), of the forest (Y1; Y1s the median shift alone)
or of X2 (Y1X2). ``Z1``-``Z3``: round 4 (amendment 2026-12-06 22:24): the previous day's
median shift only beyond a dead band (the 99 % of healthy training days' median excess), of
the forest (Z1), of X2 (Z2), of the forest with two days' persistence (Z3). ``W1``, ``V1``,
``W1V1``: round 5 (amendment 2026-12-07 00:59), ftml itself with a candidate setting: the forest
on the balanced view (the cross-metric deviation columns as many as the per-metric ones, W1),
the forest and the robust statistic each scaled by its own threshold at half the budget, their
max (V1), both (W1V1). ``W1X``, ``W1XZ``, ``W1V1X``: round 6 (amendment 2026-12-07 01:43),
W1's balanced forest cross-fitted as X1 (the threshold on out-of-fold scores of the whole
training period; judged by the mean of the two forests), the same under Z3's two-day dead band
(W1XZ), and V1's budget max with that forest part (W1V1X); where the folds are too short to
cross-fit, W1's (W1V1's) column. ``W1X-hi``, ``W1XZ-hi``: round 7 (amendment 2026-12-07 02:06),
W1X's and W1XZ's scores with the higher of two thresholds, the one over all training windows'
out-of-fold scores and the one over the calibration slice's alone; their calibration figure
over all training, and beside it (``slice cal``) the same threshold's over the slice alone.
Each cell: F1 (event recall / precision), FA, AUC-PR.
``$FTML_BENCH_CONFIG`` (JSON config sections) tries candidate settings; ``$FTML_BENCH_PARTS``
(``selection``) runs one part only: how defaults are chosen (the selection parts only).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bench import datasets
from bench.common import SkipBench, require_data, row, run_split

TITLE = "Generalization: every labelled data set, ftml vs baselines, one protocol"
BASELINES = ("robust_z", "ecod", "iforest")
#: ftml's score by parts: the forest alone, the robust statistic alone, and the two
#: ensembles (ftml.detect.ENSEMBLES), the same whatever the default is.
ABLATIONS = ("forest", "robust", "forest+robust", "forest|robust")
#: The second round of candidates (bench/PROTOCOL_generalization.md, amendment 2026-12-04):
#: the forest and the robust statistic as tail scores against the calibration slice, their
#: max (R1) or mean (R2); R1 and the forest with per-entity thresholds shrunk to the fleet's.
CANDIDATES = ("rank|", "rank+", "rank|/entity", "forest/entity")
PER_ENTITY = {"rank|/entity": "rank|", "forest/entity": "forest"}
#: Round 2 (amendment 2026-12-04 15:25): cross-fitted calibration. The forest out-of-fold on
#: alternating time blocks of the whole training period, the threshold on all of it (X1);
#: the same with R1's tail ranks against all training windows (X2).
XFIT = ("xfit", "xfit rank|")
#: Round 3 (amendment 2026-12-06 21:54): drift-following scores (bench/drift.py), each
#: entity's score corrected by its own previous UTC day: the forest's (Y1), the same without
#: the widening (Y1s), and X2's (Y1X2).
DRIFT = ("drift", "drift shift", "drift xfit")
#: Round 4 (amendment 2026-12-06 22:24): the median shift beyond a dead band (the healthy
#: training days' 99 % wobble), of the forest (Z1), of X2 (Z2), and of the forest with the
#: smaller of the two previous days' excess (Z3).
BAND = ("band", "band xfit", "band 2d")
#: Round 5 (amendment 2026-12-07 00:59): product settings, each trained and judged by ftml
#: itself as the ``ftml`` column is: the forest on the balanced view (W1), the forest and the
#: robust statistic each on its own half-budget scale, their max (V1), and both (W1V1).
ROUND5 = {"balanced": {"detect": {"view": "balanced"}},
          "budget|": {"detect": {"ensemble": "forest|robust", "ensemble_scale": "budget"}},
          "balanced budget|": {"detect": {"view": "balanced", "ensemble": "forest|robust",
                                          "ensemble_scale": "budget"}}}
#: Round 6 (amendment 2026-12-07 01:43): W1's balanced forest cross-fitted as X1 (W1X), under
#: Z3's two-day band (W1XZ), and V1's budget max with it as the forest part (W1V1X); each falls
#: back to the round 5 column named here where the folds are too short to cross-fit.
ROUND6 = {"xfit balanced": "balanced", "xfit balanced band 2d": "balanced",
          "xfit balanced budget|": "balanced budget|"}
#: Round 7 (amendment 2026-12-07 02:06): W1X's and W1XZ's scores (named here), each with the
#: higher of its whole-training threshold and the calibration slice's; ``ROUND7_SLICE`` are the
#: same columns with the calibration figure over the slice alone (the same judged counts).
ROUND7 = {"xfit balanced hi": "xfit balanced",
          "xfit balanced band 2d hi": "xfit balanced band 2d"}
ROUND7_SLICE = {f"{k} /slice": k for k in ROUND7}
XFIT_BLOCKS = 8
XFIT_MIN_FIT = 50
LABELS = {"ftml": "ftml", "robust_z": "robust z", "ecod": "ECOD", "iforest": "IForest",
          "forest": "forest only", "robust": "robust only", "forest+robust": "both (mean)",
          "forest|robust": "both (max)", "rank|": "R1 rank max", "rank+": "R2 rank mean",
          "rank|/entity": "R3 rank max, entity thr", "forest/entity": "R4 forest, entity thr",
          "xfit": "X1 xfit forest", "xfit rank|": "X2 xfit rank max",
          "drift": "Y1 drift", "drift shift": "Y1s drift shift", "drift xfit": "Y1X2 drift on X2",
          "band": "Z1 band", "band xfit": "Z2 band on X2", "band 2d": "Z3 band 2 days",
          "balanced": "W1 balanced forest", "budget|": "V1 budget max",
          "balanced budget|": "W1V1 balanced budget max",
          "xfit balanced": "W1X xfit balanced", "xfit balanced band 2d": "W1XZ xfit balanced band 2d",
          "xfit balanced budget|": "W1V1X xfit balanced budget max",
          "xfit balanced hi": "W1X-hi xfit balanced, higher thr",
          "xfit balanced band 2d hi": "W1XZ-hi xfit balanced band 2d, higher thr",
          "xfit balanced hi /slice": "W1X-hi (slice cal)",
          "xfit balanced band 2d hi /slice": "W1XZ-hi (slice cal)"}
#: Per-entity thresholds: an entity's own threshold weighs d / (d + PRIOR_DAYS) against the
#: fleet's, d its calibration entity-days (a day of its own counts as much as the fleet).
PRIOR_DAYS = 1.0
#: PyOD detectors are fitted on at most this many fit windows (a fixed-seed draw).
PYOD_FIT_WINDOWS = 20_000
SEED = 0
SMD_PARTS = {"selection": [f"machine-1-{i}" for i in range(2, 9)],
             "held-out": [f"machine-2-{i}" for i in (1, 2, 3, 4, 5, 7, 8)]}
ASD_PARTS = {"selection": [f"omi-{i}" for i in range(1, 7)],
             "held-out": [f"omi-{i}" for i in range(7, 13)]}
NAB_PARTS = {"selection": ("realAWSCloudwatch",), "held-out": ("realKnownCause",)}
SKAB_PARTS = {"selection": ("valve1",), "held-out": ("valve2", "other")}
SIM_PARTS = {"selection": (0, 1, 2), "held-out": (10, 11, 12, 13, 14)}
#: The second family of simulated worlds (ftml.simulate.WORLDS): worlds 1-2 may choose,
#: worlds 3-4 (renamed pods, scale in/out; and everything at once) are judged.
WORLD_PARTS = {"selection": (1, 2), "held-out": (3, 4)}
WORLD_SEEDS = (20, 21)


# --------------------------------------------------------------------------- detectors


def _view(X: np.ndarray, n_metrics: int, stats: list[str]) -> np.ndarray:
    from ftml.features import detector_view

    return detector_view(X, n_metrics, stats)


def _robust_z(X: np.ndarray, n_metrics: int) -> np.ndarray:
    from ftml.evaluate import RobustZScore

    return RobustZScore(n_metrics).anomaly_score(X)


class PyodScorer:
    """A PyOD detector on the forest's view of the windows, fitted on a fixed-seed sample of
    the fit windows.

    PyOD's ECOD scores a batch by ranking it together with its training data, so a window's
    score depends on the batch it comes in (and a batch costs seconds): here each window is
    scored as PyOD scores a batch of one, against the training ECDFs alone (the same sums,
    by binary search; :func:`ecod_batch_of_one` is checked against PyOD in tests)."""

    def __init__(self, kind: str):
        self.kind = kind

    def fit(self, V: np.ndarray) -> PyodScorer:
        from pyod.models.iforest import IForest

        rng = np.random.default_rng(SEED)
        if len(V) > PYOD_FIT_WINDOWS:
            V = V[np.sort(rng.choice(len(V), PYOD_FIT_WINDOWS, replace=False))]
        V = np.asarray(V, dtype=np.float64)
        if self.kind == "ecod":
            self.train_ = V
            self.sorted_ = np.sort(V, axis=0)
        else:
            self.det_ = IForest(random_state=SEED).fit(V)
        return self

    def score(self, V: np.ndarray) -> np.ndarray:
        if not len(V):
            return np.empty(0)
        V = np.asarray(V, dtype=np.float64)
        if self.kind == "ecod":
            return np.concatenate([ecod_batch_of_one(self.train_, self.sorted_, V[a:a + 65_536])
                                   for a in range(0, len(V), 65_536)])
        return self.det_.decision_function(V)


def ecod_batch_of_one(train: np.ndarray, sorted_train: np.ndarray, X: np.ndarray
                      ) -> np.ndarray:
    """PyOD ECOD's score of each row of ``X`` as if it were scored alone
    (``ECOD().fit(train).decision_function(x[None])``): its left and right tail
    probabilities among the training rows and itself, the tail chosen by the sign of the
    skewness of those n + 1 values (the training skewness: one more row barely moves it)."""
    from scipy.stats import skew

    n = train.shape[0]
    left = np.empty_like(X)
    right = np.empty_like(X)
    for j in range(X.shape[1]):  # one binary search per metric column
        col = sorted_train[:, j]
        left[:, j] = np.searchsorted(col, X[:, j], side="right") + 1
        right[:, j] = n - np.searchsorted(col, X[:, j], side="left") + 1
    u_l = -np.log(left / (n + 1))
    u_r = -np.log(right / (n + 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        sk = np.sign(np.nan_to_num(skew(train, axis=0)))  # a constant column has no skew
    u_skew = u_l * -1 * np.sign(sk - 1) + u_r * np.sign(sk + 1)
    return np.maximum(np.maximum(u_l, u_r), u_skew).sum(axis=1)


# --------------------------------------------------------------------------- one split


@dataclass
class Counts:
    """Event counts of one detector on one split (or pooled), and the figures from them."""

    incidents: int = 0
    found: int = 0
    events: int = 0
    false_alarms: int = 0
    entity_days: float = 0.0
    cal_false_alarms: int = 0
    cal_entity_days: float = 0.0
    seconds: float = 0.0
    auc_pr: list[float] = field(default_factory=list)  # one per split (not poolable)

    def add(self, other: Counts) -> Counts:
        return Counts(*(getattr(self, k) + getattr(other, k) for k in
                        ("incidents", "found", "events", "false_alarms", "entity_days",
                         "cal_false_alarms", "cal_entity_days", "seconds", "auc_pr")))

    @property
    def recall(self) -> float | None:
        return self.found / self.incidents if self.incidents else None

    @property
    def precision(self) -> float | None:
        return (self.events - self.false_alarms) / self.events if self.events else None

    @property
    def f1(self) -> float:
        r, p = self.recall, self.precision
        return 2 * p * r / (p + r) if r and p else 0.0

    @property
    def fa_judged(self) -> float | None:
        return self.false_alarms / self.entity_days if self.entity_days else None

    @property
    def fa_cal(self) -> float | None:
        return self.cal_false_alarms / self.cal_entity_days if self.cal_entity_days else None

    @property
    def auc(self) -> float | None:
        vals = [a for a in self.auc_pr if a is not None and math.isfinite(a)]
        return float(np.mean(vals)) if vals else None


@dataclass
class _Event:  # what ftml.evaluate's matching reads of an event
    entity: str
    start: pd.Timestamp
    end: pd.Timestamp
    cause: str = "unknown"


def combine_scores(forest, robust, scales, how):
    from ftml.detect import combine_scores as combine

    return combine(forest, robust, scales, how)


class TailRank:
    """A score's tail position against reference windows: ``-log10`` of the share of them
    scoring at least as high; past their 99 % quantile, one decade more per (q99.9 - q99) of
    score (an exponential tail), so scores beyond the reference's maximum still order."""

    def __init__(self, ref: np.ndarray):
        self.sorted_ = np.sort(np.asarray(ref, dtype=np.float64))
        q99, q999 = np.quantile(self.sorted_, [0.99, 0.999]) if len(ref) else (0.0, 1.0)
        self.q99_, self.step_ = q99, max(q999 - q99, 1e-12)

    def __call__(self, s: np.ndarray) -> np.ndarray:
        n = len(self.sorted_)
        if not n:
            return np.asarray(s, dtype=np.float64)
        above = n - np.searchsorted(self.sorted_, s, side="left")
        t = -np.log10(np.maximum(above, 1) / (n + 1))
        return np.where(s > self.q99_, 2.0 + (s - self.q99_) / self.step_, np.minimum(t, 2.0))


def rank_scores(forest: np.ndarray, robust: np.ndarray, ranks: tuple[TailRank, TailRank],
                how: str) -> np.ndarray:
    f, r = ranks[0](forest), ranks[1](robust)
    return np.maximum(f, r) if how == "rank|" else 0.5 * (f + r)


def count_false_alarms(entity, end_ns, scores, threshold, rules, step_ns, spans) -> int:
    """False alarms (events overlapping no labelled incident) at ``threshold``, as
    ``AlarmThreshold`` counts them."""
    from ftml.detect import build_events, overlaps

    tol = rules.of_windows * step_ns
    evs = build_events(entity, end_ns, scores, threshold, rules, step_ns)
    return sum(not overlaps(e.entity, e.start_ns, e.end_ns, spans, tol) for e in evs)


def entity_offsets(entity, end_ns, scores, fleet_threshold, model, spans) -> dict[str, float]:
    """Per entity, how far its own threshold (AlarmThreshold on its calibration windows
    alone, the same budget) lies from the fleet's, shrunk toward 0 by d / (d + PRIOR_DAYS):
    subtracted from its scores, one threshold (the fleet's) serves all."""
    from ftml.detect import AlarmThreshold

    out = {}
    step_ns = int(model.step.value)
    for ent in np.unique(entity):
        mine = entity == ent
        thr = AlarmThreshold(budget=model.config.detect.alarm_budget, rules=model.event_rules,
                             tail=model.config.detect.threshold_tail).fit(
            entity[mine], end_ns[mine], scores[mine], step_ns, spans)
        w = thr.entity_days_ / (thr.entity_days_ + PRIOR_DAYS)
        out[str(ent)] = w * (thr.threshold_ - fleet_threshold)
    return out


def shifted(entity: np.ndarray, scores: np.ndarray, offsets: dict[str, float]) -> np.ndarray:
    if not offsets:
        return scores
    names = np.array(list(offsets), dtype=object)
    vals = np.array([offsets[n] for n in names])
    order = np.argsort(names)
    names, vals = names[order], vals[order]
    idx = np.clip(np.searchsorted(names, entity.astype(object)), 0, len(names) - 1)
    hit = names[idx] == entity
    return scores - np.where(hit, vals[idx], 0.0)


def time_folds(entity: np.ndarray, end_ns: np.ndarray, span_ns: int,
               n_blocks: int = XFIT_BLOCKS) -> tuple[np.ndarray, np.ndarray]:
    """Per window, its fold (the parity of the time block its last step falls in, each
    entity's span cut into ``n_blocks`` equal blocks) and whether it lies wholly inside that
    block (so a fold's fit windows share no step with the other fold's windows)."""
    fold = np.zeros(len(end_ns), dtype=np.int64)
    inside = np.zeros(len(end_ns), dtype=bool)
    for ent in np.unique(entity):
        mine = entity == ent
        e = end_ns[mine].astype(np.int64)
        t0 = int((e - span_ns).min())
        width = (int(e.max()) - t0 + 1) / n_blocks
        last = np.minimum(((e - t0) / width).astype(np.int64), n_blocks - 1)
        first = np.minimum(((e - span_ns - t0) / width).astype(np.int64), n_blocks - 1)
        fold[mine] = last % 2
        inside[mine] = first == last
    return fold, inside


def cross_fit(V: np.ndarray, fold: np.ndarray, fit_ok: np.ndarray, fit_forest,
              min_fit: int = XFIT_MIN_FIT):
    """Out-of-fold scores: a scorer fitted (``fit_forest(rows) -> score function``) on each
    fold's ``fit_ok`` rows scores the other fold's rows. Returns (scores, the two scorers),
    or None when a fold has fewer than ``min_fit`` fit rows."""
    scorers = []
    for k in (0, 1):
        pick = (fold == k) & fit_ok
        if pick.sum() < min_fit:
            return None
        scorers.append(fit_forest(V[pick]))
    oof = np.empty(len(V))
    for k in (0, 1):
        mine = fold == k
        if mine.any():
            oof[mine] = scorers[1 - k](V[mine])
    return oof, scorers


def _fold_forest(model, view: str = "plain"):
    """A fit function: the default's forest (forest alone) on the given rows, its product
    fit sample; returns the forest part's score function. ``view="balanced"``: W1's forest
    (round 6), the same with the balanced view."""
    from ftml.detect import IsolationDetector
    from ftml.pipeline import fit_sample

    dc = model.config.detect

    def fit(V: np.ndarray):
        pick = fit_sample(len(V), dc.random_state)
        det = IsolationDetector(n_estimators=dc.n_estimators, max_samples=dc.max_samples,
                                random_state=dc.random_state, ensemble="forest",
                                view=view).fit(
            V if pick is None else V[pick])
        return lambda X: det.component_scores(X)[0]
    return fit


def _judge(entity, end_ns, scores, threshold, model, incidents, days) -> tuple[dict, float]:
    from ftml.detect import build_events
    from ftml.evaluate import auc_pr, event_metrics, window_labels

    raw = build_events(entity, end_ns, scores, threshold, model.event_rules,
                       int(model.step.value))
    events = [_Event(e.entity, pd.Timestamp(e.start_ns, tz="UTC"),
                     pd.Timestamp(e.end_ns, tz="UTC")) for e in raw]
    m = event_metrics(events, incidents, days)
    labels = window_labels(entity, end_ns, incidents) >= 0
    return m, auc_pr(labels, scores)


def _touches(entity: np.ndarray, end_ns: np.ndarray, span_ns: int, spans: dict) -> np.ndarray:
    """Windows (ending at ``end_ns``, ``span_ns`` long) that overlap an incident of their
    entity."""
    out = np.zeros(len(end_ns), dtype=bool)
    for ent, sp in spans.items():
        mine = entity == ent
        if not mine.any():
            continue
        e = end_ns[mine]
        hit = np.zeros(len(e), dtype=bool)
        for a, b in sp:
            hit |= (e >= a) & (e - span_ns <= b)
        out[mine] = hit
    return out


def baselines_on(split_dir: Path, ev, extra: dict | None = None) -> dict[str, Counts]:
    """The baselines of one split, by the protocol: fitted on the forest's fit windows,
    thresholded on the calibration slice, judged on the test period."""
    from ftml.detect import AlarmThreshold
    from ftml.evaluate import entity_days_of
    from ftml.io import incident_spans, read_incidents, read_metrics

    model = ev.model
    n_met, stats = len(model.metrics), list(model.config.detect.stats)
    read = model.config.read
    data = read_metrics([split_dir / "train.parquet"], read, model.metrics)
    inc_path = split_dir / "train_incidents.csv"
    tr_inc = read_incidents(inc_path, data.entities, read) if inc_path.exists() else None
    spans = incident_spans(tr_inc)
    t_cut = pd.Timestamp(model.manifest["training"]["calibration_start"]).value
    span_ns = (model.featurizer.window - 1) * int(model.step.value)
    fit_v, cal_v, cal_rz, cal_ent, cal_end = [], [], [], [], []
    all_v, all_ent, all_end, all_forest, all_cal = [], [], [], [], []
    cal_parts: dict[str, list] = {k: [] for k in ABLATIONS}
    for w in model.featurizer.iter_windows(data):
        V = _view(w.X, n_met, stats)
        fit = (w.end_ns < t_cut) & ~_touches(w.entity, w.end_ns, span_ns, spans)
        cal = w.end_ns >= t_cut
        fit_v.append(V[fit].astype(np.float32))
        cal_v.append(V[cal].astype(np.float32))
        cal_rz.append(_robust_z(w.X[cal], n_met))
        for k, part in zip(ABLATIONS[:2], model.detector.component_scores(V[cal]), strict=True):
            cal_parts[k].append(part)
        cal_ent.append(w.entity[cal])
        cal_end.append(w.end_ns[cal])
        all_v.append(V.astype(np.float32))
        all_ent.append(w.entity)
        all_end.append(w.end_ns)
        all_forest.append(model.detector.component_scores(V)[0])
        all_cal.append(cal)
    fit_V, cal_V = np.vstack(fit_v), np.vstack(cal_v)
    tr_V = np.vstack(all_v)
    tr_entity, tr_end_ns = np.concatenate(all_ent), np.concatenate(all_end)
    del all_v
    cal_entity, cal_end_ns = np.concatenate(cal_ent), np.concatenate(cal_end)
    scorers: dict[str, PyodScorer] = {}
    seconds: dict[str, float] = {}
    for kind in ("ecod", "iforest"):
        t0 = time.perf_counter()
        scorers[kind] = PyodScorer(kind).fit(fit_V)
        seconds[kind] = time.perf_counter() - t0
    scales = ensemble_scales(model, fit_V)
    cal_scores = {"robust_z": np.concatenate(cal_rz),
                  **{k: np.concatenate(v) for k, v in cal_parts.items() if v}}
    for how in ABLATIONS[2:]:
        cal_scores[how] = combine_scores(cal_scores["forest"], cal_scores["robust"], scales, how)
    clean = ~_touches(cal_entity, cal_end_ns, span_ns, spans)
    ranks = (TailRank(cal_scores["forest"][clean]), TailRank(cal_scores["robust"][clean]))
    for how in CANDIDATES[:2]:
        cal_scores[how] = rank_scores(cal_scores["forest"], cal_scores["robust"], ranks, how)
    for kind, sc in scorers.items():
        t0 = time.perf_counter()
        cal_scores[kind] = sc.score(cal_V)
        seconds[kind] += time.perf_counter() - t0
    thresholds, cal_fa = {}, {}
    for kind, s in cal_scores.items():
        thr = AlarmThreshold(budget=model.config.detect.alarm_budget,
                             rules=model.event_rules,
                             tail=model.config.detect.threshold_tail).fit(cal_entity, cal_end_ns, s,
                                                          int(model.step.value), spans)
        thresholds[kind], cal_fa[kind] = thr.threshold_, (thr.false_alarms_, thr.entity_days_)
    offsets = {}
    for kind, base in PER_ENTITY.items():
        offsets[kind] = entity_offsets(cal_entity, cal_end_ns, cal_scores[base],
                                       thresholds[base], model, spans)
        thresholds[kind] = thresholds[base]
        s = shifted(cal_entity, cal_scores[base], offsets[kind])
        cal_fa[kind] = (count_false_alarms(cal_entity, cal_end_ns, s, thresholds[kind],
                                           model.event_rules, int(model.step.value), spans),
                        cal_fa[base][1])
    # Round 2: cross-fitted calibration over the whole training period.
    tr_clean = ~_touches(tr_entity, tr_end_ns, span_ns, spans)
    fold, inside = time_folds(tr_entity, tr_end_ns, span_ns)
    t0 = time.perf_counter()
    xfit = cross_fit(tr_V, fold, tr_clean & inside, _fold_forest(model))
    xfit_scorers = None

    def over_training(scores: dict) -> None:
        """Each kind's threshold over all training windows (X1's rule), and its false alarms
        there."""
        for kind, s in scores.items():
            thr = AlarmThreshold(budget=model.config.detect.alarm_budget,
                                 rules=model.event_rules,
                                 tail=model.config.detect.threshold_tail).fit(
                tr_entity, tr_end_ns, s, int(model.step.value), spans)
            thresholds[kind], cal_fa[kind] = thr.threshold_, (thr.false_alarms_,
                                                              thr.entity_days_)

    if xfit is None:  # too little training time for two folds: the default's columns
        for kind, base in zip(XFIT, ("forest", "rank|"), strict=True):
            thresholds[kind], cal_fa[kind] = thresholds[base], cal_fa[base]
    else:
        oof, xfit_scorers = xfit
        tr_robust = tr_V[:, -2].astype(np.float64)
        xranks = (TailRank(oof[tr_clean]), TailRank(tr_robust[tr_clean]))
        tr_scores = {"xfit": oof, "xfit rank|": rank_scores(oof, tr_robust, xranks, "rank|")}
        over_training(tr_scores)
    seconds["xfit"] = seconds["xfit rank|"] = time.perf_counter() - t0
    # Round 6: W1's balanced forest on the same folds; the threshold over all training, as X1.
    tr_cal = np.concatenate(all_cal)
    t0 = time.perf_counter()
    bxfit = cross_fit(tr_V, fold, tr_clean & inside, _fold_forest(model, view="balanced"))
    bxfit_scorers, round6 = None, {}
    if bxfit is not None:  # else run_part takes W1's / W1V1's columns (the amendment)
        boof, bxfit_scorers = bxfit
        round6 = round6_references(tr_entity, tr_end_ns, boof, tr_V[:, -2].astype(np.float64),
                                   tr_clean, int(model.step.value), spans, model)
        train6 = round6.pop("train")
        over_training(train6)
        # Round 7: the same scores, the higher of that threshold and the slice's.
        for kind, base in ROUND7.items():
            hi, cal_fa[kind], cal_fa[f"{kind} /slice"] = higher_threshold(
                tr_entity, tr_end_ns, train6[base], tr_cal, thresholds[base], cal_fa[base][1],
                model, spans)
            thresholds[kind] = thresholds[f"{kind} /slice"] = hi
    for kind in (*ROUND6, *ROUND7, *ROUND7_SLICE):
        seconds[kind] = time.perf_counter() - t0
    del tr_V
    # Round 3: drift-following scores, each day corrected by the entity's previous day in the
    # same scored data (training for the calibration windows, the judged period for itself).
    from bench.drift import DRIFT_QUANTILE, drift_scores

    step_ns = int(model.step.value)
    tr_forest = np.concatenate(all_forest)
    pick = fit_sample_of(model, len(fit_V))
    fit_forest = model.detector.component_scores(fit_V if pick is None else fit_V[pick])[0]
    drift_ref = {k: tuple(np.quantile(fit_forest, [0.5, DRIFT_QUANTILE]))
                 for k in ("drift", "drift shift")}
    for kind, widen in (("drift", True), ("drift shift", False)):
        s = drift_scores(tr_entity, tr_end_ns, tr_forest, step_ns, drift_ref[kind], widen)[tr_cal]
        thr = AlarmThreshold(budget=model.config.detect.alarm_budget, rules=model.event_rules,
                             tail=model.config.detect.threshold_tail).fit(
            cal_entity, cal_end_ns, s, step_ns, spans)
        thresholds[kind], cal_fa[kind] = thr.threshold_, (thr.false_alarms_, thr.entity_days_)
    if xfit is None:  # X2 fell back to the default's columns: Y1X2 falls back to Y1
        drift_ref["drift xfit"] = drift_ref["drift"]
        thresholds["drift xfit"], cal_fa["drift xfit"] = thresholds["drift"], cal_fa["drift"]
    else:
        x2 = tr_scores["xfit rank|"]
        drift_ref["drift xfit"] = tuple(np.quantile(x2[tr_clean], [0.5, DRIFT_QUANTILE]))
        s = drift_scores(tr_entity, tr_end_ns, x2, step_ns, drift_ref["drift xfit"])
        thr = AlarmThreshold(budget=model.config.detect.alarm_budget, rules=model.event_rules,
                             tail=model.config.detect.threshold_tail).fit(
            tr_entity, tr_end_ns, s, step_ns, spans)
        thresholds["drift xfit"], cal_fa["drift xfit"] = thr.threshold_, (thr.false_alarms_,
                                                                          thr.entity_days_)
    # Round 4: the median shift beyond a dead band (the healthy training days' wobble).
    from bench.drift import band_scores, dead_band

    band_ref = {"band": float(drift_ref["drift"][0])}
    band_ref["band 2d"] = band_ref["band"]
    band = {k: dead_band(tr_entity[tr_clean], tr_end_ns[tr_clean], tr_forest[tr_clean], step_ns,
                         band_ref[k]) for k in ("band", "band 2d")}
    for kind, ndays in (("band", 1), ("band 2d", 2)):
        s = band_scores(tr_entity, tr_end_ns, tr_forest, step_ns, band_ref[kind], band[kind],
                        ndays)[tr_cal]
        thr = AlarmThreshold(budget=model.config.detect.alarm_budget, rules=model.event_rules,
                             tail=model.config.detect.threshold_tail).fit(
            cal_entity, cal_end_ns, s, step_ns, spans)
        thresholds[kind], cal_fa[kind] = thr.threshold_, (thr.false_alarms_, thr.entity_days_)
    if xfit is None:  # X2 fell back to the default's columns: Z2 falls back to Z1
        band_ref["band xfit"], band["band xfit"] = band_ref["band"], band["band"]
        thresholds["band xfit"], cal_fa["band xfit"] = thresholds["band"], cal_fa["band"]
    else:
        band_ref["band xfit"] = float(np.median(x2[tr_clean]))
        band["band xfit"] = dead_band(tr_entity[tr_clean], tr_end_ns[tr_clean], x2[tr_clean],
                                      step_ns, band_ref["band xfit"])
        s = band_scores(tr_entity, tr_end_ns, x2, step_ns, band_ref["band xfit"],
                        band["band xfit"])
        thr = AlarmThreshold(budget=model.config.detect.alarm_budget, rules=model.event_rules,
                             tail=model.config.detect.threshold_tail).fit(
            tr_entity, tr_end_ns, s, step_ns, spans)
        thresholds["band xfit"], cal_fa["band xfit"] = thr.threshold_, (thr.false_alarms_,
                                                                        thr.entity_days_)
    # The judged period.
    test = read_metrics([split_dir / "test.parquet"], read, model.metrics)
    te_ent, te_end = [], []
    te_scores = {k: [] for k in (*BASELINES, *ABLATIONS, "xfit", "xfit balanced",
                                 "xfit robust")}
    for w in model.featurizer.iter_windows(test):
        V = _view(w.X, n_met, stats)
        te_ent.append(w.entity)
        te_end.append(w.end_ns)
        te_scores["robust_z"].append(_robust_z(w.X, n_met))
        for k, part in zip(ABLATIONS[:2], model.detector.component_scores(V), strict=True):
            te_scores[k].append(part)
        for kind, sc in scorers.items():
            t0 = time.perf_counter()
            te_scores[kind].append(sc.score(V))
            seconds[kind] += time.perf_counter() - t0
        if xfit_scorers is not None and len(V):
            t0 = time.perf_counter()
            Vf = V.astype(np.float32)  # as the folds' windows were stored and scored
            te_scores["xfit"].append(0.5 * (xfit_scorers[0](Vf) + xfit_scorers[1](Vf)))
            seconds["xfit"] += time.perf_counter() - t0
        if bxfit_scorers is not None and len(V):
            t0 = time.perf_counter()
            Vf = V.astype(np.float32)
            te_scores["xfit balanced"].append(0.5 * (bxfit_scorers[0](Vf) + bxfit_scorers[1](Vf)))
            te_scores["xfit robust"].append(Vf[:, -2].astype(np.float64))  # as in training
            seconds["xfit balanced"] += time.perf_counter() - t0
    entity, end_ns = np.concatenate(te_ent), np.concatenate(te_end)
    days = entity_days_of(test.frame, test.step)
    judged = {k: np.concatenate(v) for k, v in te_scores.items() if v}
    for how in ABLATIONS[2:]:
        judged[how] = combine_scores(judged["forest"], judged["robust"], scales, how)
    for how in CANDIDATES[:2]:
        judged[how] = rank_scores(judged["forest"], judged["robust"], ranks, how)
    for kind, base in PER_ENTITY.items():
        judged[kind] = shifted(entity, judged[base], offsets[kind])
    if xfit_scorers is None:
        judged["xfit"], judged["xfit rank|"] = judged["forest"], judged["rank|"]
    else:
        judged["xfit rank|"] = rank_scores(judged["xfit"], judged["robust"], xranks, "rank|")
    judged["drift"] = drift_scores(entity, end_ns, judged["forest"], step_ns, drift_ref["drift"])
    judged["drift shift"] = drift_scores(entity, end_ns, judged["forest"], step_ns,
                                         drift_ref["drift shift"], widen=False)
    judged["drift xfit"] = drift_scores(entity, end_ns, judged["xfit rank|"] if xfit is not None
                                        else judged["forest"], step_ns, drift_ref["drift xfit"])
    judged["band"] = band_scores(entity, end_ns, judged["forest"], step_ns, band_ref["band"],
                                 band["band"])
    judged["band 2d"] = band_scores(entity, end_ns, judged["forest"], step_ns,
                                    band_ref["band 2d"], band["band 2d"], 2)
    judged["band xfit"] = band_scores(entity, end_ns, judged["xfit rank|"] if xfit is not None
                                      else judged["forest"], step_ns, band_ref["band xfit"],
                                      band["band xfit"])
    if bxfit_scorers is not None:
        judged.update(round6_judged(entity, end_ns, judged["xfit balanced"],
                                    judged["xfit robust"], step_ns, round6))
        for kind, base in ROUND7.items():  # round 7 moves the threshold only
            judged[kind] = judged[f"{kind} /slice"] = judged[base]
    out = {}
    for kind in (*BASELINES, *ABLATIONS, *CANDIDATES, *XFIT, *DRIFT, *BAND,
                 *((*ROUND6, *ROUND7, *ROUND7_SLICE) if bxfit_scorers is not None else ())):
        m, auc = _judge(entity, end_ns, judged[kind], thresholds[kind],
                        model, ev.incidents, days)
        out[kind] = Counts(m["incidents"], m["found"], m["events"], m["false_alarms"],
                           m["entity_days"], cal_fa[kind][0], cal_fa[kind][1],
                           round(seconds.get(kind, 0.0), 2), [auc])
    return out


def round6_references(entity, end_ns, oof, robust, clean, step_ns, spans, model) -> dict:
    """Round 6's references from the training period (amendment 2026-12-07 01:43): W1XZ's
    median ``M`` and dead band ``B`` of the balanced out-of-fold score (as Z2 took them on X2),
    W1V1X's scales (each part's median on the windows clear of incidents, its upper anchor its
    own half-budget threshold over all training windows, the product's ``budget_scales``), and
    under ``train`` each candidate's training score, which its threshold is found on."""
    from bench.drift import dead_band
    from ftml.pipeline.training import budget_scales

    M = float(np.median(oof[clean]))
    B = dead_band(entity[clean], end_ns[clean], oof[clean], step_ns, M)
    medians = np.array([[M, M], [float(np.median(robust[clean]))] * 2])
    scales = budget_scales(medians, entity, end_ns, (oof, robust), step_ns, spans,
                           model.config.detect)
    ref = {"band": (M, B), "scales": scales}
    ref["train"] = {"xfit balanced": oof,
                    **round6_judged(entity, end_ns, oof, robust, step_ns, ref)}
    return ref


def higher_threshold(entity, end_ns, scores, in_slice, t_all, all_days, model, spans):
    """Round 7 (amendment 2026-12-07 02:06): the higher of ``t_all`` (AlarmThreshold on
    ``scores`` of all training windows) and AlarmThreshold on the calibration slice's windows
    (``in_slice``) alone, the same budget, event rule and tail. Returns (threshold, its false
    alarms / entity-days over all training windows (``all_days``, t_all's AlarmThreshold's),
    the same over the slice alone), counted as AlarmThreshold counts them (training incidents
    not counted)."""
    from ftml.detect import AlarmThreshold

    dc, step_ns = model.config.detect, int(model.step.value)
    on_slice = AlarmThreshold(budget=dc.alarm_budget, rules=model.event_rules,
                              tail=dc.threshold_tail).fit(entity[in_slice], end_ns[in_slice],
                                                          scores[in_slice], step_ns, spans)
    hi = max(float(t_all), float(on_slice.threshold_))
    every = np.ones(len(scores), dtype=bool)
    figures = [(count_false_alarms(entity[m], end_ns[m], scores[m], hi, model.event_rules,
                                   step_ns, spans), days)
               for m, days in ((every, all_days), (in_slice, on_slice.entity_days_))]
    return hi, figures[0], figures[1]


def round6_judged(entity, end_ns, forest, robust, step_ns, ref) -> dict:
    """W1XZ's and W1V1X's scores of one scored period from W1X's forest score and the robust
    statistic (the band's previous days from the same period, as Z3's)."""
    from bench.drift import band_scores

    M, B = ref["band"]
    return {"xfit balanced band 2d": band_scores(entity, end_ns, forest, step_ns, M, B, 2),
            "xfit balanced budget|": combine_scores(forest, robust, ref["scales"],
                                                    "forest|robust")}


def fit_sample_of(model, n: int):
    from ftml.pipeline import fit_sample

    return fit_sample(n, model.config.detect.random_state)


def ensemble_scales(model, fit_V: np.ndarray) -> np.ndarray:
    """The ensembles' scales (median and 99.9 % of each part), from the fit windows the
    forest was fitted on (the same fixed-seed sample of at most MAX_FIT_WINDOWS), as
    ``IsolationDetector.fit`` computes them."""
    from ftml.pipeline import fit_sample

    pick = fit_sample(len(fit_V), model.config.detect.random_state)
    V = fit_V if pick is None else fit_V[pick]
    forest, robust = model.detector.component_scores(V)
    return np.array([np.quantile(forest, [0.5, 0.999]), np.quantile(robust, [0.5, 0.999])])


def ftml_counts(outcome) -> Counts:
    det = outcome.report["detection"]
    cal = outcome.evaluation.model.manifest["calibration"]
    return Counts(det["incidents"], det["found"], det["events"], det["false_alarms"],
                  det["entity_days"], int(cal["false_alarms"]), float(cal["entity_days"]),
                  outcome.train_seconds + outcome.evaluate_seconds, [det.get("auc_pr")])


def _split_dir(work: Path, split) -> Path:
    return work / "".join(c if c.isalnum() else "_" for c in split.name)


def candidate_config() -> dict:
    """Settings to try instead of the defaults (``$FTML_BENCH_CONFIG``, JSON of config
    sections, e.g. ``{"detect": {"threshold_tail": "pot"}}``): how a candidate default is
    measured on the selection parts before it becomes the default."""
    text = os.environ.get("FTML_BENCH_CONFIG", "").strip()
    return json.loads(text) if text else {}


def with_config(split, extra: dict):
    """The split with ``extra`` config sections merged over its own."""
    if not extra:
        return split
    config = {k: dict(v) for k, v in split.config.items()}
    for section, values in extra.items():
        config.setdefault(section, {}).update(values)
    return dataclasses.replace(split, config=config)


def run_part(splits, work: Path) -> dict[str, Counts]:
    """ftml and the baselines on every split of one part, pooled."""
    total: dict[str, Counts] = {}
    extra = candidate_config()
    for split in splits:
        split = with_config(split, extra)
        out = run_split(split, work, baselines=False)
        per = {"ftml": ftml_counts(out), **baselines_on(_split_dir(work, split),
                                                         out.evaluation)}
        for kind, settings in ROUND5.items():  # the product with the candidate's settings
            tag = "".join(c if c.isalnum() else "_" for c in kind)
            per[kind] = ftml_counts(run_split(with_config(split, settings), work / tag,
                                              baselines=False))
        for kind, base in ROUND6.items():  # folds too short to cross-fit: W1's / W1V1's
            per.setdefault(kind, per[base])
        for kind in (*ROUND7, *ROUND7_SLICE):  # and round 7 then takes W1's (amendment)
            per.setdefault(kind, per["balanced"])
        for k, c in per.items():
            total[k] = total[k].add(c) if k in total else c
        print(f"  generalization: {split.name}: " + ", ".join(
            f"{LABELS[k]} F1 {c.f1:.3f}" for k, c in per.items()), flush=True)
    return total


# --------------------------------------------------------------------------- the table


def _cell(c: Counts) -> str:
    fa_c = "-" if c.fa_cal is None else f"{c.fa_cal:.2f}"
    fa_j = "-" if c.fa_judged is None else f"{c.fa_judged:.2f}"
    auc = "-" if c.auc is None else f"{c.auc:.2f}"
    rp = "/".join("-" if v is None else f"{v:.2f}" for v in (c.recall, c.precision))
    return f"F1 {c.f1:.3f} (R/P {rp}), FA {fa_c}->{fa_j}, AUC {auc}"


def part_row(label: str, counts: dict[str, Counts], entities: int,
             budget: float | None = None) -> dict:
    f = counts["ftml"]
    best = max(BASELINES, key=lambda k: counts[k].f1)
    fa_ratio = f.fa_judged / f.fa_cal if f.fa_cal and f.fa_judged is not None else None
    over_budget = f.fa_judged / budget if f.fa_judged is not None and budget else None
    return row(f"{label} ({entities})", round(f.f1, 3), round(counts[best].f1, 3),
               vs=LABELS[best], recall=f.recall, precision=f.precision, fa_cal=f.fa_cal,
               fa_judged=f.fa_judged, fa_judged_over_cal=fa_ratio,
               fa_judged_over_budget=over_budget, auc_pr=f.auc,
               **{LABELS[k]: _cell(counts[k])
                  for k in (*BASELINES, *ABLATIONS, *CANDIDATES, *XFIT, *DRIFT, *BAND, *ROUND5,
                            *ROUND6, *ROUND7, *ROUND7_SLICE)
                  if k in counts},
               seconds=round(f.seconds, 1))


def _parts(root: Path, work: Path, quick: bool) -> list[tuple[str, dict[str, callable]]]:
    """(data set, {part: () -> its splits}) in a fixed order."""
    pick = (lambda xs: list(xs)[:3]) if quick else list
    out = []
    if (root / "smd").is_dir():
        out.append(("SMD", {p: (lambda m=m: [datasets.smd(root, pick(m))])
                            for p, m in SMD_PARTS.items()}))
    if (root / "asd").is_dir():
        out.append(("ASD", {p: (lambda s=s: [datasets.asd(root, pick(s))])
                            for p, s in ASD_PARTS.items()}))
    if (root / "nab").is_dir():
        out.append(("NAB", {p: (lambda f=f: datasets.nab(root, f)) for p, f in
                            NAB_PARTS.items()}))
    if (root / "nezha").is_dir():
        out.append(("Nezha OB 08-22->08-23", {"held-out": lambda: [datasets.nezha(root)]}))
        if not quick:
            out.append(("Nezha OB 08-23->08-22", {"held-out": lambda: [
                datasets.nezha(root, "2022-08-23", "2022-08-22")]}))
    if (root / "skab").is_dir():
        out.append(("SKAB", {p: (lambda g=g: [datasets.skab(root, g)])
                             for p, g in SKAB_PARTS.items()}))
    sim = {p: (lambda s=s: [datasets.simulated(work, seed) for seed in
                            (s[:1] if quick else s)]) for p, s in SIM_PARTS.items()}
    out.append(("ftml simulate (8 entities)", sim))
    seeds = WORLD_SEEDS[:1] if quick else WORLD_SEEDS
    out.append(("ftml simulate worlds 1-4 (8 entities)",
                {p: (lambda ws=ws: [datasets.simulated(work, seed, world=w) for w in ws
                                    for seed in seeds]) for p, ws in WORLD_PARTS.items()}))
    return out


def dump_counts(name: str, results: dict[str, dict[str, Counts]]) -> None:
    """With ``$FTML_BENCH_COUNTS`` (a file path), each data set's exact counts per part and
    column are appended to it as one JSON line: the protocol reads ratios near 2 from the
    counts, not from the printed two-decimal figures, and this saves a second run for them."""
    path = os.environ.get("FTML_BENCH_COUNTS", "").strip()
    if not path:
        return
    line = {"set": name, "parts": {part: {k: dataclasses.asdict(c) for k, c in cols.items()}
                                   for part, cols in results.items()}}
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


def run(quick: bool = False) -> list[dict]:
    root = require_data()
    try:
        import pyod  # noqa: F401
    except ImportError:
        raise SkipBench("PyOD is not installed (pip install -e '.[bench]')") from None
    from ftml.config import Config

    blocks = []
    budget = Config.from_dict(candidate_config()).detect.alarm_budget
    with tempfile.TemporaryDirectory(prefix="ftml-generalization-") as tmp:
        work = Path(tmp)
        for name, parts in _parts(root, work, quick):
            t = time.perf_counter()
            results, sizes = {}, {}
            only = os.environ.get("FTML_BENCH_PARTS", "").strip()
            for part, make in parts.items():
                if only and part != only:
                    continue
                splits = make()
                sizes[part] = sum(s.test["entity"].nunique() for s in splits)
                results[part] = run_part(splits, work / part)
            if not results:
                continue
            dump_counts(name, results)
            rows = []
            order = [p for p in ("held-out", "selection") if p in results]
            for part in order:
                rows.append(part_row(f"{name} {part}", results[part], sizes[part],
                                     budget))
            if len(order) > 1:
                pooled = {k: results[order[0]][k].add(results[order[1]][k])
                          for k in results[order[0]]}
                rows.append(part_row(f"{name} all", pooled, sum(sizes.values()), budget))
            held = results.get("held-out") or results[order[0]]
            best = max(held[k].f1 for k in BASELINES)
            key = held["ftml"].f1 / best if best else math.inf
            blocks.append((key, rows))
            print(f"  generalization: {name} {time.perf_counter() - t:.0f} s", flush=True)
    blocks.sort(key=lambda b: b[0])
    return [r for _, rows in blocks for r in rows]
