"""Metric files -> :class:`~ftml.io.contract.MetricData` (``read_metrics``), or wide rows streamed
in chunks (``iter_metric_rows``) for the chunked and Dask paths."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from ftml.config import ReadConfig, parse_duration
from ftml.errors import ConfigError, InputError
from ftml.io.contract import MetricData, note_once
from ftml.io.entities import entity_pattern
from ftml.io.files import _check_file, expand_paths
from ftml.io.grid import infer_step, normalise
from ftml.io.rows import to_rows
from ftml.io.tables import _iter_raw, _read_errors, read_table
from ftml.io.timestamps import to_ns


def read_metrics(paths: Iterable[str | Path], cfg: ReadConfig | None = None,
                 metrics: list[str] | None = None, drop_text: bool = False) -> MetricData:
    """Read, validate and normalise metric files into one :class:`MetricData`.

    ``drop_text``: text columns are left out (and named in ``MetricData.dropped``) instead of
    being an error: training's reading of raw exports."""
    cfg = cfg or ReadConfig()
    step_from_config(cfg)  # a bad --step fails before any file is read
    if cfg.entity_map:
        entity_pattern(cfg.entity_map)  # a bad regex fails before any file is read
    files = expand_paths(paths)
    parts = []
    text: set[str] | None = set() if drop_text else None
    for f in files:
        raw = read_table(f)
        parts.append(to_rows(raw, str(f), cfg, text_columns=text))
        del raw  # freed before the next file is read and before normalising
    if text:  # a column that is text in one file is dropped from all
        parts = [p.drop(columns=[c for c in text if c in p.columns]) for p in parts]
    rows = parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True, sort=False)
    data = rows_to_data(rows, cfg, [str(f) for f in files], metrics)
    data.dropped = {c: "text" for c in sorted(text or ())}
    return data


def rows_to_data(rows: pd.DataFrame, cfg: ReadConfig, sources: list[str],
                 metrics: list[str] | None = None) -> MetricData:
    where = sources[0] if len(sources) == 1 else f"{len(sources)} metric files"
    if metrics is not None:
        missing = [m for m in metrics if m not in rows.columns]
        if missing:
            raise InputError(f"metric column(s) missing: {', '.join(missing)}", source=where,
                             hint="the model was trained with them; supply the same metrics")
        rows = rows[["entity", "timestamp", *metrics]]
    all_metrics = [c for c in rows.columns if c not in ("entity", "timestamp")]
    if not all_metrics:
        raise InputError("no metric columns", source=where, hint="add numeric metric columns")
    step = step_from_config(cfg)
    if step is not None:
        _check_step_fits(rows, step, cfg.max_fill_steps, where)
    try:
        frame, step = normalise(rows, step, cfg.max_fill_steps, all_metrics)
    except InputError as exc:
        if exc.source is not None:
            raise
        raise InputError(exc.problem, source=where, where=exc.where, hint=exc.hint) from None
    far_apart_note(frame, where)
    return MetricData(frame, step, all_metrics, sources)


#: An entity whose readings lie this far from the other entities' is named on stderr: one pod's
#: epoch timestamps years off (as one export of Nezha's has) is read without an error, but its
#: windows never meet the others' and a time split or calibration cut falls in the gap.
FAR_APART = pd.Timedelta(days=365)


def far_apart_note(frame: pd.DataFrame, where: str) -> None:
    """Name, on stderr, the entities whose span lies :data:`FAR_APART` or more from the middle
    entity's (the median first and last reading of all); nothing with fewer than 3 entities,
    where no middle says which side is off."""
    if len(frame) == 0:
        return
    span = frame.groupby("entity", observed=True)["timestamp"].agg(["min", "max"])
    if len(span) < 3:
        return
    lo, hi = to_ns(span["min"]), to_ns(span["max"])
    mid_lo, mid_hi = int(np.median(lo)), int(np.median(hi))
    gap = np.maximum(np.maximum(lo - mid_hi, mid_lo - hi), 0)
    far = np.flatnonzero(gap >= FAR_APART.value)
    if not len(far):
        return
    names = ", ".join(f"{span.index[i]!s} ({_day(lo[i])}..{_day(hi[i])})" for i in far[:3])
    more = f" and {len(far) - 3} more" if len(far) > 3 else ""
    note_once(f"ftml: warning: {where}: {len(far)} entit{'y' if len(far) == 1 else 'ies'} "
              f"read far from the others' time ({_day(mid_lo)}..{_day(mid_hi)}): {names}{more}; "
              "are their timestamps right? (--timestamp-col reads another column)")


def _day(ns: int) -> str:
    return pd.Timestamp(int(ns), tz="UTC").strftime("%Y-%m-%d")


def _check_step_fits(rows: pd.DataFrame, step: pd.Timedelta, max_fill_steps: int,
                     where: str) -> None:
    """A step so much finer than the readings' spacing that the gaps between them are longer
    than forward-filling bridges: every window would span a gap, and training would end far
    from the cause ("0 normal windows"). Name the mismatch instead."""
    try:
        spacing = infer_step(rows)
    except InputError:
        return  # single readings: nothing to compare
    if spacing > (max_fill_steps + 1) * step:
        raise InputError(f"--step {_short(step)} is much finer than the data's spacing of "
                         f"{_short(spacing)}: the steps between readings would be empty",
                         source=where, where="--step",
                         hint=f"pass --step {_short(spacing)} or leave --step out to infer it")


def _short(td: pd.Timedelta) -> str:
    seconds = td.total_seconds()
    return f"{seconds:g}s"


def step_from_config(cfg: ReadConfig) -> pd.Timedelta | None:
    if cfg.step is None:
        return None
    try:
        return parse_duration(cfg.step, "step")
    except ConfigError as exc:
        raise InputError(exc.problem, where="--step", hint=exc.hint) from None


def iter_metric_rows(paths: Iterable[str | Path], cfg: ReadConfig | None = None,
                     chunk_rows: int = 500_000, text_columns: set[str] | None = None
                     ) -> Iterator[pd.DataFrame]:
    """Stream wide rows (not yet normalised) from files, ``chunk_rows`` at a time, in file order.

    CSV and JSON Lines are read in chunks; Parquet by row group. Memory stays bounded by the
    chunk size whatever the file size. Errors name the row in the whole file, as
    :func:`read_metrics` does. ``text_columns``: as :func:`to_rows`.
    """
    cfg = cfg or ReadConfig()
    for f in expand_paths(paths):
        fmt, gz = _check_file(f)
        offset = 0
        chunks = _iter_raw(f, fmt, gz, chunk_rows)
        try:
            while True:
                with _read_errors(f, fmt, gz):  # around each read only: never around the consumer
                    raw = next(chunks, None)
                if raw is None:
                    break
                if len(raw) == 0:
                    continue
                yield to_rows(raw, str(f), cfg, row_offset=offset, text_columns=text_columns)
                offset += len(raw)
        finally:
            chunks.close()  # the file closes now, also when the consumer stops early
        if offset == 0:
            raise InputError("file has a header but no rows", source=str(f), hint="add data rows")
