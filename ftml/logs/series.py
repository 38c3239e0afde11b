"""Parsed log lines -> per (entity, step) series, vectorised (numpy group counts).

Lines are first counted into *cells*: one row per (entity, step, template, level, status
class) with its number of lines, small whatever the number of lines. Cells become the wide
series (:func:`wide`) once training has chosen its templates:

- ``log:lines``, ``log:error``, ``log:warning``: lines, and lines by level;
- ``log:http_5xx_share``: the share of lines with an HTTP status that are 5xx (access logs);
- ``log:unseen``: lines of a template the model does not know;
- ``log:tpl:<id>``: lines of each of the top templates of training.

A step holds the lines whose time rounds to it, as a metric reading's time does
(:func:`ftml.io.normalise`), so a line and a reading at the same moment share a step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ftml.logs.readers import ERROR, WARNING, Lines

PREFIX = "log:"
LINES = "log:lines"
ERRORS = "log:error"
WARNINGS = "log:warning"
HTTP_5XX = "log:http_5xx_share"
UNSEEN = "log:unseen"
TEMPLATE = "log:tpl:"
CELL_COLUMNS = ("entity", "slot", "tpl", "level", "sc", "n")
# Status class of a cell: 0 no status, 1 a status below 500, 2 a 5xx.
_MERGE_ROWS = 500_000
_MERGE_PARTS = 64  # many small frames cost more than their rows: merged as they come


def is_log_metric(name: str) -> bool:
    return str(name).startswith(PREFIX)


def template_metric(cluster_id: int) -> str:
    return f"{TEMPLATE}{int(cluster_id)}"


def template_of(metric: str) -> int | None:
    """'log:tpl:12' -> 12 (None for another metric)."""
    if not str(metric).startswith(TEMPLATE):
        return None
    try:
        return int(str(metric)[len(TEMPLATE):])
    except ValueError:
        return None


def slots(ts_ns: np.ndarray, step_ns: int) -> np.ndarray:
    """The step each time rounds to (as :func:`ftml.io.normalise` rounds readings)."""
    return np.floor_divide(ts_ns + step_ns // 2, step_ns)


def cells(lines: Lines, tpl: np.ndarray, step_ns: int) -> pd.DataFrame:
    """Lines (with their template ids) counted per entity, step, template, level and status
    class."""
    sc = np.where(lines.status < 0, 0, np.where(lines.status >= 500, 2, 1)).astype(np.int8)
    frame = pd.DataFrame({"entity": lines.entity, "slot": slots(lines.ts, step_ns),
                          "tpl": tpl, "level": lines.level, "sc": sc})
    return _count(frame)


def recount(cell: pd.DataFrame) -> pd.DataFrame:
    """Cells whose keys may repeat (e.g. two messages of one template) -> one row per key."""
    return _count(cell, weights="n")


def _count(frame: pd.DataFrame, weights: str | None = None) -> pd.DataFrame:
    keys = list(CELL_COLUMNS[:-1])
    grouped = frame.groupby(keys, sort=False, observed=True)
    out = (grouped[weights].sum() if weights else grouped.size()).rename("n").reset_index()
    out["n"] = out["n"].astype(np.int64)
    return out


class CellCounter:
    """Cells of many blocks, merged as they grow: memory follows the number of distinct
    cells (entities x steps x templates in use), not the number of lines."""

    def __init__(self) -> None:
        self.parts: list[pd.DataFrame] = []
        self.rows = 0

    def add(self, part: pd.DataFrame) -> None:
        self.parts.append(part)
        self.rows += len(part)
        if len(self.parts) > 1 and (self.rows > _MERGE_ROWS or len(self.parts) > _MERGE_PARTS):
            self.parts = [self.result()]
            self.rows = len(self.parts[0])

    def result(self) -> pd.DataFrame:
        if not self.parts:
            return pd.DataFrame({c: pd.Series(dtype=object if c == "entity" else np.int64)
                                 for c in CELL_COLUMNS})
        if len(self.parts) == 1:
            return self.parts[0]
        return _count(pd.concat(self.parts, ignore_index=True), weights="n")


@dataclass
class Series:
    """Wide log series: one row per (entity, step) with lines, ``values`` in ``metrics``
    order; ``lo``..``hi`` the steps the logs cover (steps between with no line are 0)."""

    entity: np.ndarray  # object (str)
    slot: np.ndarray  # int64
    values: np.ndarray  # float64 (rows, metrics)
    metrics: list[str]
    lo: int
    hi: int

    def frame(self, step_ns: int) -> pd.DataFrame:
        out = pd.DataFrame(self.values, columns=self.metrics)
        out.insert(0, "timestamp", pd.to_datetime(self.slot * step_ns, unit="ns", utc=True))
        out.insert(0, "entity", self.entity)
        return out


def wide(cell: pd.DataFrame, metrics: list[str], known: np.ndarray) -> Series:
    """Cells -> the series ``metrics`` names (a subset of the kinds in the module doc)."""
    if not len(cell):
        return Series(np.zeros(0, object), np.zeros(0, np.int64),
                      np.zeros((0, len(metrics))), list(metrics), 0, -1)
    ent_codes, ent_names = pd.factorize(cell["entity"].to_numpy(dtype=object))
    slot = cell["slot"].to_numpy(dtype=np.int64)
    group, keys = pd.factorize(pd.MultiIndex.from_arrays([ent_codes, slot]))
    g = len(keys)
    n = cell["n"].to_numpy(dtype=np.float64)
    level = cell["level"].to_numpy()
    sc = cell["sc"].to_numpy()
    tpl = cell["tpl"].to_numpy(dtype=np.int64)
    out = np.zeros((g, len(metrics)))
    col = {m: j for j, m in enumerate(metrics)}

    def count(mask) -> np.ndarray:
        return np.bincount(group, weights=np.where(mask, n, 0.0), minlength=g)

    if LINES in col:
        out[:, col[LINES]] = np.bincount(group, weights=n, minlength=g)
    if ERRORS in col:
        out[:, col[ERRORS]] = count(level == ERROR)
    if WARNINGS in col:
        out[:, col[WARNINGS]] = count(level == WARNING)
    if HTTP_5XX in col:
        with np.errstate(invalid="ignore", divide="ignore"):
            has = count(sc > 0)
            out[:, col[HTTP_5XX]] = np.where(has > 0, count(sc == 2) / np.maximum(has, 1), 0.0)
    if UNSEEN in col:
        out[:, col[UNSEEN]] = count(~np.isin(tpl, known))
    tpl_cols = {template_of(m): j for m, j in col.items() if template_of(m) is not None}
    if tpl_cols:
        ids = np.fromiter(tpl_cols, dtype=np.int64)
        where = np.fromiter(tpl_cols.values(), dtype=np.int64)
        order = np.argsort(ids)
        pos = np.searchsorted(ids[order], tpl)
        pos = np.minimum(pos, len(ids) - 1)
        hit = ids[order][pos] == tpl
        target = where[order][pos[hit]]
        flat = np.bincount(group[hit] * len(metrics) + target, weights=n[hit],
                           minlength=g * len(metrics))
        out += flat.reshape(g, len(metrics))
    ent = np.asarray(ent_names, dtype=object)[np.asarray(keys.get_level_values(0),
                                                          dtype=np.int64)]
    key_slot = np.asarray(keys.get_level_values(1), dtype=np.int64)
    return Series(ent, key_slot, out, list(metrics), int(slot.min()), int(slot.max()))


def join(frame: pd.DataFrame, series: Series, step_ns: int) -> tuple[pd.DataFrame, float]:
    """``frame`` (normalised metrics: entity, timestamp, ...) with the log series as columns:
    the counts of its (entity, step), 0 for a step the logs cover without a line of that
    entity, NaN outside what they cover. Also the share of rows outside."""
    slot = pd.DatetimeIndex(frame["timestamp"]).as_unit("ns").asi8 // step_ns
    names = frame["entity"].astype(str).to_numpy(dtype=object)
    inside = (slot >= series.lo) & (slot <= series.hi)
    values = np.where(inside[:, None], 0.0, np.nan) * np.ones((1, len(series.metrics)))
    if len(series.slot) and len(frame):
        left = pd.MultiIndex.from_arrays([series.entity, series.slot])
        pos = left.get_indexer(pd.MultiIndex.from_arrays([names, slot]))
        found = pos >= 0
        values[found] = series.values[pos[found]]
    out = frame.copy(deep=False)
    for j, m in enumerate(series.metrics):
        out[m] = values[:, j]
    share = float(1.0 - inside.mean()) if len(frame) else 0.0
    return out, share


def log_series(lines: pd.DataFrame, model) -> pd.DataFrame:
    """Parsed lines (columns ``ts`` -- datetimes or int ns --, ``entity``, ``level`` --
    info / warning / error or any level word --, ``msg``, optionally ``status``) -> the
    model's log series, one row per (entity, step) that has lines: columns entity, timestamp
    and ``model.metrics``. For live sources (a tail) that hand lines over as they come;
    steps without a line are 0, which the caller fills."""
    import pyarrow as pa

    from ftml.logs.readers import _levels

    ts = lines["ts"]
    ts_ns = (pd.DatetimeIndex(pd.to_datetime(ts, utc=True)).as_unit("ns").asi8
             if not np.issubdtype(np.asarray(ts).dtype, np.integer) else np.asarray(ts))
    level = _levels(pa.array(lines["level"].astype(str).to_numpy(dtype=object)))
    status = (lines["status"].fillna(-1).to_numpy(dtype=np.int16) if "status" in lines
              else np.full(len(lines), -1, np.int16))
    parsed = Lines(np.asarray(ts_ns, dtype=np.int64),
                   lines["entity"].astype(str).to_numpy(dtype=object), level, status,
                   pa.array(lines["msg"].astype(str).to_numpy(dtype=object), pa.string()),
                   np.arange(1, len(lines) + 1))
    tpl = model.templates.ids(parsed.msg, learn=False)
    return wide(cells(parsed, tpl, model.step_ns), model.metrics,
                model.known_ids).frame(model.step_ns)
