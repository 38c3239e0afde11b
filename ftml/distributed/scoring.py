"""``score`` on the cluster: the local scoring core over each task's slice on a worker, and one
EventBuilder on the driver fed in time order (:class:`EventCollector`)."""

from __future__ import annotations

import functools
import time
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ftml.bundle import Model, load_model
from ftml.detect import EventBuilder, RawEvent
from ftml.distributed.cluster import AHEAD_PER_THREAD, _run_in_order, _say, _threads, connect
from ftml.distributed.index import _index
from ftml.distributed.logs import group_ids, read_logs
from ftml.distributed.slices import TASK_ROWS, Task, index_table, margins, plan, read_task_rows
from ftml.errors import InputError
from ftml.events import Event
from ftml.incidents import ScoreTrail, grouping_for, reads_scores
from ftml.io import expand_paths, normalise, to_ns
from ftml.logs import file_metrics, mapped_cells, require_logs, warn_skipped
from ftml.pipeline import (
    SCORE_CHUNK_ROWS,
    ScoreResult,
    WindowRecorder,
    WindowScorer,
    finish_scoring,
    window_table,
)
from ftml.playbooks import playbook_matcher


def score_task(model: Model, chunk_rows: int, with_windows: bool, task: Task,
               logs: tuple | None = None, *, with_scores: bool = False) -> dict:
    """One task on a worker: the scoring core (:class:`ftml.pipeline.WindowScorer`) over the
    task's slice, recording what it hands to the event builder: the windows the gate lets
    through, with their features. Which windows before the slice were flagged (what the gate
    needs) comes from scoring the last of them first, as the local path knows it from the
    chunk before. ``logs`` (a model with logs): ``(lo, hi, parts)``, the steps all the logs
    cover and the task's pieces of log cells (:mod:`ftml.distributed.logs`), joined to the
    rows as ``score`` joins them. ``with_scores``: every window's score comes back too (a
    :class:`~ftml.incidents.ScoreTrail`, for a ranking that reads them)."""
    read = model.config.read
    step_ns = int(model.step.value)
    before, after = margins(model.featurizer, read)
    reach = model.event_rules.reach
    own = file_metrics(model.metrics, getattr(model, "logs", None))  # in metric files
    rows = read_task_rows(task, read, own, step_ns, task.start - reach - before,
                          task.stop + after, chunk_rows, required=True)
    frame, _ = normalise(rows, model.step, read.max_fill_steps, own)
    del rows
    if logs is not None:
        lo, hi, parts = logs
        frame, _ = model.logs.view(lo, hi).join(frame, mapped_cells(parts))
    ts = to_ns(frame["timestamp"])
    t0, t1 = task.start * step_ns, task.stop * step_ns
    recorder = WindowRecorder()
    trail = ScoreTrail() if with_scores else None
    scorer = WindowScorer(model, recorder, keep_blocks=with_windows, trail=trail)
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
            "table": scorer.blocks if with_windows else None,
            "scores": trail.arrays() if trail is not None else None}


def _per_entity(task: Task, t_ns: int) -> dict[str, int]:
    return dict.fromkeys(task.entities, int(t_ns))


class EventCollector:
    """The driver side of scoring: takes task results in time order (per entity) and pushes
    them into one EventBuilder, which gives the same events however the windows are chunked;
    closed events become :class:`Event` s. The builder holds only what an event may still
    use, as in the local path."""

    def __init__(self, model: Model, scores: ScoreTrail | None = None):
        self.model = model
        self.scores = scores  # the tasks' window scores go there, when a ranking reads them
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
        if self.scores is not None and res.get("scores") is not None:
            names, code, end_ns, score = res["scores"]
            self.scores.add(names, code, end_ns, score)
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
          groups_out: str | Path | None = None, logs: Any = None) -> ScoreResult:
    """:func:`ftml.api.score` on a Dask cluster (see :func:`connect` for ``scheduler``): the
    same events, sorted the same way. A task holds at most ``min(task_rows, chunk_rows)`` rows.
    Input files must be readable at the same path on every worker; so must ``logs``, the log
    files of a model trained with logs, which the workers read (:mod:`ftml.distributed.logs`)."""
    started = time.perf_counter()
    if not isinstance(model, Model):
        model = load_model(model)
    matcher = playbook_matcher(playbooks)
    grouping = grouping_for(model, topology)  # a bad call graph fails before the work
    log_model = getattr(model, "logs", None)
    if log_model is None and logs:
        raise InputError("the model was trained without logs", where="--logs",
                         hint="leave out --logs, or train with --logs")
    logs = require_logs(log_model, logs) if log_model is not None else None
    read = model.config.read
    files = [str(p.resolve()) for p in expand_paths(metrics)]
    step_ns = int(model.step.value)
    limit = max(1000, min(task_rows, chunk_rows))
    with connect(scheduler) as client:
        threads = _threads(client)
        _say(quiet, f"dask: {len(client.nthreads())} workers ({threads} threads); "
                    f"indexing {len(files)} files")
        indexes = _index(client, files, read, file_metrics(model.metrics, log_model),
                         chunk_rows, False, quiet)
        before, after = margins(model.featurizer, read)
        the_plan = plan(index_table(indexes, step_ns), files, limit, threads, before, after)
        tasks = the_plan.tasks
        _say(quiet, f"dask: scoring in {len(tasks)} tasks ({the_plan.groups} entity groups x "
                    f"{len(the_plan.slices)} time slices)")
        collector = EventCollector(model, ScoreTrail() if reads_scores(grouping) else None)
        shared = client.scatter(model, broadcast=True, hash=False)  # the model, sent once
        extra, log_files = None, None
        if logs is not None:
            log_files, extra = _score_logs(client, shared, model, logs, the_plan, quiet)
        task_fn = (functools.partial(score_task, with_scores=True)
                   if collector.scores is not None else score_task)
        for _, res in _run_in_order(client, task_fn, tasks,
                                    (shared, chunk_rows, windows_out is not None),
                                    AHEAD_PER_THREAD * threads, "scoring", quiet, extra):
            collector.add(res)
        if log_files is not None:
            log_files.release()
    events = collector.finish()
    return finish_scoring(model, events, matcher=matcher, grouping=grouping, out=out,
                          groups_out=groups_out, windows_out=windows_out,
                          window_table=collector.window_table, windows=collector.windows,
                          entities=collector.entities, rows=collector.rows,
                          flagged=collector.flagged, started=started,
                          scores=collector.scores)


def _score_logs(client, shared, model: Model, logs, the_plan, quiet: bool):
    """The log files read by the workers (templates looked up there), cut by entity group
    and time slice with the slice's margins; each task's extra argument."""
    group_of, ranges, keys = log_pieces(model, the_plan)
    files = read_logs(client, logs, logs.config(model.logs.config), model.config.read,
                      model.logs.step_ns, group_of, ranges, shared, quiet)
    warn_skipped(files.stats)
    items = deque(((files.lo, files.hi, files.parts(g, s)),) for g, s in keys)
    files.pieces = {}  # the items hold the pieces now, and let go of each once it is used
    return files, _taken(items)


def _taken(items: deque) -> Iterator[tuple]:
    while items:
        yield items.popleft()


def log_pieces(model: Model, the_plan) -> tuple[dict[str, int], list[tuple[int, int]],
                                                 list[tuple[int, int]]]:
    """How scoring cuts log cells: entity -> group, each time slice's range of slots (the
    rows its tasks read: ``reach + before`` steps ahead, ``after`` past it) and each task's
    (group, slice)."""
    before, after = margins(model.featurizer, model.config.read)
    reach = model.event_rules.reach
    group_of, of_task = group_ids(the_plan.tasks)
    ranges = [(row[0].start - reach - before, row[0].stop + after) for row in the_plan.slices]
    slice_of = [s for s, row in enumerate(the_plan.slices) for _ in row]
    return group_of, ranges, list(zip(of_task, slice_of, strict=True))
