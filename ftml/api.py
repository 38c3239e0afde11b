"""The library API that the CLI, notebooks and benchmarks call: train and score."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from ftml.bundle import Model, data_digest, load_model, save_model
from ftml.config import Config, ReadConfig
from ftml.detect import AlarmThreshold, EventRules, IsolationDetector
from ftml.diagnose import Diagnoser, load_rules
from ftml.errors import InputError
from ftml.events import Event
from ftml.features import Featurizer, Windows, detector_view
from ftml.io import (
    MetricData,
    expand_paths,
    incident_spans,
    iter_metric_rows,
    label_times,
    normalise,
    read_incidents,
    read_metrics,
    to_ns,
    write_records,
    write_table,
)

# Windows the detector is fitted on: a sample is as good as all (each tree sees max_samples).
MAX_FIT_WINDOWS = 100_000
SCORE_CHUNK_ROWS = 1_000_000


@dataclass
class TrainResult:
    model: Model
    manifest: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)


def _progress(total: int | None, desc: str, quiet: bool):
    # disable=None: tqdm draws only on a terminal, so logs and pipes stay clean.
    return tqdm(total=total, desc=desc, disable=True if quiet else None, file=sys.stderr,
                leave=False, unit="chunk")


def fit_model(data: MetricData, incidents: pd.DataFrame | None, config: Config,
              rules_path: str | Path | None = None, quiet: bool = True) -> tuple[Model, dict]:
    """Fit featurizer, detector, threshold and diagnoser on metrics (+ labelled incidents)."""
    fc, dc, gc = config.features, config.detect, config.diagnose
    frame = data.frame
    ts = to_ns(frame["timestamp"])
    ent = frame["entity"].to_numpy(dtype=object)
    row_label = label_times(ent, ts, incidents)
    featurizer = Featurizer(fc.window, fc.stride, fc.hour_of_day).fit(
        data, exclude_rows=row_label >= 0)
    # A window touches an incident when any of its rows does.
    in_incident = np.r_[0, np.cumsum(row_label >= 0)]
    step_ns = int(data.step.value)
    t_min, t_max = ts.min(), ts.max()
    t_cut = t_min + (1.0 - dc.calibration_fraction) * (t_max - t_min)

    fit_parts, cal_parts, inc_parts = [], [], []
    chunks = featurizer.iter_windows(data)
    for w in _wrap(chunks, _progress(None, "features", quiet)):
        touched = in_incident[w.row + 1] - in_incident[np.maximum(w.row + 1 - fc.window, 0)] > 0
        fit_parts.append(w.take((w.end_ns < t_cut) & ~touched))
        cal_parts.append(w.take(w.end_ns >= t_cut))
        inc_parts.append(w.take(row_label[w.row] >= 0))
    n_feat, n_met = len(featurizer.feature_names_), len(featurizer.metrics_)
    fit_w = Windows.concat(fit_parts, n_feat, n_met)
    cal_w = Windows.concat(cal_parts, n_feat, n_met)
    inc_w = Windows.concat(inc_parts, n_feat, n_met)
    if len(fit_w) < 50:
        raise InputError(f"only {len(fit_w)} normal windows before the calibration slice",
                         source=data.sources[0] if len(data.sources) == 1 else "metrics",
                         hint=f"give more history (a window is {fc.window} steps) or lower "
                              "detect.calibration_fraction")
    rng = np.random.default_rng(dc.random_state)
    if len(fit_w) > MAX_FIT_WINDOWS:
        fit_w = fit_w.take(np.sort(rng.choice(len(fit_w), MAX_FIT_WINDOWS, replace=False)))
    n_met = len(featurizer.metrics_)
    detector = IsolationDetector(dc.n_estimators, dc.max_samples, dc.random_state).fit(
        detector_view(fit_w.X, n_met, dc.stats))
    event_rules = EventRules(dc.min_windows, dc.of_windows, dc.merge_gap, dc.cooldown)
    spans = incident_spans(incidents)
    cal_scores = detector.score_samples(detector_view(cal_w.X, n_met, dc.stats))
    thresholder = AlarmThreshold(dc.alarm_budget, event_rules).fit(
        cal_w.entity, cal_w.end_ns, cal_scores, step_ns, spans)

    diagnoser = None
    diag_info: dict[str, Any] = {}
    if incidents is not None and len(inc_w):
        # Train on what diagnosis will see: each incident's highest-scored windows.
        inc_scores = detector.score_samples(detector_view(inc_w.X, n_met, dc.stats))
        label = row_label[inc_w.row]
        keep = _top_per_group(label, inc_scores, gc.max_event_windows)
        X, groups = inc_w.X[keep], label[keep]
        y = incidents["cause"].to_numpy(dtype=object)[groups].astype(str)
        if len(np.unique(y)) >= 2:
            diagnoser = Diagnoser(gc.classifier, gc.max_depth, gc.target_precision,
                                  dc.random_state).fit(X, y, groups=groups)
            diag_info = {"windows": int(len(y)), "incidents": int(len(np.unique(groups))),
                         "min_confidence": diagnoser.min_confidence_}
        else:
            diag_info = {"skipped": "fewer than two causes in the incidents"}
    rules = load_rules(rules_path, featurizer.metrics_)
    model = Model(featurizer, detector, thresholder.threshold_, event_rules, diagnoser, rules,
                  config)
    info = {
        "training": {
            "start": str(pd.Timestamp(t_min, unit="ns", tz="UTC")),
            "end": str(pd.Timestamp(t_max, unit="ns", tz="UTC")),
            "calibration_start": str(pd.Timestamp(int(t_cut), unit="ns", tz="UTC")),
            "entities": len(data.entities), "rows": len(frame),
            "fit_windows": len(fit_w), "calibration_windows": len(cal_w),
            "incidents": 0 if incidents is None else len(incidents),
            "data_sha256": data_digest(data), "sources": data.sources,
        },
        "calibration": {"alarm_budget": dc.alarm_budget, "threshold": thresholder.threshold_,
                        "false_alarms": thresholder.false_alarms_,
                        "entity_days": thresholder.entity_days_,
                        "false_alarms_per_entity_day":
                            thresholder.false_alarms_per_entity_day_},
        "diagnosis": diag_info,
    }
    return model, info


def _wrap(it: Iterable, bar) -> Iterator:
    with bar:
        for x in it:
            yield x
            bar.update(1)


def _top_per_group(groups: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """Indexes of the ``k`` highest scores of each group."""
    order = np.lexsort((-scores, groups))
    g = groups[order]
    first = np.r_[True, g[1:] != g[:-1]]
    start = np.maximum.accumulate(np.where(first, np.arange(len(g)), 0))
    rank = np.arange(len(g)) - start
    return np.sort(order[rank < k])


def train(metrics: Iterable[str | Path], out: str | Path, incidents: str | Path | None = None,
          config: Config | None = None, rules: str | Path | None = None,
          quiet: bool = True) -> TrainResult:
    """Read history, fit a model and write its bundle to ``out``."""
    config = config or Config()
    started = time.perf_counter()
    data = read_metrics(metrics, config.read)
    inc = read_incidents(incidents, data.entities, config.read) if incidents else None
    model, info = fit_model(data, inc, config, rules, quiet)
    info["training"]["seconds"] = round(time.perf_counter() - started, 2)
    manifest = save_model(model, out, info)
    return TrainResult(model, manifest, info)


# --------------------------------------------------------------------------- scoring


@dataclass
class ScoreResult:
    events: list[Event]
    windows: int
    entities: int
    rows: int
    seconds: float
    window_table: pd.DataFrame | None = None


def stream_frames(paths: Iterable[str | Path], read: ReadConfig, step: pd.Timedelta,
                  metrics: list[str], carry_steps: int, chunk_rows: int
                  ) -> Iterator[tuple[pd.DataFrame, dict[str, int], dict[str, int] | None]]:
    """Metric files -> normalised frames chunk by chunk, each with, per entity, the time (ns)
    after which its windows are new and up to which they are final (None: the last chunk).

    Each chunk carries the last ``carry_steps`` raw rows of every entity from the one before,
    and windows in the last few steps of a chunk wait for the next (a gap there may yet grow
    too long to fill), so every window comes out exactly once, as in one piece."""
    files = expand_paths(paths)
    source = ", ".join(map(str, files))
    step_ns = int(step.value)
    hold_ns = read.max_fill_steps * step_ns
    since: dict[str, int] = {}
    carry: pd.DataFrame | None = None
    pending: pd.DataFrame | None = None
    for rows in iter_metric_rows(files, read, chunk_rows):
        missing = [m for m in metrics if m not in rows.columns]
        if missing:
            raise InputError(f"metric column(s) missing: {', '.join(missing)}", source=source,
                             hint="the model was trained with them; supply the same metrics")
        rows = rows[["entity", "timestamp", *metrics]]
        if pending is not None:
            frame, until = _normalise_chunk(pending, step, read, metrics, hold_ns)
            yield frame, dict(since), until
            since.update(until)
        if carry is not None and len(carry):
            late = _late_rows(carry, rows)
            if late:
                raise InputError("rows go back in time across chunks", source=source,
                                 where=f"entity '{late}'",
                                 hint="sort the file by time, or score a smaller file")
            rows = pd.concat([carry, rows], ignore_index=True)
        pending = rows
        rts = to_ns(rows["timestamp"])
        newest = pd.Series(rts).groupby(rows["entity"].to_numpy(dtype=object)).transform("max")
        carry = rows[rts > newest.to_numpy() - carry_steps * step_ns]
    if pending is not None:
        frame, _ = normalise(pending, step, read.max_fill_steps, metrics)
        yield frame, dict(since), None


def _normalise_chunk(rows: pd.DataFrame, step: pd.Timedelta, read: ReadConfig,
                     metrics: list[str], hold_ns: int):
    frame, _ = normalise(rows, step, read.max_fill_steps, metrics)
    ts = to_ns(frame["timestamp"])
    newest = pd.Series(ts).groupby(frame["entity"].to_numpy(dtype=object)).max()
    return frame, {str(k): int(v) - hold_ns for k, v in newest.items()}


def _late_rows(carry: pd.DataFrame, rows: pd.DataFrame) -> str | None:
    """An entity whose new rows start before rows already carried (out of time order)."""
    first_new = pd.Series(to_ns(rows["timestamp"])).groupby(
        rows["entity"].to_numpy(dtype=object)).min()
    oldest_kept = pd.Series(to_ns(carry["timestamp"])).groupby(
        carry["entity"].to_numpy(dtype=object)).min()
    both = first_new.index.intersection(oldest_kept.index)
    bad = both[(first_new[both] < oldest_kept[both]).to_numpy()]
    return str(bad[0]) if len(bad) else None


def score(model: Model | str | Path, metrics: Iterable[str | Path],
          out: str | Path | None = None, windows_out: str | Path | None = None,
          playbooks: str | Path | None = None, chunk_rows: int = SCORE_CHUNK_ROWS,
          quiet: bool = True) -> ScoreResult:
    """Score metric files with a model; write events (and per-window scores) atomically."""
    started = time.perf_counter()
    if not isinstance(model, Model):
        model = load_model(model)
    matcher = _playbook_matcher(playbooks)
    read = model.config.read
    builder = model.event_builder()
    fz = model.featurizer
    carry_steps = fz.window + read.max_fill_steps + 2
    raw_events = []
    n_windows = n_rows = 0
    entities: set[str] = set()
    window_parts: list[pd.DataFrame] = []
    bar = _progress(None, "scoring", quiet)
    with bar:
        for frame, since, until in stream_frames(metrics, read, model.step, model.metrics,
                                                 carry_steps, chunk_rows):
            n_rows += len(frame)
            for w in fz.iter_windows(MetricData(frame, model.step, model.metrics)):
                w = w.take(_between(w, since, until))
                if not len(w):
                    continue
                scores = model.score_windows(w)
                n_windows += len(w)
                entities.update(pd.unique(w.entity).tolist())
                raw_events.extend(builder.push(w.entity, w.end_ns, scores, model.payload(w)))
                if windows_out is not None:
                    window_parts.append(pd.DataFrame({
                        "entity": w.entity.astype(str),
                        "timestamp": pd.to_datetime(w.end_ns, unit="ns", utc=True),
                        "score": scores, "flag": scores >= model.threshold}))
            bar.update(1)
    raw_events.extend(builder.flush())
    events = [model.to_event(r) for r in raw_events]
    for ev in events:
        ev.playbook = matcher(ev)
    events.sort(key=lambda e: (e.entity, e.start))
    if out is not None:
        write_records([e.to_dict() for e in events], out)
    table = None
    if windows_out is not None:
        table = pd.concat(window_parts, ignore_index=True) if window_parts else pd.DataFrame(
            {"entity": [], "timestamp": [], "score": [], "flag": []})
        table = table.sort_values(["entity", "timestamp"], kind="stable").reset_index(drop=True)
        write_table(table, windows_out)
    return ScoreResult(events, n_windows, len(entities), n_rows,
                       round(time.perf_counter() - started, 3), table)


def _between(w: Windows, since: dict[str, int], until: dict[str, int] | None) -> np.ndarray:
    """Windows new in this chunk (after ``since``) and final (up to ``until``), per entity."""
    keep = np.ones(len(w), dtype=bool)
    if not len(w):
        return keep
    names, inverse = np.unique(w.entity.astype(str), return_inverse=True)
    if since:
        lo = np.array([since.get(n, np.iinfo(np.int64).min) for n in names])[inverse]
        keep &= w.end_ns > lo
    if until is not None:
        hi = np.array([until.get(n, np.iinfo(np.int64).max) for n in names])[inverse]
        keep &= w.end_ns <= hi
    return keep


def _playbook_matcher(path: str | Path | None):
    if path is None:
        return lambda event: None
    from ftml.playbooks import load_playbooks

    book = load_playbooks(path)

    def match(event: Event) -> str | None:
        pb = book.match(event)
        return None if pb is None else pb.name

    return match
