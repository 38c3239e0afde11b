"""The index pass, one task per file: each file's entities, time spans, metric columns and (for
step inference) spacings, so that tasks read only the files they need."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ftml.config import ReadConfig
from ftml.distributed.cluster import AHEAD_PER_THREAD, _run_in_order, _threads
from ftml.errors import InputError
from ftml.io import infer_step, iter_metric_rows, to_ns


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
