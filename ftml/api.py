"""The library API that the CLI, notebooks and benchmarks call: train and score."""

from __future__ import annotations

import queue
import sys
import threading
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
from ftml.features import (
    Featurizer,
    Windows,
    complete_windows,
    detector_view,
    stats_view,
    window_stats,
    window_view,
)
from ftml.incidents import Grouping, assign_groups, grouping_for, groups_table
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
# The most rows score() reads at a time (chunk_rows is an upper bound).
SCORE_READ_ROWS = 250_000
# Calibration windows featurized and scored at a time (memory stays bounded).
CAL_BLOCK_WINDOWS = 262_144


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
    """Fit featurizer, detector, threshold and diagnoser on metrics (+ labelled incidents).

    Features are computed only for the windows each step needs: the sample the forest is
    fitted on, the calibration windows (only the stats the forest sees) and the incident
    windows; which windows those are is decided first, from the rows alone."""
    fc, dc, gc = config.features, config.detect, config.diagnose
    frame = data.frame
    ts = to_ns(frame["timestamp"])
    codes, names = data.entity_codes()
    row_label = _label_rows(codes, names, ts, incidents)
    featurizer = featurizer_of(fc).fit(data, exclude_rows=row_label >= 0)
    # A window touches an incident when any of its rows does.
    in_incident = np.r_[0, np.cumsum(row_label >= 0)]
    step_ns = int(data.step.value)
    t_min, t_max = ts.min(), ts.max()
    t_cut = t_min + (1.0 - dc.calibration_fraction) * (t_max - t_min)

    rows = featurizer.complete_rows(frame)  # every window, in the order iter_windows gives
    end_ns = ts[rows]
    touched = in_incident[rows + 1] - in_incident[np.maximum(rows + 1 - fc.window, 0)] > 0
    fit_rows = rows[(end_ns < t_cut) & ~touched]
    cal_rows = rows[end_ns >= t_cut]
    inc_rows = rows[row_label[rows] >= 0]
    del rows, end_ns, touched
    if len(fit_rows) < 50:
        raise InputError(f"only {len(fit_rows)} normal windows before the calibration slice",
                         source=data.sources[0] if len(data.sources) == 1 else "metrics",
                         hint=f"give more history (a window is {fc.window} steps) or lower "
                              "detect.calibration_fraction")
    rng = np.random.default_rng(dc.random_state)
    if len(fit_rows) > MAX_FIT_WINDOWS:
        fit_rows = fit_rows[np.sort(rng.choice(len(fit_rows), MAX_FIT_WINDOWS, replace=False))]
    n_met = len(featurizer.metrics_)
    fit_w = featurizer.windows_at(frame, fit_rows)
    detector = IsolationDetector(dc.n_estimators, dc.max_samples, dc.random_state).fit(
        detector_view(fit_w.X, n_met, dc.stats))
    event_rules = EventRules(dc.min_windows, dc.of_windows, dc.merge_gap, dc.cooldown)
    spans = incident_spans(incidents)
    # Calibration windows: only their scores are kept, so only the forest's stats are computed,
    # block by block.
    cal_scores = np.empty(len(cal_rows))
    blocks = range(0, len(cal_rows), CAL_BLOCK_WINDOWS)
    for a in _wrap(blocks, _progress(len(blocks), "calibration", quiet)):
        S, _ = featurizer.features_at(frame, cal_rows[a:a + CAL_BLOCK_WINDOWS], stats=dc.stats)
        cal_scores[a:a + CAL_BLOCK_WINDOWS] = detector.score_samples(stats_view(S, n_met))
    cal_entity = np.asarray(names, dtype=object)[codes[cal_rows]]
    thresholder = AlarmThreshold(dc.alarm_budget, event_rules).fit(
        cal_entity, ts[cal_rows], cal_scores, step_ns, spans)

    diagnoser = None
    diag_info: dict[str, Any] = {}
    if incidents is not None and len(inc_rows):
        inc_w = featurizer.windows_at(frame, inc_rows)
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
            "fit_windows": len(fit_w), "calibration_windows": len(cal_rows),
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


def _label_rows(codes: np.ndarray, names: list[str], t_ns: np.ndarray,
                incidents: pd.DataFrame | None) -> np.ndarray:
    """:func:`ftml.io.label_times` for a frame in the contract (each entity one block of rows in
    time order): a binary search per incident instead of a scan of every row."""
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
    groups: list[dict] = field(default_factory=list)  # one record per incident group


def stream_frames(paths: Iterable[str | Path], read: ReadConfig, step: pd.Timedelta,
                  metrics: list[str], carry_steps: int, chunk_rows: int,
                  read_ahead: bool = False
                  ) -> Iterator[tuple[pd.DataFrame, dict[str, int], dict[str, int] | None]]:
    """Metric files -> normalised frames chunk by chunk, each with, per entity, the time (ns)
    after which its windows are new and up to which they are final (None: the last chunk).

    Each chunk carries the last ``carry_steps`` raw rows of every entity from the one before,
    and windows in the last few steps of a chunk wait for the next (a gap there may yet grow
    too long to fill), so every window comes out exactly once, as in one piece. The last frame
    is the carried rows alone: the windows still waiting.

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
    hold_ns = read.max_fill_steps * step_ns
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
          quiet: bool = True, topology: str | Path | None = None,
          groups_out: str | Path | None = None) -> ScoreResult:
    """Score metric files with a model; write events (and per-window scores) atomically.

    Files are read ``chunk_rows`` rows at a time at most (fewer when that is faster); the
    events are the same however the input is chunked."""
    started = time.perf_counter()
    if not isinstance(model, Model):
        model = load_model(model)
    matcher = _playbook_matcher(playbooks)
    grouping = grouping_of(model, topology)  # a bad call graph fails before the work
    read = model.config.read
    builder = model.event_builder()
    # Rows a held-back window needs: the window, the row before it (counter rates) and, for a
    # gap at its start, up to max_fill_steps rows back to the value that fills it.
    carry_steps = model.featurizer.history_steps + 2 * read.max_fill_steps + 2
    scorer = _ChunkScorer(model, builder, with_table=windows_out is not None)
    events: list[Event] = []  # closed events become Events at once: their features can go
    bar = _progress(None, "scoring", quiet)
    with bar:
        # Read in pieces of at most SCORE_READ_ROWS rows whatever chunk_rows allows: memory
        # stays small and reading the next piece overlaps scoring this one.
        for frame, since, until in stream_frames(metrics, read, model.step, model.metrics,
                                                 carry_steps, min(chunk_rows, SCORE_READ_ROWS),
                                                 read_ahead=True):
            events.extend(model.to_event(r) for r in scorer.frame(frame, since, until))
            bar.update(1)
    events.extend(model.to_event(r) for r in builder.flush())
    groups = publish_events(events, matcher, out, grouping, groups_out)
    table = None
    if windows_out is not None:
        parts = scorer.table_parts
        table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
            {"entity": [], "timestamp": [], "score": [], "flag": []})
        table = table.sort_values(["entity", "timestamp"], kind="stable").reset_index(drop=True)
        write_table(table, windows_out)
    return ScoreResult(events, scorer.n_windows, len(scorer.entities), scorer.n_rows,
                       round(time.perf_counter() - started, 3), table, groups)


# Rows of a normalised chunk standardised and featurized at a time.
FEATURE_BLOCK_ROWS = 131_072
_NEVER = np.iinfo(np.int64).min
_END_OF_TIME = np.iinfo(np.int64).max


class _ChunkScorer:
    """Windows of normalised chunks -> scores -> the event builder.

    Every window is scored from the stats the forest sees alone. Only windows that can belong
    to an event go on to the builder, with all their features: those at most
    ``max(merge_gap, of_windows)`` steps after a flagged window of their entity (an event's
    windows all are: it starts at a flag, and its active windows, all flagged, are at most
    ``merge_gap`` apart). The builder counts k-of-n by time, not by windows seen, so it gives
    the same events as with every window, for a fraction of the features and of its work."""

    def __init__(self, model: Model, builder, with_table: bool):
        self.model = model
        self.fz = model.featurizer
        self.builder = builder
        self.with_table = with_table
        self.stats = list(model.config.detect.stats)
        # Model's own scoring and payload: computed here from the forest's stats alone.
        self.plain = (type(model).score_windows is Model.score_windows
                      and type(model).payload is Model.payload)
        rules = model.event_rules
        self.gap = max(rules.merge_gap, rules.of_windows)
        self.step_ns = int(model.step.value)
        self.n_windows = 0
        self.entities: set[str] = set()
        self.table_parts: list[pd.DataFrame] = []
        self.n_rows = 0  # rows of the normalised input, each counted once
        self._ids: dict[str, int] = {}  # entity -> index into the arrays below
        self._last_flag = np.empty(0, dtype=np.int64)  # step of each entity's last flag
        self._newest = np.empty(0, dtype=np.int64)  # each entity's newest row counted

    def _entity_ids(self, names: list[str]) -> np.ndarray:
        for name in names:
            if name not in self._ids:
                self._ids[name] = len(self._ids)
        grow = len(self._ids) - len(self._last_flag)
        if grow > 0:
            self._last_flag = np.r_[self._last_flag, np.full(grow, _NEVER)]
            self._newest = np.r_[self._newest, np.full(grow, _NEVER)]
        return np.array([self._ids[n] for n in names], dtype=np.int64)

    def frame(self, frame: pd.DataFrame, since: dict[str, int], until: dict[str, int] | None
              ) -> list:
        """Score one normalised chunk (windows after ``since`` and up to ``until`` per entity);
        returns the events that closed."""
        fz, w = self.fz, self.fz.window
        ent = frame["entity"]
        names = [str(c) for c in ent.cat.categories]
        fcodes = ent.cat.codes.to_numpy().astype(np.int64)
        name_arr = np.asarray(names, dtype=object)
        ids = self._entity_ids(names)
        lo_ns = np.array([since.get(n, _NEVER) for n in names], dtype=np.int64)
        hi_ns = np.array([_END_OF_TIME if until is None else until.get(n, _END_OF_TIME)
                          for n in names], dtype=np.int64)
        ts = to_ns(frame["timestamp"])
        # Rows carried over from the chunk before are counted there.
        self.n_rows += int((ts > self._newest[ids[fcodes]]).sum())
        if len(ts):
            np.maximum.at(self._newest, ids[fcodes], ts)
        seg_start = None
        if fz.stride > 1:
            seg_start = np.flatnonzero(np.r_[True, fcodes[1:] != fcodes[:-1]])
        out = []
        seen = np.zeros(len(names), dtype=bool)
        for lo, start, _, z, codes, values in fz._blocks(frame, FEATURE_BLOCK_ROWS):
            end = complete_windows(np.isnan(z).any(axis=1), codes, w)
            end = end[end + lo >= start]
            if seg_start is not None:
                end = end[fz._stride_ok(seg_start, end + lo)]
            rows = end + lo
            c, end_ns = fcodes[rows], ts[rows]
            # Windows new in this chunk (after `since`) and final (up to `until`).
            keep = (end_ns > lo_ns[c]) & (end_ns <= hi_ns[c])
            if not keep.all():
                end, c, end_ns = end[keep], c[keep], end_ns[keep]
            if not len(end):
                continue
            if self.plain:
                scores = self.model.detector.score_samples(window_view(z, end, w, self.stats))
            else:  # a model that scores (or keeps) windows its own way gets them whole
                win = Windows(window_stats(z, end, w), name_arr[c], end_ns, end + lo, values[end])
                scores = np.asarray(self.model.score_windows(win))
            self.n_windows += len(end)
            seen[c] = True
            flags = scores >= self.model.threshold
            near = self._near(ids[c], end_ns // self.step_ns, flags)
            if near.any():
                e = end[near]
                if self.plain:  # what Model.payload gives: all features, then last values
                    payload = np.hstack([window_stats(z, e, w), values[e]])
                else:
                    payload = self.model.payload(win.take(near))
                out.extend(self.builder.push(name_arr[c[near]], end_ns[near], scores[near],
                                             payload))
            if self.with_table:
                self.table_parts.append(pd.DataFrame({
                    "entity": name_arr[c].astype(str),
                    "timestamp": pd.to_datetime(end_ns, unit="ns", utc=True),
                    "score": scores, "flag": flags}))
        self.entities.update(name_arr[seen].tolist())
        return out

    def _near(self, gid: np.ndarray, t: np.ndarray, flags: np.ndarray) -> np.ndarray:
        """Windows (sorted by entity, then time) at most ``gap`` steps after a flagged window of
        their entity, this block's or an earlier one's."""
        idx = np.where(flags, np.arange(len(t)), -1)
        np.maximum.accumulate(idx, out=idx)
        j = np.maximum(idx, 0)
        same = (idx >= 0) & (gid[j] == gid)
        prev = np.where(same, t[j], self._last_flag[gid])
        near = (prev != _NEVER) & (t - prev <= self.gap)
        if flags.any():
            np.maximum.at(self._last_flag, gid[flags], t[flags])
        return near


def featurizer_of(fc) -> Featurizer:
    """An unfitted featurizer with the settings of a ``FeatureConfig`` (local and Dask)."""
    return Featurizer(fc.window, fc.stride, fc.hour_of_day, fc.level_window, fc.level_clip)


def publish_events(events: list[Event], matcher, out: str | Path | None,
                   grouping: Grouping | None = None, groups_out: str | Path | None = None
                   ) -> list[dict]:
    """Scored events, in place: each gets its incident group and recommended playbook, sorted
    by entity and start; written atomically to ``out`` (and the groups to ``groups_out``)
    when given (local and Dask scoring alike). Returns the group records."""
    groups = assign_groups(events, grouping)
    for ev in events:
        ev.playbook = matcher(ev)
    events.sort(key=lambda e: (e.entity, e.start))
    if out is not None:
        write_records([e.to_dict() for e in events], out)
    if groups_out is not None:
        write_records(groups_table(groups), groups_out)
    return groups


def grouping_of(model: Model, topology: str | Path | None = None) -> Grouping:
    """How a model's events are grouped (see :func:`ftml.incidents.grouping_for`)."""
    return grouping_for(model, topology)


def _playbook_matcher(path: str | Path | None):
    if path is None:
        return lambda event: None
    from ftml.playbooks import load_playbooks

    book = load_playbooks(path)

    def match(event: Event) -> str | None:
        pb = book.match(event)
        return None if pb is None else pb.name

    return match
