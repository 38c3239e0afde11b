"""The library API that the CLI, notebooks and benchmarks call: train, score and watch."""

from __future__ import annotations

import dataclasses
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ftml.bundle import Model, data_digest, load_model, save_model
from ftml.config import Config, ReadConfig, parse_duration
from ftml.detect import combine_scores
from ftml.diagnose import load_rules
from ftml.errors import InputError
from ftml.events import Event
from ftml.incidents import ScoreTrail, grouping_for, reads_scores
from ftml.io import (
    MetricData,
    expand_paths,
    incident_spans,
    iter_metric_rows,
    normalise,
    read_incidents,
    read_metrics,
    to_ns,
)
from ftml.pipeline import (
    MIN_FIT_WINDOWS,
    SCORE_CHUNK_ROWS,
    TRAIN_STAGES,
    ScoreResult,
    Stages,
    TrainInfo,
    TrainResult,
    WindowScorer,
    budget_scaled,
    budget_scales,
    calibration_cuts,
    calibration_info,
    calibration_parts,
    calibration_scores,
    chunk_carry_steps,
    detector_of,
    featurizer_of,
    few_windows_cause,
    finish_scoring,
    finish_training,
    fit_diagnoser,
    fit_sample,
    fit_view,
    healthy_candidates,
    healthy_windows,
    hold_steps,
    incident_of_rows,
    incident_windows,
    progress,
    remember_dropped,
    require_fit_windows,
    screen_metrics,
    split_windows,
    utc_text,
)
from ftml.playbooks import playbook_matcher

# The most rows score() reads at a time (chunk_rows is an upper bound).
SCORE_READ_ROWS = 250_000


def fit_model(data: MetricData, incidents: pd.DataFrame | None, config: Config,
              rules_path: str | Path | None = None, quiet: bool = True,
              stage=None, logs: Any = None) -> tuple[Model, dict]:
    """Fit featurizer, detector, threshold and diagnoser on metrics (+ labelled incidents):
    the training phases of :mod:`ftml.pipeline` on one frame. ``stage(name)`` is told as each
    phase starts (train's progress on a terminal).

    Features are computed only for the windows each step needs: the sample the forest is
    fitted on, the calibration windows (only the stats the forest sees) and the incident
    windows; which windows those are is decided first, from the rows alone. Metrics that
    cannot help are left out first (:func:`ftml.pipeline.screen_metrics`). ``logs``: the
    :class:`ftml.logs.LogModel` whose series ``data`` holds (:func:`ftml.logs.fit_logs`):
    which of them are kept when constant, and the least scale of those that count lines."""
    stage = stage or (lambda name: None)  # (name) -> None: the stage that starts
    fc, dc = config.features, config.detect
    digest = data_digest(data)  # of the data as read, as Dask training's
    data = screen_metrics(data, config.read, fc.window,
                          keep_constant=logs.kept_constant() if logs is not None else ())
    frame = data.frame
    stage("baselines")
    ts = to_ns(frame["timestamp"])
    codes, names = data.entity_codes()
    row_label = incident_of_rows(codes, names, ts, incidents)
    featurizer = featurizer_of(fc, config.read).fit(
        data, exclude_rows=row_label >= 0,
        min_scale=logs.scale_floors() if logs is not None else None)
    t_min, t_max = ts.min(), ts.max()
    _, _, t_cut = calibration_cuts(featurizer, frame, dc.calibration_fraction)
    fit_rows, cal_rows, inc_rows = split_windows(featurizer, frame, row_label,
                                                 dc.calibration_fraction)
    require_fit_windows(len(fit_rows), data.sources[0] if len(data.sources) == 1 else "metrics",
                        fc.window, few_windows_cause(featurizer, frame)
                        if len(fit_rows) < MIN_FIT_WINDOWS else None)
    config = remember_dropped(config, data.dropped)
    sample = fit_sample(len(fit_rows), dc.random_state)
    if sample is not None:
        fit_rows = fit_rows[sample]
    stage("forest")
    detector = detector_of(dc).fit(fit_view(featurizer, frame, fit_rows, dc))
    stage("calibration")
    cal_entity = np.asarray(names, dtype=object)[codes[cal_rows]]
    if budget_scaled(dc):  # each part on its own budget's scale first, then the one score
        parts = calibration_parts(featurizer, detector, frame, cal_rows, dc, quiet)
        detector.scales_ = budget_scales(detector.scales_, cal_entity, ts[cal_rows], parts,
                                         int(featurizer.step_.value),
                                         incident_spans(incidents), dc)
        cal_scores = combine_scores(*parts, detector.scales_, dc.ensemble)
    else:
        cal_scores = calibration_scores(featurizer, detector, frame, cal_rows, dc, quiet)
    stage("diagnosis")
    X, label = (incident_windows(featurizer, detector, frame, inc_rows, row_label, config)
                if incidents is not None and len(inc_rows) else (None, np.empty(0, np.int64)))
    healthy = healthy_windows(
        healthy_candidates(featurizer, frame, cal_rows, cal_scores, incidents, config),
        cal_scores, int(featurizer.step_.value), config) if X is not None else None
    diagnoser, diag_info = fit_diagnoser(X, label, incidents, config, healthy,
                                         featurizer.feature_names_)
    model, thresholder = finish_training(
        featurizer, detector, cal_entity, ts[cal_rows], cal_scores, incident_spans(incidents),
        diagnoser, load_rules(rules_path, featurizer.metrics_), config)
    info = TrainInfo(
        start=utc_text(t_min), end=utc_text(t_max), calibration_start=utc_text(t_cut),
        entities=len(data.entities), rows=len(frame), fit_windows=len(fit_rows),
        calibration_windows=len(cal_rows),
        incidents=0 if incidents is None else len(incidents),
        data_sha256=digest, sources=data.sources,
        calibration=calibration_info(thresholder, dc, cal_scores), diagnosis=diag_info,
        dropped_metrics=data.dropped)
    return model, info.to_dict()


def train(metrics: Iterable[str | Path], out: str | Path, incidents: str | Path | None = None,
          config: Config | None = None, rules: str | Path | None = None,
          quiet: bool = True, sign_key: bytes | None = None, scheduler: Any = None,
          logs: Any = None, log_config: Any = None) -> TrainResult:
    """Read history, fit a model and write its bundle to ``out`` (signed with ``sign_key``,
    default the environment's ``FTML_MODEL_KEY``, if any); with ``scheduler`` (see
    :func:`ftml.distributed.connect`), on a Dask cluster. ``logs`` (paths or a
    :class:`ftml.logs.LogInput`): log files whose series join the metrics, read and turned
    into series by ``log_config`` (a :class:`ftml.config.LogConfig`; default its defaults)."""
    if scheduler is not None:
        from ftml import distributed

        return distributed.train(metrics, out, scheduler, incidents=incidents, config=config,
                                 rules=rules, quiet=quiet, sign_key=sign_key,
                                 logs=logs or None, log_config=log_config)
    config = config or Config()
    started = time.perf_counter()
    stages = Stages(TRAIN_STAGES, quiet)
    try:
        stages("reading metrics")
        data = read_metrics(metrics, config.read, drop_text=True)
        log_model = None
        if logs:
            from ftml.logs import fit_logs

            data, log_model = fit_logs(data, logs, config.read, log_config)
        inc = read_incidents(incidents, data.entities, config.read) if incidents else None
        model, info = fit_model(data, inc, config, rules, quiet, stage=stages, logs=log_model)
        if log_model is not None:
            model.logs = log_model
            info["training"]["log_sources"] = log_model.sources
        info["training"]["seconds"] = round(time.perf_counter() - started, 2)
        stages("writing the bundle")
        manifest = save_model(model, out, info, key=sign_key)
    finally:
        stages.close()
    return TrainResult(model, manifest, info)


def stream_frames(paths: Iterable[str | Path], read: ReadConfig, step: pd.Timedelta,
                  metrics: list[str], carry_steps: int, chunk_rows: int,
                  read_ahead: bool = False
                  ) -> Iterator[tuple[pd.DataFrame, dict[str, int], dict[str, int] | None]]:
    """Metric files -> normalised frames chunk by chunk, each with, per entity, the time (ns)
    after which its windows are new and up to which they are final (None: the last chunk).

    Each chunk carries the last ``carry_steps`` raw rows of every entity from the one before,
    and windows in the last few steps of a chunk wait for the next (a gap there may yet grow
    too long to fill), so every window comes out exactly once, as in one piece. The last frame
    is the carried rows alone: the windows still waiting. With
    :func:`~ftml.pipeline.chunk_carry_steps` (what ``score`` carries), the trailing level's
    span is not among the rows: the frames are for a ``WindowScorer(carry=True)``, which
    carries the level's state (the z of its span's rows) instead.

    With ``read_ahead``, the next frame is read and normalised in a background thread while
    the caller works on this one (one file only: see :func:`_read_ahead`)."""
    files = expand_paths(paths)
    frames = _frames(files, read, step, metrics, carry_steps, chunk_rows)
    return _read_ahead(frames) if read_ahead and len(files) == 1 else frames


def _frames(files: list[Path], read: ReadConfig, step: pd.Timedelta, metrics: list[str],
            carry_steps: int, chunk_rows: int
            ) -> Iterator[tuple[pd.DataFrame, dict[str, int], dict[str, int] | None]]:
    source = ", ".join(map(str, files))
    step_ns = int(step.value)
    hold_ns = hold_steps(read) * step_ns
    since: dict[str, int] = {}
    carry: pd.DataFrame | None = None
    for rows in iter_metric_rows(files, read, chunk_rows):
        missing = [m for m in metrics if m not in rows.columns]
        if missing:
            raise InputError(f"metric column(s) missing: {', '.join(missing)}", source=source,
                             hint="the model was trained with them; supply the same metrics")
        rows = rows[["entity", "timestamp", *metrics]]
        if carry is not None and len(carry):
            late = _late_rows(carry, rows)
            if late:
                raise InputError("rows go back in time across chunks", source=source,
                                 where=f"entity '{late}'",
                                 hint="sort the file by time, or score a smaller file")
            rows = pd.concat([carry, rows], ignore_index=True)
        rts = to_ns(rows["timestamp"])
        codes, _ = pd.factorize(rows["entity"])
        newest = _group_reduce(np.maximum, codes, rts)
        carry = rows[rts > newest[codes] - carry_steps * step_ns]
        frame, until = _normalise_chunk(rows, step, read, metrics, hold_ns)
        del rows, rts, codes
        yield frame, dict(since), until
        since.update(until)
    if carry is not None:
        frame, _ = normalise(carry, step, read.max_fill_steps, metrics)
        yield frame, dict(since), None


_DONE, _ITEM, _ERROR = object(), object(), object()


def _read_ahead(items: Iterator) -> Iterator:
    """The items of ``items``, each next one produced in a background thread while the caller
    works on the current one: the CSV parser and numpy release the GIL, so reading overlaps
    scoring. At most two items exist at a time. The first is produced here (pandas' parse
    warnings are set to errors around that read, and warning filters are process-wide)."""
    first = next(items, _DONE)
    if first is _DONE:
        return
    out: queue.Queue = queue.Queue(maxsize=1)
    go = threading.Semaphore(0)
    stop = threading.Event()

    def work() -> None:
        try:
            while True:
                go.acquire()
                if stop.is_set():
                    return
                try:
                    item = next(items)
                except StopIteration:
                    out.put((_DONE, None))
                    return
                except BaseException as exc:  # handed to the caller, raised there
                    out.put((_ERROR, exc))
                    return
                out.put((_ITEM, item))
        finally:
            items.close()  # here: the generator runs in this thread only

    worker = threading.Thread(target=work, name="ftml-read-ahead", daemon=True)
    go.release()
    worker.start()
    try:
        yield first
        del first
        while True:
            kind, item = out.get()
            if kind is _DONE:
                return
            if kind is _ERROR:
                raise item
            go.release()
            yield item
            del item
    finally:
        stop.set()
        go.release()
        worker.join()


def _normalise_chunk(rows: pd.DataFrame, step: pd.Timedelta, read: ReadConfig,
                     metrics: list[str], hold_ns: int):
    frame, _ = normalise(rows, step, read.max_fill_steps, metrics)
    ent = frame["entity"]
    newest = _group_reduce(np.maximum, ent.cat.codes.to_numpy(), to_ns(frame["timestamp"]))
    return frame, {str(k): int(v) - hold_ns
                   for k, v in zip(ent.cat.categories, newest, strict=True)}


def _group_reduce(ufunc, codes: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``ufunc`` (np.maximum / np.minimum) of ``values`` per code 0..codes.max()."""
    n = int(codes.max()) + 1 if len(codes) else 0
    start = np.iinfo(np.int64).min if ufunc is np.maximum else np.iinfo(np.int64).max
    out = np.full(n, start, dtype=np.int64)
    ufunc.at(out, codes, values)
    return out


def _late_rows(carry: pd.DataFrame, rows: pd.DataFrame) -> str | None:
    """An entity whose new rows start before rows already carried (out of time order)."""
    new_codes, new_names = pd.factorize(rows["entity"])
    old_codes, old_names = pd.factorize(carry["entity"])
    first_new = _group_reduce(np.minimum, new_codes, to_ns(rows["timestamp"]))
    oldest_kept = dict(zip(map(str, old_names),
                           _group_reduce(np.minimum, old_codes, to_ns(carry["timestamp"])),
                           strict=True))
    bad = [str(name) for name, t in zip(new_names, first_new, strict=True)
           if str(name) in oldest_kept and t < oldest_kept[str(name)]]
    return min(bad) if bad else None


def score(model: Model | str | Path, metrics: Iterable[str | Path],
          out: str | Path | None = None, windows_out: str | Path | None = None,
          playbooks: str | Path | None = None, chunk_rows: int = SCORE_CHUNK_ROWS,
          quiet: bool = True, scheduler: Any = None, topology: str | Path | None = None,
          groups_out: str | Path | None = None, logs: Any = None) -> ScoreResult:
    """Score metric files with a model; write events (and per-window scores) atomically.

    Files are read ``chunk_rows`` rows at a time at most (fewer when that is faster); the
    events are the same however the input is chunked, and with ``scheduler`` on a Dask
    cluster (:func:`ftml.distributed.score`). A model trained with logs needs ``logs``, the
    log files of the scored period (:mod:`ftml.logs`)."""
    if scheduler is not None:
        from ftml import distributed

        return distributed.score(model, metrics, scheduler, out=out, windows_out=windows_out,
                                 playbooks=playbooks, chunk_rows=chunk_rows, quiet=quiet,
                                 topology=topology, groups_out=groups_out, logs=logs or None)
    started = time.perf_counter()
    if not isinstance(model, Model):
        model = load_model(model)
    matcher = playbook_matcher(playbooks)
    grouping = grouping_for(model, topology)  # a bad call graph fails before the work
    read = model.config.read
    join_logs = _log_joiner(model, logs)
    builder = model.event_builder()
    trail = ScoreTrail() if reads_scores(grouping) else None
    scorer = WindowScorer(model, builder, keep_blocks=windows_out is not None, carry=True,
                          trail=trail)
    events: list[Event] = []  # closed events become Events at once: their features can go
    bar = progress(None, "scoring", quiet)
    with bar:
        # Read in pieces of at most SCORE_READ_ROWS rows whatever chunk_rows allows: memory
        # stays small and reading the next piece overlaps scoring this one.
        for frame, since, until in stream_frames(metrics, read, model.step,
                                                 _file_metrics(model),
                                                 chunk_carry_steps(model.featurizer, read),
                                                 min(chunk_rows, SCORE_READ_ROWS),
                                                 read_ahead=True):
            frame = join_logs(frame)
            events.extend(model.to_event(r) for r in scorer.frame(frame, since, until))
            bar.update(1)
    events.extend(model.to_event(r) for r in builder.flush())
    return finish_scoring(model, events, matcher=matcher, grouping=grouping, out=out,
                          groups_out=groups_out, windows_out=windows_out,
                          window_table=scorer.window_table, windows=scorer.n_windows,
                          entities=scorer.entities, rows=scorer.n_rows,
                          flagged=scorer.n_flagged, started=started, scores=trail)


def _file_metrics(model: Model) -> list[str]:
    """The model's metrics that metric files hold (its log series are joined after)."""
    from ftml.logs import file_metrics

    return file_metrics(model.metrics, getattr(model, "logs", None))


def _log_joiner(model: Model, logs: Any):
    """frame -> frame with the model's log series of ``logs`` joined (identity for a model
    without logs)."""
    log_model = getattr(model, "logs", None)
    if log_model is None:
        if logs:
            raise InputError("the model was trained without logs", where="--logs",
                             hint="leave out --logs, or train with --logs")
        return lambda frame: frame
    from ftml.logs import frame_joiner, read_series

    return frame_joiner(log_model, read_series(log_model, logs, model.config.read))


def watch(model: Model | str | Path, sources: Sequence[Any], *,
          sinks: Sequence[Any] = ("stdout",), playbooks: str | Path | None = None,
          mode: str = "dry_run", state_dir: str | Path | None = None,
          section: Mapping[str, Any] | None = None, section_source: str = "config",
          config: Any = None, interval: float | str | None = None,
          wait_for_source: bool = False, listen: str | tuple[str, int] | None = None,
          topology: str | Path | None = None, run: bool = True,
          started: Callable[[], None] | None = None,
          stop_signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT),
          clock: Any = None, registry: Any = None) -> Any:
    """Watch live metrics with a model: detect, diagnose, alert and (with ``playbooks``)
    recover, until stopped. Returns the :class:`ftml.watch.Watcher`, once it has shut down;
    with ``run=False`` at once, not started (the caller ticks or runs it, and closes its
    ``engine``, if any).

    ``sources`` and ``sinks`` are specs (``file:PATH``, ``stdin``, ``local``,
    ``prometheus:URL``; ``stdout``, ``jsonl:PATH``, ``webhook:URL``, ``alertmanager:URL``) or
    :class:`ftml.sources.Source` / :class:`ftml.sinks.Sink` objects. ``section`` is a
    ``watch:`` config section (named ``section_source`` in errors; default the model's own);
    ``config`` (a :class:`ftml.watch.WatchConfig`) replaces its loop settings, and
    ``interval`` (seconds or ``'60s'``) and ``wait_for_source`` override them. ``listen``
    (``HOST:PORT``) serves ``/metrics`` and ``/healthz``; ``topology`` is a call graph CSV to
    group incidents by. While it runs, ``stop_signals`` stop it after the tick (from the main
    thread only; their handlers are put back after). ``started`` is called once the start
    checks have passed. Bad settings raise :class:`ftml.errors.FtmlError`."""
    from ftml.incidents import load_topology
    from ftml.sinks import make_sink
    from ftml.sources import make_source, source_config
    from ftml.watch import WatchConfig, Watcher, parse_listen

    load_topology(topology)  # a bad call graph fails now, not at the first alert
    if not isinstance(model, Model):
        model = load_model(model)
    if topology is not None:  # the caller's model stays as it was
        diagnose = dataclasses.replace(model.config.diagnose, topology=str(topology))
        model = dataclasses.replace(model, config=dataclasses.replace(model.config,
                                                                      diagnose=diagnose))
    where = section_source if section else "model config"
    section = section or model.config.extra.get("watch") or {}
    wcfg = (dataclasses.replace(config) if config is not None
            else WatchConfig.from_section(section, where))
    if interval is not None:
        wcfg.interval = (parse_duration(interval, "interval").total_seconds()
                         if isinstance(interval, str) else float(interval))
    wcfg.wait_for_source = wait_for_source or wcfg.wait_for_source
    scfg = source_config(section, where)
    # Metric sources read the metrics files hold; log sources count the model's log series.
    srcs = [make_source(s, model.config.read, scfg, _file_metrics(model),
                        logs=getattr(model, "logs", None)) if isinstance(s, str) else s
            for s in sources]
    snks = [make_sink(s) if isinstance(s, str) else s for s in sinks]
    address = parse_listen(listen) if isinstance(listen, str) else listen
    engine = None
    if playbooks:
        from ftml.playbooks import load_playbooks
        from ftml.recover import RecoveryEngine

        engine = RecoveryEngine(load_playbooks(playbooks, known_metrics=model.metrics),
                                state_dir=state_dir, mode=mode, model_version=model.version)
    try:
        watcher = Watcher(model, srcs, snks, engine=engine, state_dir=state_dir, config=wcfg,
                          clock=clock, registry=registry)
    except BaseException:
        if engine is not None:
            engine.close()
        raise
    if not run:
        return watcher

    def stop(signum, frame):
        # No logging here: the handler may interrupt a log write, and a re-entrant write
        # raises, losing the stop. The loop logs the reason as it shuts down.
        watcher.stop(signal.Signals(signum).name)

    main_thread = threading.current_thread() is threading.main_thread()
    before = {s: signal.signal(s, stop) for s in (stop_signals if main_thread else ())}
    try:
        # Once it is running (sources answer, the port is bound), the notes of its start.
        watcher.run(listen=address, started=started)
    finally:
        for s, handler in before.items():
            if handler is not None:  # None: not set from Python, nothing to put back
                signal.signal(s, handler)
        if engine is not None:
            engine.close()
    return watcher
