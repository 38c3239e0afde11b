"""Timestamps: ISO 8601 or epoch s / ms / us / ns, value by value -> UTC nanoseconds; a value
that does not parse is an error naming its row."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from ftml.errors import InputError

TIMESTAMP_HINT = "use ISO 8601 (2026-01-05T10:00:00Z) or epoch seconds/milliseconds"

# Epoch numbers are told apart by magnitude, value by value: seconds stay below 1e11 until the
# year 5138, milliseconds since 1973 are above it; likewise for micro- and nanoseconds.
_EPOCH_UNITS = ((1e11, "s", 10**9), (1e14, "ms", 10**6), (1e17, "us", 10**3),
                (np.inf, "ns", 1))
# What datetime64[ns] can hold (years 1677-2262).
_NS_MIN, _NS_MAX = pd.Timestamp.min.tz_localize("UTC"), pd.Timestamp.max.tz_localize("UTC")


#: What Go's ``time.Time.String()`` writes after an ISO-like time and its offset: the zone's
#: abbreviation and the monotonic clock reading (``2022-08-22 03:51:19.6 +0000 UTC m=+0.11``, as
#: Go exporters' dumps and Nezha's files have). Taken off, the rest parses as ISO 8601.
_GO_TIME = re.compile(r"(?<=[+-]\d{4}) [A-Z]{2,5}(?: m=[+-][0-9.]+)?$")


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
    if _GO_TIME.search(str(text.iloc[0])):  # checked on the first value: a column is one form
        text = text.str.replace(_GO_TIME, "", regex=True)
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


def to_ns(timestamps) -> np.ndarray:
    """UTC timestamps -> int64 nanoseconds since the epoch."""
    return pd.DatetimeIndex(timestamps).as_unit("ns").asi8
