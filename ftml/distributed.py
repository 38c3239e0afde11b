"""``score`` and ``train`` on a Dask cluster, for histories that outgrow one machine.

Dask (``pip install 'ftml[dask]'``) schedules, moves data and re-runs the tasks of a worker that
died; ftml only decides what a task is. Every task calls the functions the local path calls
(``ftml.io`` readers and ``normalise``, ``Featurizer.iter_windows``, ``Model.score_windows``),
and the event post-processing runs on the driver through the same :class:`EventBuilder`, so a
cluster run writes the events a local run writes. docs/dask.md explains the design; in short:

- An *index* pass (one task per file) records each file's entities and time span, so that
  tasks read only the files they need.
- Scoring splits the fleet into entity groups and, when an entity's history is long, into time
  slices. A slice is read with ``window + max_fill_steps + 2`` steps of history before it and
  ``max_fill_steps + 2`` after it, so normalisation (gap filling) and windows near its edges come
  out as in one piece; a task keeps only the windows that end inside its slice.
- A task runs the local path's chunk scorer over its slice (after the windows just before it,
  so that it knows their flags) and returns what that scorer hands to the event builder: the
  windows an event could use, with their features. The driver takes results in time order and
  pushes them into one EventBuilder, whose output does not depend on how windows are chunked;
  the builder keeps only what an open event may still use, so the driver's memory is bounded.
- Training partitions by entity (an entity's baseline needs all of its history): counters are
  detected from fleet-wide counts, baselines and the fit-window sample come from the workers,
  the IsolationForest is fitted through joblib's Dask backend, and calibration and diagnosis
  take the scores the workers compute. The bundle is the usual one.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ftml.bundle import Model, load_model, save_model
from ftml.config import Config, ReadConfig
from ftml.detect import EventBuilder, RawEvent
from ftml.diagnose import load_rules
from ftml.errors import ConfigError, InputError
from ftml.events import Event
from ftml.features import (
    Baseline,
    counter_counts,
    counters_from_counts,
    metric_presence,
    metrics_to_drop,
)
from ftml.incidents import grouping_for
from ftml.io import (
    MetricData,
    expand_paths,
    file_format,
    incident_spans,
    infer_step,
    iter_metric_rows,
    normalise,
    read_incidents,
    step_from_config,
    to_ns,
    write_table,
)
from ftml.pipeline import (
    MAX_FIT_WINDOWS,
    SCORE_CHUNK_ROWS,
    HealthyCandidates,
    ScoreResult,
    TrainInfo,
    TrainResult,
    WindowRecorder,
    WindowScorer,
    calibration_cuts,
    calibration_info,
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
    progress,
    publish_events,
    remember_dropped,
    require_fit_windows,
    require_metrics,
    split_windows,
    unseen_entities,
    utc_text,
    window_history,
    window_table,
    write_events,
    write_groups,
)
from ftml.playbooks import playbook_matcher

# Normalised rows one task holds at most (unless one entity alone has more, in training): this,
# not the size of the history, bounds a worker's memory.
TASK_ROWS = 250_000
# Tasks submitted ahead of the one the driver waits for, per worker thread: enough to keep the
# workers busy, few enough that finished results do not pile up.
AHEAD_PER_THREAD = 3
# Planning costs, in units of "scoring one normalised row" (about 8 us here): reading one raw
# row of a file and keeping or dropping it (measured: Parquet about 0.8 us, CSV about 6 us),
# and the fixed cost of a task (scheduling, transfer, set-up: a few ms).
READ_COST = {"parquet": 0.1, "csv": 0.8, "jsonl": 1.0}
TASK_COST = 2_000.0
CONNECT_TIMEOUT = 10.0


# --------------------------------------------------------------------------- cluster


@contextmanager
def connect(scheduler: Any, timeout: float = CONNECT_TIMEOUT) -> Iterator[Any]:
    """A Dask client for ``scheduler``: ``tcp://HOST:PORT`` (a running cluster), ``local`` or
    ``local:N`` (a LocalCluster of N single-threaded worker processes, default one per core),
    or a ``distributed.Client`` to use as it is."""
    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError:
        raise ConfigError("--scheduler needs Dask, which is not installed",
                          hint="pip install 'ftml[dask]'") from None
    if isinstance(scheduler, Client):
        yield scheduler
        return
    text = str(scheduler).strip()
    if text == "local" or text.startswith("local:"):
        n = text.partition(":")[2]
        if n and not (n.isdigit() and int(n) > 0):
            raise ConfigError(f"bad worker count in --scheduler {text!r}",
                              hint="write local or local:N, e.g. local:2")
        workers = int(n) if n else (os.cpu_count() or 1)
        # No dashboard here, so no use for the workers' sampling profiler (about 10 % CPU).
        with dask.config.set({"distributed.worker.profile.enabled": False}), \
                LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                             dashboard_address=None) as cluster, Client(cluster) as client:
            yield client
        return
    if "://" not in text and text.count(":") != 1:
        raise ConfigError(f"not a scheduler address: {text!r}",
                          hint="give tcp://HOST:PORT, or 'local' for a LocalCluster")
    try:
        client = Client(text, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        raise ConfigError(f"cannot reach the Dask scheduler ({type(exc).__name__})", source=text,
                          hint="start one with 'dask scheduler' and 'dask worker ADDRESS', "
                               "or use --scheduler local") from None
    with client:
        try:
            client.wait_for_workers(1, timeout=timeout)
        except (OSError, TimeoutError):
            raise ConfigError("the Dask scheduler has no workers", source=text,
                              hint="start some with 'dask worker ADDRESS'") from None
        yield client


def _threads(client) -> int:
    return max(1, sum(client.nthreads().values()))


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(f"ftml: {text}", file=sys.stderr, flush=True)


def _run_in_order(client, fn: Callable, tasks: Sequence, args: tuple, ahead: int,
                  desc: str, quiet: bool) -> Iterator[tuple[Any, Any]]:
    """``fn(*args, task)`` for each task on the cluster; yields ``(task, result)`` in task order
    with at most ``ahead`` tasks submitted beyond the one awaited. A task whose worker died is
    re-run by Dask; an exception in a task is raised here."""
    run = uuid.uuid4().hex[:8]
    pending: deque = deque()
    todo = iter(enumerate(tasks))

    def submit() -> None:
        item = next(todo, None)
        if item is not None:
            i, task = item
            # Earlier tasks first: the driver consumes them in order.
            pending.append((task, client.submit(fn, *args, task, key=f"ftml-{desc}-{run}-{i}",
                                                priority=-i, pure=False)))

    for _ in range(max(1, ahead)):
        submit()
    bar = progress(len(tasks), desc, quiet)
    bar.unit = "task"
    try:
        with bar:
            while pending:
                task, future = pending.popleft()
                result = future.result()
                future.release()
                submit()
                bar.update(1)
                yield task, result
    finally:
        if pending:
            client.cancel([f for _, f in pending])


# --------------------------------------------------------------------------- index and plan


@dataclass
class FileIndex:
    """What one file holds: per entity, first and last timestamp (ns) and rows; its metric
    columns in order; and (for step inference) counts of the spacings between readings."""

    path: str
    entities: pd.DataFrame  # entity, t_lo, t_hi, rows
    columns: list[str]
    spacing: pd.Series | None = None  # spacing (ns) -> count
    text_columns: tuple[str, ...] = ()  # text columns left out (training)


def index_file(path: str, read: ReadConfig, metrics: list[str] | None, chunk_rows: int,
               spacing: bool = False) -> FileIndex:
    """Stream one file once; ``metrics``: columns every chunk must have (scoring)."""
    parts, columns, gaps = [], [], []
    text: set[str] | None = set() if metrics is None else None  # training: text is dropped
    for rows in iter_metric_rows([path], read, chunk_rows, text_columns=text):
        names = [c for c in rows.columns if c not in ("entity", "timestamp")]
        if metrics is not None:
            _require(names, metrics, path)
        columns.extend(c for c in names if c not in columns)
        t = to_ns(rows["timestamp"])
        codes, uniq = pd.factorize(rows["entity"], sort=False)
        lo = np.full(len(uniq), np.iinfo(np.int64).max)
        hi = np.full(len(uniq), np.iinfo(np.int64).min)
        np.minimum.at(lo, codes, t)
        np.maximum.at(hi, codes, t)
        parts.append(pd.DataFrame({"entity": np.asarray(uniq, dtype=object), "t_lo": lo,
                                   "t_hi": hi, "rows": np.bincount(codes)}))
        if spacing:
            order = np.lexsort((t, codes))
            d = np.diff(t[order])[codes[order][1:] == codes[order][:-1]]
            gaps.append(pd.Series(d[d > 0]).value_counts())
    both = pd.concat(parts, ignore_index=True).groupby("entity", sort=True).agg(
        t_lo=("t_lo", "min"), t_hi=("t_hi", "max"), rows=("rows", "sum")).reset_index()
    counts = None
    if spacing:
        counts = pd.concat(gaps).groupby(level=0).sum() if gaps else pd.Series(dtype=np.int64)
    text = text or set()
    return FileIndex(path, both, [c for c in columns if c not in text], counts,
                     tuple(sorted(text)))


def _require(have: list[str], metrics: list[str], source: str) -> None:
    missing = [m for m in metrics if m not in have]
    if missing:  # the local path's words
        raise InputError(f"metric column(s) missing: {', '.join(missing)}", source=source,
                         hint="the model was trained with them; supply the same metrics")


def _index(client, files: list[str], read: ReadConfig, metrics: list[str] | None,
           chunk_rows: int, spacing: bool, quiet: bool) -> list[FileIndex]:
    ahead = AHEAD_PER_THREAD * _threads(client)
    return [r for _, r in _run_in_order(client, _index_task, files,
                                        (read, metrics, chunk_rows, spacing), ahead,
                                        "index", quiet)]


def _index_task(read, metrics, chunk_rows, spacing, path):
    return index_file(path, read, metrics, chunk_rows, spacing)


def infer_step_from(indexes: list[FileIndex]) -> pd.Timedelta:
    """The step ``infer_step`` would infer, from the spacings counted in each file (spacings
    across file and chunk borders are not seen: a handful among many)."""
    counts = pd.concat([ix.spacing for ix in indexes if ix.spacing is not None])
    counts = counts.groupby(level=0).sum().sort_index()
    if counts.empty:
        return infer_step(pd.DataFrame({"entity": ["e"], "timestamp": [pd.Timestamp(0)]}))
    values, cum = counts.index.to_numpy(np.int64), np.cumsum(counts.to_numpy())
    n = int(cum[-1])
    mid = [values[np.searchsorted(cum, k, side="right")] for k in ((n - 1) // 2, n // 2)]
    median = int(round((int(mid[0]) + int(mid[1])) / 2))
    # Two readings that far apart: infer_step's own rounding makes the step.
    return infer_step(pd.DataFrame({"entity": ["e", "e"],
                                    "timestamp": pd.to_datetime([0, median], unit="ns",
                                                                utc=True)}))


@dataclass(frozen=True)
class Task:
    """Entities whose windows ending in slots ``[start, stop)`` one task computes, and the files
    it reads (slot = timestamp // step, as ``normalise`` rounds)."""

    entities: tuple[str, ...]
    start: int
    stop: int
    files: tuple[str, ...]
    rows: int = 0  # normalised rows of the slice (estimate: each entity's span)


@dataclass
class Plan:
    slices: list[list[Task]]  # time slices in order, each a list of entity groups
    groups: int
    estimate: dict[str, float] = field(default_factory=dict)

    @property
    def tasks(self) -> list[Task]:
        return [t for s in self.slices for t in s]


def index_table(indexes: list[FileIndex], step_ns: int) -> pd.DataFrame:
    """file (position), entity, lo, hi (slots), rows: one row per file and entity."""
    parts = []
    for i, ix in enumerate(indexes):
        e = ix.entities
        parts.append(pd.DataFrame({
            "file": i, "entity": e["entity"].to_numpy(dtype=object),
            "lo": _slot(e["t_lo"].to_numpy(np.int64), step_ns),
            "hi": _slot(e["t_hi"].to_numpy(np.int64), step_ns),
            "rows": e["rows"].to_numpy(np.int64)}))
    return pd.concat(parts, ignore_index=True)


def _slot(t_ns: np.ndarray, step_ns: int) -> np.ndarray:
    return np.floor_divide(t_ns + step_ns // 2, step_ns)  # as normalise rounds


def plan(table: pd.DataFrame, files: list[str], task_rows: int, threads: int, before: int,
         after: int, split_time: bool = True, shape: tuple[int, int] | None = None) -> Plan:
    """Entity groups x time slices with the lowest estimated run time on ``threads`` worker
    threads among those whose tasks hold at most ``task_rows`` rows. A task reads slots
    ``[start - before, stop + after)`` of the files that hold its entities then; the estimate
    counts that reading (a file read by several tasks costs each of them), the rows processed
    and a fixed cost per task. ``shape`` forces (groups, slices)."""
    ent = table.groupby("entity", sort=True).agg(lo=("lo", "min"), hi=("hi", "max"))
    lo_e, hi_e = ent["lo"].to_numpy(np.int64), ent["hi"].to_numpy(np.int64)
    grid = hi_e - lo_e + 1
    first, last = int(lo_e.min()), int(hi_e.max()) + 1
    span = last - first
    file_rows = table.groupby("file")["rows"].sum().reindex(range(len(files)), fill_value=0) \
        .to_numpy(np.int64)
    file_cost = file_rows * np.array([READ_COST[_format(f)] for f in files])
    ent_of_row = ent.index.get_indexer(table["entity"])
    if shape is not None:
        candidates = [shape]
    else:
        ks = _doubling(len(ent))
        ms = _doubling(max(1, span // max(1, 4 * (before + after)))) if split_time else [1]
        candidates = [(k, m) for k in ks for m in ms]
    best = None
    for k, m in candidates:
        gid, edges = _groups(grid, k), first + (np.arange(m + 1) * span) // max(1, m)
        own = _own_rows(gid, lo_e, hi_e, edges, k)
        read = _read_rows(gid[ent_of_row], table, edges, before, after, file_rows, k)
        read_cost = _read_rows(gid[ent_of_row], table, edges, before, after, file_cost, k)
        used = own > 0
        cost = np.where(used, own + read_cost + TASK_COST, 0.0)
        # List scheduling's bound on the run time: a task that starts last runs alone.
        est = cost.sum() / threads + cost.max() * (1.0 - 1.0 / threads)
        key = (own.max() > task_rows, est, int(used.sum()))
        if best is None or key < best[0]:
            best = (key, k, m, gid, edges, own, read)
    (over, est, _), k, m, gid, edges, own, read = best
    names = ent.index.to_numpy(dtype=object)
    pairs = _task_files(gid[ent_of_row], table, edges, before, after)
    slices = []
    for s in range(len(edges) - 1):
        row = []
        for g in range(k):
            if own[g, s] <= 0:
                continue
            fs = tuple(files[f] for f in sorted(pairs.get((g, s), ())))
            row.append(Task(tuple(str(n) for n in names[gid == g]), int(edges[s]),
                            int(edges[s + 1]), fs, int(own[g, s])))
        if row:
            slices.append(row)
    return Plan(slices, k, {"seconds_units": float(est), "rows": float(own.sum()),
                            "rows_read": float(read.sum()), "over_budget": bool(over)})


def _format(path: str) -> str:
    try:
        return file_format(path)[0]
    except InputError:
        return "csv"


def _doubling(n: int) -> list[int]:
    out, k = [], 1
    while k < n:
        out.append(k)
        k *= 2
    return [*out, max(1, n)]


def _groups(grid: np.ndarray, k: int) -> np.ndarray:
    """Entity -> group: consecutive entities (in name order), about equal rows per group."""
    total = int(grid.sum())
    start = np.cumsum(grid) - grid
    gid = np.minimum(start * k // max(1, total), k - 1)
    return np.unique(gid, return_inverse=True)[1]  # no empty group ids


def _own_rows(gid, lo_e, hi_e, edges, k) -> np.ndarray:
    a, b = edges[:-1], edges[1:]
    overlap = np.maximum(0, np.minimum(hi_e[:, None] + 1, b) - np.maximum(lo_e[:, None], a))
    own = np.zeros((k, len(a)))
    np.add.at(own, gid, overlap)
    return own


def _slice_range(table, edges, before, after) -> tuple[np.ndarray, np.ndarray]:
    """Per index row, the first and last slice whose read range meets its span."""
    a, b = edges[:-1], edges[1:]
    lo, hi = table["lo"].to_numpy(np.int64), table["hi"].to_numpy(np.int64)
    sa = np.searchsorted(b + after, lo, side="right")
    sb = np.searchsorted(a - before, hi, side="right") - 1
    return sa, sb


def _expand(gid_rows, table, edges, before, after) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sa, sb = _slice_range(table, edges, before, after)
    n = np.maximum(sb - sa + 1, 0)
    rep = np.repeat(np.arange(len(n)), n)
    s = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n) + np.repeat(sa, n)
    return gid_rows[rep], s, table["file"].to_numpy(np.int64)[rep]


def _read_rows(gid_rows, table, edges, before, after, file_rows, k) -> np.ndarray:
    g, s, f = _expand(gid_rows, table, edges, before, after)
    m = len(edges) - 1
    key = np.unique((g * m + s) * len(file_rows) + f)
    read = np.zeros(k * m)
    np.add.at(read, key // len(file_rows), file_rows[key % len(file_rows)])
    return read.reshape(k, m)


def _task_files(gid_rows, table, edges, before, after) -> dict[tuple[int, int], set[int]]:
    g, s, f = _expand(gid_rows, table, edges, before, after)
    out: dict[tuple[int, int], set[int]] = {}
    for key, files in pd.Series(f).groupby([g, s]):
        out[(int(key[0]), int(key[1]))] = set(files.tolist())
    return out


def read_task_rows(task: Task, read: ReadConfig, metrics: list[str], step_ns: int, lo_slot: int,
              hi_slot: int, chunk_rows: int, required: bool) -> pd.DataFrame:
    """The task's entities' raw rows in slots ``[lo_slot, hi_slot)``, streamed from its files.
    ``required``: every metric must be in every chunk (scoring); else missing ones are NaN."""
    keep = pd.Index(task.entities)
    parts = []
    for path in task.files:
        # Training leaves text columns out, as the index did.
        for rows in iter_metric_rows([path], read, chunk_rows,
                                     text_columns=None if required else set()):
            if required:
                _require(list(rows.columns), metrics, path)
                rows = rows[["entity", "timestamp", *metrics]]
            else:
                rows = rows.reindex(columns=["entity", "timestamp", *metrics])
            slot = _slot(to_ns(rows["timestamp"]), step_ns)
            mask = rows["entity"].isin(keep).to_numpy(dtype=bool) & (slot >= lo_slot) & \
                (slot < hi_slot)
            if mask.any():
                parts.append(rows[mask])
    if not parts:
        return pd.DataFrame({"entity": pd.Series([], dtype=object),
                             "timestamp": pd.Series([], dtype="datetime64[ns, UTC]"),
                             **{m: pd.Series([], dtype=np.float64) for m in metrics}})
    return pd.concat(parts, ignore_index=True)


def margins(featurizer, read: ReadConfig) -> tuple[int, int]:
    """Steps read before and after a slice. Before: what a window's features need
    (:func:`ftml.pipeline.window_history`). After: enough to see whether a gap at the end of
    the slice is short enough to fill, plus one."""
    return window_history(featurizer, read), read.max_fill_steps + 2


# --------------------------------------------------------------------------- scoring


def score_task(model: Model, chunk_rows: int, with_windows: bool, task: Task) -> dict:
    """One task on a worker: the scoring core (:class:`ftml.pipeline.WindowScorer`) over the
    task's slice, recording what it hands to the event builder: the windows the gate lets
    through, with their features. Which windows before the slice were flagged (what the gate
    needs) comes from scoring the last of them first, as the local path knows it from the
    chunk before."""
    read = model.config.read
    step_ns = int(model.step.value)
    before, after = margins(model.featurizer, read)
    reach = model.event_rules.reach
    rows = read_task_rows(task, read, model.metrics, step_ns, task.start - reach - before,
                          task.stop + after, chunk_rows, required=True)
    frame, _ = normalise(rows, model.step, read.max_fill_steps, model.metrics)
    del rows
    ts = to_ns(frame["timestamp"])
    t0, t1 = task.start * step_ns, task.stop * step_ns
    recorder = WindowRecorder()
    scorer = WindowScorer(model, recorder, keep_blocks=with_windows)
    head = frame[(ts >= t0 - (reach + before) * step_ns) & (ts < t0)]
    if len(head):  # the slice before's windows: only their flags, for the gate
        scorer.frame(head, _per_entity(task, t0 - reach * step_ns - 1),
                     _per_entity(task, t0 - 1), emit=False)
    scorer.frame(frame, _per_entity(task, t0 - 1), _per_entity(task, t1 - 1))
    entity, end_ns, scores, payload = recorder.arrays(
        len(model.featurizer.feature_names_) + len(model.metrics))
    names = list(task.entities)
    return {"names": names,
            "code": pd.Categorical(entity, categories=names).codes.astype(np.int32),
            "end_ns": end_ns, "score": scores, "payload": payload,
            "windows": scorer.n_windows, "flagged": scorer.n_flagged,
            "entities": sorted(scorer.entities),
            "rows": int(((ts >= t0) & (ts < t1)).sum()),
            "table": scorer.blocks if with_windows else None}


def _per_entity(task: Task, t_ns: int) -> dict[str, int]:
    return dict.fromkeys(task.entities, int(t_ns))


class EventCollector:
    """The driver side of scoring: takes task results in time order (per entity) and pushes
    them into one EventBuilder, which gives the same events however the windows are chunked;
    closed events become :class:`Event` s. The builder holds only what an event may still
    use, as in the local path."""

    def __init__(self, model: Model):
        self.model = model
        self.builder: EventBuilder = model.event_builder()
        self.events: list[Event] = []
        self.windows = 0
        self.flagged = 0
        self.rows = 0
        self.entities: set[str] = set()
        self.blocks: list = []

    def add(self, res: dict) -> None:
        self.windows += res["windows"]
        self.flagged += res["flagged"]
        self.rows += res["rows"]
        self.entities.update(res["entities"])
        if res["table"] is not None:
            self.blocks.extend(res["table"])
        if len(res["code"]):
            entity = np.asarray(res["names"], dtype=object)[res["code"]]
            self._emit(self.builder.push(entity, res["end_ns"], res["score"], res["payload"]))

    def finish(self) -> list[Event]:
        self._emit(self.builder.flush())
        return self.events

    def _emit(self, raws: list[RawEvent]) -> None:
        self.events.extend(self.model.to_event(raw) for raw in raws)

    def window_table(self) -> pd.DataFrame:
        return window_table(self.blocks)


def score(model: Model | str | Path, metrics: Iterable[str | Path], scheduler: Any,
          out: str | Path | None = None, windows_out: str | Path | None = None,
          playbooks: str | Path | None = None, chunk_rows: int = SCORE_CHUNK_ROWS,
          task_rows: int = TASK_ROWS, quiet: bool = True, topology: str | Path | None = None,
          groups_out: str | Path | None = None) -> ScoreResult:
    """:func:`ftml.api.score` on a Dask cluster (see :func:`connect` for ``scheduler``): the
    same events, sorted the same way. A task holds at most ``min(task_rows, chunk_rows)`` rows.
    Input files must be readable at the same path on every worker."""
    started = time.perf_counter()
    if not isinstance(model, Model):
        model = load_model(model)
    matcher = playbook_matcher(playbooks)
    grouping = grouping_for(model, topology)  # a bad call graph fails before the work
    read = model.config.read
    files = [str(p.resolve()) for p in expand_paths(metrics)]
    step_ns = int(model.step.value)
    limit = max(1000, min(task_rows, chunk_rows))
    with connect(scheduler) as client:
        threads = _threads(client)
        _say(quiet, f"dask: {len(client.nthreads())} workers ({threads} threads); "
                    f"indexing {len(files)} files")
        indexes = _index(client, files, read, model.metrics, chunk_rows, False, quiet)
        before, after = margins(model.featurizer, read)
        the_plan = plan(index_table(indexes, step_ns), files, limit, threads, before, after)
        tasks = the_plan.tasks
        _say(quiet, f"dask: scoring in {len(tasks)} tasks ({the_plan.groups} entity groups x "
                    f"{len(the_plan.slices)} time slices)")
        collector = EventCollector(model)
        shared = client.scatter(model, broadcast=True, hash=False)  # the model, sent once
        for _, res in _run_in_order(client, score_task, tasks,
                                    (shared, chunk_rows, windows_out is not None),
                                    AHEAD_PER_THREAD * threads, "scoring", quiet):
            collector.add(res)
    events = collector.finish()
    groups = publish_events(events, matcher, grouping)
    write_events(events, out)
    write_groups(groups, groups_out)
    table = None
    if windows_out is not None:
        table = collector.window_table()
        write_table(table, windows_out)
    return ScoreResult(events, collector.windows, len(collector.entities), collector.rows,
                       round(time.perf_counter() - started, 3), table, collector.flagged,
                       unseen_entities(model, collector.entities), groups)


# --------------------------------------------------------------------------- training


def _group_data(task: Task, read: ReadConfig, metrics: list[str], step: pd.Timedelta,
                chunk_rows: int) -> MetricData:
    rows = read_task_rows(task, read, metrics, int(step.value), task.start, task.stop,
                          chunk_rows, required=False)
    frame, _ = normalise(rows, step, read.max_fill_steps, metrics)
    return MetricData(frame, step, metrics)


def train_stats_task(read, metrics, step, chunk_rows, window, task: Task) -> dict:
    """Phase 1 on a worker: counter counts (``features.counter_counts``; the rule runs over
    the whole fleet's), row hashes (for the data digest) and the time span of the group's
    rows."""
    data = _group_data(task, read, metrics, step, chunk_rows)
    codes, ent_names = data.entity_codes()
    ts = to_ns(data.frame["timestamp"])
    return {**counter_counts(data.values(), codes),
            "presence": metric_presence(data.values(), codes, ent_names, window),
            "hashes": pd.util.hash_pandas_object(data.frame, index=False).to_numpy(),
            "t_min": int(ts.min()) if len(ts) else None, "t_max": int(ts.max()) if len(ts)
            else None, "rows": len(ts)}


def _sample_key(seed: int) -> str:
    return f"{seed % 10**16:016d}"


def _labels(data: MetricData, incidents) -> tuple[np.ndarray, np.ndarray]:
    """Timestamps (ns) of the rows, and the incident each falls in (-1: none)."""
    ts = to_ns(data.frame["timestamp"])
    codes, names = data.entity_codes()
    return ts, incident_of_rows(codes, names, ts, incidents)


def train_fit_task(read, metrics, step, chunk_rows, counters, incidents, fraction, keep_p,
                   config, task: Task) -> dict:
    """Phase 2 on a worker: the group's baselines, its count of fit windows and a sample of
    them (each kept with probability ``keep_p``, decided by a hash of the window, so the sample
    does not depend on the partition), as the forest sees them."""
    data = _group_data(task, read, metrics, step, chunk_rows)
    frame = data.frame
    ts, row_label = _labels(data, incidents)
    fz = featurizer_of(config.features).fit(data, exclude_rows=row_label >= 0,
                                            counters=counters)
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


def train_score_task(read, metrics, step, chunk_rows, fitted: tuple, incidents, fraction,
                     config, task: Task) -> dict:
    """Phase 3 on a worker, as ``fit_model`` does it: scores of the calibration windows (only
    the stats the forest sees, block by block), and each incident's highest-scored windows
    (what the diagnoser learns from). ``fitted``: (featurizer, detector)."""
    fz, detector = fitted
    data = _group_data(task, read, metrics, step, chunk_rows)
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
          sign_key: bytes | None = None) -> TrainResult:
    """:func:`ftml.api.train` on a Dask cluster: featurization on the workers, the forest
    fitted through joblib's Dask backend, the same bundle format. While the history before the
    calibration cut has at most 125 000 rows, all fit windows are gathered and the same 100 000
    drawn as locally, so the model is the local one; beyond, each window is kept with one
    probability, so the sample (and so the forest) differs from a local run's."""
    import joblib

    config = config or Config()
    started = time.perf_counter()
    read, fc, dc = config.read, config.features, config.detect
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
        args = (read, names, step, chunk_rows)
        digest = hashlib.sha256(",".join(names).encode())  # as bundle.data_digest
        stats = []
        for _, s in _run_in_order(client, train_stats_task, groups, (*args, fc.window), ahead,
                                  "stats", quiet):
            digest.update(s.pop("hashes").tobytes())  # groups in entity order, as one frame
            stats.append(s)
        # Metrics that cannot help are left out, decided over the whole fleet as locally.
        dropped = {**dict.fromkeys(text, "text"), **metrics_to_drop(
            [s["presence"] for s in stats], names, read.drop_missing_fraction,
            read.drop_gappy_fraction)}
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
        parts = [r for _, r in _run_in_order(
            client, train_fit_task, groups,
            (*args, counters, inc_f, dc.calibration_fraction, keep_p, config),
            ahead, "features", quiet)]
        # One featurizer of the groups' baselines: the fleet fallback over all entities.
        featurizer = featurizer_of(fc).with_baseline(
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
        shared = client.scatter((featurizer, detector), broadcast=True, hash=False)
        scored = [r for _, r in _run_in_order(
            client, train_score_task, groups,
            (*args, shared, inc_f, dc.calibration_fraction, config), ahead, "calibration",
            quiet)]
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
                                         config, healthy)
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
    info["training"]["seconds"] = round(time.perf_counter() - started, 2)
    manifest = save_model(model, out, info, key=sign_key)
    return TrainResult(model, manifest, info)
