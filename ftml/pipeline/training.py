"""Training phases: which windows fit the forest, which calibrate the threshold, which teach
the diagnoser; local training runs them on one frame, Dask training on entity groups, and both
finish with :func:`finish_training` (its facts in :class:`TrainInfo`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ftml.bundle import Model
from ftml.config import RUN_GAP_NS, Config, DetectConfig
from ftml.detect import AlarmThreshold
from ftml.diagnose import NO_FAULT
from ftml.errors import ConfigError, InputError
from ftml.features import (
    Featurizer,
    detector_view,
    stats_view,
)
from ftml.io import label_times, to_ns
from ftml.pipeline.plan import event_rules_of
from ftml.pipeline.progress import progress, with_progress

if TYPE_CHECKING:  # scikit-learn's estimators: imported where training needs them
    from ftml.detect import IsolationDetector
    from ftml.diagnose import Diagnoser

# Windows the detector is fitted on: a sample is as good as all (each tree sees max_samples).
MAX_FIT_WINDOWS = 100_000
# Calibration windows featurized and scored at a time (memory stays bounded).
CAL_BLOCK_WINDOWS = 262_144
# Fewer normal windows than this before the calibration cut cannot fit a forest.
MIN_FIT_WINDOWS = 50




@dataclass
class TrainResult:
    model: Model
    manifest: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainInfo:
    """The facts of one training run, as the manifest records them."""

    start: str
    end: str
    calibration_start: str
    entities: int
    rows: int
    fit_windows: int
    calibration_windows: int
    incidents: int
    data_sha256: str
    sources: list[str]
    calibration: dict[str, Any]
    diagnosis: dict[str, Any]
    seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. dask_threads
    dropped_metrics: dict[str, str] = field(default_factory=dict)  # metric -> why

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        calibration, diagnosis, extra = d.pop("calibration"), d.pop("diagnosis"), d.pop("extra")
        dropped = d.pop("dropped_metrics")
        seconds = d.pop("seconds")
        training = {**d, **extra}
        if seconds is not None:
            training["seconds"] = seconds
        return {"training": training, "calibration": calibration, "diagnosis": diagnosis,
                "dropped_metrics": dropped}




def incident_of_rows(codes: np.ndarray, names: list[str], t_ns: np.ndarray,
                incidents: pd.DataFrame | None) -> np.ndarray:
    """Per row, the index of the incident it falls in (-1: none): :func:`ftml.io.label_times`
    for rows in the contract (each entity one block of rows in time order), by a binary search
    per incident instead of a scan of every row."""
    n = len(codes)
    bounds = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1], True]) if n else np.r_[0]
    if incidents is None or incidents.empty or len(bounds) - 1 != len(np.unique(codes)):
        return label_times(np.asarray(names, dtype=object)[codes] if n else
                           np.empty(0, dtype=object), t_ns, incidents)
    label = np.full(n, -1, dtype=np.int64)
    block = {names[codes[a]]: (a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)}
    starts, ends = to_ns(incidents["start"]), to_ns(incidents["end"])
    for ent, idx in incidents.groupby("entity", sort=False).indices.items():
        a, b = block.get(str(ent), (0, 0))
        t = t_ns[a:b]
        for i in idx:  # in order: a later incident overwrites an earlier one, as label_times
            lo = a + int(np.searchsorted(t, starts[i], side="left"))
            hi = a + int(np.searchsorted(t, ends[i], side="right"))
            label[lo:hi] = i
    return label


def calibration_cut(t_min: int, t_max: int, fraction: float) -> float:
    """The time from which windows calibrate the threshold instead of fitting the forest: the
    last ``fraction`` of the training span."""
    return t_min + (1.0 - fraction) * (t_max - t_min)


def observed_rows(frame: pd.DataFrame, metrics: list[str], block_rows: int = 1 << 20
                  ) -> np.ndarray:
    """Per row, whether any metric has a reading (the grid's rows between runs have none)."""
    out = np.zeros(len(frame), dtype=bool)
    for a in range(0, len(frame), block_rows):
        part = frame[metrics].iloc[a:a + block_rows].to_numpy(dtype=np.float64)
        out[a:a + block_rows] = np.isfinite(part).any(axis=1)
    return out


def _entity_rows(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """First row of each entity's block of rows, and each row's block."""
    codes = pd.factorize(frame["entity"], sort=False)[0]
    first = np.r_[True, codes[1:] != codes[:-1]] if len(codes) else np.empty(0, bool)
    return np.flatnonzero(first), np.cumsum(first) - 1


def _runs(flag: np.ndarray, block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs of True in ``flag`` that stay in one block: each row's run (-1: not in one) and
    each run's length."""
    start = flag & np.r_[True, ~flag[:-1] | (block[1:] != block[:-1])] if len(flag) else flag
    run = np.where(flag, np.cumsum(start) - 1, -1)
    return run, np.bincount(run[flag], minlength=int(start.sum()))


def active_time(featurizer: Featurizer, frame: pd.DataFrame
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each entity's clock of covered time: per row, its time with every earlier stretch of
    more than ``RUN_GAP_NS`` without readings taken out (runs days apart follow each other, as
    one span); and per entity, its first row and its covered span's end on that clock. For an
    entity without such stretches the clock is the timestamps themselves."""
    ts = to_ns(frame["timestamp"])
    step = int(featurizer.step_.value)
    starts, block = _entity_rows(frame)
    unobserved = ~observed_rows(frame, featurizer.metrics_)
    run, length = _runs(unobserved, block)
    counted = np.ones(len(ts), dtype=bool)
    counted[unobserved] = length[run[unobserved]] * step <= RUN_GAP_NS
    cum = np.cumsum(counted)
    before = np.r_[0, cum][starts]  # counted rows before each entity's first
    k = cum - before[block]  # counted rows of its entity up to this one
    t0 = ts[starts]
    ends = np.r_[starts[1:], len(ts)] - 1
    t_end = t0 + (cum[ends] - before - 1) * step
    return t0[block] + (k - 1) * step, starts, t_end


def calibration_cuts(featurizer: Featurizer, frame: pd.DataFrame, fraction: float
                     ) -> tuple[np.ndarray, np.ndarray, float | None]:
    """The calibration cut of each entity on its own clock (:func:`active_time`): the last
    ``fraction`` of its covered time calibrates, so that many short runs days apart give each
    entity fit and calibration windows, and one continuous span gives the one cut
    :func:`calibration_cut` of the span. Returns each row's clock time, each row's cut, and
    the earliest cut in real time (None: no rows)."""
    active, starts, t_end = active_time(featurizer, frame)
    if not len(active):
        return active, np.empty(0), None
    t0 = active[starts]
    cut = calibration_cut(t0, t_end, fraction)  # per entity
    _, block = _entity_rows(frame)
    cut_row = cut[block]
    ts = to_ns(frame["timestamp"])
    # Real time of each entity's cut: the clock's offset at its first row past the cut.
    past = np.flatnonzero(active >= cut_row)
    if not len(past):  # no entity with a reading
        return active, cut_row, None
    first_past = past[np.r_[True, block[past][1:] != block[past][:-1]]]
    real = cut[block[first_past]] + (ts[first_past] - active[first_past])
    return active, cut_row, float(real.min())


def split_windows(featurizer: Featurizer, frame: pd.DataFrame, row_label: np.ndarray,
                  fraction: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Last rows of the fit windows (normal: before their entity's calibration cut and
    touching no incident), the calibration windows (from the cut on) and the incident
    windows (ending in one), decided from the rows alone, before any feature is computed.
    Each entity's cut is its own (:func:`calibration_cuts`): entities are whole in a frame,
    locally and in each Dask group, so both split alike."""
    rows = featurizer.complete_rows(frame)  # every window, in the order window_blocks gives
    active, cut_row, _ = calibration_cuts(featurizer, frame, fraction)
    end, cut = active[rows], cut_row[rows]
    # A window touches an incident when any of its rows does.
    in_incident = np.r_[0, np.cumsum(row_label >= 0)]
    touched = in_incident[rows + 1] - in_incident[np.maximum(rows + 1 - featurizer.window, 0)] > 0
    return (rows[(end < cut) & ~touched], rows[end >= cut], rows[row_label[rows] >= 0])


def require_fit_windows(n: int, source: str, window: int,
                        cause: tuple[str, str] | None = None) -> None:
    """Enough fit windows, or an error naming why not: ``cause`` (problem, hint) from
    :func:`few_windows_cause` when known, else too little history."""
    if n < MIN_FIT_WINDOWS:
        if cause is not None:
            raise InputError(f"only {n} normal windows to fit on: {cause[0]}", source=source,
                             hint=cause[1])
        raise InputError(f"only {n} normal windows before the calibration slice",
                         source=source,
                         hint=f"give more history (a window is {window} steps) or lower "
                              "detect.calibration_fraction")


def _step_text(step: pd.Timedelta) -> str:
    seconds = step.total_seconds()
    return f"{seconds:g}s"


# Most steps of the grid without a reading, inside runs: the step is likely wrong.
_EMPTY_GRID_SHARE = 0.5


def few_windows_cause(featurizer: Featurizer, frame: pd.DataFrame) -> tuple[str, str] | None:
    """Why a frame has few complete windows, as (problem, hint): runs shorter than a window,
    a step finer than the readings, or a metric missing in most rows; None when it is none of
    these (then history is short)."""
    if not len(frame):
        return None
    w, step = int(featurizer.window), featurizer.step_
    _, block = _entity_rows(frame)
    values = frame[featurizer.metrics_].to_numpy(dtype=np.float64)
    present = np.isfinite(values)
    observed = present.any(axis=1)
    # Inside runs (gaps of up to RUN_GAP_NS), the share of grid steps without any reading.
    run, length = _runs(~observed, block)
    short_gap = ~observed
    short_gap[short_gap] = length[run[short_gap]] * int(step.value) <= RUN_GAP_NS
    empty = short_gap.sum() / max(1, short_gap.sum() + observed.sum())
    if empty > _EMPTY_GRID_SHARE:
        return (f"{empty:.0%} of the steps of the {_step_text(step)} grid have no reading",
                "is the step right? pass --step with the readings' spacing")
    _, obs_len = _runs(observed, block)
    longest = int(obs_len.max()) if len(obs_len) else 0
    if longest < w:
        return (f"the longest run of readings is {longest} steps of {_step_text(step)}, a "
                f"window needs {w}",
                f"give runs of at least {w} steps, or lower --window")
    _, full_len = _runs(present.all(axis=1), block)
    if not len(full_len) or full_len.max() < w:
        missing = 1.0 - present[observed].mean(axis=0)
        j = int(np.argmax(missing))
        name = featurizer.metrics_[j]
        return (f"every window misses a value: '{name}' is missing in {missing[j]:.0%} of "
                "the rows with readings", f"pass --exclude {name}, or fill its gaps")
    return None


def fit_sample(n: int, random_state: int) -> np.ndarray | None:
    """Which of ``n`` fit windows the forest is fitted on (sorted), or None for all."""
    if n <= MAX_FIT_WINDOWS:
        return None
    rng = np.random.default_rng(random_state)
    return np.sort(rng.choice(n, MAX_FIT_WINDOWS, replace=False))


def fit_view(featurizer: Featurizer, frame: pd.DataFrame, rows: np.ndarray,
             dc: DetectConfig) -> np.ndarray:
    """What the forest is fitted on: the detector view of the windows ending at ``rows``."""
    fit_w = featurizer.windows_at(frame, rows)
    return detector_view(fit_w.X, len(featurizer.metrics_), dc.stats, featurizer.stats)


def _calibration_views(featurizer: Featurizer, frame: pd.DataFrame, rows: np.ndarray,
                       dc: DetectConfig, quiet: bool):
    """(slice of ``rows``, detector view of those windows), block by block: only the
    forest's stats are computed, and only a block's windows exist at a time."""
    n_met = len(featurizer.metrics_)
    blocks = range(0, len(rows), CAL_BLOCK_WINDOWS)
    for a in with_progress(blocks, progress(len(blocks), "calibration", quiet)):
        S, _ = featurizer.features_at(frame, rows[a:a + CAL_BLOCK_WINDOWS], stats=dc.stats)
        yield slice(a, a + CAL_BLOCK_WINDOWS), stats_view(S, n_met)


def calibration_scores(featurizer: Featurizer, detector: IsolationDetector,
                       frame: pd.DataFrame, rows: np.ndarray, dc: DetectConfig,
                       quiet: bool = True) -> np.ndarray:
    """Scores of the calibration windows ending at ``rows``, block by block."""
    scores = np.empty(len(rows))
    for part, view in _calibration_views(featurizer, frame, rows, dc, quiet):
        scores[part] = detector.anomaly_score(view)
    return scores


#: How an ensemble's two parts are put on one scale (DetectConfig.ensemble_scale).
ENSEMBLE_SCALES = ("fit", "budget")


def budget_scaled(dc: DetectConfig) -> bool:
    """Whether training puts the ensemble's parts on their own budget's scale (round 5, V1)."""
    if dc.ensemble_scale not in ENSEMBLE_SCALES:
        raise ConfigError(f"unknown ensemble_scale {dc.ensemble_scale!r}",
                          source="config", where="detect.ensemble_scale",
                          hint=f"use one of {', '.join(ENSEMBLE_SCALES)}")
    return dc.ensemble_scale == "budget" and dc.ensemble != "forest"


def calibration_parts(featurizer: Featurizer, detector: IsolationDetector,
                      frame: pd.DataFrame, rows: np.ndarray, dc: DetectConfig,
                      quiet: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The forest's score and the robust statistic of the calibration windows ending at
    ``rows`` (:func:`calibration_scores`, the two parts apart), block by block."""
    forest, robust = np.empty(len(rows)), np.empty(len(rows))
    for part, view in _calibration_views(featurizer, frame, rows, dc, quiet):
        forest[part], robust[part] = detector.component_scores(view)
    return forest, robust


def budget_scales(scales: np.ndarray, entity: np.ndarray, end_ns: np.ndarray,
                  parts: tuple[np.ndarray, np.ndarray], step_ns: int, spans: dict,
                  dc: DetectConfig) -> np.ndarray:
    """The ensemble's scales with each part's upper anchor its own threshold at half the
    alarm budget on the calibration windows (the budget shared by the two parts; the same
    event rule, incidents not counted), its median on the fit windows kept.

    Why: at the same share of healthy windows above a cut, the forest's exceedances come in
    runs that the event rule turns into false alarms, the robust statistic's in spikes it
    mostly does not, so a quantile puts the two on scales the event rule does not see alike
    (bench/PROTOCOL_generalization.md, round 5)."""
    out = np.array(scales, dtype=np.float64, copy=True)
    rules = event_rules_of(dc)
    for i, s in enumerate(parts):
        out[i, 1] = AlarmThreshold(budget=dc.alarm_budget / 2, rules=rules,
                                   tail=dc.threshold_tail).fit(
            entity, end_ns, s, step_ns, spans).threshold_
    return out


def incident_windows(featurizer: Featurizer, detector: IsolationDetector, frame: pd.DataFrame,
                     rows: np.ndarray, row_label: np.ndarray, config: Config
                     ) -> tuple[np.ndarray, np.ndarray]:
    """What the diagnoser learns from: each incident's highest-scored windows (what diagnosis
    will see of an event), as (features, incident index)."""
    inc_w = featurizer.windows_at(frame, rows)
    scores = detector.anomaly_score(detector_view(inc_w.X, len(featurizer.metrics_),
                                                  config.detect.stats, featurizer.stats))
    label = row_label[inc_w.row]
    keep = top_per_group(label, scores, config.diagnose.max_event_windows)
    return inc_w.X[keep], label[keep]


def top_per_group(groups: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """Indexes of the ``k`` highest scores of each group."""
    order = np.lexsort((-scores, groups))
    g = groups[order]
    first = np.r_[True, g[1:] != g[:-1]]
    start = np.maximum.accumulate(np.where(first, np.arange(len(g)), 0))
    rank = np.arange(len(g)) - start
    return np.sort(order[rank < k])


@dataclass
class HealthyCandidates:
    """Calibration windows outside every incident (and its surroundings) that the detector
    scores highest: what a false alarm looks like. A Dask task returns its group's."""

    X: np.ndarray
    score: np.ndarray
    entity: np.ndarray  # names (object)
    end_ns: np.ndarray

    @staticmethod
    def concat(parts: list[HealthyCandidates]) -> HealthyCandidates:
        parts = [p for p in parts if p is not None and len(p.score)]
        if not parts:
            return HealthyCandidates(np.empty((0, 0)), np.empty(0), np.empty(0, object),
                                     np.empty(0, np.int64))
        return HealthyCandidates(*(np.concatenate([getattr(p, k) for p in parts])
                                   for k in ("X", "score", "entity", "end_ns")))


def healthy_candidates(featurizer: Featurizer, frame: pd.DataFrame, cal_rows: np.ndarray,
                       cal_scores: np.ndarray, incidents: pd.DataFrame | None,
                       config: Config) -> HealthyCandidates | None:
    """The ``diagnose.healthy_windows`` highest-scored calibration windows that lie clear of
    every labelled incident: not within a window before one, nor within a window and the
    cooldown after it (a fault's effects outlast its label), with all their features."""
    k = config.diagnose.healthy_windows
    if k <= 0 or not len(cal_rows):
        return None
    step = int(featurizer.step_.value)
    keep = np.ones(len(cal_rows), dtype=bool)
    if incidents is not None and len(incidents):
        w = featurizer.window
        wide = incidents.assign(
            start=incidents["start"] - pd.Timedelta(w * step, unit="ns"),
            end=incidents["end"] + pd.Timedelta((w + config.detect.cooldown) * step, unit="ns"))
        ent = frame["entity"]
        codes = ent.cat.codes.to_numpy().astype(np.int64)
        near = incident_of_rows(codes, [str(c) for c in ent.cat.categories],
                                to_ns(frame["timestamp"]), wide)
        keep = near[cal_rows] < 0
    idx = np.flatnonzero(keep)
    idx = idx[np.argsort(-cal_scores[idx], kind="stable")[:k]]
    idx = np.sort(idx)
    win = featurizer.windows_at(frame, cal_rows[idx])
    return HealthyCandidates(win.X, cal_scores[idx], win.entity, win.end_ns)


def healthy_windows(cand: HealthyCandidates | None, cal_scores: np.ndarray, step_ns: int,
                    config: Config) -> tuple[np.ndarray, np.ndarray] | None:
    """The flagged-but-healthy windows the diagnoser learns ``no_fault`` from, as (features,
    group): of the candidates, those in the top ``healthy_share`` of all calibration scores
    (the detector's threshold is set later, and at its budget too few windows pass it to learn
    from), at most ``healthy_windows``; grouped per entity into runs (windows closer than
    ``merge_gap`` steps), each run at most ``max_event_windows`` of its highest-scored, as an
    event would be."""
    gc, dc = config.diagnose, config.detect
    if cand is None or not len(cand.score) or gc.healthy_share <= 0:
        return None
    floor = np.quantile(cal_scores, 1.0 - gc.healthy_share)
    idx = np.flatnonzero(cand.score >= floor)
    idx = idx[np.argsort(-cand.score[idx], kind="stable")[:gc.healthy_windows]]
    if not len(idx):
        return None
    ent, t = cand.entity[idx].astype(str), cand.end_ns[idx]
    order = np.lexsort((t, ent))
    idx, ent, t = idx[order], ent[order], t[order]
    new_run = np.r_[True, (ent[1:] != ent[:-1]) | (np.diff(t) > dc.merge_gap * step_ns)]
    group = np.cumsum(new_run) - 1
    keep = top_per_group(group, cand.score[idx], gc.max_event_windows)
    return cand.X[idx[keep]], group[keep]


def novelty_features(feature_names: list[str] | None) -> tuple[int, ...]:
    """The feature columns of ``log:unseen`` (lines of templates training did not know): the
    ones ``diagnose.open_set_ignore`` ``novelty`` leaves out of the open-set distance."""
    from ftml.logs.series import UNSEEN

    if not feature_names:
        return ()
    return tuple(i for i, n in enumerate(feature_names) if str(n).startswith(UNSEEN + ":"))


def change_columns(feature_names: list[str] | None, how: str
                   ) -> tuple[tuple[int, ...], ...]:
    """For ``diagnose.change_features`` other than ``none``: per metric, the columns of its
    ``last``, ``median`` and ``slope`` stats among the featurizer's ``feature_names``
    (``metric:stat``), as three lists in the metrics' order; () when off. A featurizer
    without those stats cannot give a window's change: refused."""
    if how == "none":
        return ()
    names = [str(n).rsplit(":", 1) for n in feature_names or []]
    at = {(m, st): i for i, (m, st) in enumerate(n for n in names if len(n) == 2)}
    metrics = list(dict.fromkeys(m for m, st in at if st == "last"))
    missing = [f"{m}:{st}" for m in metrics for st in ("median", "slope") if (m, st) not in at]
    if not metrics or missing:
        raise ConfigError("diagnose.change_features needs each metric's last, median and "
                          "slope stats", source="config", where="diagnose.change_features",
                          hint="retrain with every window stat, or set change_features none")
    return tuple(tuple(at[(m, st)] for m in metrics) for st in ("last", "median", "slope"))


def fit_diagnoser(X: np.ndarray, label: np.ndarray, incidents: pd.DataFrame | None,
                  config: Config, healthy: tuple[np.ndarray, np.ndarray] | None = None,
                  feature_names: list[str] | None = None
                  ) -> tuple[Diagnoser | None, dict[str, Any]]:
    """The diagnoser, trained on the incidents' windows (``label``: each window's incident)
    and the flagged-but-healthy windows (``healthy``: features and run, see
    :func:`healthy_windows`) as class ``no_fault``, or None when there is nothing to learn
    from; and what the manifest says of it. ``feature_names``: the columns' names (the
    featurizer's), for ``diagnose.open_set_ignore`` ``novelty``."""
    if incidents is None or not len(label):
        return None, {}
    y = incidents["cause"].to_numpy(dtype=object)[label].astype(str)
    if len(np.unique(y)) < 2:
        return None, {"skipped": "fewer than two causes in the incidents"}
    groups = label
    n_healthy = 0
    if healthy is not None and len(healthy[1]):
        Xh, gh = healthy
        n_healthy = int(len(np.unique(gh)))
        X = np.vstack([X, Xh])
        y = np.r_[y, np.full(len(gh), NO_FAULT, dtype=object)].astype(str)
        groups = np.r_[label, len(incidents) + gh]
    gc = config.diagnose
    from ftml.diagnose import Diagnoser

    diagnoser = Diagnoser(classifier=gc.classifier, max_depth=gc.max_depth,
                          target_precision=gc.target_precision, calibrate=gc.calibrate,
                          open_set=gc.open_set, open_set_margin=gc.open_set_margin,
                          open_set_rate=gc.open_set_rate, no_fault_margin=gc.no_fault_margin,
                          open_set_space=gc.open_set_space,
                          open_set_ignore=gc.open_set_ignore,
                          open_set_ratio=gc.open_set_ratio,
                          novelty_features=novelty_features(feature_names),
                          change_features=gc.change_features,
                          change_columns=change_columns(feature_names, gc.change_features),
                          random_state=config.detect.random_state).fit(X, y, groups=groups)
    return diagnoser, {"windows": int(len(label)), "incidents": int(len(np.unique(label))),
                       "no_fault_windows": int(len(y) - len(label)),
                       "no_fault_runs": n_healthy,
                       "min_confidence": diagnoser.min_confidence_,
                       "calibration_error": diagnoser.ece_,
                       "unseen_cause_unknown": diagnoser.unseen_unknown_rate_,
                       "open_set_ignored": int(len(diagnoser.ignored_))}


def finish_training(featurizer: Featurizer, detector: IsolationDetector,
                    cal_entity: np.ndarray, cal_end_ns: np.ndarray, cal_scores: np.ndarray,
                    spans: dict, diagnoser: Diagnoser | None, rules: list, config: Config
                    ) -> tuple[Model, AlarmThreshold]:
    """The threshold from the calibration windows' scores, then the model."""
    dc = config.detect
    event_rules = event_rules_of(dc)
    thresholder = AlarmThreshold(budget=dc.alarm_budget, rules=event_rules,
                                 tail=dc.threshold_tail).fit(
        cal_entity, cal_end_ns, cal_scores, int(featurizer.step_.value), spans)
    model = Model(featurizer, detector, thresholder.threshold_, event_rules, diagnoser, rules,
                  config)
    return model, thresholder


def calibration_info(thresholder: AlarmThreshold, dc: DetectConfig,
                     cal_scores: np.ndarray) -> dict[str, Any]:
    """What the manifest says of the threshold; ``flagged_fraction`` (the share of calibration
    windows at or over it) is what scoring compares its own share with (a misfit warning)."""
    return {"alarm_budget": dc.alarm_budget, "threshold": thresholder.threshold_,
            "false_alarms": thresholder.false_alarms_,
            "entity_days": thresholder.entity_days_,
            "false_alarms_per_entity_day": thresholder.false_alarms_per_entity_day_,
            "flagged_fraction": float((cal_scores >= thresholder.threshold_).mean())
            if len(cal_scores) else 0.0,
            "threshold_tail": dc.threshold_tail,
            "empirical_threshold": thresholder.empirical_threshold_,
            "tail_fit": thresholder.tail_}


def utc_text(t_ns: int | float) -> str:
    return str(pd.Timestamp(int(t_ns), unit="ns", tz="UTC"))
