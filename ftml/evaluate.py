"""Honest evaluation of a model against labelled incidents: detection, diagnosis, recovery.

Detection is judged on events: an incident counts as found when an event of the same entity
overlaps it (with a small stated tolerance); an event is a false alarm when it overlaps no
incident. False alarms are counted per entity per day of scored data. Window-level figures
(AUC-PR of the scores, point-wise precision / recall / F1) come beside them; point-adjusted F1
is only ever given next to the same figure for random flags, which reach it just as easily.

Diagnosis is judged twice: on each incident's own windows (as if detection were perfect) and
on the events that actually found incidents. ``--baselines`` sends a random score and a static
per-metric robust z-score threshold through the very same pipeline (featurizer, threshold
calibrated to the same false-alarm budget, event rules, diagnoser, playbooks).

The JSON report's keys are stable; docs/evaluation.md documents them.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ftml import __version__
from ftml.diagnose import NO_FAULT, NOT_A_CAUSE, UNKNOWN, expected_calibration_error
from ftml.events import Event, iso
from ftml.io import label_times, to_ns

NS_PER_DAY = 86_400 * 10**9
#: How far an event may miss an incident and still count as finding it.
MATCH_TOLERANCE = pd.Timedelta(minutes=5)
#: Version of the JSON report layout; bumped only when a documented key changes meaning.
REPORT_VERSION = 1
#: Names of the baselines, in report order.
BASELINES = ("random", "robust_z")


# --------------------------------------------------------------------------- events vs incidents


def match_events(events: Sequence[Event], incidents: pd.DataFrame,
                 tolerance: pd.Timedelta = MATCH_TOLERANCE) -> np.ndarray:
    """Boolean matrix incidents x events: the event is on the incident's entity and overlaps
    it, each side widened by ``tolerance``."""
    tol = int(pd.Timedelta(tolerance).value)
    inc_ent = incidents["entity"].to_numpy(dtype=object).astype(str)
    inc_start, inc_end = to_ns(incidents["start"]), to_ns(incidents["end"])
    ev_ent = np.array([e.entity for e in events], dtype=object).astype(str)
    ev_start = np.array([pd.Timestamp(e.start).value for e in events], dtype=np.int64)
    ev_end = np.array([pd.Timestamp(e.end).value for e in events], dtype=np.int64)
    # Dense is fine: hundreds of incidents x hundreds of events.
    return (inc_ent[:, None] == ev_ent[None, :]) & \
        (ev_start[None, :] <= inc_end[:, None] + tol) & \
        (ev_end[None, :] >= inc_start[:, None] - tol)


def first_hits(hit: np.ndarray, events: Sequence[Event]) -> np.ndarray:
    """Per incident, the index of the earliest event that found it, or -1."""
    out = np.full(hit.shape[0], -1, dtype=np.int64)
    if not hit.size:
        return out
    start = np.array([pd.Timestamp(e.start).value for e in events], dtype=np.int64)
    keyed = np.where(hit, start[None, :], np.iinfo(np.int64).max)
    found = hit.any(axis=1)
    out[found] = keyed[found].argmin(axis=1)
    return out


def event_metrics(events: list[Event], incidents: pd.DataFrame, entity_days: float,
                  tolerance: pd.Timedelta = MATCH_TOLERANCE) -> dict[str, Any]:
    """Event recall / precision / F1, false alarms per entity-day, detection delay and
    diagnosis accuracy (on the incidents that were found) for one scored period.

    Delay is from the incident's start to the start of the first event that found it (its
    first flagged window), floored at zero."""
    hit = match_events(events, incidents, tolerance)
    inc_start = to_ns(incidents["start"])
    inc_cause = incidents["cause"].to_numpy(dtype=object).astype(str)
    found = hit.any(axis=1)
    true_event = hit.any(axis=0)
    n_inc, n_ev = len(incidents), len(events)
    recall = found.mean() if n_inc else float("nan")
    precision = true_event.mean() if n_ev else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if n_inc and n_ev and \
        precision + recall > 0 else 0.0
    false_alarms = int((~true_event).sum())
    # A false alarm given a cause would run that cause's playbook on a healthy entity.
    named = Counter(events[j].cause for j in np.flatnonzero(~true_event)
                    if events[j].cause not in NOT_A_CAUSE)
    first = first_hits(hit, events)
    delays, right, abstained, per_cause = [], [], [], {}
    for i in np.flatnonzero(found):  # found incidents: hundreds at most
        ev = events[first[i]]
        delays.append(max(0, pd.Timestamp(ev.start).value - inc_start[i]) / 60e9)
        right.append(ev.cause == inc_cause[i])
        abstained.append(ev.cause == UNKNOWN)
        stats = per_cause.setdefault(inc_cause[i], {"incidents": 0, "found": 0, "right": 0})
        stats["found"] += 1
        stats["right"] += int(ev.cause == inc_cause[i])
    for c in inc_cause:
        per_cause.setdefault(c, {"incidents": 0, "found": 0, "right": 0})["incidents"] += 1
    return {
        "incidents": n_inc, "events": n_ev, "found": int(found.sum()),
        "event_recall": float(recall), "event_precision": float(precision),
        "event_f1": float(f1), "false_alarms": false_alarms,
        "false_alarms_per_entity_day": false_alarms / entity_days if entity_days else 0.0,
        "false_alarms_named": int(sum(named.values())),
        "false_alarms_named_share": sum(named.values()) / false_alarms if false_alarms
        else float("nan"),
        "false_alarms_named_by_cause": dict(sorted(named.items())),
        "entity_days": float(entity_days),
        "delay_minutes_median": float(np.median(delays)) if delays else float("nan"),
        "delay_minutes_p90": float(np.percentile(delays, 90)) if delays else float("nan"),
        "diagnosis_accuracy": float(np.mean(right)) if right else float("nan"),
        "diagnosis_abstained": float(np.mean(abstained)) if abstained else float("nan"),
        "per_cause": dict(sorted(per_cause.items())),
    }


def entity_days_of(frame: pd.DataFrame, step: pd.Timedelta) -> float:
    """Entity-days of data actually present (rows with any value), the denominator of the
    false-alarm rate."""
    present = frame.drop(columns=["entity", "timestamp"]).notna().any(axis=1).sum()
    return float(present) * step.value / NS_PER_DAY


# --------------------------------------------------------------------------- window figures


def window_labels(entity: np.ndarray, end_ns: np.ndarray, incidents: pd.DataFrame) -> np.ndarray:
    """Per window: index of the incident its last step falls in, or -1."""
    return label_times(np.asarray(entity, dtype=object).astype(str), np.asarray(end_ns),
                       incidents)


def prf(labels: np.ndarray, flags: np.ndarray) -> tuple[float, float, float]:
    """Point-wise precision, recall and F1 of boolean flags against boolean labels."""
    tp = int(np.count_nonzero(labels & flags))
    n_flag, n_pos = int(np.count_nonzero(flags)), int(np.count_nonzero(labels))
    precision = tp / n_flag if n_flag else float("nan")
    recall = tp / n_pos if n_pos else float("nan")
    f1 = 2 * tp / (n_flag + n_pos) if n_flag + n_pos else float("nan")
    return precision, recall, f1


def point_adjusted_f1(segment: np.ndarray, flags: np.ndarray) -> float:
    """Point-adjusted F1: a labelled segment (``segment`` >= 0, the incident index) counts as
    wholly flagged when any of its windows is. Inflated by construction: see
    :func:`random_point_adjusted_f1`."""
    labels = segment >= 0
    adjusted = flags.copy()
    hit_segments = np.unique(segment[labels & flags])
    adjusted[np.isin(segment, hit_segments) & labels] = True
    return prf(labels, adjusted)[2]


def random_point_adjusted_f1(segment: np.ndarray, flags: np.ndarray, seed: int = 0,
                             repeats: int = 5) -> float:
    """Point-adjusted F1 of random flags raised at the same rate as ``flags`` (mean of a few
    draws): the figure any point-adjusted F1 must be read against."""
    rate = float(np.mean(flags)) if len(flags) else 0.0
    rng = np.random.default_rng(seed)
    vals = [point_adjusted_f1(segment, rng.random(len(flags)) < rate) for _ in range(repeats)]
    return float(np.mean(vals)) if vals else float("nan")


def auc_pr(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve (average precision) of window scores; a random
    score gets the share of positive windows."""
    if not np.any(labels) or np.all(labels):
        return float("nan")
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(labels, scores))


def window_metrics(windows: pd.DataFrame, incidents: pd.DataFrame, seed: int = 0
                   ) -> dict[str, Any]:
    """AUC-PR and point-wise figures of a window table (entity, timestamp, score, flag)."""
    segment = window_labels(windows["entity"].to_numpy(dtype=object),
                            to_ns(windows["timestamp"]), incidents)
    labels = segment >= 0
    flags = windows["flag"].to_numpy(dtype=bool)
    scores = windows["score"].to_numpy(dtype=np.float64)
    p, r, f = prf(labels, flags)
    return {
        "windows": int(len(windows)), "positive_windows": int(labels.sum()),
        # A model that flags most windows makes event counts mean little: said beside them.
        "flagged_fraction": float(flags.mean()) if len(flags) else float("nan"),
        "auc_pr": auc_pr(labels, scores),
        "auc_pr_random": float(labels.mean()) if len(labels) else float("nan"),
        "point_precision": p, "point_recall": r, "point_f1": f,
        "point_adjusted_f1": point_adjusted_f1(segment, flags),
        "point_adjusted_f1_random": random_point_adjusted_f1(segment, flags, seed),
    }


# --------------------------------------------------------------------------- diagnosis


def diagnosis_metrics(true: Sequence[str], predicted: Sequence[str],
                      top: Sequence[Sequence[str]],
                      confidence: Sequence[float] | None = None) -> dict[str, Any]:
    """Accuracy (abstaining counts as wrong), accuracy of the answers given, macro-F1 over the
    true causes, top-3 accuracy, share abstained (``unknown`` or ``no_fault``: no playbook
    acts), per-cause precision and recall, the expected calibration error of ``confidence``
    (on the answers given) and the confusion matrix (rows: true cause, columns: diagnosed
    cause, then ``no_fault`` and ``unknown``, always there)."""
    true = [str(t) for t in true]
    predicted = [str(p) for p in predicted]
    n = len(true)
    labels = sorted((set(true) | set(predicted)) - set(NOT_A_CAUSE)) + [NO_FAULT, UNKNOWN] \
        if n else []
    index = {c: i for i, c in enumerate(labels)}
    confusion = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for t, p in zip(true, predicted, strict=True):
        confusion[index[t], index[p]] += 1
    if n and NO_FAULT not in true and NO_FAULT not in predicted:  # a column when it occurs
        keep = [i for i, c in enumerate(labels) if c != NO_FAULT]
        labels = [labels[i] for i in keep]
        confusion = confusion[np.ix_(keep, keep)]
    right = np.array([t == p for t, p in zip(true, predicted, strict=True)], dtype=bool)
    answered = np.array([p not in NOT_A_CAUSE for p in predicted], dtype=bool)
    in_top = np.array([t in list(k)[:3] for t, k in zip(true, top, strict=True)], dtype=bool)
    if n:
        from sklearn.metrics import f1_score

        macro = float(f1_score(true, predicted, labels=sorted(set(true)), average="macro",
                               zero_division=0))
    else:
        macro = float("nan")
    per_cause = {}
    t_arr, p_arr = np.array(true, dtype=object), np.array(predicted, dtype=object)
    for c in sorted(set(true) | (set(predicted) - set(NOT_A_CAUSE))):
        is_t, is_p = t_arr == c, p_arr == c
        per_cause[c] = {"n": int(is_t.sum()), "named": int(is_p.sum()),
                        "precision": float((is_t & is_p).sum() / is_p.sum()) if is_p.any()
                        else float("nan"),
                        "recall": float((is_t & is_p).sum() / is_t.sum()) if is_t.any()
                        else float("nan")}
    ece = float("nan")
    if confidence is not None and answered.any():
        conf = np.asarray(confidence, dtype=np.float64)
        ece = expected_calibration_error(conf[answered], right[answered])
    return {
        "n": n,
        "accuracy": float(right.mean()) if n else float("nan"),
        "accuracy_answered": float(right[answered].mean()) if answered.any() else float("nan"),
        "macro_f1": macro,
        "top3_accuracy": float(in_top.mean()) if n else float("nan"),
        "abstained": float(1 - answered.mean()) if n else float("nan"),
        "calibration_error": ece,
        "per_cause": per_cause,
        "labels": labels,
        "confusion": confusion.tolist(),
    }


def unseen_causes(model) -> dict[str, Any]:
    """The diagnoser's leave-one-cause-out figure from training: for each cause, the share of
    its training incidents answered unknown (or no_fault) by a diagnoser trained without it."""
    d = getattr(model, "diagnoser", None)
    per = getattr(d, "unseen_unknown_", None)
    if d is None or per is None:
        return {"unknown_rate": None, "per_cause": {}}
    return {"unknown_rate": float(d.unseen_unknown_rate_),
            "per_cause": {str(c): float(v) for c, v in zip(d.classes_, per, strict=True)
                          if c != NO_FAULT and np.isfinite(v)},
            "how": "each cause left out of training in turn; its training incidents judged"}


def diagnose_incidents(model, data, incidents: pd.DataFrame) -> list[Event | None]:
    """Diagnose each incident from its own windows, as if detection had been perfect: the
    windows whose last step falls inside the incident, their highest-scored ones given to the
    model exactly as an event's are. ``None`` where the incident has no complete window."""
    from ftml.detect import RawEvent

    frame = data.frame
    ent = frame["entity"].to_numpy(dtype=object).astype(str)
    ts = to_ns(frame["timestamp"])
    bounds = np.flatnonzero(np.r_[True, ent[1:] != ent[:-1], True])
    blocks = {ent[a]: (a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)}
    # Rows before the first window: its own and its trailing levels' span (history_steps).
    lead = (model.featurizer.history_steps + 1) * int(model.step.value)
    k = model.config.diagnose.max_event_windows
    out: list[Event | None] = []
    for e, s, t in zip(incidents["entity"].astype(str), to_ns(incidents["start"]),
                       to_ns(incidents["end"]), strict=True):  # per incident: a slice each
        a, b = blocks.get(e, (0, 0))
        lo = a + int(np.searchsorted(ts[a:b], s - lead, side="left"))
        hi = a + int(np.searchsorted(ts[a:b], t, side="right"))
        w = model.featurizer.transform_frame(frame.iloc[lo:hi])
        w = w.take((w.end_ns >= s) & (w.end_ns <= t))
        if not len(w):
            out.append(None)
            continue
        scores = model.score_windows(w)
        top = np.sort(np.argsort(-scores, kind="stable")[:k])
        raw = RawEvent(entity=e, start_ns=int(w.end_ns[0]), end_ns=int(w.end_ns[-1]),
                       detected_ns=int(w.end_ns[0]), peak_score=float(scores.max()),
                       n_windows=len(w), payload=model.payload(w)[top], top_scores=scores[top])
        out.append(model.to_event(raw))
    return out


def _top_names(ev: Event) -> list[str]:
    return [c for c, _ in ev.top_causes] or [ev.cause]


def incident_diagnosis(incidents: pd.DataFrame, diagnosed: Sequence[Event | None]
                       ) -> dict[str, Any]:
    """Diagnosis figures on the incidents' own windows (incidents without one are counted in
    ``no_windows`` and left out)."""
    keep = [i for i, ev in enumerate(diagnosed) if ev is not None]
    causes = incidents["cause"].astype(str).to_numpy()
    out = diagnosis_metrics([causes[i] for i in keep], [diagnosed[i].cause for i in keep],
                            [_top_names(diagnosed[i]) for i in keep],
                            [diagnosed[i].confidence for i in keep])
    out["no_windows"] = len(diagnosed) - len(keep)
    return out


def detected_diagnosis(incidents: pd.DataFrame, events: Sequence[Event], first: np.ndarray
                       ) -> dict[str, Any]:
    """Diagnosis figures on the events that found incidents (the first event per incident)."""
    causes = incidents["cause"].astype(str).to_numpy()
    idx = np.flatnonzero(first >= 0)
    return diagnosis_metrics([causes[i] for i in idx], [events[first[i]].cause for i in idx],
                             [_top_names(events[first[i]]) for i in idx],
                             [events[first[i]].confidence for i in idx])


# --------------------------------------------------------------------------- baselines


class RandomScore:
    """Baseline: a uniform random score per window (seeded, so runs repeat)."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def anomaly_score(self, X: np.ndarray) -> np.ndarray:
        return self._rng.random(X.shape[0])


class RobustZScore:
    """Baseline: a static per-metric threshold on robust z-scores. A window's score is the
    largest |z| among its metrics at its last step, where z is the value against the entity's
    own median and IQR (per hour of day), the same baseline ftml's features use."""

    name = "robust_z"

    def __init__(self, n_metrics: int):
        self.n_metrics = n_metrics

    def anomaly_score(self, X: np.ndarray) -> np.ndarray:
        from ftml.features import stat_columns

        cols = stat_columns(["last"], self.n_metrics)
        return np.abs(X[:, cols]).max(axis=1) if X.shape[0] else np.empty(0)


def baseline_detector(kind: str, model, seed: int = 0):
    if kind == "random":
        return RandomScore(seed)
    if kind == "robust_z":
        return RobustZScore(len(model.metrics))
    raise ValueError(f"unknown baseline {kind!r}; known: {', '.join(BASELINES)}")


def with_detector(model, detector, threshold: float, name: str):
    """The model with another detector and threshold, every other stage unchanged; the
    detector scores the raw feature matrix (stat-major z-score stats, see
    :func:`ftml.features.feature_names`), not the view the forest is given."""
    from ftml.bundle import Model

    @dataclasses.dataclass
    class BaselineModel(Model):
        # Its detector scores all features, not the forest's stats: scorers must hand it
        # whole windows.
        scores_from_stats = False

        def score_windows(self, windows):
            return self.detector.anomaly_score(windows.X)

    fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(Model)}
    fields.update(detector=detector, threshold=float(threshold),
                  config=copy.deepcopy(model.config), version=f"{model.version}-{name}",
                  manifest=dict(model.manifest))
    return BaselineModel(**fields)


def calibrate_baselines(model, detectors: dict[str, Any], data, incidents: pd.DataFrame | None,
                        whole: bool = False) -> dict[str, dict[str, Any]]:
    """Thresholds for baseline detectors, chosen as ftml's own is: the lowest that keeps events
    on the calibration windows within the model's false-alarm budget. The calibration windows
    are the last ``calibration_fraction`` of ``data`` (training data), or all of it with
    ``whole`` (then with no labels, every event counts against the budget)."""
    from ftml.detect import AlarmThreshold
    from ftml.io import incident_spans

    dc = model.config.detect
    ts = to_ns(data.frame["timestamp"])
    t_min, t_max = (ts.min(), ts.max()) if len(ts) else (0, 0)
    t_cut = t_min if whole else t_min + (1.0 - dc.calibration_fraction) * (t_max - t_min)
    ent, end = [], []
    scores: dict[str, list[np.ndarray]] = {k: [] for k in detectors}
    for w in model.featurizer.iter_windows(data):  # scores only: memory stays small
        w = w.take(w.end_ns >= t_cut)
        ent.append(w.entity)
        end.append(w.end_ns)
        for k, det in detectors.items():
            scores[k].append(det.anomaly_score(w.X))  # as with_detector's model scores
    ent_a = np.concatenate(ent) if ent else np.empty(0, dtype=object)
    end_a = np.concatenate(end) if end else np.empty(0, dtype=np.int64)
    out = {}
    for k in detectors:
        score_a = np.concatenate(scores[k]) if scores[k] else np.empty(0)
        thr = AlarmThreshold(dc.alarm_budget, model.event_rules,
                             tail=getattr(dc, "threshold_tail", "empirical")).fit(
            ent_a, end_a, score_a, int(model.step.value), incident_spans(incidents))
        out[k] = {"threshold": thr.threshold_, "windows": int(len(end_a)),
                  "false_alarms_per_entity_day": thr.false_alarms_per_entity_day_}
    return out


# --------------------------------------------------------------------------- the evaluation


@dataclass
class Run:
    """One scorer over the evaluated data: its events and per-window scores."""

    name: str
    threshold: float
    events: list[Event]
    windows: pd.DataFrame  # entity, timestamp, score, flag
    first: np.ndarray  # per incident: index of the first event that found it, or -1
    detection: dict[str, Any] = field(default_factory=dict)
    diagnosis: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class Evaluation:
    """Everything an evaluation found; ``report`` is the JSON-ready summary."""

    report: dict[str, Any]
    model: Any
    data: Any  # MetricData of the evaluated period
    incidents: pd.DataFrame
    runs: dict[str, Run]
    diagnosed: list[Event | None]  # per incident, the diagnosis from its own windows
    recovery: list[dict[str, Any]]


def _score_run(name: str, model, paths: list[str], incidents: pd.DataFrame, entity_days: float,
               tolerance: pd.Timedelta, playbooks, seed: int, quiet: bool,
               topology: str | Path | None = None, logs=None) -> Run:
    from ftml import api

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ftml-eval-") as tmp:
        result = api.score(model, paths, windows_out=Path(tmp) / "windows.parquet",
                           playbooks=playbooks, quiet=quiet, topology=topology, logs=logs)
    windows = result.window_table
    hit = match_events(result.events, incidents, tolerance)
    first = first_hits(hit, result.events)
    detection = event_metrics(result.events, incidents, entity_days, tolerance)
    for key in ("diagnosis_accuracy", "diagnosis_abstained"):
        detection.pop(key)
    detection.update(window_metrics(windows, incidents, seed))
    detection.update(grouping_metrics(result.events, first))
    detection["threshold"] = float(model.threshold)
    return Run(name, float(model.threshold), result.events, windows, first, detection,
               detected_diagnosis(incidents, result.events, first),
               round(time.perf_counter() - started, 3))


def grouping_metrics(events: Sequence[Event], first: np.ndarray) -> dict[str, Any]:
    """Incident groups: how many alerts an operator gets (events) and how many incidents
    (groups); of the found incidents, the share whose group names the incident's own entity
    as its top suspect."""
    found = first[first >= 0]
    top_right = [events[j].suspects[0][0] == events[j].entity for j in found
                 if events[j].suspects]
    return {"groups": len({e.group for e in events if e.group}),
            "top_suspect_is_incident_entity": (float(np.mean(top_right)) if top_right
                                               else None)}


def recovery_rows(incidents: pd.DataFrame, run: Run, data, playbooks, model
                  ) -> list[dict[str, Any]]:
    """Per incident: whether it was found, the diagnosis of the event that found it and the
    playbook that would have run for it (replayed in dry-run through the recovery engine)."""
    decisions: dict[str, Any] = {}
    if playbooks is not None and run.events:
        from ftml.playbooks import load_playbooks
        from ftml.recover import replay

        book = load_playbooks(playbooks, known_metrics=model.metrics)
        result = replay(run.events, data.frame, book, model_version=model.version)
        decisions = {d.event_id: d for d in result.decisions}
    rows = []
    for i, inc in enumerate(incidents.itertuples(index=False)):
        row = {"incident": i, "entity": str(inc.entity), "start": iso(inc.start),
               "end": iso(inc.end), "cause": str(inc.cause), "found": False,
               "event_id": None, "diagnosed": None, "confidence": None,
               "playbook": None, "decision": None, "reason": None, "steps": [], "outcome": None}
        j = int(run.first[i])
        if j >= 0:
            ev = run.events[j]
            row.update(found=True, event_id=ev.id, diagnosed=ev.cause,
                       confidence=round(float(ev.confidence), 4), playbook=ev.playbook)
            d = decisions.get(ev.id)
            if d is not None:
                ran = d.decision in ("act", "dry_run", "pending")
                row.update(playbook=d.playbook if ran else None, decision=d.decision,
                           reason=d.reason, steps=[s["name"] for s in d.plan] if ran else [],
                           outcome=d.run.outcome if d.run is not None else None)
        rows.append(row)
    return rows


#: Figures compared between ftml and the baselines, and which way is better.
COMPARED = (("event_f1", +1), ("event_recall", +1), ("event_precision", +1),
            ("false_alarms_per_entity_day", -1), ("auc_pr", +1), ("point_f1", +1))


def compare(ftml: dict[str, Any], baselines: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """ftml minus each baseline on the compared figures (positive = ftml ahead, except for
    false alarms, where positive = ftml raises fewer), and one sentence saying so."""
    out: dict[str, Any] = {}
    words = []
    for name, b in baselines.items():
        deltas = {}
        for key, sign in COMPARED:
            x, y = ftml["detection"].get(key), b["detection"].get(key)
            deltas[key] = _num(sign * (x - y)) if _finite(x) and _finite(y) else None
        dx, dy = ftml["diagnosis"].get("accuracy"), b["diagnosis"].get("accuracy")
        deltas["diagnosis_accuracy_detected"] = _num(dx - dy) if _finite(dx) and _finite(dy) \
            else None
        out[name] = deltas
        d = deltas["event_f1"]
        if d is not None:
            how = "ahead of" if d > 0 else "behind" if d < 0 else "level with"
            words.append(f"IsolationForest is {how} {name} by {abs(d):.3f} event F1 "
                         f"({ftml['detection']['event_f1']:.3f} vs "
                         f"{b['detection']['event_f1']:.3f})")
    out["summary"] = "; ".join(words) + "." if words else "no comparison possible."
    return out


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _num(x: float) -> float:
    return round(float(x), 6)


def _calibration_source(model, calibration_metrics, calibration_incidents):
    """Which data calibrates the baselines: given paths, else the model's training files when
    they are still there; None means the evaluated data itself, without labels."""
    from ftml.io import read_incidents
    from ftml.logs import read_for_model

    paths = list(calibration_metrics or [])
    if not paths:
        sources = model.manifest.get("training", {}).get("sources") or []
        if sources and all(Path(s).exists() for s in sources):
            paths = list(sources)
    if not paths:
        return None, None, "evaluated data, without labels (training data not available)"
    # A model with logs calibrates on its training logs (the manifest names them).
    log_sources = model.manifest.get("training", {}).get("log_sources") or None
    data = read_for_model(paths, model, log_sources if model.logs is not None else None)
    inc = read_incidents(calibration_incidents, data.entities, model.config.read) \
        if calibration_incidents else None
    what = "training data: " + ", ".join(map(str, paths)) + \
        (f" with incidents {calibration_incidents}" if inc is not None else
         " (no incidents given: every event there counts against the budget)")
    return data, inc, what


def evaluate(model, metrics: Iterable[str | Path], incidents: str | Path | pd.DataFrame, *,
             playbooks: str | Path | None = None, baselines: bool = False,
             calibration_metrics: Iterable[str | Path] | None = None,
             calibration_incidents: str | Path | None = None,
             tolerance: pd.Timedelta = MATCH_TOLERANCE, seed: int = 0,
             quiet: bool = True, topology: str | Path | None = None,
             logs=None) -> Evaluation:
    """Score ``metrics`` with ``model`` (a Model or a bundle directory) and judge the result
    against ``incidents``. With ``baselines``, the random and robust z-score baselines go
    through the same pipeline, their thresholds calibrated on ``calibration_metrics`` (default:
    the model's training files if present; else the evaluated data without its labels). A
    model trained with logs needs ``logs``, the log files of the evaluated period."""
    from ftml.bundle import Model, load_model
    from ftml.io import read_incidents
    from ftml.logs import read_for_model

    started = time.perf_counter()
    if not isinstance(model, Model):
        model = load_model(model)
    paths = [str(p) for p in metrics]
    data = read_for_model(paths, model, logs)
    if isinstance(incidents, pd.DataFrame):
        inc = incidents.reset_index(drop=True)
    else:
        inc = read_incidents(incidents, data.entities, model.config.read)
    days = entity_days_of(data.frame, data.step)
    runs = {"ftml": _score_run("ftml", model, paths, inc, days, tolerance, playbooks, seed,
                               quiet, topology, logs)}
    # Beside the judged false-alarm rate, what calibration promised (the training slice).
    runs["ftml"].detection["calibration_false_alarms_per_entity_day"] = \
        model.manifest.get("calibration", {}).get("false_alarms_per_entity_day")
    # A model without diagnoser or rules answers 'unknown': counted as abstaining, as for events.
    diagnosed = diagnose_incidents(model, data, inc)
    base_report = None
    if baselines:
        cal_data, cal_inc, what = _calibration_source(model, calibration_metrics,
                                                      calibration_incidents)
        base_report = {"calibration": what}
        cals = calibrate_baselines(model, {k: baseline_detector(k, model, seed)
                                           for k in BASELINES},
                                   cal_data if cal_data is not None else data, cal_inc,
                                   whole=cal_data is None)
        for kind in BASELINES:
            cal = cals[kind]
            det = baseline_detector(kind, model, seed + 1)  # fresh draws for the evaluated data
            bm = with_detector(model, det, cal["threshold"], kind)
            runs[kind] = _score_run(kind, bm, paths, inc, days, tolerance, playbooks, seed,
                                    quiet, topology, logs)
            runs[kind].detection["calibration_false_alarms_per_entity_day"] = \
                cal["false_alarms_per_entity_day"]
            base_report[kind] = {"threshold": cal["threshold"],
                                 "calibration_false_alarms_per_entity_day":
                                     cal["false_alarms_per_entity_day"],
                                 "detection": runs[kind].detection,
                                 "diagnosis": runs[kind].diagnosis}
    recovery = recovery_rows(inc, runs["ftml"], data, playbooks, model)
    ts0, ts1 = data.span()
    ftml_run = runs["ftml"]
    warnings = fit_warnings(model, data.entities, ftml_run.detection, len(ftml_run.windows))
    report: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        "ftml_version": __version__,
        "created": iso(pd.Timestamp.now(tz="UTC")),
        "model": {
            "version": model.version, "threshold": float(model.threshold),
            "alarm_budget": model.config.detect.alarm_budget,
            "classifier": model.diagnoser.classifier if model.diagnoser is not None else None,
            "causes": model.causes, "window": model.featurizer.window,
            "step_seconds": model.step.total_seconds(), "metrics": len(model.metrics),
        },
        "data": {
            "sources": paths, "entities": len(data.entities), "rows": len(data.frame),
            "windows": int(len(ftml_run.windows)), "entity_days": days,
            "start": iso(ts0) if len(data.frame) else None,
            "end": iso(ts1) if len(data.frame) else None,
            "incidents": len(inc),
            "incidents_by_cause": {str(k): int(v) for k, v in
                                   inc["cause"].value_counts().sort_index().items()},
        },
        "settings": {
            "match_tolerance_minutes": pd.Timedelta(tolerance).total_seconds() / 60,
            "window_label": "a window is positive when its last step falls inside an incident",
            "seed": seed,
        },
        "detection": ftml_run.detection,
        "diagnosis": {
            "incident_windows": incident_diagnosis(inc, diagnosed),
            "detected_events": ftml_run.diagnosis,
            "false_alarms": {
                "events": ftml_run.detection["false_alarms"],
                "named": ftml_run.detection["false_alarms_named"],
                "share_named": ftml_run.detection["false_alarms_named_share"],
                "by_cause": ftml_run.detection["false_alarms_named_by_cause"]},
            "unseen_causes": unseen_causes(model),
        },
        "recovery": {"playbooks": str(playbooks) if playbooks is not None else None,
                     "incidents": recovery},
        "baselines": base_report,
        "comparison": None,
        "warnings": warnings,
        "seconds": 0.0,
    }
    if base_report is not None:
        report["comparison"] = compare(
            {"detection": ftml_run.detection, "diagnosis": ftml_run.diagnosis},
            {k: base_report[k] for k in BASELINES})
    report["seconds"] = round(time.perf_counter() - started, 3)
    return Evaluation(clean(report), model, data, inc, runs, diagnosed, recovery)


def fit_warnings(model, entities, detection: dict[str, Any], windows: int) -> list[str]:
    """What says the model does not fit the evaluated data: entities it never saw, and a
    share of windows flagged far above its calibration's."""
    from ftml.bundle import misfit_warning
    from ftml.pipeline import unseen_entities, unseen_entities_warning

    fraction = detection.get("flagged_fraction")
    flagged = None if fraction is None or not math.isfinite(fraction) else \
        round(fraction * windows)
    names = [str(e) for e in entities]
    found = [unseen_entities_warning(model, unseen_entities(model, names), len(set(names))),
             misfit_warning(model, flagged, windows)]
    return [w for w in found if w]


def clean(obj: Any) -> Any:
    """JSON-ready: NaN and infinities become None, numpy scalars plain numbers."""
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        return x if math.isfinite(x) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj
