"""The partition: entity groups x time slices, chosen by an estimate of run time under a row
budget per task, and the rows of one task's slice (with its margins) read from its files."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ftml.config import ReadConfig
from ftml.distributed.index import FileIndex, _require
from ftml.errors import InputError
from ftml.io import file_format, iter_metric_rows, to_ns
from ftml.pipeline import window_history

# Normalised rows one task holds at most (unless one entity alone has more, in training): this,
# not the size of the history, bounds a worker's memory.
TASK_ROWS = 250_000


# Planning costs, in units of "scoring one normalised row" (about 8 us here): reading one raw
# row of a file and keeping or dropping it (measured: Parquet about 0.8 us, CSV about 6 us),
# and the fixed cost of a task (scheduling, transfer, set-up: a few ms).
READ_COST = {"parquet": 0.1, "csv": 0.8, "jsonl": 1.0}
TASK_COST = 2_000.0


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
