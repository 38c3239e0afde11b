"""The metric data contract: read, validate and normalise metric and incident files; write atomically.

Every input is validated here, once, at the boundary; later stages trust a :class:`MetricData`:
one frame sorted by entity then time, on a regular step per entity (missing steps present as
rows of NaN), UTC timestamps and float64 metric columns.
"""

from __future__ import annotations

import glob
import gzip
import io as _io
import json
import os
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ftml.config import ReadConfig, parse_duration
from ftml.errors import ConfigError, InputError

TIMESTAMP_NAMES = ("timestamp", "time", "ts", "date", "datetime")
ENTITY_NAMES = ("entity", "host", "instance", "pod", "service")
DEFAULT_ENTITY = "default"
LONG_COLUMNS = ("metric", "value")
INCIDENT_COLUMNS = ("entity", "start", "end", "cause")
FORMATS = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet",
           ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
FORMAT_HINT = "use .csv, .csv.gz, .parquet or .jsonl"

# Epoch numbers are told apart by magnitude: seconds stay below 1e11 until the year 5138,
# milliseconds since 1973 are above it; likewise for micro- and nanoseconds.
_EPOCH_UNITS = ((1e11, "s"), (1e14, "ms"), (1e17, "us"), (np.inf, "ns"))


# --------------------------------------------------------------------------- files


def file_format(path: str | Path) -> tuple[str, bool]:
    """(format, gzipped) from the file name."""
    name = str(path).lower()
    gz = name.endswith(".gz")
    if gz:
        name = name[:-3]
    fmt = FORMATS.get(os.path.splitext(name)[1])
    if fmt is None:
        raise InputError("unknown file type", source=str(path), hint=FORMAT_HINT)
    if gz and fmt == "parquet":
        raise InputError("parquet files are compressed inside; do not gzip them",
                         source=str(path), hint="un-gzip the file")
    return fmt, gz


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Paths and globs -> existing files, in the order given (glob matches sorted)."""
    out: list[Path] = []
    for p in paths:
        p = str(p)
        if any(ch in p for ch in "*?["):
            matches = sorted(glob.glob(p, recursive=True))
            if not matches:
                raise InputError("no file matches this pattern", source=p,
                                 hint="check the path and quote the glob")
            out.extend(Path(m) for m in matches if os.path.isfile(m))
        else:
            path = Path(p)
            if path.is_dir():
                found = sorted(f for f in path.rglob("*") if f.is_file() and _known(f))
                if not found:
                    raise InputError("directory holds no metric files", source=p, hint=FORMAT_HINT)
                out.extend(found)
            else:
                out.append(path)
    if not out:
        raise InputError("no input files given", hint="pass --metrics PATH")
    return out


def _known(path: Path) -> bool:
    try:
        file_format(path)
    except InputError:
        return False
    return True


def read_table(path: str | Path, *, dtype_backend_numpy: bool = True) -> pd.DataFrame:
    """Read one CSV / JSON Lines / Parquet file (optionally gzipped) as it is."""
    path = Path(path)
    fmt, gz = file_format(path)
    if not path.exists():
        raise InputError("file not found", source=str(path), hint="check the path")
    if path.stat().st_size == 0:
        raise InputError("file is empty", source=str(path), hint="give a file with a header and rows")
    try:
        if fmt == "parquet":
            frame = pd.read_parquet(path)
        elif fmt == "csv":
            sep = "\t" if ".tsv" in path.name.lower() else ","
            frame = pd.read_csv(path, sep=sep, compression="gzip" if gz else None,
                                low_memory=False)
        else:
            frame = _read_jsonl(path, gz)
    except InputError:
        raise
    except (gzip.BadGzipFile, zlib.error, EOFError):
        raise InputError("not a valid gzip file", source=str(path),
                         hint="re-compress it with gzip or drop the .gz suffix") from None
    except UnicodeDecodeError:
        hint = "is it compressed? name it .gz" if not gz else "the file is not UTF-8 text"
        raise InputError("cannot decode the file as text", source=str(path), hint=hint) from None
    except pd.errors.EmptyDataError:
        raise InputError("file is empty", source=str(path),
                         hint="give a file with a header and rows") from None
    except pd.errors.ParserError as exc:
        raise InputError(f"cannot parse CSV: {_first_line(exc)}", source=str(path),
                         hint="every row needs as many fields as the header") from None
    except OSError as exc:  # pyarrow raises ArrowInvalid (an OSError subclass is not guaranteed)
        raise InputError(f"cannot read file: {_first_line(exc)}", source=str(path)) from None
    except Exception as exc:  # pyarrow.lib.ArrowInvalid and friends: a broken parquet file
        if type(exc).__module__.startswith("pyarrow"):
            raise InputError(f"not a valid parquet file: {_first_line(exc)}",
                             source=str(path)) from None
        raise
    if frame.shape[0] == 0:
        raise InputError("file has a header but no rows", source=str(path), hint="add data rows")
    return frame


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _read_jsonl(path: Path, gz: bool) -> pd.DataFrame:
    opener = gzip.open if gz else open
    with opener(path, "rt", encoding="utf-8") as fh:
        text = fh.read()
    if not text.strip():
        raise InputError("file is empty", source=str(path), hint="give one JSON object per line")
    try:
        return pd.read_json(_io.StringIO(text), lines=True, convert_dates=False,
                            dtype=False)
    except ValueError:
        pass
    # Slow path, only on error: find the line that is not a JSON object.
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"not valid JSON ({exc.msg})", source=str(path),
                             where=f"line {lineno}", hint="write one JSON object per line") from None
        if not isinstance(obj, dict):
            raise InputError("line is not a JSON object", source=str(path),
                             where=f"line {lineno}", hint="write one JSON object per line")
    raise InputError("cannot read JSON Lines", source=str(path),
                     hint="write one JSON object per line")


# --------------------------------------------------------------------------- timestamps


def parse_timestamps(values: pd.Series, *, source: str, column: str,
                     row_offset: int = 0) -> pd.Series:
    """ISO 8601 (naive = UTC) or epoch s / ms / us / ns (by magnitude) -> UTC datetimes.

    A value that does not parse is an error naming its row (1-based data row).
    """
    s = values
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        return s.dt.tz_convert("UTC").astype("datetime64[ns, UTC]")
    if pd.api.types.is_datetime64_dtype(s.dtype):
        return s.dt.tz_localize("UTC").astype("datetime64[ns, UTC]")
    if pd.api.types.is_bool_dtype(s.dtype):
        _bad_timestamp(s, s.index[0], source, column, row_offset)
    if not pd.api.types.is_numeric_dtype(s.dtype):
        numeric = pd.to_numeric(s, errors="coerce")
        if numeric.notna().all():
            s = numeric
    if pd.api.types.is_numeric_dtype(s.dtype):
        if s.isna().any():
            _bad_timestamp(values, s.index[s.isna().to_numpy()][0], source, column, row_offset)
        magnitude = float(np.nanmedian(np.abs(s.to_numpy(dtype=float))))
        unit = next(u for limit, u in _EPOCH_UNITS if magnitude < limit)
        out = pd.to_datetime(s.to_numpy(dtype=float) if unit == "s" else s.to_numpy(dtype="int64"),
                             unit=unit, utc=True)
        return pd.Series(out, index=s.index).astype("datetime64[ns, UTC]")
    text = s.astype("string")
    try:
        out = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
    except (ValueError, TypeError):
        out = pd.Series(pd.NaT, index=s.index, dtype="datetime64[ns, UTC]")
    bad = out.isna().to_numpy()
    if bad.any():
        # ISO8601 parsing is strict about one shape per column; retry the mixed ones.
        retry = pd.to_datetime(text[bad], utc=True, format="mixed", errors="coerce")
        out = out.copy()
        out[bad] = retry
        bad = out.isna().to_numpy()
    if bad.any():
        _bad_timestamp(values, s.index[bad][0], source, column, row_offset)
    return out.astype("datetime64[ns, UTC]")


def _bad_timestamp(values: pd.Series, label, source: str, column: str, row_offset: int):
    pos = values.index.get_loc(label)
    raw = values.iloc[pos]
    raise InputError(f"cannot parse timestamp {raw!r}", source=source,
                     where=f"row {row_offset + pos + 1}, column '{column}'",
                     hint="use ISO 8601 (2026-01-05T10:00:00Z) or epoch seconds/milliseconds")


# --------------------------------------------------------------------------- metric frames


@dataclass
class MetricData:
    """Metrics in the contract: ``frame`` has columns ``entity``, ``timestamp`` and one float64
    column per metric, sorted by entity then timestamp, one row per step of each entity's span
    (steps nobody measured are rows of NaN)."""

    frame: pd.DataFrame
    step: pd.Timedelta
    metrics: list[str]
    sources: list[str] = field(default_factory=list)

    @property
    def entities(self) -> list[str]:
        return list(pd.unique(self.frame["entity"]))

    def values(self) -> np.ndarray:
        return self.frame[self.metrics].to_numpy(dtype=np.float64)

    def entity_codes(self) -> tuple[np.ndarray, list[str]]:
        codes, uniques = pd.factorize(self.frame["entity"], sort=False)
        return codes.astype(np.int64), [str(u) for u in uniques]

    def span(self) -> tuple[pd.Timestamp, pd.Timestamp]:
        ts = self.frame["timestamp"]
        return ts.min(), ts.max()

    def select(self, metrics: list[str], source: str = "metrics") -> MetricData:
        """The same data with exactly ``metrics`` (in that order); missing ones are an error."""
        missing = [m for m in metrics if m not in self.frame.columns]
        if missing:
            raise InputError(f"metric column(s) missing: {', '.join(missing)}", source=source,
                             hint="the model was trained with them; supply the same metrics")
        frame = self.frame[["entity", "timestamp", *metrics]]
        return MetricData(frame, self.step, list(metrics), self.sources)


def resolve_column(frame: pd.DataFrame, wanted: str | None, candidates: tuple[str, ...],
                   what: str, source: str, option: str, required: bool) -> str | None:
    if wanted:
        if wanted not in frame.columns:
            raise InputError(f"no column '{wanted}'", source=source,
                             hint=f"columns are {', '.join(map(str, frame.columns[:12]))}; "
                                  f"fix {option}")
        return wanted
    lower = {str(c).lower(): c for c in frame.columns}
    for name in candidates:
        if name in lower:
            return lower[name]
    if required:
        raise InputError(f"no {what} column", source=source,
                         hint=f"name it '{candidates[0]}' or pass {option}")
    return None


def to_rows(raw: pd.DataFrame, source: str, cfg: ReadConfig, row_offset: int = 0) -> pd.DataFrame:
    """One raw table (wide or long layout) -> wide rows: entity, timestamp, metric columns (float64).

    Not yet on a regular step: that is :func:`normalise`'s job, once all inputs are together.
    """
    ts_col = resolve_column(raw, cfg.timestamp_col, TIMESTAMP_NAMES, "timestamp", source,
                            "--timestamp-col", required=True)
    ent_col = resolve_column(raw, cfg.entity_col, ENTITY_NAMES, "entity", source,
                             "--entity-col", required=False)
    columns = {str(c).lower(): c for c in raw.columns}
    has_metric, has_value = "metric" in columns, "value" in columns
    excluded = set(cfg.exclude)
    timestamps = parse_timestamps(raw[ts_col], source=source, column=str(ts_col),
                                  row_offset=row_offset)
    entities = (raw[ent_col].astype("string").fillna(DEFAULT_ENTITY)
                if ent_col is not None else pd.Series(DEFAULT_ENTITY, index=raw.index))
    if has_metric or has_value:
        if not (has_metric and has_value):
            have, lack = ("metric", "value") if has_metric else ("value", "metric")
            raise InputError(f"unknown layout: a '{have}' column but no '{lack}' column",
                             source=source, hint="long layout needs timestamp, entity, metric, "
                                                 "value; wide layout one column per metric")
        metric_col, value_col = columns["metric"], columns["value"]
        extra = [c for c in raw.columns
                 if c not in (ts_col, ent_col, metric_col, value_col) and c not in excluded]
        if extra:
            raise InputError(f"unexpected column '{extra[0]}' in long layout", source=source,
                             hint=f"drop it or pass --exclude {extra[0]}")
        values = _numeric(raw[value_col], source, str(value_col), row_offset)
        long = pd.DataFrame({"entity": entities.to_numpy(), "timestamp": timestamps.to_numpy(),
                             "metric": raw[metric_col].astype("string").to_numpy(),
                             "value": values.to_numpy()})
        if long["metric"].isna().any():
            pos = int(np.flatnonzero(long["metric"].isna().to_numpy())[0])
            raise InputError("empty metric name", source=source,
                             where=f"row {row_offset + pos + 1}", hint="fill the 'metric' column")
        wide = long.groupby(["entity", "timestamp", "metric"], sort=False)["value"].mean() \
            .unstack("metric")
        wide.columns = [str(c) for c in wide.columns]
        wide = wide.reset_index()
        return wide
    metric_cols = [c for c in raw.columns if c not in (ts_col, ent_col) and c not in excluded]
    if not metric_cols:
        raise InputError("no metric columns", source=source,
                         hint="add one numeric column per metric (wide) or metric/value (long)")
    out = {"entity": entities.to_numpy(), "timestamp": timestamps.to_numpy()}
    for c in metric_cols:
        out[str(c)] = _numeric(raw[c], source, str(c), row_offset).to_numpy()
    return pd.DataFrame(out)


def _numeric(col: pd.Series, source: str, name: str, row_offset: int) -> pd.Series:
    if pd.api.types.is_bool_dtype(col.dtype):
        return col.astype("float64")
    if pd.api.types.is_numeric_dtype(col.dtype):
        return col.astype("float64")
    text = col.astype("string").str.strip()
    num = pd.to_numeric(text.replace("", pd.NA), errors="coerce")
    bad = (num.isna() & text.notna() & (text != "") & ~text.str.lower().isin(_NAN_WORDS))
    if bad.any():
        pos = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(f"text {col.iloc[pos]!r} in a metric column", source=source,
                         where=f"column '{name}', row {row_offset + pos + 1}",
                         hint=f"fix the value or pass --exclude {name} to drop the column")
    return num.astype("float64")


_NAN_WORDS = ["nan", "na", "n/a", "null", "none", "-"]


def to_ns(timestamps) -> np.ndarray:
    """UTC timestamps -> int64 nanoseconds since the epoch."""
    return pd.DatetimeIndex(timestamps).as_unit("ns").asi8


def infer_step(rows: pd.DataFrame) -> pd.Timedelta:
    """Median spacing between consecutive distinct timestamps of each entity."""
    ts = rows[["entity", "timestamp"]].drop_duplicates().sort_values(["entity", "timestamp"])
    t = to_ns(ts["timestamp"])
    e = pd.factorize(ts["entity"])[0]
    same = e[1:] == e[:-1]
    diffs = np.diff(t)[same]
    diffs = diffs[diffs > 0]
    if diffs.size == 0:
        raise InputError("cannot infer the step: each entity has a single timestamp",
                         hint="pass --step, e.g. --step 60s")
    return pd.Timedelta(int(np.median(diffs)), unit="ns")


def normalise(rows: pd.DataFrame, step: pd.Timedelta | None, max_fill_steps: int,
              metrics: list[str] | None = None) -> tuple[pd.DataFrame, pd.Timedelta]:
    """Wide rows -> the contract: per entity, a regular grid of ``step`` (timestamps rounded to
    it, duplicates averaged), sorted, short gaps forward-filled, long gaps left as NaN rows."""
    if metrics is None:
        metrics = [c for c in rows.columns if c not in ("entity", "timestamp")]
    if step is None:
        step = infer_step(rows)
    step_ns = int(step.value)
    t = to_ns(rows["timestamp"])
    slot = np.floor_divide(t + step_ns // 2, step_ns)  # round to the nearest step
    ent_codes, ent_names = pd.factorize(rows["entity"], sort=True)
    vals = rows[metrics].to_numpy(dtype=np.float64)
    # Average duplicates of (entity, slot): sort, then reduce runs.
    order = np.lexsort((slot, ent_codes))
    ent_s, slot_s, vals_s = ent_codes[order], slot[order], vals[order]
    new = np.ones(len(order), dtype=bool)
    new[1:] = (ent_s[1:] != ent_s[:-1]) | (slot_s[1:] != slot_s[:-1])
    starts = np.flatnonzero(new)
    if starts.size != len(order):
        finite = np.isfinite(vals_s)
        sums = np.add.reduceat(np.where(finite, vals_s, 0.0), starts, axis=0)
        counts = np.add.reduceat(finite.astype(np.int64), starts, axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            vals_u = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    else:
        vals_u = vals_s
    ent_u, slot_u = ent_s[starts], slot_s[starts]
    # Full grid per entity from its first to its last slot.
    first_idx = np.flatnonzero(np.r_[True, ent_u[1:] != ent_u[:-1]])
    last_idx = np.r_[first_idx[1:], len(ent_u)] - 1
    lo, hi = slot_u[first_idx], slot_u[last_idx]
    lengths = (hi - lo + 1).astype(np.int64)
    grid_ent = np.repeat(ent_u[first_idx], lengths)
    offsets = np.r_[0, np.cumsum(lengths)[:-1]]
    grid_slot = np.arange(lengths.sum(), dtype=np.int64) - np.repeat(offsets, lengths) \
        + np.repeat(lo, lengths)
    grid_vals = np.full((len(grid_slot), len(metrics)), np.nan)
    group = np.cumsum(np.r_[True, ent_u[1:] != ent_u[:-1]]) - 1  # entity run of each unique row
    pos = offsets[group] + (slot_u - lo[group])
    grid_vals[pos] = vals_u
    fill_short_gaps(grid_vals, grid_ent, max_fill_steps)
    frame = pd.DataFrame(grid_vals, columns=metrics)
    frame.insert(0, "timestamp", pd.to_datetime(grid_slot * step_ns, unit="ns", utc=True))
    frame.insert(0, "entity", pd.Categorical.from_codes(grid_ent, categories=[
        str(n) for n in ent_names]))
    return frame, step


def fill_short_gaps(values: np.ndarray, segments: np.ndarray, limit: int) -> None:
    """Forward-fill, in place, NaN runs of at most ``limit`` rows that follow a value of the same
    segment; longer runs stay NaN so that no window spans them."""
    if limit <= 0 or values.size == 0:
        return
    n = values.shape[0]
    seg_start = np.r_[True, segments[1:] != segments[:-1]]
    for j in range(values.shape[1]):  # per metric column: vectorized over rows
        col = values[:, j]
        missing = np.isnan(col)
        if not missing.any():
            continue
        # Index of the last valid row at or before each row, restarting at each segment.
        idx = np.where(~missing, np.arange(n), -1)
        idx = np.where(seg_start & missing, -2, idx)  # a segment's leading NaNs have no source
        np.maximum.accumulate(idx, out=idx)
        seg_first = np.maximum.accumulate(np.where(seg_start, np.arange(n), 0))
        has_source = idx >= seg_first
        # Run length of each NaN run.
        run_start = missing & np.r_[True, ~missing[:-1] | seg_start[1:]]
        run_id = np.cumsum(run_start) - 1
        run_len = np.bincount(run_id[missing], minlength=run_id.max() + 1 if n else 0)
        fillable = missing & has_source
        fillable[missing] &= run_len[run_id[missing]] <= limit
        col[fillable] = col[idx[fillable]]


def read_metrics(paths: Iterable[str | Path], cfg: ReadConfig | None = None,
                 metrics: list[str] | None = None) -> MetricData:
    """Read, validate and normalise metric files into one :class:`MetricData`."""
    cfg = cfg or ReadConfig()
    files = expand_paths(paths)
    parts = []
    for f in files:
        raw = read_table(f)
        parts.append(to_rows(raw, str(f), cfg))
    rows = parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True, sort=False)
    return rows_to_data(rows, cfg, [str(f) for f in files], metrics)


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
    frame, step = normalise(rows, step, cfg.max_fill_steps, all_metrics)
    return MetricData(frame, step, all_metrics, sources)


def step_from_config(cfg: ReadConfig) -> pd.Timedelta | None:
    if cfg.step is None:
        return None
    try:
        return parse_duration(cfg.step, "step")
    except ConfigError as exc:
        raise InputError(exc.problem, where="--step", hint=exc.hint) from None


def iter_metric_rows(paths: Iterable[str | Path], cfg: ReadConfig | None = None,
                     chunk_rows: int = 500_000) -> Iterator[pd.DataFrame]:
    """Stream wide rows (not yet normalised) from files, ``chunk_rows`` at a time, in file order.

    CSV and JSON Lines are read in chunks; Parquet by row group. Memory stays bounded by the
    chunk size whatever the file size.
    """
    cfg = cfg or ReadConfig()
    for f in expand_paths(paths):
        fmt, gz = file_format(f)
        if not f.exists():
            raise InputError("file not found", source=str(f), hint="check the path")
        if f.stat().st_size == 0:
            raise InputError("file is empty", source=str(f), hint="give a file with a header and rows")
        offset = 0
        for raw in _iter_raw(f, fmt, gz, chunk_rows):
            yield to_rows(raw, str(f), cfg, row_offset=offset)
            offset += len(raw)
        if offset == 0:
            raise InputError("file has a header but no rows", source=str(f), hint="add data rows")


def _iter_raw(path: Path, fmt: str, gz: bool, chunk_rows: int) -> Iterator[pd.DataFrame]:
    try:
        if fmt == "csv":
            sep = "\t" if ".tsv" in path.name.lower() else ","
            with pd.read_csv(path, sep=sep, compression="gzip" if gz else None,
                             chunksize=chunk_rows, low_memory=False) as reader:
                yield from reader
        elif fmt == "parquet":
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(path)
            for batch in pf.iter_batches(batch_size=chunk_rows):
                yield batch.to_pandas()
        else:
            opener = gzip.open if gz else open
            with opener(path, "rt", encoding="utf-8") as fh:
                while True:
                    lines = [ln for ln in (fh.readline() for _ in range(chunk_rows)) if ln]
                    if not lines:
                        break
                    yield pd.read_json(_io.StringIO("".join(lines)), lines=True,
                                       convert_dates=False, dtype=False)
    except (gzip.BadGzipFile, zlib.error, EOFError):
        raise InputError("not a valid gzip file", source=str(path),
                         hint="re-compress it with gzip or drop the .gz suffix") from None
    except UnicodeDecodeError:
        raise InputError("cannot decode the file as text", source=str(path),
                         hint="is it compressed? name it .gz") from None
    except pd.errors.ParserError as exc:
        raise InputError(f"cannot parse CSV: {_first_line(exc)}", source=str(path),
                         hint="every row needs as many fields as the header") from None
    except ValueError as exc:
        raise InputError(f"cannot read: {_first_line(exc)}", source=str(path)) from None


# --------------------------------------------------------------------------- incidents


def read_incidents(path: str | Path, entities: list[str] | None = None,
                   cfg: ReadConfig | None = None) -> pd.DataFrame:
    """Incidents file -> frame ``entity, start, end, cause`` (UTC), sorted by entity, start.

    ``entities`` are those the metrics have: an incident for another entity is an error, and
    with exactly one the ``entity`` column may be left out.
    """
    source = str(path)
    raw = read_table(path)
    cols = {str(c).lower(): c for c in raw.columns}
    for need in ("start", "end", "cause"):
        if need not in cols:
            raise InputError(f"no '{need}' column", source=source,
                             hint="incidents need columns entity, start, end, cause")
    out = pd.DataFrame({
        "start": parse_timestamps(raw[cols["start"]], source=source, column="start").to_numpy(),
        "end": parse_timestamps(raw[cols["end"]], source=source, column="end").to_numpy(),
        "cause": raw[cols["cause"]].astype("string").str.strip().to_numpy(),
    })
    if out["cause"].isna().any() or (out["cause"] == "").any():
        pos = int(np.flatnonzero((out["cause"].isna() | (out["cause"] == "")).to_numpy())[0])
        raise InputError("empty cause", source=source, where=f"row {pos + 1}",
                         hint="name the root cause of every incident")
    ent_col = (cfg.entity_col if cfg and cfg.entity_col in raw.columns else
               next((cols[n] for n in ENTITY_NAMES if n in cols), None))
    if ent_col is not None:
        out.insert(0, "entity", raw[ent_col].astype("string").to_numpy())
    elif entities is not None and len(entities) == 1:
        out.insert(0, "entity", entities[0])
    else:
        raise InputError("no 'entity' column", source=source,
                         hint="the metrics have several entities: say which one each incident is on")
    bad = (out["end"] < out["start"]).to_numpy()
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise InputError("incident ends before it starts", source=source, where=f"row {pos + 1}",
                         hint="swap start and end")
    if entities is not None:
        known = set(map(str, entities))
        unknown = ~out["entity"].isin(known).to_numpy()
        if unknown.any():
            pos = int(np.flatnonzero(unknown)[0])
            raise InputError(f"incident for entity '{out['entity'].iloc[pos]}' that has no metrics",
                             source=source, where=f"row {pos + 1}",
                             hint="fix the entity name or add its metrics")
    out["entity"] = out["entity"].astype(str)
    out["cause"] = out["cause"].astype(str)
    return out.sort_values(["entity", "start"], kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------- writing


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename,
    on failure it is removed, so readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_table(frame: pd.DataFrame, path: str | Path) -> None:
    """Write a frame atomically; the format follows the extension (.csv[.gz], .parquet, .jsonl)."""
    fmt, gz = file_format(path)
    with atomic_path(path) as tmp:
        _writer(fmt, gz)(frame, tmp)


def _writer(fmt: str, gz: bool) -> Callable[[pd.DataFrame, Path], None]:
    def csv(frame, tmp):
        frame.to_csv(tmp, index=False, compression="gzip" if gz else None,
                     date_format="%Y-%m-%dT%H:%M:%SZ")

    def parquet(frame, tmp):
        frame.to_parquet(tmp, index=False)

    def jsonl(frame, tmp):
        text = frame.to_json(orient="records", lines=True, date_format="iso", date_unit="s")
        data = text.encode()
        if gz:
            data = gzip.compress(data)
        tmp.write_bytes(data)

    return {"csv": csv, "parquet": parquet, "jsonl": jsonl}[fmt]


def write_records(records: list[dict], path: str | Path) -> None:
    """Write a list of plain dicts (e.g. events) atomically; nested lists kept as JSON in CSV."""
    fmt, gz = file_format(path)
    if fmt == "jsonl":
        text = "".join(json.dumps(r, default=str) + "\n" for r in records)
        write_bytes(path, gzip.compress(text.encode()) if gz else text.encode())
        return
    frame = pd.DataFrame.from_records(records)
    if fmt == "csv":
        for col in frame.columns:
            if frame[col].map(lambda v: isinstance(v, (list, dict))).any():
                frame[col] = frame[col].map(json.dumps)
    write_table(frame, path)


def incident_spans(incidents: pd.DataFrame | None) -> dict[str, np.ndarray]:
    """Incidents -> {entity: array of [start_ns, end_ns]} (sorted by start)."""
    if incidents is None or incidents.empty:
        return {}
    out = {}
    for ent, grp in incidents.groupby("entity", sort=True):
        out[str(ent)] = np.column_stack([to_ns(grp["start"]), to_ns(grp["end"])])
    return out


def label_times(entity: np.ndarray, t_ns: np.ndarray, incidents: pd.DataFrame | None
                ) -> np.ndarray:
    """Index (into ``incidents``) of the incident each (entity, time) falls in, or -1."""
    label = np.full(len(t_ns), -1, dtype=np.int64)
    if incidents is None or incidents.empty:
        return label
    starts, ends = to_ns(incidents["start"]), to_ns(incidents["end"])
    for ent, idx in incidents.groupby("entity", sort=False).indices.items():  # per entity
        rows = np.flatnonzero(entity == ent)
        if rows.size == 0:
            continue
        t = t_ns[rows]
        for i in idx:  # incidents of one entity: few
            inside = (t >= starts[i]) & (t <= ends[i])
            label[rows[inside]] = i
    return label
