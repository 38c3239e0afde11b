"""Wide rows -> the regular step: the step inferred, timestamps rounded to it, duplicates averaged,
short gaps filled, and a grid too large for the readings refused."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ftml.errors import InputError
from ftml.io.timestamps import to_ns


def infer_step(rows: pd.DataFrame) -> pd.Timedelta:
    """Median spacing between consecutive distinct timestamps of each entity, rounded to the
    coarsest of 1 s, 100 ms, 10 ms, ... that moves it by at most 2%: jitter in collection times
    must not give a step like 59.98 s, whose grid would drift against the clock."""
    t = to_ns(rows["timestamp"])
    e = pd.factorize(rows["entity"])[0]
    order = np.lexsort((t, e))
    t, e = t[order], e[order]
    diffs = np.diff(t)[e[1:] == e[:-1]]
    diffs = diffs[diffs > 0]  # repeated timestamps are no spacing
    if diffs.size == 0:
        raise InputError("cannot infer the step: each entity has a single timestamp",
                         hint="pass --step, e.g. --step 60s")
    median = float(np.median(diffs))
    for unit in _STEP_UNITS_NS:
        rounded = round(median / unit) * unit
        if rounded > 0 and abs(rounded - median) <= 0.02 * median:
            return pd.Timedelta(int(rounded), unit="ns")
    return pd.Timedelta(int(round(median)), unit="ns")


_STEP_UNITS_NS = tuple(10**k for k in range(9, -1, -1))


def normalise(rows: pd.DataFrame, step: pd.Timedelta | None, max_fill_steps: int,
              metrics: list[str] | None = None) -> tuple[pd.DataFrame, pd.Timedelta]:
    """Wide rows -> the contract: per entity, a regular grid of ``step`` (timestamps rounded to
    it, duplicates averaged), sorted, short gaps forward-filled, long gaps left as NaN rows."""
    if metrics is None:
        metrics = [c for c in rows.columns if c not in ("entity", "timestamp")]
    if step is None:
        step = infer_step(rows)
    step_ns = int(step.value)
    if len(rows) == 0:
        empty = pd.DataFrame({"entity": pd.Categorical([]),
                              "timestamp": pd.Series([], dtype="datetime64[ns, UTC]"),
                              **{m: pd.Series([], dtype=np.float64) for m in metrics}})
        return empty, step
    t = to_ns(rows["timestamp"])
    slot = np.floor_divide(t + step_ns // 2, step_ns)  # round to the nearest step
    ent_codes, ent_names = pd.factorize(rows["entity"], sort=True)
    vals = rows[metrics].to_numpy(dtype=np.float64)
    # Average duplicates of (entity, slot): sort, then reduce runs.
    if _is_sorted(ent_codes, slot):  # already in order (e.g. one entity's file): no copy
        ent_s, slot_s, vals_s = ent_codes, slot, vals
    else:
        order = np.lexsort((slot, ent_codes))
        ent_s, slot_s, vals_s = ent_codes[order], slot[order], vals[order]
    n_rows = len(ent_s)
    new = np.ones(n_rows, dtype=bool)
    new[1:] = (ent_s[1:] != ent_s[:-1]) | (slot_s[1:] != slot_s[:-1])
    starts = np.flatnonzero(new)
    if starts.size != n_rows:
        finite = np.isfinite(vals_s)
        sums = np.add.reduceat(np.where(finite, vals_s, 0.0), starts, axis=0)
        counts = np.add.reduceat(finite.astype(np.int64), starts, axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            vals_u = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        ent_u, slot_u = ent_s[starts], slot_s[starts]
    else:
        vals_u, ent_u, slot_u = vals_s, ent_s, slot_s
    # Full grid per entity from its first to its last slot.
    first_idx = np.flatnonzero(np.r_[True, ent_u[1:] != ent_u[:-1]])
    last_idx = np.r_[first_idx[1:], len(ent_u)] - 1
    lo, hi = slot_u[first_idx], slot_u[last_idx]
    lengths = (hi - lo + 1).astype(np.int64)
    _check_grid_size(int(lengths.sum()), len(ent_u), step, lo, hi, ent_names, ent_u[first_idx])
    grid_ent = np.repeat(ent_u[first_idx], lengths)
    offsets = np.r_[0, np.cumsum(lengths)[:-1]]
    grid_slot = np.arange(lengths.sum(), dtype=np.int64) - np.repeat(offsets, lengths) \
        + np.repeat(lo, lengths)
    if len(grid_slot) == len(ent_u):  # no step missing: the grid is the rows themselves
        # Our own C-ordered array, written by the gap filling below.
        own = vals_u is not vals and vals_u.flags.writeable and vals_u.flags.c_contiguous
        grid_vals = vals_u if own else np.array(vals_u, order="C", copy=True)
    else:
        grid_vals = np.full((len(grid_slot), len(metrics)), np.nan)
        group = np.cumsum(np.r_[True, ent_u[1:] != ent_u[:-1]]) - 1  # entity of each row
        pos = offsets[group] + (slot_u - lo[group])
        grid_vals[pos] = vals_u
    fill_short_gaps(grid_vals, grid_ent, max_fill_steps)
    frame = pd.DataFrame(grid_vals, columns=metrics, copy=False)
    frame.insert(0, "timestamp", pd.to_datetime(grid_slot * step_ns, unit="ns", utc=True))
    frame.insert(0, "entity", pd.Categorical.from_codes(grid_ent, categories=[
        str(n) for n in ent_names]))
    return frame, step


def _is_sorted(major: np.ndarray, minor: np.ndarray) -> bool:
    """Rows already ordered by (major, minor)?"""
    if len(major) < 2:
        return True
    d = np.diff(major)
    return bool((d >= 0).all() and (np.diff(minor)[d == 0] >= 0).all())


def fill_short_gaps(values: np.ndarray, segments: np.ndarray, limit: int) -> None:
    """Forward-fill, in place, NaN runs of at most ``limit`` rows that follow a value of the same
    segment; longer runs stay NaN so that no window spans them."""
    if limit <= 0 or values.size == 0:
        return
    n = values.shape[0]
    seg_start = np.r_[True, segments[1:] != segments[:-1]]
    has_gaps = np.isnan(values).any(axis=0)  # one pass over all columns
    if not has_gaps.any():
        return
    rows = np.arange(n)
    seg_first = np.maximum.accumulate(np.where(seg_start, rows, 0))
    for j in np.flatnonzero(has_gaps):  # per metric column with gaps: vectorized over rows
        col = values[:, j]
        missing = np.isnan(col)
        # Index of the last valid row at or before each row, restarting at each segment.
        idx = np.where(missing, -1, rows)
        idx[seg_start & missing] = -2  # a segment's leading NaNs have no source
        np.maximum.accumulate(idx, out=idx)
        has_source = idx >= seg_first
        # Run length of each NaN run.
        run_start = missing & np.r_[True, ~missing[:-1] | seg_start[1:]]
        run_id = np.cumsum(run_start) - 1
        run_len = np.bincount(run_id[missing], minlength=run_id.max() + 1 if n else 0)
        fillable = missing & has_source
        fillable[missing] &= run_len[run_id[missing]] <= limit
        col[fillable] = col[idx[fillable]]


# A grid this much larger than the readings means a stray timestamp or a wrong step; building
# it would exhaust memory before anything said so.
_MAX_GRID_ROWS = 10_000_000
_MAX_GRID_RATIO = 20


def _check_grid_size(grid_rows: int, readings: int, step: pd.Timedelta, lo: np.ndarray,
                     hi: np.ndarray, ent_names, ent_first: np.ndarray) -> None:
    if grid_rows <= max(_MAX_GRID_ROWS, _MAX_GRID_RATIO * readings):
        return
    widest = int(np.argmax(hi - lo))
    step_ns = int(step.value)
    start = pd.Timestamp(int(lo[widest]) * step_ns, unit="ns", tz="UTC")
    end = pd.Timestamp(int(hi[widest]) * step_ns, unit="ns", tz="UTC")
    raise InputError(f"{readings} readings would need {grid_rows} rows at step {step}: entity "
                     f"'{ent_names[ent_first[widest]]}' spans {start} to {end}",
                     hint="check for stray timestamps (a wrong year, epoch units) or pass a "
                          "larger --step")
