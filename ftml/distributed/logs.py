"""Logs on the cluster: each log file is read once, by a worker, into cells (counts per
entity, step, template, level and status class: small whatever the number of lines), cut
into the pieces the tasks need; the pieces stay on the cluster and the tasks that join them
to their metric rows take them from there. The driver gets only a summary of each file.

- Training: a worker cannot mine templates on its own (Drain's tree depends on the order in
  which messages come), so it returns its file's distinct masked messages in the order they
  first occur, and cells keyed by a message's place in that list. The driver mines the lists
  in file order, which is the order a local run mines them in (each distinct masked message
  is mined once, where it first occurs), and each file's place -> template id table goes to
  the tasks with its pieces. Pieces are cut by entity group (a training group is whole
  entities); one group more holds the entities that have logs and no metrics, which count
  towards the templates' cells as they do locally.
- Scoring: the model's templates are only looked up, which does not depend on order, so a
  worker counts template ids itself; pieces are cut by entity group and time slice (with the
  slice's margins), so a scoring task gets the cells of its own rows only.

The cells of a task's pieces, merged, are the local run's cells of the task's entities and
steps, so the series (:class:`ftml.logs.LogView`, the local ``wide`` and ``join``) are the
same bits.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ftml.config import LogConfig, ReadConfig
from ftml.distributed.cluster import _say
from ftml.distributed.slices import Task
from ftml.logs import (
    LogInput,
    LogModel,
    ReadStats,
    expand_log_paths,
    mapped_cells,
    message_cells,
    template_counts,
)
from ftml.pipeline import progress

# Slots of "all time" (training's one time range).
ALL_TIME = (-(2**62), 2**62)


@dataclass
class LogFiles:
    """The driver's side of the log files read on the cluster."""

    names: list[str]  # the files as given, in the local order
    stats: ReadStats  # of all files, merged in that order
    entities: list[str]  # every entity with a line
    lo: int  # the steps all the logs cover (lo > hi: no line)
    hi: int
    any_status: bool  # a line with an HTTP status
    distinct: list[list[str] | None]  # per file (training): its masked messages
    # (group, slice) -> [(future of cells, file number)], in file order
    pieces: dict[tuple[int, int], list[tuple[Any, int]]] = field(default_factory=dict)
    # per file: message -> template table (training), None: the cells hold template ids
    tables: list[np.ndarray | None] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.lo > self.hi

    def parts(self, group: int, piece: int = 0) -> list[tuple[Any, np.ndarray | None]]:
        """What a task of ``group`` in time range ``piece`` joins: its pieces and tables."""
        return [(f, self.tables[i] if self.tables else None)
                for f, i in self.pieces.get((group, piece), [])]

    def release(self) -> None:
        for parts in self.pieces.values():
            for fut, _ in parts:
                fut.release()
        self.pieces = {}


def log_file_task(cfg: LogConfig, entity_map: str | None, step_ns: int,
                  group_of: dict[str, int], ranges: Sequence[tuple[int, int]],
                  others: int | None, lookup: Any, name: str, path: str
                  ) -> tuple[dict, dict]:
    """One log file on a worker: its cells (``lookup``, a model with logs: template ids
    looked up; None: keyed by message, for the driver to mine), cut into pieces per (entity
    group, time range): ``{(g, s): cells}`` (entities of no group in group ``others``, or
    left out when None); and a summary for the driver."""
    stats = ReadStats()
    if lookup is None:
        distinct, cell = message_cells(path, cfg, entity_map, step_ns, stats, name)
    else:
        distinct = None
        cell = lookup.logs.file_cells(path, cfg, entity_map, stats, name)
    slot = cell["slot"].to_numpy(dtype=np.int64)
    summary = {"distinct": distinct, "stats": stats,
               "entities": sorted(set(map(str, cell["entity"].unique()))),
               "lo": int(slot.min()) if len(slot) else None,
               "hi": int(slot.max()) if len(slot) else None,
               "any_status": bool((cell["sc"] > 0).any())}
    return summary, cut(cell, group_of, ranges, others)


def cut(cell: pd.DataFrame, group_of: dict[str, int], ranges: Sequence[tuple[int, int]],
        others: int | None = None) -> dict[tuple[int, int], pd.DataFrame]:
    """Cells -> ``{(group, s): cells}`` for the entities of ``group_of`` (the others in group
    ``others``, unless None) and the slots ``[lo, hi)`` of each ``ranges[s]`` (ranges may
    overlap: a slice's margins)."""
    gid = cell["entity"].map(group_of).to_numpy(dtype=np.float64, na_value=np.nan)
    if others is not None:
        gid = np.where(np.isnan(gid), float(others), gid)
    has = ~np.isnan(gid)
    slot = cell["slot"].to_numpy(dtype=np.int64)
    out: dict[tuple[int, int], pd.DataFrame] = {}
    for s, (lo, hi) in enumerate(ranges):
        mask = has & (slot >= lo) & (slot < hi)
        if not mask.any():
            continue
        part = cell[mask]
        for g, piece in part.groupby(gid[mask].astype(np.int64), sort=True):
            out[(int(g), s)] = piece.reset_index(drop=True)
    return out


def _summary(result: tuple[dict, dict]) -> dict:
    return {**result[0], "keys": sorted(result[1])}


def _piece(result: tuple[dict, dict], key: tuple[int, int]) -> pd.DataFrame:
    return result[1][key]


def read_logs(client, logs: LogInput, cfg: LogConfig, read: ReadConfig, step_ns: int,
              group_of: dict[str, int], ranges: Sequence[tuple[int, int]], lookup: Any,
              quiet: bool, others: int | None = None) -> LogFiles:
    """Every log file read by a worker (one task each), cut as :func:`log_file_task` says;
    the first bad file (in the local order) raises its error here, as a local run's."""
    files = expand_log_paths(logs.paths)  # a missing path fails before the work, as locally
    names = [str(p) for p in files]
    run = uuid.uuid4().hex[:8]
    # Workers read the absolute path (they may run elsewhere); names keep the given one.
    futures = [client.submit(log_file_task, cfg, read.entity_map, step_ns, group_of,
                             list(ranges), others, lookup, name, os.path.abspath(name),
                             key=f"ftml-logs-{run}-{i}", pure=False)
               for i, name in enumerate(names)]
    asked = [client.submit(_summary, fut, key=f"ftml-logsum-{run}-{i}", pure=False)
             for i, fut in enumerate(futures)]
    pieces: list[dict] = []
    summaries: list[dict] = []
    try:
        bar = progress(len(futures), "logs", quiet)
        bar.unit = "file"
        with bar:
            for i, fut in enumerate(futures):
                summary = asked[i].result()  # in file order: the first bad file's error
                summaries.append(summary)
                pieces.append({k: client.submit(_piece, fut, k, key=f"ftml-piece-{run}-{i}-"
                                                f"{k[0]}-{k[1]}", pure=False)
                               for k in summary["keys"]})
                bar.update(1)
    except BaseException:
        client.cancel(futures + asked + [f for p in pieces for f in p.values()])
        raise
    del futures, asked  # the pieces hold what the tasks need; the rest of each result goes
    stats = ReadStats()
    for s in summaries:
        stats.merge(s["stats"])
    spans = [(s["lo"], s["hi"]) for s in summaries if s["lo"] is not None]
    out = LogFiles(names, stats, sorted({e for s in summaries for e in s["entities"]}),
                   min(lo for lo, _ in spans) if spans else 0,
                   max(hi for _, hi in spans) if spans else -1,
                   any(s["any_status"] for s in summaries),
                   [s["distinct"] for s in summaries])
    _say(quiet, f"dask: {len(names)} log files read into {sum(map(len, pieces))} pieces")
    for i, p in enumerate(pieces):
        for key, fut in p.items():
            out.pieces.setdefault(key, []).append((fut, i))
    return out


def log_group_task(parts: list[tuple[pd.DataFrame, np.ndarray | None]]
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Training, one entity group on a worker: its cells of template ids (kept on the
    cluster for the training phases) and their :func:`ftml.logs.template_counts`."""
    cell = mapped_cells(parts)
    return template_counts(cell), cell


def group_ids(tasks: Sequence[Task]) -> tuple[dict[str, int], list[int]]:
    """Entity -> group number, and each task's group (a group's entities are the same in
    every time slice of a plan)."""
    number: dict[tuple[str, ...], int] = {}
    of_task = [number.setdefault(t.entities, len(number)) for t in tasks]
    return {e: g for ents, g in number.items() for e in ents}, of_task


def mine(log_model: LogModel, files: LogFiles) -> None:
    """The driver's mining: every file's masked messages in file order, as a local run mines
    its lines; each file's table goes with its pieces."""
    files.tables = [log_model.templates.masked_ids(d, learn=True) for d in files.distinct]
    files.distinct = []


def template_totals(counts: list[pd.DataFrame]) -> pd.DataFrame:
    """Template counts of disjoint entity groups -> the fleet's (sorted by template id)."""
    if not counts:
        return pd.DataFrame({"n": pd.Series(dtype=np.int64),
                             "cells": pd.Series(dtype=np.int64)}).rename_axis("tpl")
    return pd.concat(counts).groupby(level=0).sum().sort_index()
