"""The metric data contract: read, validate and normalise metric and incident files; write atomically.

Every input is validated here, once, at the boundary; later stages trust a :class:`MetricData`:
one frame sorted by entity then time, on a regular step per entity (missing steps present as
rows of NaN), UTC timestamps and float64 metric columns.

Errors are :class:`InputError` naming the file, the place (data rows count from 1 after the
header) and what to do.
"""

from __future__ import annotations

import glob
import gzip
import io as _io
import itertools
import json
import os
import re
import secrets
import warnings
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
TIMESTAMP_HINT = "use ISO 8601 (2026-01-05T10:00:00Z) or epoch seconds/milliseconds"

# Epoch numbers are told apart by magnitude, value by value: seconds stay below 1e11 until the
# year 5138, milliseconds since 1973 are above it; likewise for micro- and nanoseconds.
_EPOCH_UNITS = ((1e11, "s", 10**9), (1e14, "ms", 10**6), (1e17, "us", 10**3),
                (np.inf, "ns", 1))
# What datetime64[ns] can hold (years 1677-2262).
_NS_MIN, _NS_MAX = pd.Timestamp.min.tz_localize("UTC"), pd.Timestamp.max.tz_localize("UTC")
_GZIP_MAGIC = b"\x1f\x8b"
_PARQUET_MAGIC = b"PAR1"


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


def _check_file(path: Path) -> tuple[str, bool]:
    """(format, gzipped) of a file that exists, is not empty and whose first bytes agree with its
    name: a wrong suffix is caught here, with a clear message, before a parser trips on it."""
    fmt, gz = file_format(path)
    source = str(path)
    if not path.exists():
        raise InputError("file not found", source=source, hint="check the path")
    if path.is_dir():
        raise InputError("is a directory, not a file", source=source, hint="give a file path")
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(4)
            if fmt == "parquet" and size >= 8:
                fh.seek(-4, os.SEEK_END)
                tail = fh.read(4)
    except OSError as exc:
        raise InputError(f"cannot read file: {exc.strerror or exc}", source=source,
                         hint="check the file's permissions") from None
    if size == 0:
        raise InputError("file is empty", source=source, hint="give a file with a header and rows")
    if gz and not head.startswith(_GZIP_MAGIC):
        raise InputError("named .gz but not gzip-compressed", source=source,
                         hint="drop the .gz suffix or compress the file with gzip")
    if not gz and head.startswith(_GZIP_MAGIC):
        hint = ("un-gzip it: parquet is compressed inside" if fmt == "parquet"
                else f"name it {path.name}.gz")
        raise InputError("file is gzip-compressed but not named .gz", source=source, hint=hint)
    if fmt == "parquet":
        if head != _PARQUET_MAGIC:
            raise InputError("not a parquet file", source=source,
                             hint="name the file after its format: .csv, .jsonl or .parquet")
        if size < 8 or tail != _PARQUET_MAGIC:
            raise InputError("parquet file is truncated: it has no footer", source=source,
                             hint="copy or export the file again")
    elif head == _PARQUET_MAGIC:
        raise InputError("file is parquet but not named .parquet", source=source,
                         hint="name it .parquet")
    return fmt, gz


def read_table(path: str | Path, *, dtype_backend_numpy: bool = True,
               allow_empty: bool = False) -> pd.DataFrame:
    """Read one CSV / JSON Lines / Parquet file (optionally gzipped) as it is.

    ``allow_empty``: a header without rows is a valid, empty table (an incidents file of a
    period without incidents) instead of an error."""
    path = Path(path)
    fmt, gz = _check_file(path)
    with _read_errors(path, fmt, gz):
        if fmt == "parquet":
            frame = pd.read_parquet(path)
        elif fmt == "csv":
            frame = next(_iter_csv(path, gz, None))
        else:
            opener = gzip.open if gz else open
            with opener(path, "rt", encoding="utf-8-sig") as fh:
                text = fh.read()
            if not text.strip():
                raise InputError("file is empty", source=str(path),
                                 hint="give one JSON object per line")
            frame = _parse_jsonl(text, path, 0)
    if frame.shape[0] == 0 and not allow_empty:
        raise InputError("file has a header but no rows", source=str(path), hint="add data rows")
    return frame


@contextmanager
def _read_errors(path: Path, fmt: str, gz: bool) -> Iterator[None]:
    """Parser and decompression failures -> one InputError naming the file."""
    source = str(path)
    try:
        yield
    except InputError:
        raise
    except (gzip.BadGzipFile, zlib.error):
        raise InputError("corrupt gzip data", source=source,
                         hint="re-compress the file with gzip") from None
    except EOFError:
        raise InputError("gzip file is truncated", source=source,
                         hint="copy or compress the file again") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text (byte {exc.start})", source=source,
                         hint="save the file as UTF-8") from None
    except pd.errors.EmptyDataError:
        raise InputError("file is empty", source=source,
                         hint="give a file with a header and rows") from None
    except pd.errors.ParserWarning as exc:
        # index_col=False turns a first row longer than the header into this warning (made an
        # error): pandas would otherwise silently shift columns.
        if "header" in str(exc):
            raise InputError("first data row has more fields than the header", source=source,
                             where="line 2",
                             hint="every row needs as many fields as the header") from None
        raise InputError(f"cannot parse CSV: {_first_line(exc)}", source=source) from None
    except pd.errors.ParserError as exc:
        raise _csv_error(exc, source) from None
    except Exception as exc:
        # pyarrow reports a broken file as a plain OSError or as one of its own errors.
        if fmt == "parquet" and (isinstance(exc, (OSError, ValueError))
                                 or type(exc).__module__.startswith("pyarrow")):
            raise InputError("parquet file is corrupt", source=source,
                             hint="copy or export the file again") from None
        if isinstance(exc, OSError):
            raise InputError(f"cannot read file: {_first_line(exc)}", source=source) from None
        raise


def _csv_error(exc: Exception, source: str) -> InputError:
    text = _first_line(exc)
    m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", text)
    if m:
        return InputError(f"row has {m.group(3)} fields, the header {m.group(1)}", source=source,
                          where=f"line {m.group(2)}",
                          hint="every row needs as many fields as the header")
    return InputError(f"cannot parse CSV: {text}", source=source,
                      hint="check quoting and the field separator")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _iter_csv(path: Path, gz: bool, chunk_rows: int | None) -> Iterator[pd.DataFrame]:
    """CSV in chunks (or whole with ``chunk_rows=None``), a too-long first row an error."""
    sep = "\t" if ".tsv" in path.name.lower() else ","
    with warnings.catch_warnings():
        warnings.simplefilter("error", pd.errors.ParserWarning)
        # index_col=False: trailing commas do not turn the first column into an index.
        reader = pd.read_csv(path, sep=sep, compression="gzip" if gz else None, index_col=False,
                             low_memory=False, chunksize=chunk_rows)
    if chunk_rows is None:
        _check_short_rows(path, gz, sep, reader, 0, None, None)
        yield reader
        return
    with reader:
        first = True
        lines = None  # the file's lines, opened at the first chunk that may hold a short row
        offset = 0
        while True:
            # The warnings filter is set around the first read only (the header check happens
            # there): a generator must not leave it changed while suspended, and later reads
            # may run in another thread (filters are process-wide).
            if first:
                with warnings.catch_warnings():
                    warnings.simplefilter("error", pd.errors.ParserWarning)
                    chunk = next(reader, None)
                first = False
            else:
                chunk = next(reader, None)
            if chunk is None:
                if lines is not None:
                    lines.close()
                return
            lines = _check_short_rows(path, gz, sep, chunk, offset, lines, chunk_rows)
            offset += len(chunk)
            yield chunk


_LINE_SEP = "\x1f"  # a separator no metric file holds: each record is read as one field


def _check_short_rows(path: Path, gz: bool, sep: str, chunk: pd.DataFrame, offset: int,
                      lines, chunk_rows: int | None):
    """Refuse a row with fewer fields than the header (the C parser fills them as empty,
    which would score them as missing values). Such a row has its last field empty; only a
    chunk with an empty last field is looked at again, as whole lines, read by the same
    parser in step with the chunks, so a clean file costs one isna of one column. Returns the
    lines reader to pass with the next chunk."""
    if lines is not None:
        view = next(lines)
    elif chunk.shape[1] < 2 or len(chunk) == 0 or not chunk.iloc[:, -1].isna().any():
        return None
    else:
        lines = pd.read_csv(path, sep=_LINE_SEP, header=None, names=["line"], dtype=str,
                            na_filter=False, compression="gzip" if gz else None,
                            skiprows=1 + offset, chunksize=chunk_rows or len(chunk))
        view = next(lines)
    if len(view) != len(chunk):  # lines the parser counts otherwise: no check, no false alarm
        lines.close()
        return None
    candidates = np.flatnonzero(chunk.iloc[:, -1].isna().to_numpy())
    if len(candidates):
        # Separators inside quotes only add to the count: no clean row is taken as short.
        fields = view["line"].iloc[candidates].str.count(re.escape(sep)).to_numpy() + 1
        short = np.flatnonzero(fields < chunk.shape[1])
        if len(short):
            i = int(candidates[short[0]])
            lines.close()
            raise InputError(f"row has {int(fields[short[0]])} fields, the header "
                             f"{chunk.shape[1]}", source=str(path), where=f"row {offset + i + 1}",
                             hint="every row needs as many fields as the header; an "
                                  "empty value is an empty field")
    if chunk_rows is None:
        lines.close()
        return None
    return lines


# Values as written: no guessing of dates or types (timestamps are parsed by the contract's
# rules), floats exact. pandas 3 deprecates convert_dates; dtype=False alone stops it there.
_JSON_OPTIONS: dict = {"lines": True, "dtype": False, "precise_float": True}
if int(pd.__version__.split(".")[0]) < 3:
    _JSON_OPTIONS["convert_dates"] = False


def _parse_jsonl(text: str, path: Path, line_offset: int) -> pd.DataFrame:
    """JSON Lines text -> frame; a line that is not a JSON object is an error naming it."""
    # pandas takes a line holding an array or a bare value without complaint; find it first.
    odd = _NOT_AN_OBJECT.search(text)
    if odd is None:
        try:
            return pd.read_json(_io.StringIO(text), **_JSON_OPTIONS)
        except (ValueError, TypeError):
            pass
    # Slow path, only on error: find the line that is not a JSON object.
    for lineno, line in enumerate(text.splitlines(), line_offset + 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"not valid JSON ({exc.msg})", source=str(path),
                             where=f"line {lineno}",
                             hint="write one JSON object per line") from None
        if not isinstance(obj, dict):
            kind = "a JSON array" if isinstance(obj, list) else "not a JSON object"
            raise InputError(f"line is {kind}", source=str(path), where=f"line {lineno}",
                             hint="write one JSON object per line, as JSON Lines")
    raise InputError("cannot read JSON Lines", source=str(path),
                     hint="write one JSON object per line")


_NOT_AN_OBJECT = re.compile(r"^[ \t]*[^{\s]", re.MULTILINE)


# --------------------------------------------------------------------------- timestamps


def parse_timestamps(values: pd.Series, *, source: str, column: str,
                     row_offset: int = 0) -> pd.Series:
    """ISO 8601 (naive = UTC) or epoch s / ms / us / ns (by magnitude) -> UTC datetimes.

    Forms may be mixed within a column. A value that does not parse is an error naming its row
    (1-based data row).
    """
    s = values
    if isinstance(s.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(s.dtype):
        out = s.dt.tz_convert("UTC") if isinstance(s.dtype, pd.DatetimeTZDtype) \
            else s.dt.tz_localize("UTC")
        if out.isna().any():
            _bad_timestamp(values, np.flatnonzero(out.isna().to_numpy())[0], source, column,
                           row_offset)
        return _as_ns(out, values, source, column, row_offset)
    if len(s) == 0:
        return pd.Series([], index=s.index, dtype="datetime64[ns, UTC]")
    if pd.api.types.is_bool_dtype(s.dtype):
        _bad_timestamp(values, 0, source, column, row_offset)
    if pd.api.types.is_numeric_dtype(s.dtype):
        missing = s.isna().to_numpy()
        if missing.any():
            _bad_timestamp(values, np.flatnonzero(missing)[0], source, column, row_offset)
        ns = _epoch_to_ns(s.to_numpy(), values, np.arange(len(s)), source, column, row_offset)
        return pd.Series(pd.to_datetime(ns, unit="ns", utc=True), index=s.index)
    text = s.astype("string").str.strip()
    missing = (text.isna() | (text == "")).to_numpy()
    if missing.any():
        _bad_timestamp(values, np.flatnonzero(missing)[0], source, column, row_offset)
    rows = np.arange(len(s))
    ns = np.empty(len(s), dtype=np.int64)
    iso = _to_datetime(text, "ISO8601")  # the fast path: one vectorized parse
    done = iso.notna().to_numpy()
    if done.any():
        ns[done] = to_ns(_as_ns(iso[done], values, source, column, row_offset, rows[done]))
    if done.all():
        return pd.Series(pd.to_datetime(ns, unit="ns", utc=True), index=s.index)
    # The rest: numbers written as text are epochs; other text may be a date in another shape.
    is_epoch = np.zeros(len(s), dtype=bool)
    is_epoch[~done] = pd.to_numeric(text[~done], errors="coerce").notna().to_numpy()
    if is_epoch.any():
        # Parsed again on their own: integers stay int64, exact to the nanosecond.
        epochs = pd.to_numeric(text[is_epoch]).to_numpy()
        ns[is_epoch] = _epoch_to_ns(epochs, values, rows[is_epoch], source, column, row_offset)
    other = ~done & ~is_epoch
    if other.any():
        dates = _to_datetime(text[other], "mixed")  # element by element: slow, but only these
        failed = dates.isna().to_numpy()
        if failed.any():
            _bad_timestamp(values, rows[other][np.flatnonzero(failed)[0]], source, column,
                           row_offset)
        ns[other] = to_ns(_as_ns(dates, values, source, column, row_offset, rows[other]))
    return pd.Series(pd.to_datetime(ns, unit="ns", utc=True), index=s.index)


def _to_datetime(text: pd.Series, fmt: str) -> pd.Series:
    """Text -> UTC datetimes (naive = UTC), NaT where it does not parse."""
    try:
        return pd.to_datetime(text, utc=True, format=fmt, errors="coerce")
    except (ValueError, TypeError, OverflowError):
        return pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns, UTC]")


def _epoch_to_ns(numbers: np.ndarray, values: pd.Series, rows: np.ndarray, source: str,
                 column: str, row_offset: int) -> np.ndarray:
    """Epoch numbers (each in s, ms, us or ns by its magnitude) -> int64 ns; ``rows`` are their
    positions in ``values``, for errors."""
    as_float = numbers.astype(np.float64)
    magnitude = np.abs(as_float)
    not_finite = ~np.isfinite(as_float)
    if not_finite.any():
        _bad_timestamp(values, rows[np.flatnonzero(not_finite)[0]], source, column, row_offset)
    out = np.zeros(len(numbers), dtype=np.int64)
    lower = 0.0
    for limit, _unit, factor in _EPOCH_UNITS:  # four units: a loop over units, not rows
        mask = (magnitude >= lower) & (magnitude < limit)
        lower = limit
        if not mask.any():
            continue
        too_big = mask & (magnitude * factor >= 9.2e18)
        if too_big.any():
            _bad_timestamp(values, rows[np.flatnonzero(too_big)[0]], source, column,
                           row_offset, problem="timestamp out of range")
        if numbers.dtype.kind in "iu":  # exact integer arithmetic
            out[mask] = numbers[mask].astype(np.int64) * factor
        else:
            # Whole part exact; the fraction to the microsecond, the most a float64 epoch
            # in seconds holds (digits past it are rounding noise).
            whole = np.floor(as_float[mask])
            tick = min(factor, 1000)
            fraction = np.round((as_float[mask] - whole) * factor / tick).astype(np.int64) * tick
            out[mask] = whole.astype(np.int64) * factor + fraction
    return out


def _as_ns(out: pd.Series, values: pd.Series, source: str, column: str, row_offset: int,
           rows: np.ndarray | None = None) -> pd.Series:
    """UTC datetimes of any unit -> datetime64[ns, UTC]; a date it cannot hold is an error."""
    outside = ((out < _NS_MIN) | (out > _NS_MAX)).to_numpy()
    if outside.any():
        pos = np.flatnonzero(outside)[0]
        _bad_timestamp(values, pos if rows is None else rows[pos], source, column, row_offset,
                       problem="timestamp out of range")
    return out.astype("datetime64[ns, UTC]")


def _bad_timestamp(values: pd.Series, pos: int, source: str, column: str, row_offset: int,
                   problem: str | None = None):
    raw = values.iloc[int(pos)]
    if problem is None:
        problem = "empty timestamp" if _is_blank(raw) else f"cannot parse timestamp {_show(raw)}"
    elif not _is_blank(raw):
        problem += f": {_show(raw)}"
    hint = ("dates must fall between the years 1678 and 2261" if "range" in problem
            else TIMESTAMP_HINT)
    raise InputError(problem, source=source,
                     where=f"row {row_offset + int(pos) + 1}, column '{column}'", hint=hint)


def _is_blank(value) -> bool:
    try:
        if pd.isna(value):
            return True
    except (TypeError, ValueError):  # lists, dicts
        return False
    return isinstance(value, str) and not value.strip()


def _show(value) -> str:
    """A cell as the user wrote it, short: 'abc', 12.5, True."""
    if isinstance(value, np.generic):
        value = value.item()
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
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
    # Columns left out, and why (e.g. text columns read with ``drop_text``): metric -> reason.
    dropped: dict[str, str] = field(default_factory=dict)

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


def to_rows(raw: pd.DataFrame, source: str, cfg: ReadConfig, row_offset: int = 0,
            text_columns: set[str] | None = None) -> pd.DataFrame:
    """One raw table (wide or long layout) -> wide rows: entity, timestamp, metric columns (float64).

    Not yet on a regular step: that is :func:`normalise`'s job, once all inputs are together.
    Long-layout rows that repeat an (entity, timestamp, metric) stay separate rows, so that
    :func:`normalise` averages every reading equally however the input was split into chunks.
    Entity names go through ``cfg.entity_map`` (:func:`map_entities`).

    ``text_columns``: a set to which wide-layout columns that hold text (not numbers with a
    typo: see :func:`is_text_column`) are added, and left out, instead of being an error
    (training drops them with a warning).
    """
    ts_col = resolve_column(raw, cfg.timestamp_col, TIMESTAMP_NAMES, "timestamp", source,
                            "--timestamp-col", required=True)
    ent_col = resolve_column(raw, cfg.entity_col, ENTITY_NAMES, "entity", source,
                             "--entity-col", required=False)
    columns = {str(c).lower(): c for c in raw.columns}
    has_metric, has_value = "metric" in columns, "value" in columns
    excluded = set(cfg.exclude)
    long_layout = has_metric or has_value
    if long_layout and not (has_metric and has_value):
        have, lack = ("metric", "value") if has_metric else ("value", "metric")
        raise InputError(f"unknown layout: a '{have}' column but no '{lack}' column",
                         source=source, hint="long layout needs timestamp, entity, metric, "
                                             "value; wide layout one column per metric")
    if long_layout:
        metric_col, value_col = columns["metric"], columns["value"]
        extra = [c for c in raw.columns
                 if c not in (ts_col, ent_col, metric_col, value_col) and c not in excluded]
        if extra:
            raise InputError(f"unexpected column '{extra[0]}' in long layout", source=source,
                             hint=f"drop it or pass --exclude {extra[0]}")
        metric_cols = []
    else:
        metric_cols = [c for c in raw.columns
                       if c not in (ts_col, ent_col) and str(c) not in excluded]
        if text_columns is not None:
            text = [c for c in metric_cols if is_text_column(raw[c])]
            text_columns.update(str(c) for c in text)
            metric_cols = [c for c in metric_cols if c not in text]
        if not metric_cols:
            raise InputError("no metric columns", source=source,
                             hint="add one numeric column per metric (wide layout) or "
                                  "metric and value columns (long layout)")
        _check_metric_names([str(c) for c in metric_cols], source)
    timestamps = _by_unique(raw[ts_col], lambda col, offset: parse_timestamps(
        col, source=source, column=str(ts_col), row_offset=offset), row_offset)
    entities = (_by_unique(raw[ent_col], lambda col, offset: _entity_names(
        col, source, str(ent_col), offset), row_offset)
                if ent_col is not None else pd.Series(DEFAULT_ENTITY, index=raw.index,
                                                      dtype="string"))
    entities = map_entities(entities, cfg.entity_map)
    if not long_layout:
        columns: dict[str, np.ndarray] = {}
        for c in metric_cols:  # a loop over columns, vectorized over rows
            columns[str(c)] = _numeric(raw[c], source, str(c), row_offset)
        # One float block, filled column by column (no second copy to consolidate it); kept
        # as pandas keeps blocks, a column per row of the transposed array.
        block = np.empty((len(columns), len(raw)))
        for j, col in enumerate(columns.values()):
            block[j] = col
        out = pd.DataFrame(block.T, columns=list(columns), index=pd.RangeIndex(len(raw)),
                           copy=False)
        # .array, not .to_numpy(): tz-aware times would become slow Timestamp objects.
        out.insert(0, "timestamp", timestamps.array)
        out.insert(0, "entity", entities.array)
        return out
    values = _numeric(raw[value_col], source, str(value_col), row_offset)
    names = raw[metric_col].astype("string").str.strip()
    empty = (names.isna() | (names == "")).to_numpy()
    if empty.any():
        pos = int(np.flatnonzero(empty)[0])
        raise InputError("empty metric name", source=source,
                         where=f"row {row_offset + pos + 1}, column '{metric_col}'",
                         hint="name the metric of every row")
    _check_metric_names(pd.unique(names).tolist(), source)
    long = pd.DataFrame({"entity": entities.array, "timestamp": timestamps.array,
                         "metric": names.to_numpy(), "value": values})
    # Repeats of (entity, timestamp, metric) are numbered so the pivot keeps each one.
    long["repeat"] = long.groupby(["entity", "timestamp", "metric"], sort=False).cumcount()
    wide = long.set_index(["entity", "timestamp", "repeat", "metric"])["value"] \
        .unstack("metric")
    wide.columns = [str(c) for c in wide.columns]
    return wide.reset_index().drop(columns="repeat")


def _check_metric_names(names: list[str], source: str) -> None:
    clash = [n for n in names if n in ("entity", "timestamp")]
    if clash:
        raise InputError(f"a metric is named '{clash[0]}', which ftml uses for its own column",
                         source=source, hint=f"rename it or pass --exclude {clash[0]}")


def _by_unique(col: pd.Series, parse: Callable[[pd.Series, int], pd.Series],
               row_offset: int) -> pd.Series:
    """``parse(col, row_offset)`` for a text column, computed on its distinct values only: a
    metrics file repeats each timestamp for every entity and each entity at every step. The
    parse is value by value, so the result is the same; any problem (a missing or unparseable
    value) is left to the full parse, whose error names the right row."""
    if len(col) < 1024 or not (pd.api.types.is_object_dtype(col.dtype) or
                               pd.api.types.is_string_dtype(col.dtype)):
        return parse(col, row_offset)
    codes, uniques = pd.factorize(col, use_na_sentinel=True)
    if len(uniques) * 4 > len(col) or (codes < 0).any():
        return parse(col, row_offset)
    try:
        parsed = parse(pd.Series(uniques), row_offset)
    except InputError:
        return parse(col, row_offset)
    return pd.Series(parsed.array.take(codes), index=col.index)


def _entity_names(col: pd.Series, source: str, name: str, row_offset: int) -> pd.Series:
    """Entity column -> names as text; 7 and 7.0 both become '7' (a CSV column with a blank
    cell is read as floats)."""
    if pd.api.types.is_float_dtype(col.dtype):
        whole = col.dropna()
        if (whole == np.floor(whole)).all():
            col = col.astype("Int64")
    names = col.astype("string").str.strip()
    empty = (names.isna() | (names == "")).to_numpy()
    if empty.any():
        pos = int(np.flatnonzero(empty)[0])
        raise InputError("empty entity", source=source,
                         where=f"row {row_offset + pos + 1}, column '{name}'",
                         hint="name the entity of every row")
    return names


def entity_pattern(pattern: str) -> re.Pattern:
    """The compiled ``--entity-map`` regex: it must have a group named ``entity`` or exactly
    one capture group, which is the stable name."""
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"entity map {pattern!r} is not a regular expression ({exc})",
                          where="--entity-map / read.entity_map",
                          hint="e.g. '^(.+?)-[0-9a-f]{6,10}-[0-9a-z]{5}$'") from None
    if "entity" not in rx.groupindex and rx.groups != 1:
        raise ConfigError(f"entity map {pattern!r} has {rx.groups} capture groups",
                          where="--entity-map / read.entity_map",
                          hint="use one group, or name the stable part (?P<entity>...)")
    return rx


def map_entities(names: pd.Series, pattern: str | None) -> pd.Series:
    """Entity names -> stable names by ``pattern`` (``read.entity_map``): a name the regex
    matches (``re.search``) becomes its ``entity`` group (or its one group), e.g. the pod
    'ts-order-service-5d8f9c7b6-x2x4z' -> 'ts-order-service'; other names stay as they are.
    Rows of entities merged at one time step are averaged by :func:`normalise`. Computed on
    the distinct names only."""
    if not pattern or len(names) == 0:
        return names
    rx = entity_pattern(pattern)
    group = "entity" if "entity" in rx.groupindex else 1
    codes, uniques = pd.factorize(names, use_na_sentinel=True)
    mapped = []
    for name in map(str, uniques):  # distinct names: few
        m = rx.search(name)
        stable = m.group(group) if m else None
        mapped.append(stable if stable else name)
    return pd.Series(pd.array(mapped, dtype="string").take(codes), index=names.index)


# A column is text, not a metric with a typo, when at least this share of its filled cells
# are not numbers.
TEXT_SHARE = 0.5


def is_text_column(col: pd.Series) -> bool:
    """A column of text (e.g. an interface name), not a number column with a stray word."""
    if pd.api.types.is_bool_dtype(col.dtype) or pd.api.types.is_numeric_dtype(col.dtype):
        return False
    text = col.dropna().astype("string").str.strip()
    text = text[(text != "") & ~text.str.lower().isin(_NAN_WORDS)]
    if not len(text):
        return False
    words = pd.to_numeric(text, errors="coerce").isna()
    return bool(words.mean() >= TEXT_SHARE)


def _numeric(col: pd.Series, source: str, name: str, row_offset: int) -> np.ndarray:
    """A metric column -> float64; text in it is an error naming the row. Empty cells, NaN-like
    words and infinities are missing values."""
    if pd.api.types.is_bool_dtype(col.dtype) or pd.api.types.is_numeric_dtype(col.dtype):
        out = col.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        text = col.astype("string").str.strip()
        num = pd.to_numeric(text, errors="coerce")
        bad = (num.isna() & text.notna() & (text != "") & ~text.str.lower().isin(_NAN_WORDS))
        if bad.any():
            pos = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(f"text {_show(col.iloc[pos])} in a metric column", source=source,
                             where=f"row {row_offset + pos + 1}, column '{name}'",
                             hint=f"fix the value or pass --exclude {name} to drop the column")
        out = num.to_numpy(dtype=np.float64, na_value=np.nan)
    # An infinite reading is a broken one: missing, not a value to learn from.
    inf = np.isinf(out)
    return np.where(inf, np.nan, out) if inf.any() else out


_NAN_WORDS = ["nan", "na", "n/a", "null", "none", "-"]


def to_ns(timestamps) -> np.ndarray:
    """UTC timestamps -> int64 nanoseconds since the epoch."""
    return pd.DatetimeIndex(timestamps).as_unit("ns").asi8


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
    return MetricData(frame, step, all_metrics, sources)


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


def _iter_raw(path: Path, fmt: str, gz: bool, chunk_rows: int) -> Iterator[pd.DataFrame]:
    if fmt == "csv":
        yield from _iter_csv(path, gz, chunk_rows)
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        with pq.ParquetFile(path) as pf:
            for batch in pf.iter_batches(batch_size=chunk_rows):
                yield batch.to_pandas()
    else:
        opener = gzip.open if gz else open
        line_offset = 0
        seen_text = False
        with opener(path, "rt", encoding="utf-8-sig") as fh:
            while True:
                lines = list(itertools.islice(fh, chunk_rows))
                if not lines:
                    break
                text = "".join(lines)
                if text.strip():
                    seen_text = True
                    yield _parse_jsonl(text, path, line_offset)
                line_offset += len(lines)
        if not seen_text:
            raise InputError("file is empty", source=str(path),
                             hint="give one JSON object per line")


# --------------------------------------------------------------------------- incidents


def read_incidents(path: str | Path, entities: list[str] | None = None,
                   cfg: ReadConfig | None = None) -> pd.DataFrame:
    """Incidents file -> frame ``entity, start, end, cause`` (UTC), sorted by entity, start.

    ``entities`` are those the metrics have: an incident for another entity is an error, and
    with exactly one the ``entity`` column may be left out.
    """
    source = str(path)
    raw = read_table(path, allow_empty=True)
    cols = {str(c).lower(): c for c in raw.columns}
    for need in ("start", "end", "cause"):
        if need not in cols:
            raise InputError(f"no '{need}' column", source=source,
                             hint="incidents need columns entity, start, end, cause")
    out = pd.DataFrame({
        "start": parse_timestamps(raw[cols["start"]], source=source,
                                  column=str(cols["start"])).array,
        "end": parse_timestamps(raw[cols["end"]], source=source,
                                column=str(cols["end"])).array,
        "cause": raw[cols["cause"]].astype("string").str.strip().to_numpy(),
    })
    empty_cause = (out["cause"].isna() | (out["cause"] == "")).to_numpy()
    if empty_cause.any():
        pos = int(np.flatnonzero(empty_cause)[0])
        raise InputError("empty cause", source=source,
                         where=f"row {pos + 1}, column '{cols['cause']}'",
                         hint="name the root cause of every incident")
    ent_col = (cfg.entity_col if cfg and cfg.entity_col in raw.columns else
               next((cols[n] for n in ENTITY_NAMES if n in cols), None))
    if ent_col is not None:
        names = _entity_names(raw[ent_col], source, str(ent_col), 0)
        out.insert(0, "entity", map_entities(names, cfg.entity_map if cfg else None).to_numpy())
    elif entities is not None and len(entities) == 1:
        out.insert(0, "entity", str(entities[0]))
    else:
        hint = ("the metrics have several entities: say which one each incident is on"
                if entities else "add an 'entity' column")
        raise InputError("no 'entity' column", source=source, hint=hint)
    bad = (out["end"] < out["start"]).to_numpy()
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise InputError(f"incident ends ({out['end'].iloc[pos]}) before it starts "
                         f"({out['start'].iloc[pos]})", source=source, where=f"row {pos + 1}",
                         hint="swap start and end")
    if entities is not None:
        known = set(map(str, entities))
        unknown = ~out["entity"].isin(known).to_numpy()
        if unknown.any():
            pos = int(np.flatnonzero(unknown)[0])
            shown = ", ".join(sorted(known)[:5]) + (", ..." if len(known) > 5 else "")
            raise InputError(f"incident for entity '{out['entity'].iloc[pos]}' that has no metrics",
                             source=source, where=f"row {pos + 1}, column '{ent_col}'",
                             hint=f"the metrics have entities {shown}; fix the name or add "
                                  "its metrics")
    out["entity"] = out["entity"].astype(str)
    out["cause"] = out["cause"].astype(str)
    return out.sort_values(["entity", "start"], kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------- writing


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename,
    on failure it is removed, so readers never see a half-written file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = _new_temp_file(path)
    except OSError as exc:
        raise InputError(f"cannot write: {exc.strerror or exc}", source=str(path),
                         hint="check that the directory exists and is writable") from None
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        try:
            os.replace(tmp_path, path)
        except OSError as exc:
            raise InputError(f"cannot write: {exc.strerror or exc}", source=str(path),
                             hint="is it a directory, or read-only?") from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _new_temp_file(path: Path) -> Path:
    """An empty, new file beside ``path``. Created with mode 0666 so that the umask applies, as
    for any new file (mkstemp's 0600 would stay on the result)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"no free temporary name beside {path}")


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_table(frame: pd.DataFrame, path: str | Path) -> None:
    """Write a frame atomically; the format follows the extension (.csv[.gz], .parquet, .jsonl).

    In text formats timestamps are written as ISO 8601 UTC ('Z'), with a fraction of a second
    only when some have one, so that they read back exactly."""
    fmt, gz = file_format(path)
    with atomic_path(path) as tmp:
        _writer(fmt, gz)(frame, tmp)


def _iso_text(frame: pd.DataFrame) -> pd.DataFrame:
    """Datetime columns -> ISO 8601 UTC text (naive ones taken as UTC)."""
    out = None
    for col in frame.columns:
        s = frame[col]
        aware = isinstance(s.dtype, pd.DatetimeTZDtype)
        if not (aware or pd.api.types.is_datetime64_dtype(s.dtype)):
            continue
        utc = s.dt.tz_convert("UTC") if aware else s.dt.tz_localize("UTC")
        ns = to_ns(utc.fillna(pd.Timestamp(0, tz="UTC")))
        sub_second = ns % 10**9
        if not sub_second.any():
            fmt = "%Y-%m-%dT%H:%M:%SZ"
        elif not (sub_second % 1000).any():
            fmt = "%Y-%m-%dT%H:%M:%S.%fZ"
        else:  # nanoseconds: strftime stops at microseconds
            fmt = None
        text = (utc.dt.strftime(fmt) if fmt else
                pd.Series(pd.DatetimeIndex(utc).tz_localize(None).astype(str), index=s.index)
                .str.replace(" ", "T") + "Z")
        out = frame.copy() if out is None else out
        out[col] = text.where(s.notna(), None)
    return frame if out is None else out


def _writer(fmt: str, gz: bool) -> Callable[[pd.DataFrame, Path], None]:
    def csv(frame, tmp):
        _iso_text(frame).to_csv(tmp, index=False, compression="gzip" if gz else None)

    def parquet(frame, tmp):
        frame.to_parquet(tmp, index=False)

    def jsonl(frame, tmp):
        text = _iso_text(frame).to_json(orient="records", lines=True)
        data = text.encode()
        if gz:
            data = gzip.compress(data)
        tmp.write_bytes(data)

    return {"csv": csv, "parquet": parquet, "jsonl": jsonl}[fmt]


def write_records(records: list[dict], path: str | Path) -> None:
    """Write a list of plain dicts (e.g. events) atomically. Nested values are kept as JSON
    text in CSV, and in Parquet where they mix types (e.g. [cause, probability] pairs)."""
    fmt, gz = file_format(path)
    if fmt == "jsonl":
        text = "".join(json.dumps(r, default=str) + "\n" for r in records)
        write_bytes(path, gzip.compress(text.encode()) if gz else text.encode())
        return
    frame = pd.DataFrame.from_records(records)
    for col in frame.columns:
        values = frame[col].tolist()
        nested = [v for v in values if isinstance(v, (list, dict))]
        if not nested:
            continue
        flat_strings = all(isinstance(v, list) and all(isinstance(x, str) for x in v)
                           for v in nested)
        if fmt == "csv" or not flat_strings:
            frame[col] = [json.dumps(v) for v in values]
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
