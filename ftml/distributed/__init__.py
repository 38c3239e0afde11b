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
- Log files (``--logs``) are read once each, on the workers, into cells (counts per entity,
  step and template) cut into the pieces each task needs, which stay on the cluster; a task
  joins its pieces to its rows as the local path joins them (``ftml.distributed.logs``).
- Training partitions by entity (an entity's baseline needs all of its history): counters are
  detected from fleet-wide counts, baselines and the fit-window sample come from the workers,
  the IsolationForest is fitted through joblib's Dask backend, and calibration and diagnosis
  take the scores the workers compute. The bundle is the usual one.

One module per seam; each imports only the ones above it:

* ``cluster``: ``connect`` (a client for ``--scheduler``) and tasks run in order, a few ahead;
* ``index``: the index pass, one task per file (``FileIndex``, ``infer_step_from``);
* ``slices``: the partition into entity groups x time slices (``plan``, ``Task``) and the rows
  of one task's slice (``read_task_rows``, ``margins``);
* ``logs``: log files read on the workers into cells, cut into the pieces tasks join
  (``read_logs``, ``log_file_task``; training's templates mined on the driver in the local
  order);
* ``scoring``: ``score``: ``score_task`` on the workers, ``EventCollector`` on the driver;
* ``training``: ``train``: its three worker phases (stats, fit, calibration scores) and the
  driver that joins them into the usual bundle.

Every public name is importable from ``ftml.distributed`` itself.
"""

from __future__ import annotations

from ftml.distributed.cluster import AHEAD_PER_THREAD, CONNECT_TIMEOUT, connect
from ftml.distributed.index import FileIndex, index_file, infer_step_from
from ftml.distributed.logs import LogFiles, group_ids, log_file_task, log_group_task, read_logs
from ftml.distributed.scoring import EventCollector, log_pieces, score, score_task
from ftml.distributed.slices import (
    READ_COST,
    TASK_COST,
    TASK_ROWS,
    Plan,
    Task,
    index_table,
    margins,
    plan,
    read_task_rows,
)
from ftml.distributed.training import train, train_fit_task, train_score_task, train_stats_task

__all__ = [
    "AHEAD_PER_THREAD", "CONNECT_TIMEOUT", "READ_COST", "TASK_COST", "TASK_ROWS",
    "EventCollector", "FileIndex", "LogFiles", "Plan", "Task", "connect", "group_ids",
    "index_file", "index_table", "infer_step_from", "log_file_task", "log_group_task",
    "log_pieces", "margins", "plan", "read_logs", "read_task_rows", "score", "score_task",
    "train", "train_fit_task", "train_score_task", "train_stats_task",
]
