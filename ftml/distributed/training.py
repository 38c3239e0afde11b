"""``train`` on the cluster, partitioned by entity: counter counts, baselines and the fit sample
from the workers, the forest fitted through joblib's Dask backend, calibration and diagnosis
from the scores the workers compute; the bundle is the usual one."""

from __future__ import annotations

import hashlib
import operator
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ftml.bundle import save_model
from ftml.config import Config, LogConfig, ReadConfig
from ftml.diagnose import load_rules
from ftml.distributed.cluster import AHEAD_PER_THREAD, _run_in_order, _say, _threads, connect
from ftml.distributed.index import _index, infer_step_from
from ftml.distributed.logs import (
    ALL_TIME,
    group_ids,
    log_group_task,
    mine,
    read_logs,
    template_totals,
)
from ftml.distributed.slices import TASK_ROWS, Task, index_table, plan, read_task_rows
from ftml.features import (
    Baseline,
    counter_counts,
    counters_from_counts,
    metric_presence,
)
from ftml.io import (
    MetricData,
    expand_paths,
    incident_spans,
    normalise,
    read_incidents,
    step_from_config,
    to_ns,
)
from ftml.logs import (
    LogInput,
    as_log_input,
    check_cover,
    joined_metrics,
    new_log_model,
    require_records,
    warn_extra,
    warn_skipped,
)
from ftml.pipeline import (
    MAX_FIT_WINDOWS,
    SCORE_CHUNK_ROWS,
    HealthyCandidates,
    TrainInfo,
    TrainResult,
    budget_scaled,
    budget_scales,
    calibration_cuts,
    calibration_info,
    calibration_parts,
    calibration_scores,
    detector_of,
    featurizer_of,
    finish_training,
    fit_diagnoser,
    fit_sample,
    fit_view,
    healthy_candidates,
    healthy_windows,
    incident_of_rows,
    incident_windows,
    metrics_to_screen,
    remember_dropped,
    require_fit_windows,
    require_metrics,
    split_windows,
    utc_text,
)


def _group_data(task: Task, read: ReadConfig, metrics: list[str], step: pd.Timedelta,
                chunk_rows: int, logs=None) -> tuple[MetricData, int]:
    """The group's rows, normalised, with its log series joined as ``fit_logs`` joins them
    (``logs``: a :class:`ftml.logs.LogView` and the group's cells), and how many of its rows
    lie outside the time the logs cover."""
    view, cell = logs if logs is not None else (None, None)
    own = [m for m in metrics if view is None or m not in view.metrics]  # in metric files
    rows = read_task_rows(task, read, own, int(step.value), task.start, task.stop,
                          chunk_rows, required=False)
    frame, _ = normalise(rows, step, read.max_fill_steps, own)
    outside = 0
    if view is not None:
        frame, outside = view.join(frame, cell)
        # Series the screen left out go, as locally (the frame keeps the metrics' order).
        frame = frame[["entity", "timestamp", *metrics]]
    return MetricData(frame, step, metrics), outside


def train_stats_task(read, metrics, step, chunk_rows, window, task: Task, logs=None) -> dict:
    """Phase 1 on a worker: counter counts (``features.counter_counts``; the rule runs over
    the whole fleet's), row hashes (for the data digest), the time span of the group's
    rows and (with logs) how many lie outside the time the logs cover."""
    data, outside = _group_data(task, read, metrics, step, chunk_rows, logs)
    codes, ent_names = data.entity_codes()
    ts = to_ns(data.frame["timestamp"])
    return {**counter_counts(data.values(), codes),
            "presence": metric_presence(data.values(), codes, ent_names, window),
            "hashes": pd.util.hash_pandas_object(data.frame, index=False).to_numpy(),
            "t_min": int(ts.min()) if len(ts) else None, "t_max": int(ts.max()) if len(ts)
            else None, "rows": len(ts), "outside": outside}


def _sample_key(seed: int) -> str:
    return f"{seed % 10**16:016d}"


def _labels(data: MetricData, incidents) -> tuple[np.ndarray, np.ndarray]:
    """Timestamps (ns) of the rows, and the incident each falls in (-1: none)."""
    ts = to_ns(data.frame["timestamp"])
    codes, names = data.entity_codes()
    return ts, incident_of_rows(codes, names, ts, incidents)


def train_fit_task(read, metrics, step, chunk_rows, counters, incidents, fraction, keep_p,
                   config, min_scale, task: Task, logs=None) -> dict:
    """Phase 2 on a worker: the group's baselines, its count of fit windows and a sample of
    them (each kept with probability ``keep_p``, decided by a hash of the window, so the sample
    does not depend on the partition), as the forest sees them. ``min_scale``: as
    ``fit_model`` gives the featurizer (the log series' floors)."""
    data, _ = _group_data(task, read, metrics, step, chunk_rows, logs)
    frame = data.frame
    ts, row_label = _labels(data, incidents)
    fz = featurizer_of(config.features, config.read).fit(data, exclude_rows=row_label >= 0,
                                            counters=counters, min_scale=min_scale)
    fit_rows, _, _ = split_windows(fz, frame, row_label, fraction)
    n_fit = len(fit_rows)
    if keep_p < 1.0 and n_fit:
        h = pd.util.hash_pandas_object(
            pd.DataFrame({"e": frame["entity"].to_numpy(dtype=object)[fit_rows],
                          "t": ts[fit_rows]}),
            index=False, hash_key=_sample_key(config.detect.random_state))
        fit_rows = fit_rows[h.to_numpy() < np.uint64(keep_p * 2.0**64)]
    return {"baseline": fz.baseline_, "n_fit": n_fit,
            "X": fit_view(fz, frame, fit_rows, config.detect)}


def train_parts_task(read, metrics, step, chunk_rows, fitted: tuple, incidents, fraction,
                     config, task: Task, logs=None) -> dict:
    """With ``detect.ensemble_scale: budget``, before phase 3: the forest's score and the
    robust statistic of the group's calibration windows (``calibration_parts``), from which
    the driver puts each part on its own half-budget scale. ``fitted``: (featurizer, detector)."""
    fz, detector = fitted
    data, _ = _group_data(task, read, metrics, step, chunk_rows, logs)
    frame = data.frame
    ts, row_label = _labels(data, incidents)
    _, cal_rows, _ = split_windows(fz, frame, row_label, fraction)
    forest, robust = calibration_parts(fz, detector, frame, cal_rows, config.detect)
    names = list(task.entities)
    entity = frame["entity"].to_numpy(dtype=object)[cal_rows]
    return {"names": names,
            "code": pd.Categorical(entity, categories=names).codes.astype(np.int32),
            "end_ns": ts[cal_rows], "forest": forest, "robust": robust}


def train_score_task(read, metrics, step, chunk_rows, fitted: tuple, incidents, fraction,
                     config, task: Task, logs=None) -> dict:
    """Phase 3 on a worker, as ``fit_model`` does it: scores of the calibration windows (only
    the stats the forest sees, block by block), and each incident's highest-scored windows
    (what the diagnoser learns from). ``fitted``: (featurizer, detector)."""
    fz, detector = fitted
    data, _ = _group_data(task, read, metrics, step, chunk_rows, logs)
    frame = data.frame
    ts, row_label = _labels(data, incidents)
    _, cal_rows, inc_rows = split_windows(fz, frame, row_label, fraction)
    _, _, cal_start = calibration_cuts(fz, frame, fraction)
    cal_scores = calibration_scores(fz, detector, frame, cal_rows, config.detect)
    if len(inc_rows):
        X, label = incident_windows(fz, detector, frame, inc_rows, row_label, config)
    else:  # no incident in this group (or none given): nothing for the diagnoser
        X = np.empty((0, len(fz.feature_names_)))
        label = np.empty(0, dtype=np.int64)
    healthy = healthy_candidates(fz, frame, cal_rows, cal_scores, incidents, config)
    names = list(task.entities)
    entity = frame["entity"].to_numpy(dtype=object)[cal_rows]
    return {"names": names,
            "code": pd.Categorical(entity, categories=names).codes.astype(np.int32),
            "end_ns": ts[cal_rows], "score": cal_scores, "X": X, "label": label,
            "cal_start": cal_start, "healthy": healthy}


def train(metrics: Iterable[str | Path], out: str | Path, scheduler: Any,
          incidents: str | Path | None = None, config: Config | None = None,
          rules: str | Path | None = None, quiet: bool = True,
          chunk_rows: int = SCORE_CHUNK_ROWS, task_rows: int = TASK_ROWS,
          sign_key: bytes | None = None, logs: Any = None,
          log_config: LogConfig | None = None) -> TrainResult:
    """:func:`ftml.api.train` on a Dask cluster: featurization on the workers, the forest
    fitted through joblib's Dask backend, the same bundle format. While the history before the
    calibration cut has at most 125 000 rows, all fit windows are gathered and the same 100 000
    drawn as locally, so the model is the local one; beyond, each window is kept with one
    probability, so the sample (and so the forest) differs from a local run's. ``logs``
    (paths or a :class:`ftml.logs.LogInput`) are read by the workers, their templates mined
    on the driver in the local order (:mod:`ftml.distributed.logs`)."""
    import joblib

    config = config or Config()
    logs = as_log_input(logs)
    started = time.perf_counter()
    read, fc, dc = config.read, config.features, config.detect
    budget = budget_scaled(dc)  # (refuses an unknown ensemble_scale before any work)
    step = step_from_config(read)
    given = expand_paths(metrics)
    files = [str(p.resolve()) for p in given]
    with connect(scheduler) as client:
        threads = _threads(client)
        ahead = AHEAD_PER_THREAD * threads
        _say(quiet, f"dask: {len(client.nthreads())} workers ({threads} threads); "
                    f"indexing {len(files)} files")
        indexes = _index(client, files, read, None, chunk_rows, step is None, quiet)
        names: list[str] = []
        text = sorted({c for ix in indexes for c in ix.text_columns})
        for ix in indexes:  # a column that is text in one file is left out of all
            names.extend(c for c in ix.columns if c not in names and c not in text)
        step = step if step is not None else infer_step_from(indexes)
        table = index_table(indexes, int(step.value))
        entities = sorted(str(e) for e in table["entity"].unique())
        inc = read_incidents(incidents, entities, read) if incidents else None
        # Whole entities per task: a baseline needs all of an entity's history.
        groups = plan(table, files, task_rows, threads, 0, 1, split_time=False).tasks
        _say(quiet, f"dask: training in {len(groups)} entity groups")
        log_model, log_files, extra = None, None, None
        if logs is not None:
            log_model, log_files, extra = _train_logs(client, logs, log_config, read, step,
                                                      groups, entities, quiet)
            names = joined_metrics(names, log_model)
        args = (read, names, step, chunk_rows)
        digest = hashlib.sha256(",".join(names).encode())  # as bundle.data_digest
        stats = []
        for _, s in _run_in_order(client, train_stats_task, groups, (*args, fc.window), ahead,
                                  "stats", quiet, extra):
            digest.update(s.pop("hashes").tobytes())  # groups in entity order, as one frame
            stats.append(s)
        if log_model is not None:  # fit_logs' checks, over the whole fleet's rows
            n_all = sum(s["rows"] for s in stats)
            check_cover(sum(s["outside"] for s in stats) / max(1, n_all), n_all,
                        log_files.lo, log_files.hi, log_model.step_ns)
            warn_extra(log_files.entities, entities)
        # Metrics that cannot help are left out, decided over the whole fleet as locally.
        dropped = {**dict.fromkeys(text, "text"), **metrics_to_screen(
            [s["presence"] for s in stats], names, read,
            log_model.kept_constant() if log_model is not None else ())}
        usable = [m for m in names if m not in dropped]
        require_metrics(usable, dropped, str(given[0]) if len(given) == 1 else "metrics")
        counters = counters_from_counts([{k: s[k][[names.index(m) for m in usable]]
                                          for k in ("n", "rises", "falls", "min")}
                                         for s in stats], usable)
        args = (read, usable, step, chunk_rows)
        t_min = np.int64(min(s["t_min"] for s in stats if s["t_min"] is not None))
        t_max = np.int64(max(s["t_max"] for s in stats if s["t_max"] is not None))
        n_rows = sum(s["rows"] for s in stats)
        # Each window joins the fit sample with this probability: about the local sample size.
        keep_p = min(1.0, 1.25 * MAX_FIT_WINDOWS
                     / max(1.0, n_rows * (1.0 - dc.calibration_fraction)))
        inc_f = client.scatter(inc, broadcast=True, hash=False) if inc is not None else None
        min_scale = log_model.scale_floors() if log_model is not None else None
        parts = [r for _, r in _run_in_order(
            client, train_fit_task, groups,
            (*args, counters, inc_f, dc.calibration_fraction, keep_p, config, min_scale),
            ahead, "features", quiet, extra)]
        # One featurizer of the groups' baselines: the fleet fallback over all entities.
        featurizer = featurizer_of(fc, config.read).with_baseline(
            usable, step, counters, Baseline.concat([p["baseline"] for p in parts]))
        require_fit_windows(sum(p["n_fit"] for p in parts),
                            str(given[0]) if len(given) == 1 else "metrics", fc.window)
        fit_X = np.vstack([p["X"] for p in parts])
        del parts
        sample = fit_sample(len(fit_X), dc.random_state)
        if sample is not None:
            fit_X = fit_X[sample]
        _say(quiet, f"dask: fitting the forest on {len(fit_X)} windows")
        # The trees are built on the workers, a share per worker thread.
        with joblib.parallel_config(backend="dask", n_jobs=-1):
            detector = detector_of(dc).fit(fit_X)
        n_fit_used = len(fit_X)
        del fit_X
        if budget:
            # Each part's scale is its threshold over every group's calibration windows: one
            # pass for the two parts first, then the pass below scores with the final scales
            # (and so picks the diagnoser's and the healthy windows by them), as locally.
            shared = client.scatter((featurizer, detector), broadcast=True, hash=False)
            parted = [r for _, r in _run_in_order(
                client, train_parts_task, groups,
                (*args, shared, inc_f, dc.calibration_fraction, config), ahead,
                "calibration parts", quiet, extra)]
            detector.scales_ = budget_scales(
                detector.scales_,
                np.concatenate([np.asarray(r["names"], dtype=object)[r["code"]]
                                for r in parted]),
                np.concatenate([r["end_ns"] for r in parted]),
                (np.concatenate([r["forest"] for r in parted]),
                 np.concatenate([r["robust"] for r in parted])),
                int(step.value), incident_spans(inc), dc)
            del parted
        shared = client.scatter((featurizer, detector), broadcast=True, hash=False)
        scored = [r for _, r in _run_in_order(
            client, train_score_task, groups,
            (*args, shared, inc_f, dc.calibration_fraction, config), ahead, "calibration",
            quiet, extra)]
        for (_, cells), in extra or ():  # the groups' log cells: no task needs them now
            cells.release()
        del extra
    starts = [r["cal_start"] for r in scored if r["cal_start"] is not None]
    t_cut = min(starts) if starts else float(t_max)
    cal_entity = np.concatenate([np.asarray(r["names"], dtype=object)[r["code"]]
                                 for r in scored])
    cal_end = np.concatenate([r["end_ns"] for r in scored])
    cal_scores = np.concatenate([r["score"] for r in scored])
    healthy = healthy_windows(HealthyCandidates.concat([r["healthy"] for r in scored]),
                              cal_scores, int(step.value), config) if inc is not None else None
    diagnoser, diag_info = fit_diagnoser(np.vstack([r["X"] for r in scored]),
                                         np.concatenate([r["label"] for r in scored]), inc,
                                         config, healthy, featurizer.feature_names_)
    model, thresholder = finish_training(featurizer, detector, cal_entity, cal_end, cal_scores,
                                         incident_spans(inc), diagnoser,
                                         load_rules(rules, featurizer.metrics_),
                                         remember_dropped(config, dropped))
    info = TrainInfo(
        start=utc_text(t_min), end=utc_text(t_max), calibration_start=utc_text(t_cut),
        entities=len(entities), rows=n_rows, fit_windows=n_fit_used,
        calibration_windows=len(cal_end), incidents=0 if inc is None else len(inc),
        data_sha256=digest.hexdigest(), sources=[str(p) for p in given],
        calibration=calibration_info(thresholder, dc, cal_scores), diagnosis=diag_info,
        extra={"dask_threads": threads}, dropped_metrics=dropped).to_dict()
    if log_model is not None:
        model.logs = log_model
        info["training"]["log_sources"] = log_model.sources
    info["training"]["seconds"] = round(time.perf_counter() - started, 2)
    manifest = save_model(model, out, info, key=sign_key)
    return TrainResult(model, manifest, info)


def _train_logs(client, logs: LogInput, log_config: LogConfig | None, read: ReadConfig,
                step: pd.Timedelta, groups: list[Task], entities: list[str], quiet: bool):
    """The log half of ``fit_logs`` on the cluster: the files read by the workers, cut by
    entity group (and one group more of the entities without metrics, whose lines count
    towards the templates as locally); the templates mined on the driver in the local
    order; each group's cells made once on a worker and kept there for the three phases.
    Returns the log model, the files and each group's extra task argument."""
    cfg = logs.config(log_config or LogConfig())
    log_model = new_log_model(int(step.value), cfg)
    group_of, _ = group_ids(groups)
    others = len(groups)  # the group of entities that have logs and no metrics
    files = read_logs(client, logs, cfg, read, log_model.step_ns, group_of, [ALL_TIME], None,
                      quiet, others=others)
    warn_skipped(files.stats)
    require_records(0 if files.empty else 1, logs)
    mine(log_model, files)
    run = uuid.uuid4().hex[:8]
    made = [client.submit(log_group_task, files.parts(g), key=f"ftml-logcells-{run}-{g}",
                          pure=False) for g in range(others + 1)]
    counts = [client.submit(operator.itemgetter(0), m, pure=False) for m in made]
    cells = [client.submit(operator.itemgetter(1), m, pure=False) for m in made[:others]]
    try:
        totals = template_totals([c.result() for c in counts])
    except BaseException:
        client.cancel(made + cells)
        raise
    del made, counts
    files.release()  # the groups' cells hold what the phases need
    log_model.choose(totals, files.any_status, files.names)
    view = log_model.view(files.lo, files.hi)
    return log_model, files, [((view, c),) for c in cells]
